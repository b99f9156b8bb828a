"""Run every benchmark module (``bench_*.py``) in this folder, or those named.

.venv/bin/python benchmarks/run.py            # all
.venv/bin/python benchmarks/run.py retry      # bench_retry.py only
"""

from __future__ import annotations

import importlib
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(HERE))
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if argv:
        names = [n for n in names if any(n == f"bench_{a}" or n == a for a in argv)]
    print(f"# resilience benchmarks: Python {platform.python_version()} on {platform.machine()}")
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            # The libraries measured side by side live in an extra of their own.
            if error.name is None or error.name.partition(".")[0] == "resilience":
                raise
            raise SystemExit(
                f"{name}: {error.name} is not installed; the benchmarks need the bench extra:"
                " .venv/bin/python -m pip install -e '.[bench]'"
            ) from error
        module.main()


if __name__ == "__main__":
    main(sys.argv[1:])
