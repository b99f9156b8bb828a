"""The requests adapter against a real HTTP server on 127.0.0.1 (tests/http_server.py).

Policies run on a FakeClock: retry waits advance virtual time, so nothing here
sleeps for a backoff; only the slow-response test waits (a fraction of a second)
for a real socket timeout.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import pytest
import requests

import resilience as rs
from resilience.integrations.requests import ResilientAdapter
from resilience.testing import FakeClock

from .http_server import RESET, Reply, ScriptedServer, scripted_server


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with scripted_server() as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def mounted(adapter: ResilientAdapter) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: no proxy from the environment
    session.mount("http://", adapter)
    return session


@pytest.fixture
def adapter(clock: FakeClock) -> ResilientAdapter:
    return ResilientAdapter(clock=clock)


@pytest.fixture
def session(adapter: ResilientAdapter) -> Iterator[requests.Session]:
    with mounted(adapter) as running:
        yield running


def breaker_of(adapter: ResilientAdapter) -> rs.CircuitBreaker:
    pipeline = adapter.pipeline
    assert isinstance(pipeline, rs.Pipeline)
    (breaker,) = [p for p in pipeline if isinstance(p, rs.CircuitBreaker)]
    return breaker


def test_503_then_200_is_retried_on_one_connection(
    server: ScriptedServer, session: requests.Session, clock: FakeClock
) -> None:
    url = server.script("/flaky", Reply(503, b"busy"), Reply(200, b"fine"))
    response = session.get(url)
    assert (response.status_code, response.text) == (200, "fine")
    assert server.hits("/flaky") == 2
    assert len(clock.sleeps) == 1 and 0 <= clock.sleeps[0] <= 2.0
    assert server.connections == 1  # the 503 went back to the pool, read


def test_giving_up_returns_the_last_response(
    server: ScriptedServer, session: requests.Session, adapter: ResilientAdapter
) -> None:
    url = server.script("/down", Reply(503, b"still down"))
    response = session.get(url)
    assert (response.status_code, response.text) == (503, "still down")
    assert server.hits("/down") == 4 and server.connections == 1
    assert breaker_of(adapter).statistics.failures == 4


def test_a_streamed_response_that_succeeds_is_left_unread(
    server: ScriptedServer, session: requests.Session
) -> None:
    url = server.script("/stream", Reply(503), Reply(200, b"x" * 1000))
    with session.get(url, stream=True) as response:
        assert response.status_code == 200
        assert b"".join(response.iter_content(100)) == b"x" * 1000


def test_429_retry_after_seconds_and_date(
    server: ScriptedServer, session: requests.Session, clock: FakeClock
) -> None:
    seconds = server.script("/s", Reply(429, headers={"Retry-After": "7"}), Reply(200))
    assert session.get(seconds).status_code == 200
    when = email.utils.formatdate(time.time() + 10, usegmt=True)
    dated = server.script("/d", Reply(429, headers={"Retry-After": when}), Reply(200))
    assert session.get(dated).status_code == 200
    first, second = clock.sleeps
    assert first == 7.0 and 8.0 <= second <= 10.0


def test_retry_after_beyond_the_deadline_gives_up_with_the_response(
    server: ScriptedServer, session: requests.Session, clock: FakeClock
) -> None:
    url = server.script("/later", Reply(429, b"later", {"Retry-After": "3600"}))
    response = session.get(url)
    assert (response.status_code, response.text) == (429, "later")
    assert server.hits("/later") == 1 and clock.sleeps == []


def test_404_is_returned_not_retried_and_not_a_breaker_failure(
    server: ScriptedServer, session: requests.Session, adapter: ResilientAdapter
) -> None:
    assert session.get(server.script("/missing", Reply(404, b"nope"))).text == "nope"
    assert session.get(server.script("/nyi", Reply(501))).status_code == 501
    assert (server.hits("/missing"), server.hits("/nyi")) == (1, 1)
    stats = breaker_of(adapter).statistics
    assert (stats.failures, stats.successes) == (0, 2)


def test_post_only_with_an_idempotency_key(
    server: ScriptedServer, session: requests.Session, adapter: ResilientAdapter
) -> None:
    plain = server.script("/plain", Reply(503), Reply(200))
    keyed = server.script("/keyed", Reply(503), Reply(201))
    assert session.post(plain, data=b"1").status_code == 503
    assert session.post(keyed, json={"a": 1}, headers={"Idempotency-Key": "k"}).status_code == 201
    assert (server.hits("/plain"), server.hits("/keyed")) == (1, 2)
    assert [seen.body for seen in server.seen if seen.path == "/keyed"] == [b'{"a": 1}'] * 2
    assert breaker_of(adapter).statistics.failures == 2  # the plain 503 counts too


def test_a_generator_body_is_never_retried(
    server: ScriptedServer, session: requests.Session
) -> None:
    def body() -> Iterator[bytes]:
        yield b"part one, "
        yield b"part two"

    url = server.script("/upload", Reply(503), Reply(200))
    assert session.put(url, data=body()).status_code == 503
    assert server.hits("/upload") == 1
    assert server.seen[0].body == b"part one, part two"


def test_a_reset_connection_is_retried_for_get_not_for_post(
    server: ScriptedServer, session: requests.Session
) -> None:
    get_url = server.script("/reset", RESET, Reply(200, b"back"))
    post_url = server.script("/reset-post", RESET, Reply(200))
    assert session.get(get_url).text == "back"
    with pytest.raises(requests.ConnectionError):
        session.post(post_url, data=b"x")
    assert (server.hits("/reset"), server.hits("/reset-post")) == (2, 1)


def test_a_slow_response_is_cut_by_the_attempt_timeout_and_retried(
    server: ScriptedServer, clock: FakeClock
) -> None:
    adapter = ResilientAdapter(clock=clock, attempt_timeout={"seconds": 0.2})
    url = server.script("/slow", Reply(200, b"late", delay=1.0), Reply(200, b"quick"))
    with mounted(adapter) as session:
        assert session.get(url, timeout=10.0).text == "quick"
    assert server.hits("/slow") == 2


def test_a_passed_deadline_fails_before_sending(server: ScriptedServer, clock: FakeClock) -> None:
    adapter = ResilientAdapter(rs.Pipeline(rs.Retry(attempts=2, clock=clock)))
    url = server.script("/never", Reply(200))
    with mounted(adapter) as session:

        def late() -> requests.Response:
            clock.advance(1.0)
            return session.get(url)

        with pytest.raises(rs.TimeoutExceeded):
            rs.Timeout(0.5, clock=clock).call(late)
    assert server.hits("/never") == 0


def test_per_host_pipelines(clock: FakeClock) -> None:
    adapter = ResilientAdapter(clock=clock, per_host=True)
    with (
        scripted_server() as one,
        scripted_server() as two,
        mounted(adapter) as session,
    ):
        session.get(one.script("/x", Reply(503), Reply(200)))
        session.get(two.script("/x", Reply(200)))
        first = adapter.pipeline_for(f"127.0.0.1:{one.server_address[1]}")
        second = adapter.pipeline_for(f"127.0.0.1:{two.server_address[1]}")
        assert first is not second
        assert isinstance(first, rs.Pipeline)
        (breaker,) = [p for p in first if isinstance(p, rs.CircuitBreaker)]
        assert breaker.statistics.failures == 1
    assert adapter.pipeline is None


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="not both"):
        ResilientAdapter(rs.Pipeline(), per_host=True)
    with pytest.raises(rs.ConfigurationError):
        ResilientAdapter(bulkhead={"max_concurrent": 0})
