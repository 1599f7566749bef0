"""jaxfair: fairness-aware recommendation in JAX.

The functional API in one place (see README.md for a walk-through)::

    import jax, jaxfair
    split = jaxfair.prepare(jaxfair.load("ml-100k"))          # fetch, read, preprocess (AFRL section 4.1.1)
    config = jaxfair.parse_config({"backbone": {"name": "pmf"}})
    backbone, context, params, _ = jaxfair.train_backbone(split, config)
    users = backbone.user_embeddings(params, context, "test")
    jaxfair.probe_all(users, split.user_attributes, split.attribute_classes, split.probe_users, jax.random.key(0))
"""

from jaxfair.backbones import BACKBONES, make_backbone
from jaxfair.config import ConfigError
from jaxfair.data.dataset import DataError, RawDataset, Split, load_split, save_split
from jaxfair.data.fetch import fetch, load
from jaxfair.data.preprocess import PrepConfig, prepare
from jaxfair.data.readers import read_atomic, read_dataset, read_ml1m, read_ml100k
from jaxfair.data.synthetic import make_synthetic
from jaxfair.experiments.backbone import evaluate_ranking, train_backbone
from jaxfair.experiments.config import parse_config
from jaxfair.methods import afrl, cofair, itfr
from jaxfair.metrics.probe import ProbeConfig, cross_fitted_probe, probe_all, probe_attribute
from jaxfair.metrics.ranking import full_protocol, ranking_metrics, sampled_protocol

__all__ = [
    "BACKBONES", "ConfigError", "DataError", "PrepConfig", "ProbeConfig", "RawDataset", "Split", "afrl", "cofair",
    "itfr", "cross_fitted_probe",
    "evaluate_ranking", "fetch", "full_protocol", "load", "load_split", "make_backbone", "make_synthetic",
    "parse_config", "prepare", "probe_all", "probe_attribute", "ranking_metrics", "read_atomic", "read_dataset",
    "read_ml100k", "read_ml1m", "sampled_protocol", "save_split", "train_backbone",
]
__version__ = "0.1.0"
