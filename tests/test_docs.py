"""Every table in the README and the docs is the output of the ``jaxfair report`` command printed above it (so none
is typed by hand), and every results folder under docs/results is cited by a page and holds its provenance."""

import json
import pathlib
import re

import pytest

from jaxfair.report import embedded_reports, run_embedded, update_markdown

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_embedded_table_is_what_its_command_prints(page):
    for command, table in embedded_reports(page.read_text()):
        assert run_embedded(command, ROOT) == table, f"{page.name}: {command}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_markdown_table_stands_outside_a_report_block(page):
    text = re.sub(r"<!-- report -->.*?<!-- /report -->", "", page.read_text(), flags=re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    tables = [line for line in text.splitlines() if re.match(r"^\|[-| :]+\|$", line)]
    allowed = page.name == "README.md"  # the README's methods table is a list of links, not numbers
    assert not tables or allowed, f"{page.name} has a table no command regenerates"


def test_update_docs_rewrites_a_stale_table_from_its_command(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"seed": 0, "tables": {"test": {"all": {"ndcg": 0.25}}}}))
    page = tmp_path / "page.md"
    page.write_text("Intro.\n\n```bash\njaxfair report run --columns ndcg\n```\n<!-- report -->\nstale\n"
                    "<!-- /report -->\n\nEnd.\n")
    assert update_markdown(page, tmp_path)
    assert "| run | 0.250 |" in page.read_text() and "stale" not in page.read_text()
    assert not update_markdown(page, tmp_path)


def test_every_results_folder_is_cited_and_holds_its_provenance():
    text = "\n".join(page.read_text() for page in PAGES)
    results = ROOT / "docs" / "results"
    folders = sorted(p.parent for p in results.rglob("summary.json")) if results.exists() else []
    for folder in folders:
        rel = folder.relative_to(ROOT).as_posix()
        assert rel in text, f"{rel} is cited by no page"
        provenance = json.loads((folder / "provenance.json").read_text())
        assert provenance["command"].startswith("jaxfair sweep ") and provenance["commit"] != "unknown"
        assert (folder / "config.json").is_file()
