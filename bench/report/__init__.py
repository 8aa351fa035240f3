"""Reading run directories after the fact: comparison reports, the precision gate, baselines.

  runs.py      discover and parse run dirs (DESIGN.md §4), group seeds into variants
  compare.py   `fp8bench compare`: PNG plots + report.md / report.html
  gate.py      `fp8bench gate`: rules, Welch-t verdicts, table / markdown / JUnit output
  baseline.py  `fp8bench baseline record`: per-seed statistics stored as JSON

Nothing here imports torch: reports and gates run anywhere the JSON files can be read.
"""
