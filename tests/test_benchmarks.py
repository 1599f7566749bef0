"""The step benchmarks still run (tiny sizes, no timing asserted: performance is measured by running them).

Each script runs as ``python -m benchmarks.<name>``; here its ``main`` is called with tiny ``--quick`` shapes and every
time and ratio it reports is checked present and positive. Without PyTorch the scripts record ``torch_skipped`` and
these tests check the JAX side only; the PyTorch references' numbers are checked in ``test_torch_references.py``.
"""

import json

import pytest

from benchmarks import afrl_step, cofair_step, diffairec_step, itfr_step


def test_afrl_step_benchmark_reports_every_ratio(tmp_path):
    out = tmp_path / "step.json"
    results = afrl_step.main(["--quick", "--batch", "8", "--steps", "2", "--no-torch", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["users"] == 40 and saved["items"] == 30 and saved["steps"] == 2 and saved["quick"] is True
    assert saved["torch_skipped"] == "--no-torch given" and "torch_step_s" not in saved
    keys = ["jax_jit_step_s", "jax_scan_epoch_step_s", "vmapped_all_requirements_s", "loop_over_requirements_s",
            "loop_over_vmapped_requirements"]
    assert all(saved[key] > 0 for key in keys)
    assert set(saved["median_ms"]) == {"jax_jit_step", "jax_scan_epoch", "vmapped_all_requirements",
                                       "loop_over_requirements"}
    assert saved["roofline"]["step_gflop"] > 0 and 0 < saved["roofline"]["share_of_step_matmul_rate"]


@pytest.mark.parametrize("flags", [["--adversary", "paper"], ["--adversary", "mean_gap"],
                                   ["--adversary", "capped", "--discriminator-layers", "1", "--discriminator-steps", "3",
                                    "--residual"],
                                   ["--adversary", "capped", "--exposure-weight", "1"]])
def test_cofair_step_benchmark_reports_every_ratio(tmp_path, flags):
    out = tmp_path / "cofair_step.json"
    results = cofair_step.main(["--quick", *flags, "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["adversary"] == flags[1] and saved["residual"] == ("--residual" in flags)
    times = ["jax_vmap_ms", "jax_loop_ms", "jax_vmap_per_row_ms", "jax_loop_per_row_ms"]
    ratios = ["loop_over_vmap", "loop_over_vmap_per_row", "per_row_over_per_user"]
    if "--exposure-weight" in flags:
        assert saved["exposure_weight"] == 1.0
        times.append("jax_vmap_without_exposure_ms")
        ratios.append("exposure_over_plain")
    if "torch_skipped" not in saved:
        torch_variants = [f"torch_eager_{t}t" for t in sorted({1, saved["device"]["cpu_count"]})]  # --quick: no compile
        assert set(saved["torch_warmup_s"]) == set(torch_variants) and saved["torch_failed"] == {}
        times += [f"{name}_ms" for name in torch_variants]
        ratios += ["torch_eager_1t_over_jax_vmap_per_row", "best_torch_over_jax_vmap_per_row",
                   "torch_eager_1t_over_jax_vmap", "best_torch_over_jax_vmap"]
    assert saved["roofline"]["step_gflop"] > 0 and 0 < saved["roofline"]["share_of_large_matmul_rate"]
    assert all(saved[key] > 0 for key in times + ratios)
    checks = [key for key in saved if key.startswith("check_max_abs_diff_")]
    assert len(checks) >= 2 and all(saved[key] < 1e-4 for key in checks)


def test_itfr_step_benchmark_reports_every_ratio_and_matches_torch(tmp_path):
    out = tmp_path / "itfr_step.json"
    results = itfr_step.main(["--users", "20", "--items", "15", "--batch", "32", "--repeats", "2",
                              "--groups", "4", "12", "--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["shapes"]["groups"] == [4, 12] and saved["scaling_base_groups"] == 4
    assert saved["learning_rate"] == itfr_step.LEARNING_RATE == saved["config"]["train"]["learning_rate"]
    times = ["jax_step_ms", "jax_epoch_ms", "jax_epoch_per_step_ms", "mf_epoch_ms", "mf_epoch_per_step_ms"]
    ratios = ["itfr_over_mf_epoch"]
    scaling = ["jax_step_ms", "jax_epoch_per_step_ms", "jax_step_over_base", "jax_epoch_per_step_over_base"]
    if "torch_skipped" not in saved:
        torch_variants = [f"torch_eager_{t}t" for t in sorted({1, saved["device"]["cpu_count"]})]  # --quick: no compile
        assert set(saved["torch_warmup_s"]) == {f"{name}_G12" for name in torch_variants}
        assert saved["torch_failed"] == {}
        times += [f"{name}_ms" for name in torch_variants]
        ratios += [f"{name}_over_jax_{what}" for name in [*torch_variants, "best_torch"]
                   for what in ("step", "epoch_per_step")]
        scaling += ["torch_ms", "torch_over_jax_step", "torch_over_base"]
        assert set(saved["checks"]) == {"G4", "G12"}
        for per_state in saved["checks"].values():
            assert set(per_state) == {"first_epoch", "later_epoch"}
            for quantities in per_state.values():
                assert all(q["max_abs_diff"] < 1e-4 * max(1.0, q["max_abs"]) for q in quantities.values())
        assert saved["check_max_abs_diff_params"] < 1e-4
    assert all(saved[key] > 0 for key in times + ratios)
    assert saved["roofline"]["step_gflop"] > 0 and 0 < saved["roofline"]["share_of_large_matmul_rate"]
    assert [row["groups"] for row in saved["scaling"]] == [4, 12]
    assert all(row[key] > 0 for row in saved["scaling"] for key in scaling)
    assert saved["scaling"][0]["jax_step_over_base"] == 1.0


@pytest.mark.parametrize("swap, serve", [("condition", "average"), ("input", "average"), ("input", "factual")])
def test_diffairec_step_benchmark_reports_every_ratio_and_matches_torch(tmp_path, swap, serve):
    out = tmp_path / "diffairec_step.json"
    results = diffairec_step.main(["--quick", "--no-diffrec", "--swap", swap, "--serve", serve, "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["models"] == ["diffairec"] and saved["shapes"]["batches_per_epoch"] == 3
    assert saved["diffairec_config"]["swap"] == swap and saved["diffairec_config"]["serve"] == serve
    assert saved["diffairec_config"]["diffusion"] == saved["diffusion_config"]
    block = saved["diffairec"]
    times = ["jax_step_ms", "jax_epoch_ms", "jax_epoch_per_step_ms", "jax_infer_ms"]
    ratios = []
    if "torch_skipped" not in saved:
        torch_variants = [f"torch_eager_{t}t" for t in sorted({1, saved["device"]["cpu_count"]})]  # --quick: no compile
        assert set(saved["torch_warmup_s"]) == {f"diffairec_{name}_step" for name in torch_variants}
        assert saved["torch_failed"] == {}
        times += [f"{name}_{what}ms" for name in torch_variants for what in ("", "infer_")]
        ratios += [f"{name}_over_jax_{what}" for name in [*torch_variants, "best_torch"]
                   for what in ("step", "epoch_per_step", "infer")]
        checks = saved["checks"]["diffairec"]
        assert checks["warm"]["importance_sampling_active"] and not checks["initial"]["importance_sampling_active"]
        assert set(checks["initial"]) >= {"params", "adam_first_moment", "loss_history", "metrics"}
        assert saved["check_passed"] is True
        assert saved["check_max_abs_diff_params"] < 1e-4 and saved["check_max_abs_diff_scores"] < 1e-4
    assert all(block[key] > 0 for key in times + ratios)
    assert saved["roofline"]["diffairec"]["step_gflop"] > 0


def test_diffairec_step_benchmark_offers_only_the_conditional_group_vectors():
    """``group_vectors = "none"`` is DiffRec, which the benchmark times alongside (``--no-diffrec`` drops it)."""
    assert diffairec_step.GROUP_VECTORS == ("mean", "pca")
    with pytest.raises(SystemExit):
        diffairec_step.parse_args(["--group-vectors", "none"])


def test_audit_stability_benchmark_audits_every_file_setting_and_seed(tmp_path):
    from benchmarks import audit_stability
    from jaxfair.data.synthetic import make_synthetic, write_ml100k_folder
    from jaxfair.pipeline import parse_config, run

    write_ml100k_folder(make_synthetic(num_users=150, num_items=100, per_user=20, seed=3), tmp_path / "data")
    config = parse_config({
        "method": "afrl", "data": {"source": str(tmp_path / "data"), "eval_negatives": 20},
        "backbone": {"name": "pmf", "dim": 8, "train": {"epochs": 2, "learning_rate": 0.01}},
        "evaluate": {"protocols": ["sampled"], "ks": [10]},
        "probe": {"steps": 40, "eval_every": 20, "bootstrap": 0, "audit_max_repeats": 2},
        "afrl": {"hidden": 8, "train": {"epochs": 1}}})
    run(config, tmp_path / "run", log=lambda message: None)
    result = audit_stability.main(["--run", str(tmp_path / "run"), "--quick", "--out", str(tmp_path / "a.json")])
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads(json.dumps(result))
    assert set(result["summary"]) == {"one draw", "se 0.005", "default"}
    assert len(result["rows"]) == 3 * 3 * 2  # files x settings x seeds, gender only
    for row in result["rows"]:
        assert 0.0 <= row["auc"] <= 1.0
        assert row["repeats"] == 1 if row["setting"] == "one draw" else row["repeats"] >= 5
    for block in result["summary"].values():
        assert block["max_seed_range"] == max(block["seed_range"].values()) >= 0.0


@pytest.mark.slow  # three tiny `jaxfair train` processes, about a minute on the 2-core machine
def test_compile_cache_benchmark_runs_off_cold_and_warm_with_identical_outputs(tmp_path):
    from benchmarks import compile_cache

    result = compile_cache.main(["--quick", "--out", str(tmp_path / "c.json")])
    assert json.loads((tmp_path / "c.json").read_text()) == json.loads(json.dumps(result))
    assert set(result["seconds"]) == {"off", "cold", "warm"} and result["identical_outputs"] is True
    assert all(len(times) == 1 and times[0] > 0 for times in result["seconds"].values())  # timings are reported,
    # never asserted (benchmarks measure; tests check)


def test_the_main_job_benchmark_reads_the_printed_result_table_cell_by_cell():
    from benchmarks.main_job import printed_table

    stdout = "\n".join([
        "[evaluate] done in 3s",
        "ml-100k / pmf / sampled protocol",
        "requirement  afrl auc  afrl ndcg@10",
        "-----------  --------  ------------",
        "none         -         0.3113      ",
        "G+A          0.4872    0.3077      ",
        "results written to out/results.json",
    ])
    assert printed_table(stdout) == {("none", "afrl auc"): "-", ("none", "afrl ndcg@10"): "0.3113",
                                     ("G+A", "afrl auc"): "0.4872", ("G+A", "afrl ndcg@10"): "0.3077"}


@pytest.mark.slow  # four tiny `jaxfair train` processes, about a minute on the 2-core machine
def test_the_main_job_benchmark_times_reference_cold_and_warm_and_compares_the_printed_cells(tmp_path):
    from benchmarks import main_job

    result = main_job.main(["--quick", "--out", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(json.dumps(result))
    assert set(result["seconds"]) == {"reference", "cold", "warm", "one_device"}
    assert result["warm_outputs_equal_cold"] is True
    assert result["printed_cells_compared"] > 0 and result["printed_cells_differing"] == {}  # --quick: same code
    assert 0 < result["programs_built_cold"] == sum(result["programs_by_function"].values())


def test_the_benchmarks_readme_table_is_what_the_summary_prints_from_the_results():
    from benchmarks import summary

    page = summary.README.read_text()
    embedded = page[page.index(summary.BEGIN) + len(summary.BEGIN):page.index(summary.END)].strip()
    assert embedded == summary.table()
    docs = summary.DOCS.read_text()
    steps = docs[docs.index(summary.STEPS_BEGIN) + len(summary.STEPS_BEGIN):docs.index(summary.STEPS_END)].strip()
    assert steps == f"```text\n{summary.steps_table()}\n```"  # docs/benchmarks.md's step table, printed too
    for name in summary.ROWS:  # every row names a results file that exists and a command that writes it
        assert (summary.RESULTS / name).exists()


class FakeTorch:
    """Enough of ``torch`` for :func:`benchmarks.timing.torch_variants`: thread counts, dynamo's limits, and a
    ``compile`` that fails by default and works with ``dynamic=False`` (as dynamo did on DiffRec's step)."""

    def __init__(self):
        from types import SimpleNamespace

        self.threads = []
        self._dynamo = SimpleNamespace(config=SimpleNamespace(recompile_limit=8, accumulated_recompile_limit=256))

    def set_num_threads(self, n):
        self.threads.append(n)

    def compile(self, fn, dynamic=None):
        def compiled(*args):
            if dynamic is not False:
                raise IndexError("list index out of range\nmore lines")
            return fn(*args)

        return compiled


def test_torch_variants_time_eager_and_compile_at_1_and_every_thread_and_report_fallbacks(monkeypatch):
    from types import SimpleNamespace

    from benchmarks import timing

    monkeypatch.setattr(timing.os, "cpu_count", lambda: 4)
    torch, built = FakeTorch(), []

    def build(threads):
        model = SimpleNamespace(step=lambda r: r, calls=0)
        built.append(threads)
        return model, lambda r: model.step(r)

    variants, warmups, failed = timing.torch_variants(torch, build, suffix="_G12")
    assert list(variants) == ["torch_eager_1t_G12", "torch_compile_1t_G12", "torch_eager_4t_G12",
                              "torch_compile_4t_G12"] == list(warmups)
    assert failed["torch_compile_1t_G12"] == ("torch.compile(): IndexError: list index out of range; timed with "
                                              "torch.compile(dynamic=False)")
    assert set(failed) == {"torch_compile_1t_G12", "torch_compile_4t_G12"} and built == [1, 1, 1, 4, 4, 4]
    assert torch._dynamo.config.recompile_limit == timing.COMPILE_RECOMPILE_LIMIT
    variants["torch_eager_4t_G12"][0]()
    assert torch.threads[-1] == 4  # prepare sets the variant's own thread count
    eager_only, _, none_failed = timing.torch_variants(torch, build, modes=timing.torch_modes(no_compile=True))
    assert list(eager_only) == ["torch_eager_1t", "torch_eager_4t"] and none_failed == {}


def test_torch_ratios_and_the_roofline_line():
    from benchmarks import timing

    ratios = timing.torch_ratios({"torch_eager_1t": 30.0, "torch_compile_2t": 15.0}, 10.0, "jax_step")
    assert ratios == {"torch_eager_1t_over_jax_step": 3.0, "torch_compile_2t_over_jax_step": 1.5,
                      "best_torch_over_jax_step": 1.5}
    assert timing.torch_ratios({}, 10.0, "jax_step") == {}
    bound = timing.roofline(step_ms=2.0, flops=2e8, rates={"large": 400.0, "step": 100.0})
    assert bound["achieved_gflops"] == pytest.approx(100.0) and bound["share_of_step_matmul_rate"] == pytest.approx(1)
    assert timing.roofline_line(bound) == ("XLA counts 200.0 MFLOP per step: 100.0 GFLOP/s against large matmul "
                                           "400.0 GFLOP/s (25.0%), step matmul 100.0 GFLOP/s (100.0%)")


def test_seeds_benchmark_reports_the_backbone_stage_ratios(tmp_path):
    from benchmarks import seeds

    out = tmp_path / "seeds.json"
    results = seeds.main(["--quick", "--job-repeats", "0", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results)) and saved["seeds"] == [0, 1] and "job" not in saved
    backbone = saved["backbone"]
    assert set(backbone["median_seconds"]) == {"one_seed", "together", "together_batched", "in_turn"}
    assert backbone["together_over_one_seed"] > 0 and backbone["in_turn_over_together_batched"] > 0
    assert backbone["same_epochs_as_in_turn"] and backbone["max_abs_diff_valid"] == 0.0  # in sequence: bit-identical
    assert backbone["max_abs_diff_valid_batched"] < 1e-5


def test_serving_benchmark_compares_one_call_with_the_loop_and_checks_the_rows(tmp_path):
    from benchmarks import serving

    results = serving.main(["--quick", "--out", str(tmp_path / "serving.json")])
    assert [block["method"] for block in results["runs"].values()] == ["erasure", "afrl"]
    for block in results["runs"].values():
        assert block["groups"] > 1 and block["loop_over_one_call"] > 0 and block["max_abs_diff"] < 1e-5


def test_scale_benchmark_times_an_epoch_per_method_on_one_and_on_two_devices(tmp_path):
    """``benchmarks/scale.py`` on the tiny synthetic preset: one worker process per device count, every method's
    stage built as the pipeline builds it and timed; nothing timed is asserted, only that it is reported."""
    from benchmarks import scale

    out = tmp_path / "scale.json"
    result = scale.main(["--presets", "tiny", "--methods", "pmf", "afrl", "--devices", "1", "2", "--max-steps", "2",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [(run["preset"], run["devices"], run["device_count"]) for run in result["runs"]] == [("tiny", 1, 1),
                                                                                               ("tiny", 2, 2)]
    for run in result["runs"]:
        for name in ("pmf", "afrl"):
            report = run["methods"][name]
            assert report["steps_timed"] == min(2, report["batches_per_epoch"]) and report["steps_per_second"] > 0
            assert report["epoch_seconds_estimated"] > 0 and report["peak_rss_bytes"] > 0
            assert 0 < report["users"] <= 300 and 0 < report["items"] <= 400  # the tiny preset, as prepared


def test_the_docs_scale_tables_are_what_the_benchmark_prints_from_its_results():
    """Every ``python -m benchmarks.scale --show FILE`` block in docs/benchmarks.md is followed by its output."""
    import re

    from benchmarks import scale

    page = (scale.ROOT / "docs" / "benchmarks.md").read_text()
    blocks = re.findall(r"```text\npython -m benchmarks\.scale --show (\S+)\n```\n\n```text\n(.*?)\n```", page, re.S)
    assert len(blocks) >= 2
    for path, text in blocks:
        assert text == scale.table(json.loads((scale.ROOT / path).read_text())), path


def test_cofair_evaluation_benchmark_times_the_vmap_and_the_loop_over_levels(tmp_path):
    out = tmp_path / "cofair_evaluation.json"
    results = cofair_step.main(["--quick", "--evaluation", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["evaluation_vmap_ms"] > 0 and saved["evaluation_loop_ms"] > 0
    assert saved["evaluation_loop_over_vmap"] > 0 and saved["check_max_abs_diff"] < 1e-5
