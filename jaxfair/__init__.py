"""jaxfair: fairness-aware recommendation in JAX.

The functional API in one place (see README.md for a walk-through)::

    import jaxfair
    config = jaxfair.load_config("configs/afrl_pmf_ml100k.toml", ["afrl.lam=1.0"])
    results = jaxfair.run(config, "runs/afrl")                 # split -> backbone -> method -> evaluation
    run = jaxfair.restore_run("runs/afrl")
    fair = run.serve(control=[True, False, False])              # every user's embedding, gender must not matter

Pieces: :func:`prepare` / :func:`load` (data), :func:`make_backbone` (backbones), :data:`METHODS` (methods and
their contract, :mod:`jaxfair.methods.base`), :func:`probe_all` / :func:`cross_fitted_probe` (leakage).
"""

from jaxfair._version import __version__  # noqa: E402,F401

from jaxfair.backbones import BACKBONES, make_backbone  # noqa: E402
from jaxfair.config import ConfigError  # noqa: E402
from jaxfair.data.dataset import DataError, RawDataset, Split, load_split, save_split  # noqa: E402
from jaxfair.data.fetch import fetch, load  # noqa: E402
from jaxfair.data.preprocess import PrepConfig, prepare  # noqa: E402
from jaxfair.data.readers import read_atomic, read_dataset, read_ml1m, read_ml100k  # noqa: E402
from jaxfair.data.synthetic import make_synthetic  # noqa: E402
from jaxfair.methods import METHODS, get_method, register  # noqa: E402
from jaxfair.metrics.probe import ProbeConfig, cross_fitted_probe, probe_all, probe_attribute  # noqa: E402
from jaxfair.metrics.ranking import full_protocol, ranking_metrics, sampled_protocol  # noqa: E402
from jaxfair.pipeline import (RunConfig, evaluate_run, load_config, parse_config, restore_run,  # noqa: E402
                              run)

__all__ = [
    "BACKBONES", "ConfigError", "DataError", "METHODS", "PrepConfig", "ProbeConfig", "RawDataset", "RunConfig",
    "Split", "cross_fitted_probe", "evaluate_run", "fetch", "full_protocol", "get_method", "load", "load_config",
    "load_split", "make_backbone", "make_synthetic", "parse_config", "prepare", "probe_all", "probe_attribute",
    "ranking_metrics", "read_atomic", "read_dataset", "read_ml100k", "read_ml1m", "register", "restore_run", "run",
    "sampled_protocol", "save_split",
]
