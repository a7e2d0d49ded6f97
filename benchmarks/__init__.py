"""Timed comparisons that print speed ratios measured in one run (see DESIGN.md).

``python -m benchmarks`` runs every ``bench_*.py`` module; each one also runs on its own with
``python -m benchmarks.<name>``.
"""
