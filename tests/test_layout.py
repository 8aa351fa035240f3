"""The layout shows the architecture (issue 22): bench/ holds packages and the CLI only, each package
imports only the packages before it in bench.LAYERS, no module imports itself back through others,
modules stay short, and a run writes the same names as before the refactor."""
import ast
import json
from pathlib import Path

import pytest

import bench

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MAX_LINES = 420  # "modules under ~400 lines"


def imports(path: Path) -> set[str]:
    """Every bench module a file imports, at top level or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bench"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("bench")}
    return out


def modules() -> dict[str, Path]:
    mods = {}
    for f in BENCH.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def test_bench_top_level_holds_only_packages_and_the_cli():
    loose = sorted(p.name for p in BENCH.glob("*.py") if p.name not in ("__init__.py", "cli.py"))
    assert loose == []
    packages = sorted(p.name for p in BENCH.iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(bench.LAYERS)


def test_each_package_imports_only_packages_before_it_in_the_layer_order():
    rank = {name: i for i, name in enumerate(bench.LAYERS)}
    upward = []
    for mod, path in modules().items():
        src = mod.split(".")[1] if mod.count(".") else None
        if src not in rank:
            continue
        for target in imports(path):
            dst = target.split(".")[1] if target.count(".") else None
            if dst in rank and rank[dst] > rank[src]:
                upward.append(f"{mod} -> {target}")
    assert upward == []


def test_no_module_import_cycle():
    mods = modules()
    def resolve(t):
        while t and t not in mods:
            t = t.rpartition(".")[0]
        return t
    graph = {m: {resolve(t) for t in imports(p)} - {m, ""} for m, p in mods.items()}
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}  # a package's own __init__
    state, cycles = {}, []
    def visit(m, stack):
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2
    for m in graph:
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_every_package_docstring_says_what_it_owns():
    for name in bench.LAYERS:
        doc = ast.get_docstring(ast.parse((BENCH / name / "__init__.py").read_text()))
        assert doc and len(doc) > 80, name


def test_no_module_is_longer_than_about_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in [*BENCH.rglob("*.py"), *(ROOT / "recipes").glob("*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.slow
def test_runs_write_the_same_names_as_before_the_layout_refactor():
    from contract_names import all_names

    recorded = json.loads((ROOT / "tests" / "data" / "run_names.json").read_text())
    assert all_names() == recorded
