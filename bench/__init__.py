"""Benchmarks of the runner against what a researcher would write or use instead (``make bench``, ``make bench-quick``).

Performance is measured here, not asserted in tests. Each benchmark runs the runner and its reference side by side,
alternating A B A B after a warm-up, and reports medians and the per-pair ratio with its min-max spread
(:mod:`bench.stats`). ``python -m bench.run`` writes ``bench/results/<date>-<git sha>.json`` and regenerates the
table in ``bench/README.md`` from it (:mod:`bench.report`).
"""
