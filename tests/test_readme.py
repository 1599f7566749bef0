"""The README's promises: its Python snippet runs, its test command is what CI runs, its configs exist, every config
and grid names the command that runs it."""

import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_snippet_runs(tmp_path, capsys, monkeypatch):
    snippet = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    os.symlink(ROOT / "configs", tmp_path / "configs")
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "'G+A+O':" in printed and "(120, 8)" in printed


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    quick_start = README.split("## Quick start")[1].split("\n## ")[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick_start, re.S)
    assert len(commands) == 2
    main_job, test_command = commands
    assert "jaxfair train configs/" in main_job
    config = main_job.split("jaxfair train ")[1].split()[0]
    assert (ROOT / config).is_file()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.replace("python -m", "python3 -m").replace("pip install", "python3 -m pip install -q") in ci


def test_every_config_names_the_command_that_runs_it():
    for config in (ROOT / "configs").glob("*.toml"):
        assert f"jaxfair train configs/{config.name}" in config.read_text(), config.name
    for grid in (ROOT / "configs" / "grids").glob("*.toml"):
        assert f"--grid configs/grids/{grid.name}" in grid.read_text(), grid.name


def test_the_readme_links_a_docs_page_per_method_and_they_exist():
    for page in re.findall(r"\]\((docs/[a-z_]+\.md)\)", README):
        assert (ROOT / page).is_file(), page
