"""A real headless Chromium (Debian's package) driving the page of a real tiny-model server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.web.pagekit import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PageLog, open_page


@pytest.fixture(scope="module")  # sync Playwright runs its own event loop: never past the module
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium package to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def base_url(tiny_server: Any) -> str:
    return str(tiny_server.base_url)


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.fixture
def page(browser: Any, base_url: str, page_log: PageLog) -> Iterator[Any]:
    """The page in English at desktop width; fails the test on any uncaught page error."""
    page = open_page(browser, base_url, page_log)
    yield page
    # Judge what the page did during the test, not what closing it may cause.
    errors = list(page_log.errors)
    page.context.close()
    assert not errors, errors


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def update_docs_screenshots() -> bool:
    """Only rewrite the README's screenshots when asked: they are tracked files."""
    return os.environ.get("GLIMPSE_UPDATE_SCREENSHOTS") == "1"
