"""Fixtures of the page tests: headless Chromium (Debian's package, driven by Playwright) and
where their screenshots go."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium; the test is skipped, saying why, on a machine without one.

    Per module: Playwright's sync API keeps an event loop running in this thread while it is
    open, and later tests that call asyncio.run() would fail."""
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install -y chromium; CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots are kept (``test-artifacts/``, or ``RUNTIMED_TEST_ARTIFACTS``)."""
    folder = Path(os.environ.get("RUNTIMED_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
