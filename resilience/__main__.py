"""Command line: ``python -m resilience --help``."""

from __future__ import annotations

import argparse
import sys
import textwrap

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m resilience``; its help lists every command's options."""
    from ._cli_jobs import COMMANDS_HELP
    from ._cli_jobs import add_arguments as add_jobs_arguments
    from ._demo import add_arguments

    parser = argparse.ArgumentParser(
        prog="python -m resilience",
        description="resilience: retry, circuit breaker, rate limiter and more.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"resilience {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="drive a flaky local HTTP service with and without the library, and compare",
        description=(
            "Start a flaky HTTP service on 127.0.0.1 (503s, 429s with Retry-After, latency "
            "spikes, a short outage) and send it the same workload twice: with plain httpx, "
            "then through the standard HTTP pipeline (ResilientTransport) with a rate "
            "limiter per host. Shows live progress and ends with a comparison table. "
            "Needs the httpx extra: pip install 'resilience[httpx]'. The store is checked "
            "before anything starts. Exit status: 0; 1 if the store failed during the runs "
            "(the summary says how); 2 for bad options or a missing extra; 3 if the store "
            "did not answer the check made before starting."
        ),
    )
    add_arguments(demo)
    jobs = commands.add_parser(
        "jobs",
        help="inspect and operate durable job queues: stats, dead letters, replay, purge",
        description=textwrap.fill(
            "Read and operate the job queues of a store (resilience.jobs.JobQueue): "
            "counts, jobs, dead letters and their errors; replay dead jobs; purge "
            "finished ones. Handlers are not needed. Give QUEUE then a command; "
            "with no QUEUE, every queue holding jobs is listed."
        ),
        epilog=COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_jobs_arguments(jobs)
    parser.epilog = (
        "the demo command:\n"
        + textwrap.indent(demo.format_help(), "  ")
        + "\nthe jobs command:\n"
        + textwrap.indent(jobs.format_help(), "  ")
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(args)
    if args.command == "jobs":
        from ._cli_jobs import run_jobs

        return run_jobs(args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
