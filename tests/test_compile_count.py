"""The main job builds each XLA program once per distinct shape, and few shapes: a jitted closure rebuilt inside a
loop, an eager ``jnp`` call on a new shape or a fold of a new length shows up here as a function compiled more often
than its budget.

The main job's own config (``configs/afrl_pmf_ml100k.toml``) runs on synthetic data of MovieLens-100k's shape
(three attributes, sampled protocol) with fewer epochs and audit draws; neither changes which programs exist.
"""

import tomllib

import pytest

from jaxfair.compile_cache import CompileCount
from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
from jaxfair.pipeline import parse_config, run

# Programs per function; a function not listed may build one.
BUDGET = {
    # The probe program, per attribute class count (2, 7, 21 here): the standard probe, the audit of the unseen
    # users (folds padded to one length) and the validation-only audit (its own, smaller users).
    "jit(fit_one)": 9,
    "jit(<lambda>)": 3,  # the backbone's and AFRL's initialisers, the backbone's validation embeddings
    "jit(epoch)": 2,  # the backbone's epoch and AFRL's
}
MAIN_JOB_TOTAL = 25  # issue 20: from 160 before


@pytest.fixture(scope="module")
def main_job_compilations(tmp_path_factory):
    root = tmp_path_factory.mktemp("main_job")
    write_ml100k_folder(make_synthetic(num_users=400, num_items=200, per_user=24, seed=7), root / "data")
    with open("configs/afrl_pmf_ml100k.toml", "rb") as f:
        raw = tomllib.load(f)
    raw["data"]["source"] = str(root / "data")
    raw["backbone"]["train"]["epochs"] = 3
    raw["afrl"]["train"]["epochs"] = 2
    raw["probe"] = {"audit_max_repeats": 10, "bootstrap": 100}  # two rounds of draws: the program is reused
    with CompileCount() as count:
        run(parse_config(raw), root / "out", log=lambda message: None)
    return count


def test_no_function_of_the_main_job_compiles_more_often_than_its_budget(main_job_compilations):
    over = {name: n for name, n in main_job_compilations.by_function.items() if n > BUDGET.get(name, 1)}
    assert not over, f"compiled more often than budgeted: {over} (budget {BUDGET})"


def test_the_main_job_builds_at_most_25_programs(main_job_compilations):
    assert main_job_compilations.total <= MAIN_JOB_TOTAL, main_job_compilations.by_function
