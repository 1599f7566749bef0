"""``jaxfair front``: every point of the given sweeps, accuracy against unseen-user AUC, the target region marked,
a PNG written; folders that are not sweeps fail in one line."""

import json

from jaxfair.cli import main


def write_sweep(folder, points):
    folder.mkdir(parents=True)
    summary = {"seeds": [0, 1], "points": {
        label: {"tables": {"test": {"mean": {
            "unseen_auc": {"mean": auc, "std": 0.01, "n": 2, "values": [auc, auc]},
            "ndcg@10/backbone": {"mean": acc, "std": 0.02, "n": 2, "values": [acc, acc]}}}}}
        for label, (auc, acc) in points.items()}}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_front_prints_every_point_sorted_by_auc_marks_the_target_and_writes_a_png(tmp_path, capsys):
    write_sweep(tmp_path / "erasure", {"t=1": (0.52, 0.96), "t=0.5": (0.60, 0.99)})
    write_sweep(tmp_path / "afrl", {"AFRL": (0.59, 0.90)})
    assert main(["front", str(tmp_path / "erasure"), str(tmp_path / "afrl"), "--out", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("erasure", "afrl"))]
    assert [line.split()[1] for line in lines] == ["t=1", "AFRL", "t=0.5"]  # by AUC
    assert lines[0].rstrip().endswith("yes") and lines[1].rstrip().endswith("-") and lines[2].rstrip().endswith("-")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_front_refuses_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    assert main(["front", str(tmp_path), "--out", str(tmp_path / "f.png")]) == 2
    assert "not a finished sweep (no summary.json)" in capsys.readouterr().err


def test_the_docs_front_tables_are_what_the_command_prints():
    """Every ``jaxfair front`` command in the docs is followed by the table it prints (so none is typed)."""
    import pathlib
    import re

    from jaxfair.front import front_points, front_table

    root = pathlib.Path(__file__).resolve().parents[1]
    found = 0
    for page in sorted((root / "docs").glob("*.md")):
        pattern = r"```bash\njaxfair front (.*?) --out \S+\n```\n\n```text\n(.*?)\n```"
        for folders, table in re.findall(pattern, page.read_text(), flags=re.S):
            points = front_points([root / f for f in folders.split()])
            assert table == front_table(points, 0.55, 0.95), page.name
            found += 1
    assert found >= 1
