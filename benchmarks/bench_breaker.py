"""Circuit breaker overhead per call (closed state, success path) and shared throughput.

Side by side in one run: a bare call, resilience (consecutive and ratio modes,
sync and async), pybreaker and circuitbreaker. Then 2 threads calling a 1 ms
operation through one shared breaker: pybreaker holds its lock during the call,
so its throughput halves; a breaker that holds no lock keeps both threads busy.
"""

from __future__ import annotations

import threading
import time
import warnings

import circuitbreaker
import pybreaker
from _harness import Case, compare, print_table

from resilience.breaker import CircuitBreaker


def target() -> int:
    return 1


async def atarget() -> int:
    return 1


ours = CircuitBreaker("bench", failure_threshold=5)(target)
ours_ratio = CircuitBreaker("bench-ratio", failure_ratio=0.5, window_size=100)(target)
ours_async = CircuitBreaker("bench-async", failure_threshold=5)(atarget)
pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)(target)
cb = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30)(target)
cb_async = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30)(atarget)


def _with_block() -> int:
    with _block_breaker:
        return target()


_block_breaker = CircuitBreaker("bench-with", failure_threshold=5)

OPERATION_SECONDS = 0.001
THREADS = 2
RUN_SECONDS = 0.15


def throughput(call: object) -> float:
    """Operations per second of ``THREADS`` threads calling ``call`` for ``RUN_SECONDS``."""
    stop = threading.Event()
    done = [0] * THREADS

    def worker(index: int) -> None:
        while not stop.is_set():
            call()  # type: ignore[operator]
            done[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(RUN_SECONDS)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - start)


def operation() -> None:
    time.sleep(OPERATION_SECONDS)


def main() -> None:
    warnings.simplefilter("ignore")
    # The harness subtracts the cost of calling an empty function, so the "bare
    # call" row is ~0 and every other row is the breaker's own overhead per call.
    compare(
        "breaker, closed state, sync success path: overhead per call (x pybreaker)",
        [
            Case("bare call", target),
            Case("resilience", ours),
            Case("resilience (ratio window)", ours_ratio),
            Case("resilience (with block)", _with_block),
            Case("circuitbreaker", cb),
            Case("pybreaker", pyb),
        ],
        baseline="pybreaker",
    )
    timings = compare(
        "breaker, closed state, async success path: time per awaited call",
        [
            Case("bare await", afn=atarget),
            Case("resilience", afn=ours_async),
            Case("circuitbreaker", afn=cb_async),
        ],
        baseline="bare await",
        number=50_000,
    )
    bare = timings.pop("bare await")
    print_table(
        "breaker, closed state, async success path: overhead per call (x circuitbreaker)",
        {label: value - bare for label, value in timings.items()},
        baseline="circuitbreaker",
    )
    results = {
        "no breaker": throughput(operation),
        "resilience": throughput(CircuitBreaker("bench-threads", failure_threshold=5)(operation)),
        "circuitbreaker": throughput(
            circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30)(operation)
        ),
        "pybreaker": throughput(pybreaker.CircuitBreaker(fail_max=5)(operation)),
    }
    print_table(
        f"breaker, {THREADS} threads x {OPERATION_SECONDS * 1e3:g} ms operation, "
        "operations per second (higher is better)",
        results,
        baseline="no breaker",
        unit="ops/s",
    )


if __name__ == "__main__":
    main()
