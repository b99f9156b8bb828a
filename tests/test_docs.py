"""Every ```python block in docs/*.md and README.md runs, in order, per file.

Blocks of one file share a namespace (a page reads as one session). A block
whose fence says ```python norun is shown but not run (for code that needs a
server or the network). Examples use FakeClock: nothing here sleeps for real.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(page: Path) -> list[str]:
    return [body for info, body in FENCE.findall(page.read_text()) if "norun" not in info.split()]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_examples_run(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for number, code in enumerate(blocks(page), start=1):
        try:
            exec(compile(code, f"{page.name}[block {number}]", "exec"), namespace)
        except Exception as error:  # pragma: no cover - the failure message is the point
            pytest.fail(f"{page.name} block {number} failed: {error!r}\n{code}")
        # A block may define `async def main()`: it is run, then forgotten.
        main = namespace.pop("main", None)
        if main is not None and asyncio.iscoroutinefunction(main):
            asyncio.run(main())
