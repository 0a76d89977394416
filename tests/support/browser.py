"""
A real Chromium, headless, driven through WebDriver (Debian's C{chromium}
and C{chromium-driver}; C{.ci/run} installs them when missing).

Selenium's calls block, so tests run a whole browser session in a thread
(C{deferToThread}) while the reactor keeps serving.  L{console_problems}
reads the browser's console: errors, and every Content-Security-Policy
violation (Chromium reports those in the console).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Flags that work in this project's containers and CI.
HEADLESS_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)


def available() -> str | None:
    """Why no browser test can run here, or L{None} when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the test extra)"
    if shutil.which("chromedriver") is None:
        return "chromedriver is not installed (Debian: chromium-driver)"
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        return "chromium is not installed"
    return None


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A fresh headless Chromium (its own profile), quit and removed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="veil-chromium-")
    options = webdriver.ChromeOptions()
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is not None:
        options.binary_location = binary
    for flag in HEADLESS_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")),
                              options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


def console_problems(driver: Any) -> list[str]:
    """Console errors and CSP violations logged since the last call."""
    problems = []
    for entry in driver.get_log("browser"):
        message = entry.get("message", "")
        if entry.get("level") == "SEVERE" or "Content Security Policy" in message \
                or "Content-Security-Policy" in message:
            problems.append(f"{entry.get('level')}: {message}")
    return problems
