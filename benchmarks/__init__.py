"""Step benchmarks: jaxfair's jitted training steps timed against PyTorch references of the same computation.

Run them as modules from the repository root (``--quick``: tiny shapes, a few repeats; ``--no-torch``: JAX only)::

    python -m benchmarks.afrl_step --quick --out /tmp/afrl_step.json
    python -m benchmarks.cofair_step --quick --out /tmp/cofair_step.json
    python -m benchmarks.itfr_step --quick --out /tmp/itfr_step.json
    python -m benchmarks.diffairec_step --quick --out /tmp/diffairec_step.json

:mod:`benchmarks.timing` holds the shared timing and reporting helpers, :mod:`benchmarks.references` the PyTorch
reference implementations (``pip install -e '.[bench]'``). Experiments (seeds, sweeps, reports) are run by the
library's ``jaxfair sweep`` / ``jaxfair report`` harness, not from here.
"""
