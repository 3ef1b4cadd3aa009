"""The console in a real browser (Debian's headless Chromium) against a real controller
with three real agents: the fleet page lists them and a download moves on it without a
reload, a staged rollout's canary and wave advance on its page, Pause on the page pauses
it, a viewer sees no action buttons and a forged action is refused, and an audit export
downloaded from the page verifies offline. Screenshots of each page are taken on the way
(`make screenshots` keeps them in docs/images)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.console.browser import Console, chromium, console, needs_chromium, screenshot
from tests.harness import Fleet, wait_for
from tests.integration.fleets import active_versions, publish_tiny

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = [pytest.mark.integration, needs_chromium]

AGENTS = ("a1", "a2", "a3")
CAP = 250_000  # bytes/s for a1's downloads: a 4 MB model takes about 16 s


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("console"))
    fleet.agent_env["EDGEFLEET_AGENT_SMOKE_TEST"] = "false"  # tiny models have no vocabulary
    try:
        fleet.init_controller()
        fleet.start_controller()
        for name in AGENTS:
            fleet.enroll(name, {"site": "lab", "node": name})
        slow = {
            "EDGEFLEET_AGENT_BANDWIDTH_LIMIT_BYTES_PER_SECOND": str(CAP),
            "EDGEFLEET_AGENT_DOWNLOAD_REPORT_SECONDS": "1",
        }
        fleet.start_agent("a1", sync_interval=1, env=slow)
        for name in AGENTS[1:]:
            fleet.start_agent(name, sync_interval=1)
        wait_for("three devices seen", lambda: len(_seen(fleet)) == 3 or None, 30)
        yield fleet
    finally:
        fleet.stop_all()


def _seen(fleet: Fleet) -> list[str]:
    return [d["device_id"] for d in fleet.devices() if d["last_seen"]]


@pytest.fixture(scope="module")
def admin(fleet: Fleet) -> Iterator[Console]:
    with console(fleet, fleet.operator_config, "admin") as running:
        yield running


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    driver = chromium(tmp_path / "downloads")
    try:
        yield driver
    finally:
        driver.quit()


def _login(driver: WebDriver, running: Console) -> None:
    driver.get(running.login)
    assert driver.current_url.endswith("/fleet")


def _text(driver: WebDriver, css: str) -> str:
    """The first match's text ('' if none); read again when the page swapped its live part
    (every 3 s) or reloaded between finding the element and reading it."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(10):
        found = driver.find_elements(By.CSS_SELECTOR, css)
        try:
            return str(found[0].text) if found else ""
        except StaleElementReferenceException:
            continue
    return ""


def _device_id(fleet: Fleet, name: str) -> str:
    return str(next(d["device_id"] for d in fleet.devices() if d["labels"]["node"] == name))


def _create(fleet: Fleet, *args: str) -> int:
    return int(fleet.ctl("rollout", "create", *args, "-o", "name").stdout.strip())


