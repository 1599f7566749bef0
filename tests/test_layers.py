"""Imports flow one way, data -> backbones -> methods -> pipeline -> CLI, with no cycle: data and metrics know no
model, backbones know nothing of fairness, methods know neither the pipeline nor the CLI."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jaxfair"

# package (or module) -> layer; a module may import its own package or a strictly lower layer.
LAYERS = {
    "jaxfair._version": 0, "jaxfair.config": 0, "jaxfair.tables": 0,
    "jaxfair.data": 1,
    "jaxfair.metrics": 2, "jaxfair.training": 2, "jaxfair.compile_cache": 2, "jaxfair.cpu_devices": 2,
    "jaxfair.backbones": 3,
    "jaxfair.methods": 4,
    "jaxfair.pipeline": 5,
    "jaxfair.harness": 6, "jaxfair.report": 6, "jaxfair.serving": 6, "jaxfair.front": 6,
    "jaxfair.cli": 7,
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group(name: str) -> str:
    return max((g for g in LAYERS if name == g or name.startswith(g + ".")), key=len)


def imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """Every jaxfair module ``path`` imports, at any depth of the file (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxfair"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("jaxfair"))
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imports(path, set(files)) for name, path in files.items() if name != "jaxfair"}


def test_imports_only_go_down_the_layers():
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            if target == "jaxfair":
                wrong.append(f"{module} imports the package root")
                continue
            here, there = group(module), group(target)
            if here != there and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_module_import_graph_has_no_cycle():
    edges = {m: {t for t in ts if t != "jaxfair"} for m, ts in graph().items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for child in sorted(edges.get(node, ())):
            if state.get(child) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(child):] + [child]))
            if child not in state:
                visit(child)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
