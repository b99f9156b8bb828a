"""``python -m resilience demo``, run as users run it: in a subprocess, on loopback."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("httpx")

DEMO = [sys.executable, "-m", "resilience", "demo"]


def _run(*args: str) -> str:
    result = subprocess.run([*DEMO, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_library_succeeds_more_often_than_plain_httpx() -> None:
    out = _run("--duration", "2.5", "--rate", "25", "--quiet")
    assert "| run " in out and "| p95 ms |" in out
    assert "| without resilience |" in out and "| with resilience    |" in out
    assert "| failed by kind" in out
    rates = re.search(r"success rate: without resilience ([\d.]+)%, with resilience ([\d.]+)%", out)
    assert rates is not None, out
    without, with_library = float(rates[1]), float(rates[2])
    assert with_library > without, out
    # --quiet prints no progress lines.
    assert "requests  " not in out


def test_a_sqlite_store_holds_the_breaker_and_the_limiter(tmp_path: Path) -> None:
    database = tmp_path / "demo.db"
    out = _run("--duration", "1", "--rate", "20", "--store", f"sqlite:///{database}")
    assert "store sqlite:///" in out
    assert "| with resilience    |" in out
    # Not a terminal: progress comes as plain lines, without carriage returns.
    assert "\r" not in out
    assert re.search(r"^with resilience .* retries .* breaker .* limiter waits", out, re.M), out
    assert database.exists()


def test_help_lists_the_demo_and_its_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "resilience", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for word in ("demo", "--duration", "--store", "--otel", "--quiet", "--seed"):
        assert word in out
    demo = subprocess.run([*DEMO, "--help"], capture_output=True, text=True, check=True).stdout
    assert "--store URL" in demo


def _demo_without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = (
        f"import sys; sys.modules[{module!r}] = None; "
        "from resilience.__main__ import main; "
        f"sys.exit(main(['demo', *{list(args)!r}]))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_without_httpx_the_demo_names_the_extra() -> None:
    result = _demo_without("httpx")
    assert result.returncode == 2
    assert "resilience[httpx]" in result.stderr


def test_without_the_sdk_otel_console_names_the_extra() -> None:
    result = _demo_without("opentelemetry.sdk", "--otel", "console")
    assert result.returncode == 2
    assert "otel-sdk" in result.stderr


def test_a_bad_store_url_is_reported() -> None:
    result = subprocess.run(
        [*DEMO, "--store", "nosuch://x"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--store nosuch://x" in result.stderr


# -- issue 11, defect 19: a store that is down, or goes down -----------------------------

SECRET = "QZXVs3cr3tVXZQ"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_store_is_reported_up_front_in_one_line() -> None:
    port = _free_port()  # nothing listens there
    store = f"redis://:{SECRET}@127.0.0.1:{port}/0"
    # A long --duration: only a check made before starting can end this quickly.
    result = subprocess.run(
        [*DEMO, "--store", store, "--duration", "60"], capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""  # nothing started: no service, no workload
    (line,) = result.stderr.splitlines()
    assert "Traceback" not in line and SECRET not in line
    assert f"--store redis://:***@127.0.0.1:{port}/0: the store is unavailable" in line
    assert "ConnectionError" in line


def test_a_bad_store_url_never_echoes_its_password() -> None:
    result = subprocess.run(
        [*DEMO, "--store", f"nosuch://:{SECRET}@host/0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--store nosuch://:***@host/0" in result.stderr
    assert SECRET not in result.stderr + result.stdout


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A redis-server of this test's own, on a free loopback port."""
    server = shutil.which("redis-server")
    if server is None:
        message = "needs redis-server on PATH"
        if os.environ.get("RESILIENCE_REQUIRE_BACKENDS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    port = _free_port()
    arguments = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    arguments += ["--appendonly", "no", "--dir", str(tmp_path)]
    process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):  # until it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail(f"redis-server did not start on port {port}")
        yield process, port
    finally:
        process.kill()
        process.wait()


def test_a_store_failing_mid_run_still_ends_with_the_summary(
    redis_server: tuple[subprocess.Popen[bytes], int],
) -> None:
    server, port = redis_server
    demo = subprocess.Popen(
        [*DEMO, "--store", f"redis://127.0.0.1:{port}/0", "--duration", "3", "--rate", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None and demo.stderr is not None
        seen = []
        for line in demo.stdout:
            seen.append(line)
            # The first progress line of the run with resilience: the store goes away.
            if line.startswith("with resilience ") and "requests" in line:
                server.kill()
                server.wait()
                break
        out = "".join(seen) + demo.stdout.read()
        err = demo.stderr.read()
        status = demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert "Traceback" not in err, err
    assert status == 1, out + err
    # The summary is all there, and says what happened.
    assert "| with resilience    |" in out and "success rate:" in out, out
    assert re.search(r"^\| StoreUnavailable +\| +0 \| +[1-9]\d* \|$", out, re.M), out
    failed = re.search(
        rf"the store failed during the run \(redis://127\.0\.0\.1:{port}/0: "
        r"ConnectionError: [^)]*\): (\d+) request\(s\) with resilience failed",
        out,
    )
    assert failed is not None and int(failed[1]) > 0, out
