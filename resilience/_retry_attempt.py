"""One attempt of a retry's block form (``for attempt in retry: with attempt: ...``)."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from ._core.retry import NO_RESULT
from .telemetry.otel import BlockSpan

__all__ = ["Attempt"]


class Attempt:
    """One attempt of the block form; use it as a (sync or async) context manager.

    An exception raised in the block is caught and handed to the retry loop,
    which either retries or re-raises it unchanged. ``set_result`` hands a value
    to ``retry_if_result``.
    """

    __slots__ = ("_block", "_entered", "_exception", "_result", "number")

    def __init__(self, number: int) -> None:
        self.number = number
        self._exception: BaseException | None = None
        self._result: Any = NO_RESULT
        # The call's span while an SDK is set (the iterator sets it), and what
        # entering it returned.
        self._block: BlockSpan | None = None
        self._entered: Any = None

    def set_result(self, value: Any) -> None:
        """Record the attempt's result, for ``retry_if_result`` to judge."""
        self._result = value

    def _succeeded(self, check: Callable[[Any], bool] | None) -> bool:
        if self._exception is not None:
            return False
        return check is None or self._result is NO_RESULT or not check(self._result)

    def __enter__(self) -> Attempt:
        block = self._block
        if block is not None:
            self._entered = block.enter_attempt(self.number)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        block = self._block
        if block is not None:
            block.exit_attempt(self._entered, exc_type, exc, tb)
        # Only Exception subclasses are retried: KeyboardInterrupt, SystemExit,
        # GeneratorExit and CancelledError always propagate.
        if isinstance(exc, Exception):
            self._exception = exc
            return True
        return False

    async def __aenter__(self) -> Attempt:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<Attempt {self.number}>"
