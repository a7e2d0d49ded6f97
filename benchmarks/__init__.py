"""Timed comparisons that print ratios measured in one run (so they do not depend on the machine),
and the memory of the training options.

``python -m benchmarks`` runs every ``bench_*.py`` module; each one also runs on its own with
``python -m benchmarks.<name>``.
"""
