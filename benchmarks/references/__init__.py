"""PyTorch reference implementations of jaxfair's training steps, one module per method, written for the step
benchmarks (``benchmarks/<method>_step.py``) and the numerical checks (``tests/test_torch_references.py``, marked
``torch``): each computes the same step as jaxfair's, so timings compare like with like and the numbers can be checked
to float tolerance.

* :mod:`benchmarks.references.afrl`: AFRL's five-player step (:func:`jaxfair.methods.afrl.make_train_step`);
* :mod:`benchmarks.references.cofair`: Cofair's discriminator-then-filter step, per row
  (:func:`jaxfair.methods.cofair.make_train_step`);
* :mod:`benchmarks.references.itfr`: ITFR's SAM + collaborative-balance step
  (:func:`jaxfair.methods.itfr.make_train_step`);
* :mod:`benchmarks.references.diffairec`: DiffRec's and DifFaiRec's step and full-ranking scorer
  (:func:`jaxfair.backbones.diffusion.make_train_step`, :func:`jaxfair.methods.diffairec.make_train_step` and their
  ``make_scorer``).

PyTorch (``pip install -e '.[bench]'``, torch 2.13.0) is imported only when a reference model is built, so these
modules import without it.
"""
