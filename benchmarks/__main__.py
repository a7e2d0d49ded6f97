"""Run every benchmark: ``python -m benchmarks [NAME ...]``.

Imports each ``benchmarks/bench_*.py`` module in name order and calls its ``main([])`` (default
arguments). Names given on the command line restrict the run to modules containing them.
"""
import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv=None):
    wanted = sys.argv[1:] if argv is None else argv
    names = sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).resolve().parent)])
        if m.name.startswith("bench_") and (not wanted or any(w in m.name for w in wanted))
    )
    if not names:
        raise SystemExit(f"no benchmark module matches {wanted}")
    for name in names:
        print(f"=== benchmarks.{name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").main([])


if __name__ == "__main__":
    main()
