"""Reading run directories after the fact: comparison reports, the precision gate, baselines.

  runs.py         discover and parse run dirs (DESIGN.md §4), group seeds into variants
  compare.py      `fp8bench compare`: PNG plots + report.md / report.html
  verdict.py      "What precision cost": the per-variant verdict atop report.md and the console
  rules.py        the gate's rules files, parsed and validated (imported by baseline and gate)
  stats.py        non-inferiority and Welch decisions, min detectable drop, seeds needed
  identity.py     what defines a run: the config keys the gate requires to match
  gate.py         `fp8bench gate`: verdicts per rule x variant
  gate_output.py  the gate's table / markdown / JUnit output and exit code (0, 1, 3)
  baseline.py     `fp8bench baseline record`: per-seed statistics stored as JSON
Imports run one way (runs <- rules <- baseline <- gate <- gate_output, verdict <- compare): no cycle.

Nothing here imports torch: reports and gates run anywhere the JSON files can be read.
"""
