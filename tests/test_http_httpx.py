"""The httpx transports against a real HTTP server on 127.0.0.1 (tests/http_server.py).

Policies run on a FakeClock: retry waits advance virtual time, so nothing here
sleeps for a backoff; only the slow-response tests wait (a fraction of a second)
for a real socket timeout.
"""

from __future__ import annotations

import email.utils
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

import resilience as rs
from resilience.integrations import RetryableResponse, http_classifier
from resilience.integrations.httpx import AsyncResilientTransport, ResilientTransport
from resilience.testing import FakeClock

from .http_server import RESET, Reply, ScriptedServer, scripted_server


def resilient(*args: Any, **kwargs: Any) -> ResilientTransport:
    """A ResilientTransport over plain HTTP (no TLS context to build: loopback only)."""
    kwargs.setdefault("transport", httpx.HTTPTransport(verify=False))
    return ResilientTransport(*args, **kwargs)


def aresilient(*args: Any, **kwargs: Any) -> AsyncResilientTransport:
    kwargs.setdefault("transport", httpx.AsyncHTTPTransport(verify=False))
    return AsyncResilientTransport(*args, **kwargs)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with scripted_server() as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(clock: FakeClock) -> Iterator[httpx.Client]:
    with httpx.Client(transport=resilient(clock=clock)) as running:
        yield running


@pytest.fixture
async def aclient(clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=aresilient(clock=clock)) as running:
        yield running


def breaker_of(transport: ResilientTransport | AsyncResilientTransport) -> rs.CircuitBreaker:
    pipeline = transport.pipeline
    assert isinstance(pipeline, rs.Pipeline)
    (breaker,) = [p for p in pipeline if isinstance(p, rs.CircuitBreaker)]
    return breaker


def transport_of(client: httpx.Client | httpx.AsyncClient) -> ResilientTransport:
    transport = client._transport
    assert isinstance(transport, ResilientTransport | AsyncResilientTransport)
    return transport  # type: ignore[return-value]


# -- status-based outcomes ----------------------------------------------------------------


def test_503_then_200_is_retried_on_one_connection(
    server: ScriptedServer, client: httpx.Client, clock: FakeClock
) -> None:
    url = server.script("/flaky", Reply(503, b"busy"), Reply(200, b"fine"))
    response = client.get(url)
    assert (response.status_code, response.text) == (200, "fine")
    assert server.hits("/flaky") == 2
    assert len(clock.sleeps) == 1 and 0 <= clock.sleeps[0] <= 2.0  # full jitter from 2 s
    # The 503 was read and its connection went back to the pool: no second connection.
    assert server.connections == 1


def test_giving_up_returns_the_last_response_readable(
    server: ScriptedServer, client: httpx.Client, clock: FakeClock
) -> None:
    url = server.script("/down", Reply(503, b"still down", {"X-Try": "n"}))
    response = client.get(url)
    assert response.status_code == 503
    assert response.text == "still down" and response.headers["X-Try"] == "n"
    assert server.hits("/down") == 4  # the preset's 4 attempts
    assert len(clock.sleeps) == 3
    assert server.connections == 1
    assert breaker_of(transport_of(client)).statistics.failures == 4


def test_429_retry_after_seconds_is_honoured(
    server: ScriptedServer, client: httpx.Client, clock: FakeClock
) -> None:
    url = server.script("/limited", Reply(429, b"slow down", {"Retry-After": "7"}), Reply(200))
    assert client.get(url).status_code == 200
    assert clock.sleeps == [7.0]


def test_429_retry_after_http_date_is_honoured(
    server: ScriptedServer, client: httpx.Client, clock: FakeClock
) -> None:
    when = email.utils.formatdate(time.time() + 10, usegmt=True)
    url = server.script("/dated", Reply(429, headers={"Retry-After": when}), Reply(200))
    assert client.get(url).status_code == 200
    (delay,) = clock.sleeps
    assert 8.0 <= delay <= 10.0  # the date has whole seconds


def test_retry_after_beyond_the_deadline_gives_up_with_the_response(
    server: ScriptedServer, client: httpx.Client, clock: FakeClock
) -> None:
    # An hour is capped at the backoff's 30 s cap, which the 30 s total timeout cannot afford.
    url = server.script("/later", Reply(503, b"come back later", {"Retry-After": "3600"}))
    response = client.get(url)
    assert response.status_code == 503 and response.text == "come back later"
    assert server.hits("/later") == 1
    assert clock.sleeps == []


