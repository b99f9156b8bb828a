"""Tiny shared harness: time callables side by side and print ratios.

Each benchmark module builds a list of :class:`Case` (a label and a zero-argument
callable, sync or async) and hands it to :func:`compare`, which times them in
one run, interleaved, and prints ns/call and the ratio to the baseline case.
Minimum over several repeats: the least-disturbed estimate of per-call cost.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["Case", "compare", "time_sync", "time_async", "print_table"]


@dataclass
class Case:
    label: str
    fn: Callable[[], object] | None = None
    afn: Callable[[], Awaitable[object]] | None = None


def time_sync(fn: Callable[[], object], number: int) -> float:
    """Seconds per call of ``fn`` over ``number`` calls (loop overhead included)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number
    finally:
        if gc_was_enabled:
            gc.enable()


def time_async(afn: Callable[[], Awaitable[object]], number: int) -> float:
    """Seconds per awaited call of ``afn`` over ``number`` calls, in one event loop."""

    async def run() -> float:
        start = time.perf_counter()
        for _ in range(number):
            await afn()
        return (time.perf_counter() - start) / number

    gc.disable()
    try:
        return asyncio.run(run())
    finally:
        gc.enable()


def _empty() -> None:
    return None


def compare(
    title: str,
    cases: list[Case],
    *,
    baseline: str,
    number: int = 200_000,
    repeat: int = 7,
    subtract_loop: bool = True,
) -> dict[str, float]:
    """Time every case ``repeat`` times (interleaved), print a table, return ns/call."""
    best: dict[str, float] = {case.label: float("inf") for case in cases}
    loop_cost = min(time_sync(_empty, number) for _ in range(3)) if subtract_loop else 0.0
    for _ in range(repeat):
        for case in cases:
            if case.fn is not None:
                seconds = time_sync(case.fn, number) - loop_cost
            else:
                assert case.afn is not None
                seconds = time_async(case.afn, number)
            best[case.label] = min(best[case.label], seconds)
    results = {label: seconds * 1e9 for label, seconds in best.items()}
    print_table(title, results, baseline=baseline)
    return results


def print_table(title: str, results: dict[str, float], *, baseline: str, unit: str = "ns") -> None:
    base = results[baseline]
    width = max(len(label) for label in results)
    print(f"\n## {title}\n")
    print(f"| {'case'.ljust(width)} | {unit}/call | x {baseline} |")
    print(f"|{'-' * (width + 2)}|---------:|{'-' * (len(baseline) + 4)}:|")
    for label, value in results.items():
        # A baseline at (or, by noise, below) zero overhead has no meaningful ratio.
        ratio = f"{value / base:.2f}" if base > 1.0 else "-"
        print(f"| {label.ljust(width)} | {value:8.1f} | {ratio:>{len(baseline) + 3}} |")
