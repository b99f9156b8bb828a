"""The repository's promises: README commands, CI, packaging, the command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
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
