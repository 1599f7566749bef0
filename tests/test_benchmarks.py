"""The benchmark scripts still run (tiny sizes, no timing asserted: performance is measured by running them)."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_afrl_step_benchmark_reports_every_ratio(tmp_path):
    out = tmp_path / "step.json"
    load("afrl_step").main(["--users", "40", "--items", "30", "--batch", "8", "--steps", "3", "--repeats", "1",
                            "--no-torch", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["jax_jit_step_s"] > 0 and results["loop_over_vmapped_requirements"] > 0


def test_main_job_summary_aggregates_seeds():
    summarize = load("afrl_main_job").summarize
    runs = [
        {
            "seed": s,
            "backbone": {"name": "pmf", "metrics": {"ndcg@10": 0.4, "hr@10": 0.6}, "probe_auc": {"gender": 0.7}},
            "afrl": {"requirements": {"G": {"sensitive": ["gender"], "metrics": {"ndcg@10": 0.3 + 0.1 * s,
                                                                                 "hr@10": 0.5}, "mean_auc": 0.55}}},
            "timings": {"afrl_seconds": 1.0 + s, "afrl_epochs": 3},
        }
        for s in (0, 1)
    ]
    summary, table = summarize(runs)
    assert "| G | 0.700 ± 0.000 | 0.550 ± 0.000 | 0.350 ± 0.050 |" in table
    assert summary["total_seconds"] == [1.0, 2.0]
