"""Debian's Chromium driven headless through its chromedriver (selenium), and
`edgefleetctl console` processes for it to open. Nothing is downloaded at run time:
selenium is told where both binaries are and to stay offline."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.harness import BIN, Fleet, wait_for

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are absent (`make system-deps`)",
)
# `make screenshots` sets this to docs/images; otherwise screenshots go to the test's folder.
SCREENSHOTS_ENV = "EDGEFLEET_SCREENSHOTS"


@dataclass(frozen=True)
class Console:
    """A running `edgefleetctl console`: its base URL and login URL."""

    base: str
    login: str

    @property
    def secret(self) -> str:
        return parse_qs(urlsplit(self.login).query)["token"][0]

    @property
    def csrf(self) -> str:
        """What the console's forms carry (derived from the session secret)."""
        return hmac.new(self.secret.encode(), b"csrf", hashlib.sha256).hexdigest()


@contextmanager
def console(fleet: Fleet, config: Path, name: str) -> Iterator[Console]:
    """`edgefleetctl console` on a free loopback port with ``config``'s credential."""
    url_file = fleet.root / f"console-{name}.url"
    url_file.unlink(missing_ok=True)
    command = [str(BIN / "edgefleetctl"), "--config", str(config)]
    command += ["--controller", fleet.sync_address, "console", "--listen", "127.0.0.1:0"]
    command += ["--url-file", str(url_file)]
    log = (fleet.root / f"console-{name}.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:

        def started() -> str | None:
            if process.poll() is not None:
                raise RuntimeError((fleet.root / f"console-{name}.log").read_text())
            return url_file.read_text().strip() or None if url_file.exists() else None

        login = wait_for("the console's URL", started, 30)
        yield Console(login.split("/login", 1)[0], login)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def chromium(downloads: Path) -> WebDriver:
    """A headless Chromium (selenium WebDriver) saving downloads in ``downloads``."""
    os.environ["SE_OFFLINE"] = "true"  # selenium must not fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1000",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
        },
    )
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def screenshot(driver: WebDriver, name: str, fallback: Path) -> Path:
    """Save a screenshot of the whole page as ``name``.png (docs/images with `make
    screenshots`)."""
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    metrics = {"width": 1440, "height": min(max(height, 600), 3000)}
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {**metrics, "deviceScaleFactor": 1, "mobile": False}
    )
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path
