"""Retry overhead per call: success path and one-failure path, sync and async.

Side by side in one run: a hand-written try/except loop, resilience, tenacity,
stamina and backoff. Delays are zero everywhere so only overhead is measured.
"""

from __future__ import annotations

import asyncio
import warnings

import backoff as backoff_lib
import stamina
import tenacity
from _harness import Case, compare

import resilience as rs

ATTEMPTS = 3


def target() -> int:
    return 1


async def atarget() -> int:
    return 1


def hand_sync() -> int:
    for attempt in range(ATTEMPTS):
        try:
            return target()
        except Exception:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def hand_async() -> int:
    for attempt in range(ATTEMPTS):
        try:
            return await atarget()
        except Exception:
            if attempt == ATTEMPTS - 1:
                raise
            await asyncio.sleep(0)
    raise AssertionError("unreachable")


NO_WAIT = rs.Backoff.constant(0)
ours = rs.Retry(attempts=ATTEMPTS, backoff=NO_WAIT)(target)
ours_async = rs.Retry(attempts=ATTEMPTS, backoff=NO_WAIT)(atarget)
ours_deadline = rs.Retry(attempts=ATTEMPTS, backoff=NO_WAIT, deadline=60.0)(target)
ten = tenacity.retry(stop=tenacity.stop_after_attempt(ATTEMPTS), wait=tenacity.wait_none())(target)
ten_async = tenacity.retry(stop=tenacity.stop_after_attempt(ATTEMPTS), wait=tenacity.wait_none())(
    atarget
)
sta = stamina.retry(on=Exception, attempts=ATTEMPTS, wait_initial=0, wait_max=0, wait_jitter=0)(
    target
)
sta_async = stamina.retry(
    on=Exception, attempts=ATTEMPTS, wait_initial=0, wait_max=0, wait_jitter=0
)(atarget)
bo = backoff_lib.on_exception(backoff_lib.constant, Exception, max_tries=ATTEMPTS, interval=0)(
    target
)


def make_flaky_sync() -> object:
    state = {"n": 0}

    def flaky() -> int:
        state["n"] += 1
        if state["n"] % 2:
            raise ConnectionError("first attempt fails")
        return 1

    return flaky


def make_flaky_async() -> object:
    state = {"n": 0}

    async def flaky() -> int:
        state["n"] += 1
        if state["n"] % 2:
            raise ConnectionError("first attempt fails")
        return 1

    return flaky


def hand_sync_flaky(fn):  # type: ignore[no-untyped-def]
    def call() -> int:
        for attempt in range(ATTEMPTS):
            try:
                return fn()
            except Exception:
                if attempt == ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    return call


def hand_async_flaky(fn):  # type: ignore[no-untyped-def]
    async def call() -> int:
        for attempt in range(ATTEMPTS):
            try:
                return await fn()
            except Exception:
                if attempt == ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0)
        raise AssertionError("unreachable")

    return call


def main() -> None:
    warnings.simplefilter("ignore")
    # stamina logs every retry through structlog by default; measure its retry, not its logging.
    stamina.instrumentation.set_on_retry_hooks([])
    compare(
        "retry, sync, success path",
        [
            Case("hand-written loop", hand_sync),
            Case("resilience", ours),
            Case("resilience (deadline)", ours_deadline),
            Case("backoff", bo),
            Case("stamina", sta),
            Case("tenacity", ten),
        ],
        baseline="hand-written loop",
    )
    compare(
        "retry, async, success path",
        [
            Case("hand-written loop", afn=hand_async),
            Case("resilience", afn=ours_async),
            Case("stamina", afn=sta_async),
            Case("tenacity", afn=ten_async),
        ],
        baseline="hand-written loop",
        number=50_000,
    )

    def flaky_cases() -> list[Case]:
        retry_sync = rs.Retry(attempts=ATTEMPTS, backoff=NO_WAIT)
        tenacity_sync = tenacity.retry(
            stop=tenacity.stop_after_attempt(ATTEMPTS), wait=tenacity.wait_none()
        )
        stamina_sync = stamina.retry(
            on=Exception, attempts=ATTEMPTS, wait_initial=0, wait_max=0, wait_jitter=0
        )
        backoff_sync = backoff_lib.on_exception(
            backoff_lib.constant, Exception, max_tries=ATTEMPTS, interval=0
        )
        return [
            Case("hand-written loop", hand_sync_flaky(make_flaky_sync())),
            Case("resilience", retry_sync(make_flaky_sync())),  # type: ignore[arg-type]
            Case("backoff", backoff_sync(make_flaky_sync())),
            Case("stamina", stamina_sync(make_flaky_sync())),  # type: ignore[arg-type]
            Case("tenacity", tenacity_sync(make_flaky_sync())),  # type: ignore[arg-type]
        ]

    compare(
        "retry, sync, one failure then success",
        flaky_cases(),
        baseline="hand-written loop",
        number=30_000,
    )

    retry_async = rs.Retry(attempts=ATTEMPTS, backoff=NO_WAIT)
    tenacity_async = tenacity.retry(
        stop=tenacity.stop_after_attempt(ATTEMPTS), wait=tenacity.wait_none()
    )
    stamina_async = stamina.retry(
        on=Exception, attempts=ATTEMPTS, wait_initial=0, wait_max=0, wait_jitter=0
    )
    compare(
        "retry, async, one failure then success",
        [
            Case("hand-written loop", afn=hand_async_flaky(make_flaky_async())),
            Case("resilience", afn=retry_async(make_flaky_async())),  # type: ignore[arg-type]
            Case("stamina", afn=stamina_async(make_flaky_async())),  # type: ignore[arg-type]
            Case("tenacity", afn=tenacity_async(make_flaky_async())),  # type: ignore[arg-type]
        ],
        baseline="hand-written loop",
        number=20_000,
    )


if __name__ == "__main__":
    main()
