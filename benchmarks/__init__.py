"""The benchmark harness: experiments as config files, one runner, reports from results only.

Why: every claim `compress` makes (accuracy kept, FLOPs cut, wall-clock gained) must come
from a measurement that anyone can re-run with one command, and every committed number
must say which command made it.

* `benchmarks.config`: TOML/JSON experiment files -> a grid of cells.
* `benchmarks.runner`: runs cells, appends one JSON line per cell (resumable).
* `benchmarks.report`: results files -> report.md + PNG plots.
* ``python -m benchmarks run|report|quick`` (see `benchmarks.__main__`).

Example:
    python -m benchmarks quick
"""