def test_the_fleet_page_lists_the_devices_and_a_download_moves_live(
    fleet: Fleet, admin: Console, browser: WebDriver, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    _login(driver, admin)
    rows = driver.find_elements(By.CSS_SELECTOR, "tr[data-device]")
    assert {r.get_attribute("data-device") for r in rows} == {
        _device_id(fleet, name) for name in AGENTS
    }
    assert _text(driver, "[data-count=total]") == "3"
    assert _text(driver, "[data-count=active]") == "3"

    publish_tiny(fleet, "1", seed=1, rows=250_000)  # about 4 MB
    _create(fleet, "tiny@1", "--selector", "node=a1")
    a1 = _device_id(fleet, "a1")
    bar = f"tr[data-device='{a1}'] progress"

    def shown() -> int | None:  # the page refreshes its live part by itself: no reload
        found = driver.find_elements(By.CSS_SELECTOR, bar)
        value = found[0].get_attribute("value") if found else None
        return int(float(value)) if value and float(value) > 0 else None

    def with_rate() -> str | None:  # the device measures its rate over 2 s windows
        label = _text(driver, f"tr[data-device='{a1}'] .download label")
        return label if re.search(r"tiny@1 downloading \d+ %, \d+ KiB/s, ETA \d+s", label) else None

    wait_for("a download with its rate on the fleet page", with_rate, 40)
    first = shown()
    assert first is not None
    assert _text(driver, "[data-count=downloading]") == "1"

    def further() -> int | None:
        value = shown()
        return value if value is not None and value > first else None

    wait_for("the download further along, without a reload", further, 20)
    screenshot(driver, "console-fleet", tmp_path)
    wait_for("tiny@1 active on a1", lambda: "tiny@1" in active_versions(fleet, "a1") or None, 60)
    driver.find_element(By.LINK_TEXT, a1).click()
    assert driver.find_element(By.TAG_NAME, "h1").text == f"Device {a1}"
    wait_for(
        "tiny@1 running on the device page",
        lambda: "tiny 1 yes" in _text(driver, "[data-live] table") or None,
        20,
    )
    assert "node=a1,site=lab" in _text(driver, ".facts")
    screenshot(driver, "console-device", tmp_path)


def test_a_staged_rollout_advances_on_its_page(
    fleet: Fleet, admin: Console, browser: WebDriver, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    _login(driver, admin)
    publish_tiny(fleet, "2", seed=2)
    rollout = _create(
        fleet,
        "tiny@2",
        "--selector",
        "site=lab",
        "--canary",
        "1",
        "--waves",
        "100%",
        "--soak",
        "4",
    )
    driver.get(f"{admin.base}/rollouts/{rollout}")
    waves = driver.find_elements(By.CSS_SELECTOR, "[data-wave]")
    assert [w.find_element(By.TAG_NAME, "h3").text.split(" (")[0] for w in waves] == [
        "canary",
        "wave 2",
    ]

    def healthy(wave: int, of: int) -> bool | None:
        text = _text(driver, f"[data-wave='{wave}'] label")
        return True if text == f"{of} of {of} healthy" else None

    wait_for("the canary healthy on the page", lambda: healthy(0, 1), 60)
    seen_while_running = _text(driver, "[data-live] [data-state]")
    wait_for("wave 2 healthy on the page", lambda: healthy(1, 2), 90)
    wait_for(
        "the rollout completed on the page",
        lambda: _text(driver, "[data-live] [data-state]") == "completed" or None,
        30,
    )
    assert seen_while_running in ("running", "completed")
    screenshot(driver, "console-rollout", tmp_path)
    driver.get(f"{admin.base}/rollouts")
    row = _text(driver, f"tr[data-rollout='{rollout}']")
    assert re.match(rf"{rollout} tiny@2 completed 2/2 site=lab ", row), row
    screenshot(driver, "console-rollouts", tmp_path)
    driver.get(f"{admin.base}/models")
    row = _text(driver, "tr[data-version='2']")
    assert re.match(r"2 \S+ [\d.]+ MiB 3 3 ", row), row  # running on 3, assigned to 3
    driver.find_element(By.LINK_TEXT, "tiny").click()
    assert driver.find_element(By.TAG_NAME, "h1").text == "Model tiny"
    running_on = driver.find_elements(By.CSS_SELECTOR, "[data-live] table a")
    assert {a.text for a in running_on} >= {_device_id(fleet, name) for name in AGENTS}
    screenshot(driver, "console-model", tmp_path)


def test_pause_on_the_page_pauses_the_rollout(
    fleet: Fleet, admin: Console, browser: WebDriver, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    _login(driver, admin)
    publish_tiny(fleet, "3", seed=3)
    rollout = _create(fleet, "tiny@3", "--selector", "site=lab", "--canary", "1", "--soak", "600")
    driver.get(f"{admin.base}/rollouts/{rollout}")
    buttons = driver.find_elements(By.CSS_SELECTOR, "[data-actions] button")
    assert sorted(b.text for b in buttons) == ["Abort", "Pause", "Rollback"]
    driver.find_element(By.CSS_SELECTOR, "button.action-pause").click()
    wait_for("the page after Pause", lambda: "done=pause" in driver.current_url or None, 15)
    assert _text(driver, "[data-live] [data-state]") == "paused"
    assert _text(driver, ".notice") == "pause: done."
    status = json.loads(fleet.ctl("rollout", "status", str(rollout), "-o", "json").stdout)
    assert status["state"] == "paused"
    buttons = driver.find_elements(By.CSS_SELECTOR, "[data-actions] button")
    assert sorted(b.text for b in buttons) == ["Abort", "Resume", "Rollback"]
    fleet.ctl("rollout", "abort", str(rollout))


def _post(running: Console, path: str, form: dict[str, str], **headers: str) -> int:
    request = urllib.request.Request(
        running.base + path,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Cookie": f"edgefleet_console={running.secret}", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_a_viewer_sees_no_actions_and_forged_actions_are_refused(
    fleet: Fleet, admin: Console, browser: WebDriver, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    publish_tiny(fleet, "4", seed=4)
    rollout = _create(fleet, "tiny@4", "--selector", "site=lab", "--canary", "1", "--soak", "600")
    out = fleet.root / "vera"
    fleet.ctl("operator", "add", "vera", "--role", "viewer", "--out", str(out))
    with console(fleet, out / "edgefleetctl.toml", "viewer") as viewer:
        driver = browser
        _login(driver, viewer)
        assert "operator vera (viewer)" in _text(driver, ".who")
        driver.get(f"{viewer.base}/rollouts/{rollout}")
        assert _text(driver, "[data-live] [data-state]") == "running"
        assert driver.find_elements(By.CSS_SELECTOR, "[data-actions], form[method=post]") == []
        screenshot(driver, "console-rollout-viewer", tmp_path)
        # With the right CSRF token the console asks; the controller refuses the viewer.
        assert _post(viewer, f"/rollouts/{rollout}/abort", {"csrf": viewer.csrf}) == 403
        # The admin's console refuses forgeries before asking anyone:
        assert _post(admin, f"/rollouts/{rollout}/abort", {}) == 403  # no CSRF token
        assert _post(admin, f"/rollouts/{rollout}/abort", {"csrf": "0" * 64}) == 403
        assert (
            _post(
                admin,
                f"/rollouts/{rollout}/abort",
                {"csrf": admin.csrf},
                Origin="http://evil.example",
            )
            == 403
        )
    status = json.loads(fleet.ctl("rollout", "status", str(rollout), "-o", "json").stdout)
    assert status["state"] == "running"
    denied = fleet.ctl("audit", "query", "--action", "access.denied", "-o", "json").stdout
    assert any(
        r["actor"] == "operator:vera" and r["target"] == "ChangeRollout" for r in json.loads(denied)
    )
    fleet.ctl("rollout", "abort", str(rollout))


def test_an_audit_export_downloaded_from_the_page_verifies_offline(
    fleet: Fleet, admin: Console, browser: WebDriver, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    _login(driver, admin)
    a2 = _device_id(fleet, "a2")
    driver.get(f"{admin.base}/audit?device={a2}")
    assert driver.find_elements(By.CSS_SELECTOR, "table.audit tbody tr")
    assert "no tamper alert" in _text(driver, ".chain")
    screenshot(driver, "console-audit", tmp_path)
    driver.find_element(By.CSS_SELECTOR, "button[data-export]").click()
    downloads = tmp_path / "downloads"

    def downloaded() -> Path | None:
        done = [p for p in downloads.glob("audit-*.jsonl") if p.stat().st_size]
        return done[0] if done else None

    export = wait_for("the export in the download folder", downloaded, 30)
    time.sleep(0.5)  # Chromium renames the finished file into place; let it settle
    verified = fleet.run(
        "edgefleetctl",
        "audit",
        "verify",
        str(export),
        "--root-fingerprint",
        fleet.fingerprint,
        check=False,
    )
    assert verified.returncode in (0, 3), verified.stdout + verified.stderr
    assert re.search(rf"record\(s\) in 1 chain\(s\) \({a2}: \d+\): verified", verified.stdout)


def test_the_console_listens_on_loopback_only(fleet: Fleet) -> None:
    refused = fleet.ctl("console", "--listen", "0.0.0.0:8470", check=False)
    assert refused.returncode == 1
    assert refused.stderr == (
        "edgefleetctl: error: --listen 0.0.0.0:8470: the console serves your operator "
        "credential, so it listens on loopback only (reach it from elsewhere through an SSH "
        "tunnel)\n"
    )
