"""`fp8bench gate` outputs: console table, markdown (also to $GITHUB_STEP_SUMMARY), JUnit XML,
and the exit code. The verdicts come from gate.py; nothing here judges anything."""
from __future__ import annotations

import math
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from bench.core import atomic
from bench.report.gate import ALPHA, Verdict, _f

EXIT = {"pass": 0, "regression": 1, "inconclusive": 3}  # 2 is bad input (bench.core.errors)
WORD = {"pass": "pass", "regression": "REGRESSION", "inconclusive": "INCONCLUSIVE"}


COLUMNS = ("verdict", "variant", "rule", "metric", "baseline", "candidate", "Δ ± CI", "limit",
           "min detectable", "test", "p", "note")


def _delta(v: Verdict) -> str:
    if not v.baseline_variant:
        return "—"
    h = f" ± {v.half_width:.2g}" if math.isfinite(v.half_width) and v.half_width > 0 else ""
    return f"{v.delta:+.4g}{h}"


def rows(verdicts: list[Verdict]) -> list[list[str]]:
    return [[WORD[v.outcome], v.variant, v.rule.label, v.metric,
             f"{_f(v.base_mean)} (n={v.n_base}, {v.baseline_variant})" if v.baseline_variant else "—",
             f"{_f(v.cand_mean)} (n={v.n_cand})", _delta(v), _f(v.limit),
             _f(v.min_detectable) if v.baseline_variant else "—", v.method, _f(v.p_value), v.detail]
            for v in verdicts]


def method_note(alpha: float) -> str:
    return (f"Test: non-inferiority (default): pass only when the one-sided {100 * (1 - alpha):g}% confidence "
            f"bound of the candidate − baseline difference (Welch t) clears the tolerance, regression when the "
            f"other bound lies beyond it, inconclusive otherwise (exit 3; the note says how many seeds per side "
            f"would decide). Δ ± CI: the {100 * (1 - 2 * alpha):g}% interval. Min detectable: the drop flagged as "
            f"a regression with 80% power at these seeds. `welch`: regression only when a one-sided Welch test "
            f"rejects at α = {alpha:g}. abs_min/abs_max bounds hold for every seed.")


def headline(verdicts: list[Verdict]) -> str:
    n = sum(v.regression for v in verdicts)
    u = sum(v.inconclusive for v in verdicts)
    word = "FAIL" if n else "INCONCLUSIVE" if u else "PASS"
    return (f"precision gate: {word} ({n} regression{'s' * (n != 1)}, {u} inconclusive in "
            f"{len(verdicts)} checks)")


def print_table(verdicts: list[Verdict], alpha: float = ALPHA) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=headline(verdicts), caption=method_note(alpha), caption_justify="left")
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for row in rows(verdicts):
        table.add_row(*row, style={"REGRESSION": "bold red", "INCONCLUSIVE": "yellow"}.get(row[0]))
    # rich sizes to the terminal or $COLUMNS; a CI log has neither and would get 80 characters
    console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)
    console.print(table)
    for note in getattr(verdicts, "notes", []):
        console.print(note, style="yellow", markup=False)


def markdown(verdicts: list[Verdict], alpha: float = ALPHA) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731  (pipes in metric globs break md tables)
    notes = [f"**{n}**" for n in getattr(verdicts, "notes", [])]
    lines = [f"## fp8bench {headline(verdicts)}", "", *notes, *([""] if notes else []), method_note(alpha), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows(verdicts)]
    return "\n".join(lines) + "\n"


def junit(verdicts: list[Verdict], alpha: float = ALPHA) -> ET.ElementTree:
    """One <testcase> per rule x variant (a glob rule's metrics share it); <failure> on regression."""
    cases: dict[tuple, list[Verdict]] = {}
    for v in verdicts:
        cases.setdefault((v.rule.index, v.variant), []).append(v)
    fails = sum(any(v.regression for v in vs) for vs in cases.values())
    # an inconclusive case (and no regression in it) is a JUnit <skipped>: not passed, not failed
    skips = sum(not any(v.regression for v in vs) and any(v.inconclusive for v in vs) for vs in cases.values())
    suite = ET.Element("testsuite", name="fp8bench.gate", tests=str(len(cases)), failures=str(fails),
                       errors="0", skipped=str(skips))
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="test", value=method_note(alpha))
    for (_, variant), vs in cases.items():
        case = ET.SubElement(suite, "testcase", classname=f"gate.{variant}", name=vs[0].rule.label)
        text = "\n".join(" | ".join(r) for r in rows(vs))
        bad = [v for v in vs if v.regression]
        if bad:
            msg = "; ".join(f"runs not in {list(v.rule.allowed)}: {v.detail}" if v.rule.check else
                            f"{v.metric}: {_f(v.cand_mean)} vs limit {_f(v.limit)} ({v.method}"
                            f"{', p=' + _f(v.p_value) if v.p_value is not None else ''}) {v.detail}".strip()
                            for v in bad)
            ET.SubElement(case, "failure", message=msg, type="regression").text = text
        elif any(v.inconclusive for v in vs):
            ET.SubElement(case, "skipped", message="inconclusive: " + "; ".join(
                f"{v.metric}: Δ {_delta(v)} ({v.detail})" for v in vs if v.inconclusive))
        ET.SubElement(case, "system-out").text = text
    tree = ET.ElementTree(ET.Element("testsuites"))
    tree.getroot().append(suite)
    ET.indent(tree)
    return tree


def write_outputs(verdicts, alpha=ALPHA, junit_path=None, markdown_path=None) -> None:
    """Table on stdout; markdown to a file and appended to $GITHUB_STEP_SUMMARY; JUnit XML."""
    print_table(verdicts, alpha)
    md = markdown(verdicts, alpha)
    for path in filter(None, (markdown_path, junit_path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    if markdown_path:
        atomic.write_text(markdown_path, md)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as f:
            f.write(md + "\n")
    if junit_path:
        tree = junit(verdicts, alpha)
        atomic.write_with(junit_path, lambda f: tree.write(f, encoding="utf-8", xml_declaration=True))


def exit_code(verdicts: list[Verdict]) -> int:
    """1 if any regression, else 3 if any check is inconclusive, else 0."""
    outcomes = {v.outcome for v in verdicts}
    return EXIT["regression"] if "regression" in outcomes else EXIT["inconclusive"] if "inconclusive" in outcomes else 0

