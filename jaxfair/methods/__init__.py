"""Fairness methods and their baselines, registered by name.

Each module has a frozen ``Config`` dataclass (its config section, ``[<name>]``, with its loop in
``[<name>.train]``) and a :class:`~jaxfair.methods.base.Method` bundle ``METHOD`` (the contract in
:mod:`jaxfair.methods.base`). :data:`METHODS` maps names to bundles; :func:`register` adds one from outside the
package.

* ``noop`` - no fairness: the backbone's own embeddings (what a config without a method section runs);
* ``afrl`` - AFRL; ``sm`` and ``ffvae`` - its baselines (its ablations are settings of ``afrl``);
* ``erasure`` - closed-form linear concept erasure (LEACE) per requirement and strength, no training;
* ``cofair`` - Cofair, with the per-level retraining baseline as models of the same method;
* ``itfr`` - ITFR; plain BPR and GroupDRO are settings of it;
* ``diffairec`` - DifFaiRec; DiffRec is ``group_vectors = "none"``; ``fair_mf`` - the regularised MF (``gamma = 0``:
  plain MF).
"""

from __future__ import annotations

from jaxfair.config import ConfigError
from jaxfair.methods import afrl, cofair, diffairec, erasure, fair_mf, ffvae, itfr, noop, sm
from jaxfair.methods.base import Method

METHODS: dict[str, Method] = {m.METHOD.name: m.METHOD for m in (noop, afrl, sm, ffvae, erasure, cofair, itfr,
                                                               diffairec, fair_mf)}


def register(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` under ``method.name`` (replacing one of that name); returns it."""
    if not isinstance(method, Method):
        raise TypeError(f"expected a jaxfair.methods.base.Method, got {type(method).__name__}")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; ConfigError naming the known ones otherwise."""
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"method: unknown method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method", "register"]
