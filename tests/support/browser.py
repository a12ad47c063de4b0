"""Debian's chromium driven by Playwright, for the tests that look at a page in a real browser.

Playwright never downloads a browser here: it drives ``/usr/bin/chromium`` (``apt-get install
chromium``). Without Playwright or chromium the test skips, saying so; with ``CI`` set (``.ci/run``
sets it) it fails instead, so CI can never pass without the browser tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

CHROMIUM = "/usr/bin/chromium"


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser test")
    pytest.skip(reason)


@contextmanager
def chromium(args: Sequence[str] = ("--no-sandbox",)) -> Iterator[Any]:
    """A headless chromium (a Playwright Browser), closed afterwards."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright is not installed (pip install playwright; no 'playwright install')")
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=list(args), headless=True)
        try:
            yield browser
        finally:
            browser.close()