def test_retry_after_is_bounded_by_the_retry_cap(server: ScriptedServer, clock: FakeClock) -> None:
    transport = resilient(clock=clock, total_timeout={"seconds": 300.0})
    url = server.script("/capped", Reply(429, headers={"Retry-After": "3600"}), Reply(200))
    with httpx.Client(transport=transport) as client:
        assert client.get(url).status_code == 200
    assert clock.sleeps == [30.0]  # the backoff's cap


def test_404_is_returned_not_retried_and_not_a_breaker_failure(
    server: ScriptedServer, client: httpx.Client, clock: FakeClock
) -> None:
    url = server.script("/missing", Reply(404, b"nope"))
    response = client.get(url)
    assert (response.status_code, response.text) == (404, "nope")
    assert server.hits("/missing") == 1
    stats = breaker_of(transport_of(client)).statistics
    assert (stats.failures, stats.successes) == (0, 1)


def test_501_and_408_are_returned_not_retried(server: ScriptedServer, client: httpx.Client) -> None:
    for path, status in (("/unimplemented", 501), ("/request-timeout", 408)):
        assert client.get(server.script(path, Reply(status))).status_code == status
        assert server.hits(path) == 1


# -- what may be sent twice ---------------------------------------------------------------


def test_post_is_not_retried_but_counts_against_the_breaker(
    server: ScriptedServer, client: httpx.Client
) -> None:
    url = server.script("/pay", Reply(503), Reply(200))
    assert client.post(url, content=b"{}").status_code == 503
    assert server.hits("/pay") == 1
    assert breaker_of(transport_of(client)).statistics.failures == 1


def test_post_with_an_idempotency_key_is_retried(
    server: ScriptedServer, client: httpx.Client
) -> None:
    url = server.script("/pay", Reply(503), Reply(201, b"paid"))
    response = client.post(url, content=b'{"amount": 1}', headers={"Idempotency-Key": "k-1"})
    assert (response.status_code, response.text) == (201, "paid")
    assert [seen.body for seen in server.seen] == [b'{"amount": 1}'] * 2


def test_a_generator_body_is_never_retried(server: ScriptedServer, client: httpx.Client) -> None:
    def body() -> Iterator[bytes]:
        yield b"part one, "
        yield b"part two"

    url = server.script("/upload", Reply(503), Reply(200))
    assert client.put(url, content=body()).status_code == 503
    assert server.hits("/upload") == 1
    assert server.seen[0].body == b"part one, part two"


def test_a_reset_connection_is_retried_for_get(
    server: ScriptedServer, client: httpx.Client
) -> None:
    url = server.script("/reset", RESET, Reply(200, b"back"))
    assert client.get(url).text == "back"
    assert server.hits("/reset") == 2


def test_a_reset_connection_is_not_retried_for_post(
    server: ScriptedServer, client: httpx.Client
) -> None:
    url = server.script("/reset-post", RESET, Reply(200))
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(url, content=b"x")
    assert server.hits("/reset-post") == 1


def test_custom_retry_methods_and_statuses(server: ScriptedServer, clock: FakeClock) -> None:
    transport = resilient(clock=clock, retry_methods={"GET", "POST"}, retry_statuses={418})
    with httpx.Client(transport=transport) as client:
        assert client.post(server.script("/tea", Reply(418), Reply(200))).status_code == 200
        assert client.get(server.script("/busy", Reply(503), Reply(200))).status_code == 503
    assert (server.hits("/tea"), server.hits("/busy")) == (2, 1)


# -- timeouts -----------------------------------------------------------------------------


def test_a_slow_response_times_out_by_the_attempt_deadline_and_is_retried(
    server: ScriptedServer, clock: FakeClock
) -> None:
    # The client's own timeout is 10 s; the attempt timeout (0.2 s) flows into the request.
    transport = resilient(clock=clock, attempt_timeout={"seconds": 0.2})
    url = server.script("/slow", Reply(200, b"late", delay=1.0), Reply(200, b"quick"))
    with httpx.Client(transport=transport, timeout=10.0) as client:
        assert client.get(url).text == "quick"
    assert server.hits("/slow") == 2


def test_a_passed_deadline_fails_before_sending(server: ScriptedServer, clock: FakeClock) -> None:
    transport = resilient(rs.Pipeline(rs.Retry(attempts=2, clock=clock)))
    url = server.script("/never", Reply(200))
    with httpx.Client(transport=transport) as client:

        def late() -> httpx.Response:
            clock.advance(1.0)
            return client.get(url)

        with pytest.raises(rs.TimeoutExceeded):
            rs.Timeout(0.5, clock=clock).call(late)
    assert server.hits("/never") == 0


