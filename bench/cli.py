"""`fp8bench`: the console script for reading runs after the fact (DESIGN.md §3).

  fp8bench compare RUN_DIR... [-o OUT] [--baseline-variant NAME]
  fp8bench gate --baseline B [--rules R] [--test noninferiority|welch] [--allow-config-mismatch]
                [--junit FILE] [--markdown FILE] RUN_DIR...
  fp8bench baseline record RUN_DIR... -o FILE [--rules R]
  fp8bench example-jsonl FILE [--rows N] [--seed S]   # a small task=jsonl file to try it on

Exit codes: 0 ok / pass, 1 regression, 2 bad input (one line on stderr, no traceback),
3 inconclusive (gate: no regression shown, but too few seeds to show the cost is within tolerance).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.core.errors import BadInput, exit_on_bad_input


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors as the one-line `fp8bench: error:` every bad input gets."""

    def error(self, message):
        raise BadInput(f"{message} (see `{self.prog} -h`)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fp8bench", description="Compare, gate and baseline fp8bench run directories. "
                "RUN_DIR: a run dir (config.yaml + metrics.jsonl), a sweep dir holding run dirs at any "
                "depth, or a glob. Exit codes: 0 ok / pass, 1 regression, 2 bad input, 3 inconclusive (gate: "
                "too few seeds to tell; the report says how many would).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{compare,gate,baseline,example-jsonl}")

    c = sub.add_parser("compare", help="plots + markdown/HTML report of runs grouped into variants",
                       description="Group runs into variants (seeds pooled) and write OUT/report.md, "
                       "OUT/report.html (images embedded) and PNG plots.")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR")
    c.add_argument("-o", "--out", help="output folder (default: the sweep dir when one sweep dir is "
                   "given, else ./report)")
    c.add_argument("--baseline-variant", metavar="NAME", help="variant the deltas are taken against "
                   "(default: the all-bf16, no-IS variant if present, else the first)")

    g = sub.add_parser("gate", help="check runs against a baseline under rules (exit 1 regression, "
                       "3 inconclusive)",
                       description="Per rule and variant, non-inferiority by default: PASS (exit 0) only when the "
                       "one-sided (1-alpha) confidence bound of candidate - baseline (Welch t) lies within the "
                       "tolerance, REGRESSION (exit 1) when the other bound lies beyond it, INCONCLUSIVE (exit 3) "
                       "otherwise, with the seeds per side that would decide and the minimum detectable drop. "
                       "Bad input, including candidates not run like their baseline, exits 2.")
    g.add_argument("runs", nargs="+", metavar="RUN_DIR")
    g.add_argument("--baseline", required=True, action="append", metavar="B",
                   help="baseline JSON file (fp8bench baseline record) or baseline run dirs; repeatable")
    g.add_argument("--rules", metavar="R", help="rules YAML (default: conf/gate/<recipe>.yaml)")
    g.add_argument("--junit", metavar="FILE", help="write JUnit XML, one testcase per rule x variant")
    g.add_argument("--markdown", metavar="FILE", help="write the markdown summary (it is also appended "
                   "to $GITHUB_STEP_SUMMARY when set)")
    g.add_argument("--alpha", type=float, default=0.05, help="significance level in (0, 0.5) (default 0.05): "
                   "one-sided bounds at 1-alpha, intervals at 1-2*alpha")
    g.add_argument("--test", default="noninferiority", choices=("noninferiority", "welch"),
                   help="noninferiority (default): pass needs evidence; welch: the older rule, regression "
                   "only when a one-sided Welch test proves one (too few seeds then read as a pass)")
    g.add_argument("--allow-config-mismatch", action="store_true", help="gate candidates whose defining "
                   "config (recipe, model, task, steps, precisions, knobs) differs from the baseline's; "
                   "the report lists the differences")
    g.add_argument("--unpaired", action="store_true", help="never pair same-seed runs: Welch on the two "
                   "sides even when they hold the same seeds (default: paired t on per-seed differences)")
    g.add_argument("--baseline-variant", metavar="NAME", help="compare every variant with this baseline "
                   "variant (default: same variant, else the all-bf16 one)")

    b = sub.add_parser("baseline", help="record a baseline JSON from run dirs",
                       description="Baseline files keep per-seed statistics of every metric.")
    bsub = b.add_subparsers(dest="action", required=True, metavar="{record}")
    r = bsub.add_parser("record", help="record per-seed statistics of run dirs as JSON")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR")
    r.add_argument("-o", "--out", required=True, metavar="FILE", help="baseline JSON to write (atomically)")
    r.add_argument("--rules", metavar="R", help="rules YAML whose mean_last_k windows to record too")
    e = sub.add_parser("example-jsonl", help="write a small {prompt, answer} JSONL file for task=jsonl")
    e.add_argument("out", metavar="FILE")
    e.add_argument("--rows", type=int, default=400)
    e.add_argument("--seed", type=int, default=0)
    return p


def _default_out(paths: list[str]) -> Path:
    from bench.report.runs import is_run_dir

    if len(paths) == 1 and Path(paths[0]).is_dir() and not is_run_dir(Path(paths[0])):
        return Path(paths[0])
    return Path("report")


@exit_on_bad_input
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compare":
        from bench.report.compare import build

        path, cost = build(args.runs, args.out or _default_out(args.runs), args.baseline_variant)
        print(f"wrote {path} and {path.with_suffix('.html')}")
        if cost:
            print("\n".join(cost))
        return 0
    if args.command == "gate":
        from bench.report import gate as gt
        from bench.report import gate_output as go

        if not 0 < args.alpha < 0.5:
            raise BadInput(f"--alpha {args.alpha} must lie in (0, 0.5), e.g. 0.05")
        verdicts = gt.gate(args.baseline, args.rules, args.runs, alpha=args.alpha,
                           baseline_variant=args.baseline_variant, test=args.test,
                           allow_config_mismatch=args.allow_config_mismatch, pair=not args.unpaired)
        go.write_outputs(verdicts, args.alpha, args.junit, args.markdown)
        return go.exit_code(verdicts)
    if args.command == "example-jsonl":
        from bench.tasks.jsonl import write_example

        if args.rows < 20:
            raise BadInput(f"--rows {args.rows}: a held-out split needs more; valid: >= 20")
        write_example(args.out, args.rows, args.seed)
        print(f"wrote {args.out}: {args.rows} rows of two-number sums (try task.verifier=numeric)")
        return 0
    from bench.report import baseline as bl

    data = bl.record(args.runs, args.rules)
    bl.write(data, args.out)
    n = sum(len(v["runs"]) for v in data["variants"].values())
    print(f"wrote baseline {args.out}: {n} runs in {len(data['variants'])} variants ({', '.join(data['variants'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
