"""``python -m resilience demo``, run as users run it: in a subprocess, on loopback."""

from __future__ import annotations

import re
import subprocess
import sys
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
