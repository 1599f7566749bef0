"""The one pipeline (:mod:`jaxfair.pipeline.run`) and the run config it reads (:mod:`jaxfair.pipeline.config`)."""

from jaxfair.pipeline.config import DataConfig, EvalConfig, RunConfig, load_config, parse_config
from jaxfair.pipeline.run import RestoredRun, RunError, evaluate_run, restore_run, run

__all__ = ["DataConfig", "EvalConfig", "RestoredRun", "RunConfig", "RunError", "evaluate_run", "load_config",
           "parse_config", "restore_run", "run"]
