"""The repository's promises: README commands, CI, packaging, the command line."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
BENCHMARK_ANCHORS = {
    "tenacity",
    "stamina",
    "backoff",
    "pybreaker",
    "circuitbreaker",
    "limits",
    "pyrate-limiter",
    "aiolimiter",
}


def readme_commands() -> list[str]:
    """The commands of the README's set-up block (the first bash block after its heading)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"^## Set-up.*?```bash\n(.*?)```", readme, re.DOTALL | re.MULTILINE)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    demo, tests = readme_commands()
    assert "resilience demo" in demo
    assert "pytest" in tests
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines


def test_package_is_typed() -> None:
    assert (ROOT / "resilience" / "py.typed").exists()


def test_public_api_is_explicit() -> None:
    import resilience

    assert sorted(resilience.__all__) == resilience.__all__
    for name in resilience.__all__:
        assert hasattr(resilience, name), name


def test_help_lists_the_demo() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "resilience", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "demo" in out


def test_demo_runs_on_a_small_workload() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "resilience",
            "demo",
            "--duration",
            "1",
            "--rate",
            "20",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "| with resilience" in out
    assert "success rate:" in out


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0] for requirement in requirements}


def test_installed_version_is_the_package_version() -> None:
    import resilience

    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    assert importlib.metadata.version(PROJECT["name"]) == resilience.__version__


def test_license_file_matches_the_declared_license() -> None:
    assert PROJECT["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def test_classifiers_name_the_supported_pythons() -> None:
    # One classifier per minor version, from the oldest that requires-python admits, no gaps.
    oldest = int(PROJECT["requires-python"].removeprefix(">=3."))
    prefix = "Programming Language :: Python :: 3."
    minors = [
        int(c.removeprefix(prefix))
        for c in PROJECT["classifiers"]
        if c.startswith(prefix) and c[len(prefix) :].isdigit()
    ]
    assert minors == list(range(oldest, oldest + len(minors)))
    assert len(minors) >= 3


def test_benchmark_anchors_stay_out_of_the_dev_extra() -> None:
    extras = PROJECT["optional-dependencies"]
    assert requirement_names(extras["bench"]) >= BENCHMARK_ANCHORS
    assert not BENCHMARK_ANCHORS & requirement_names(extras["dev"])


def test_readme_says_how_to_install_the_distribution() -> None:
    assert f"pip install {PROJECT['name']}" in (ROOT / "README.md").read_text()


def test_the_root_api_is_small_and_keeps_the_contract_names() -> None:
    # The brief's contract (design §4): these stay importable from the root.
    contract = {
        "Backoff", "Bulkhead", "BulkheadFull", "CircuitBreaker", "CircuitOpenError",
        "CircuitState", "Classification", "ConfigurationError", "ErrorClass", "Fallback",
        "Pipeline", "RateLimitExceeded", "RateLimiter", "ResilienceError", "Retry",
        "RetryDecision", "Timeout", "classify", "store_from_url", "with_retry",
    }  # fmt: skip
    import resilience

    assert contract <= set(resilience.__all__)
    assert len(resilience.__all__) <= 26  # statistics, snapshots, clocks, config: in their modules
