"""A real browser for the tests of pages: headless Chromium driven by Playwright.

Debian's ``chromium`` package provides the browser (``make test`` installs it when it is
missing); Playwright's own browser downloads are never used. TOKENSMITH_CHROMIUM names
another Chromium binary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("TOKENSMITH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium per test module.

    Not per session: Playwright's sync API keeps an event loop running in the test thread
    while it is started, and the in-process tests that run their own loop would fail after
    the first browser test.
    """
    from playwright.sync_api import expect, sync_playwright

    # Assertions on a page wait for it to settle; a loaded CI machine can take longer than
    # Playwright's five-second default to render a page the test just navigated to.
    expect.set_options(timeout=15_000)
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make browser` or set TOKENSMITH_CHROMIUM")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def browser_context(chromium: Any) -> Iterator[Any]:
    """A fresh browser profile (no cookies) that accepts the test servers' self-signed
    certificates; closed at the end of the test."""
    context = chromium.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
    yield context
    context.close()


@pytest.fixture
def page(browser_context: Any) -> Any:
    """A page in a fresh browser profile."""
    return browser_context.new_page()
