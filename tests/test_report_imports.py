"""bench/report has no import cycle (issue 11.5: baseline <-> gate), checked on the source."""
from __future__ import annotations

import ast
from pathlib import Path

import bench.report

PKG = Path(bench.report.__file__).parent


def imports_of(path: Path) -> set[str]:
    """bench.report modules imported anywhere in a file (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "bench.report":
                out |= {a.name for a in node.names}
            elif node.module.startswith("bench.report."):
                out.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("bench.report.")}
    return out


def test_report_modules_import_each_other_without_a_cycle():
    graph = {p.stem: imports_of(p) - {p.stem} for p in PKG.glob("*.py") if p.stem != "__init__"}
    assert graph["baseline"] and "gate" not in graph["baseline"]
    state: dict[str, int] = {}

    def visit(m, path):
        assert state.get(m) != 1, f"import cycle: {' -> '.join(path + [m])}"
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in graph.get(m, ()):
            visit(n, path + [m])
        state[m] = 2

    for m in graph:
        visit(m, [])