class RecordingTransport(httpx.HTTPTransport):
    """A real transport that notes the timeouts each request was sent with."""

    def __init__(self) -> None:
        super().__init__(verify=False)
        self.timeouts: list[dict[str, float | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.timeouts.append(dict(request.extensions["timeout"]))
        return super().handle_request(request)


def test_the_remaining_deadline_bounds_the_request_timeouts(
    server: ScriptedServer, clock: FakeClock
) -> None:
    inner = RecordingTransport()
    transport = resilient(
        clock=clock,
        transport=inner,
        total_timeout={"seconds": 3.0},
        attempt_timeout=False,
        retry=False,
    )
    url = server.script("/t", Reply(200))
    with httpx.Client(transport=transport, timeout=httpx.Timeout(5.0, connect=1.0)) as client:
        client.get(url)
    assert inner.timeouts == [{"connect": 1.0, "read": 3.0, "write": 3.0, "pool": 3.0}]


# -- pipelines ----------------------------------------------------------------------------


def test_a_pipeline_of_your_own_and_its_open_circuit(
    server: ScriptedServer, clock: FakeClock
) -> None:
    breaker = rs.CircuitBreaker(
        "api", failure_threshold=1, break_duration=10.0, clock=clock, classifier=http_classifier
    )
    seen: list[int] = []
    retry = rs.Retry(
        attempts=2,
        clock=clock,
        classifier=http_classifier,
        on_retry=lambda info: seen.append(
            info.exception.status_code if isinstance(info.exception, RetryableResponse) else 0
        ),
    )
    transport = resilient(rs.Pipeline(breaker, retry))
    url = server.script("/broken", Reply(507))  # not known to the default classifier
    with httpx.Client(transport=transport) as client:
        assert client.get(url).status_code == 507
        assert seen == [507]
        assert breaker.state is rs.CircuitState.OPEN
        with pytest.raises(rs.CircuitOpenError):
            client.get(url)
    assert server.hits("/broken") == 2


def test_a_pipeline_without_the_http_classifier_still_retries_503(
    server: ScriptedServer, clock: FakeClock
) -> None:
    transport = resilient(rs.Pipeline(rs.Retry(attempts=3, clock=clock)))
    url = server.script("/plain", Reply(503), Reply(200))
    with httpx.Client(transport=transport) as client:
        assert client.get(url).status_code == 200


def test_per_host_pipelines_are_separate_and_bounded(clock: FakeClock) -> None:
    transport = resilient(clock=clock, per_host=True, max_hosts=2)
    with (
        scripted_server() as one,
        scripted_server() as two,
        scripted_server() as three,
        httpx.Client(transport=transport) as client,
    ):
        client.get(one.script("/x", Reply(503), Reply(200)))
        client.get(two.script("/x", Reply(200)))
        host_one = f"127.0.0.1:{one.server_address[1]}"
        host_two = f"127.0.0.1:{two.server_address[1]}"
        first = transport.pipeline_for(host_one)
        assert isinstance(first, rs.Pipeline)
        assert first is not transport.pipeline_for(host_two)
        assert first.name == f"http:{host_one}"
        (breaker,) = [p for p in first if isinstance(p, rs.CircuitBreaker)]
        assert breaker.statistics.failures == 1
        client.get(three.script("/x", Reply(200)))  # evicts the least recently used
        assert transport.pipeline_for(host_one) is not first
    assert transport.pipeline is None


def test_one_limiter_keyed_by_host(clock: FakeClock) -> None:
    limiter = rs.RateLimiter("api", rate=1, per=1.0, burst=1, clock=clock)
    # The key function gets the protected call's arguments: the request first.
    by_host = limiter.limit(lambda request, *_: f"{request.url.host}:{request.url.port}")
    transport = resilient(rs.Pipeline(by_host))
    with (
        scripted_server() as one,
        scripted_server() as two,
        httpx.Client(transport=transport) as client,
    ):
        client.get(one.script("/a", Reply(200)))
        client.get(two.script("/a", Reply(200)))
        assert clock.sleeps == []  # a bucket per host: each had its token
        client.get(one.url("/a"))
        assert clock.sleeps == [1.0]  # the first host's bucket waited for its next token


def test_pipeline_for_builds_one_pipeline_per_host(
    server: ScriptedServer, clock: FakeClock
) -> None:
    built: list[str] = []

    def pipeline_for(host: str) -> rs.Pipeline:
        built.append(host)
        return rs.Pipeline(rs.Retry(attempts=2, clock=clock), name=host)

    with httpx.Client(transport=resilient(pipeline_for=pipeline_for)) as client:
        for _ in range(3):
            client.get(server.script("/y", Reply(200)))
    assert built == [f"127.0.0.1:{server.server_address[1]}"]


def test_import_resilience_imports_no_http_library() -> None:
    code = (
        "import sys, resilience, resilience.integrations; "
        "assert 'httpx' not in sys.modules and 'requests' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_arguments_are_refused(clock: FakeClock) -> None:
    with pytest.raises(TypeError, match="not both"):
        ResilientTransport(rs.Pipeline(), per_host=True)
    with pytest.raises(TypeError, match="cannot be combined"):
        ResilientTransport(rs.Pipeline(), retry={"attempts": 2})
    with pytest.raises(ValueError, match="max_hosts"):
        ResilientTransport(per_host=True, max_hosts=0)
    with pytest.raises(rs.ConfigurationError):
        ResilientTransport(retry={"attempts": 0})


# -- asyncio --------------------------------------------------------------------------------


async def test_async_503_then_200_on_one_connection(
    server: ScriptedServer, aclient: httpx.AsyncClient, clock: FakeClock
) -> None:
    url = server.script("/flaky", Reply(503, b"busy"), Reply(200, b"fine"))
    response = await aclient.get(url)
    assert (response.status_code, response.text) == (200, "fine")
    assert server.hits("/flaky") == 2 and len(clock.sleeps) == 1
    assert server.connections == 1


async def test_async_giving_up_returns_the_last_response(
    server: ScriptedServer, aclient: httpx.AsyncClient
) -> None:
    url = server.script("/down", Reply(502, b"bad gateway"))
    response = await aclient.get(url)
    assert (response.status_code, response.text) == (502, "bad gateway")
    assert server.hits("/down") == 4 and server.connections == 1


async def test_async_429_retry_after(
    server: ScriptedServer, aclient: httpx.AsyncClient, clock: FakeClock
) -> None:
    url = server.script("/limited", Reply(429, headers={"Retry-After": "4"}), Reply(200))
    assert (await aclient.get(url)).status_code == 200
    assert clock.sleeps == [4.0]


async def test_async_404_is_not_a_breaker_failure(
    server: ScriptedServer, aclient: httpx.AsyncClient
) -> None:
    assert (await aclient.get(server.script("/missing", Reply(404)))).status_code == 404
    assert server.hits("/missing") == 1
    assert breaker_of(transport_of(aclient)).statistics.failures == 0


async def test_async_post_only_with_an_idempotency_key(
    server: ScriptedServer, aclient: httpx.AsyncClient
) -> None:
    plain = server.script("/plain", Reply(503), Reply(200))
    keyed = server.script("/keyed", Reply(503), Reply(200))
    assert (await aclient.post(plain, content=b"1")).status_code == 503
    assert (await aclient.post(keyed, content=b"1", headers={"idempotency-key": "a"})).is_success
    assert (server.hits("/plain"), server.hits("/keyed")) == (1, 2)


async def test_async_generator_body_is_never_retried(
    server: ScriptedServer, aclient: httpx.AsyncClient
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"streamed"

    url = server.script("/upload", Reply(500), Reply(200))
    assert (await aclient.put(url, content=body())).status_code == 500
    assert server.hits("/upload") == 1


async def test_async_reset_connection(server: ScriptedServer, aclient: httpx.AsyncClient) -> None:
    get_url = server.script("/reset", RESET, Reply(200))
    post_url = server.script("/reset-post", RESET, Reply(200))
    assert (await aclient.get(get_url)).status_code == 200
    with pytest.raises(httpx.RemoteProtocolError):
        await aclient.post(post_url, content=b"x")
    assert (server.hits("/reset"), server.hits("/reset-post")) == (2, 1)


async def test_async_slow_response_is_cut_by_the_attempt_timeout(
    server: ScriptedServer, clock: FakeClock
) -> None:
    transport = aresilient(clock=clock, attempt_timeout={"seconds": 0.2})
    url = server.script("/slow", Reply(200, b"late", delay=1.0), Reply(200, b"quick"))
    async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
        assert (await client.get(url)).text == "quick"
    assert server.hits("/slow") == 2
