"""Command line: ``python -m resilience --help``."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resilience",
        description="resilience: retry, circuit breaker, rate limiter and more.",
    )
    parser.add_argument("--version", action="version", version=f"resilience {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="run the library against a flaky local HTTP service and compare"
    )
    from ._demo import add_arguments, run_demo

    add_arguments(demo)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return run_demo(args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
