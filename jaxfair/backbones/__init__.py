"""Recommendation backbones and their registry.

Each module (``pmf``, ``deepmodel``, ``sasrec``, ``bert4rec``, ``lightgcn``, ``cosine_mf``) has a frozen ``Config``
dataclass and a ``backbone(config) -> Backbone`` factory; :func:`make_backbone` builds one from a config table.
"""

from __future__ import annotations

from typing import Any, Mapping

from jaxfair.backbones import bert4rec, cosine_mf, deepmodel, lightgcn, pmf, sasrec
from jaxfair.backbones.base import Backbone
from jaxfair.config import ConfigError, from_dict

BACKBONES = {
    "pmf": pmf,
    "deepmodel": deepmodel,
    "sasrec": sasrec,
    "bert4rec": bert4rec,
    "lightgcn": lightgcn,
    "cosine_mf": cosine_mf,
}

__all__ = ["BACKBONES", "Backbone", "make_backbone"]


def make_backbone(name: str, options: Mapping[str, Any] | None = None) -> tuple[Backbone, Any]:
    """Build a registered backbone from its name and option table.

    Args:
      name: a key of :data:`BACKBONES`.
      options: values for the module's ``Config`` fields (e.g. the ``[backbone]`` TOML table without ``name``);
        None means all defaults.

    Returns:
      ``(backbone, config)``: the bundle of pure functions and the validated module ``Config``.

    Raises:
      ConfigError: unknown name (``backbone.name: ...``), unknown option key (``backbone.<key>: ...``), wrong type,
        or a value the ``Config`` rejects.
    """
    module = BACKBONES.get(name) if isinstance(name, str) else None
    if module is None:
        raise ConfigError(f"backbone.name: unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
    config = from_dict(module.Config, options, where="backbone")
    return module.backbone(config), config
