"""Console page load with 10,000 devices in PostgreSQL: the fleet page's first paint in
headless Chromium, against the same HTML served as a static file (the browser's own
floor), in one run.

Set-up: a controller data directory on PostgreSQL holding --devices devices (default
10,000) as a fleet leaves them: labels, an installed and assigned model, health,
resources, every 50th device downloading (written directly to the database, as their
reports would). The controller runs as `edgefleetctl serve`, the console as `edgefleetctl
console`, each its own process; Debian's Chromium loads the pages through its
chromedriver.

Measured, --rounds times each, interleaved (medians; a fresh tab per load):

- **fleet page**: `/fleet` (the first page, 50 devices, with the counts over all 10,000):
  first contentful paint and the time to the HTML's last byte (Navigation Timing);
- **filtered**: `/fleet?selector=site=site-7` (100 matching devices, the label match runs
  over every device);
- **static copy**: the fleet page's HTML as the browser received it, served as a file by
  aiohttp with the same CSS and script: what the page costs the browser alone.

Target (issue 23): the fleet page's first paint <= 1 s with 10,000 devices; the ratio to
the static copy says what the controller and console add.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import insert

from edgefleet.controller.app.datadir import initialize
from edgefleet.controller.store.database import Database, reset_scratch_database
from edgefleet.controller.store.schema import Assignment, Device, Rollout
from edgefleet.lifecycle import listen_http
from tests.console.browser import chromium
from tests.harness import BIN, free_port, wait_for

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MIB = 1024 * 1024
STATIC = Path(__file__).resolve().parents[1] / "controller" / "console" / "static"


def _populate(db: Database, devices: int) -> None:
    now = datetime.now(UTC)
    rows, assignments = [], []
    for index in range(devices):
        device_id = f"dev-{index:016x}"
        downloading = index % 50 == 0
        rows.append(
            {
                "device_id": device_id,
                "hostname": f"gw-{index}",
                "labels": {"site": f"site-{index % 100}", "tier": "edge"},
                "state": "active" if index % 97 else "pending",
                "key_fingerprint": f"{index:064x}",
                "certificate_serial": "0",
                "previous_serial": "",
                "audit_public_key": "a" * 64,
                "enrolled_at": now - timedelta(days=30),
                "last_seen": now - timedelta(seconds=index % 600),
                "agent_version": "0.1.0",
                "installed": [{"name": "smollm2", "version": "1.0", "sha256": "a" * 64,
                               "active": True}],
                "bench": [],
                "downloads": [{"name": "smollm2", "version": "1.1", "received": 40 * MIB,
                               "total": 100 * MIB, "state": "downloading", "reason": "",
                               "bytes_per_second": 2 * MIB}] if downloading else [],
                "resources": {"machine": "aarch64", "cpu_count": 4, "memory_total": 8192 * MIB,
                              "memory_budget": 4096 * MIB, "context": 2048, "slots": 1,
                              "disk_free": 20000 * MIB, "max_model_bytes": 0},
                "health": [{"name": "smollm2", "version": "1.0", "smoke": "passed",
                            "smoke_reason": "", "smoke_tokens_per_second": 30.0,
                            "requests": 1000, "errors": index % 3}],
                "audit_head_seq": 1000 + index % 7,
            }
        )  # fmt: skip
        assignments.append({"device_id": device_id, "model_name": "smollm2", "version": "1.0"})
    with db.engine.begin() as connection:
        for start in range(0, len(rows), 2000):
            connection.execute(insert(Device), rows[start : start + 2000])
        rollout = connection.execute(
            insert(Rollout).returning(Rollout.id),
            [{"name": "smollm2", "version": "1.0", "selector": {}, "created_by": "bench",
              "created_at": now, "state": "completed"}],
        ).scalar_one()  # fmt: skip
        for start in range(0, len(assignments), 2000):
            batch = [{**a, "rollout_id": rollout} for a in assignments[start : start + 2000]]
            connection.execute(insert(Assignment), batch)


def _timings(driver: WebDriver, url: str) -> dict[str, float]:
    """Load ``url`` in a fresh tab; its first contentful paint and HTML's last byte (ms)."""
    driver.switch_to.new_window("tab")
    driver.get(url)
    wait_for(
        "the first paint",
        lambda: (
            driver.execute_script(
                "return performance.getEntriesByName('first-contentful-paint').length"
            )
            or None
        ),
        30,
        interval=0.05,
    )
    timing: dict[str, Any] = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "const p = performance.getEntriesByName('first-contentful-paint')[0];"
        "return {paint: p.startTime, html: n.responseEnd, rows:"
        " document.querySelectorAll('tr[data-device]').length};"
    )
    driver.close()
    driver.switch_to.window(driver.window_handles[0])
    return {k: float(v) for k, v in timing.items()}


def _serve_static(html: str, port: int) -> tuple[threading.Thread, asyncio.AbstractEventLoop]:
    """The fleet page's HTML as a file, with the console's CSS and script, on ``port``."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/fleet", page)
        app.router.add_static("/static/", STATIC)
        await listen_http(app, f"127.0.0.1:{port}")
        ready.set()
        await asyncio.Event().wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    ready.wait(10)
    return thread, loop


def run(args: argparse.Namespace) -> None:
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        raise SystemExit("benchmarks.console needs Debian's chromium and chromium-driver")
    with tempfile.TemporaryDirectory(prefix="edgefleet-console-bench-") as tmp:
        root = Path(tmp)
        result = initialize(root / "controller", "bench", [], "127.0.0.1:0")
        db = Database(args.database_url)
        reset_scratch_database(db)
        began = time.perf_counter()
        _populate(db, args.devices)
        db.dispose()
        print(f"{args.devices} devices in PostgreSQL ({time.perf_counter() - began:.1f} s)")
        sync = f"127.0.0.1:{free_port()}"
        env = {**os.environ, "EDGEFLEET_CONTROLLER_DATABASE_URL": args.database_url}
        log = (root / "processes.log").open("wb")
        controller = subprocess.Popen(
            [str(BIN / "edgefleetctl"), "serve", "--data-dir", str(root / "controller"),
             "--listen", sync, "--enroll-listen", f"127.0.0.1:{free_port()}",
             "--health-listen", "", "--metrics-listen", "", "--log-level", "WARNING"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        serve_addr = root / "controller" / "serve.addr"
        wait_for("the controller", lambda: serve_addr.exists() or None, 60)
        url_file = root / "console.url"
        console = subprocess.Popen(
            [str(BIN / "edgefleetctl"), "--config", str(result.operator_config),
             "--controller", sync, "console", "--listen", "127.0.0.1:0",
             "--url-file", str(url_file)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        driver = chromium(root / "downloads")
        try:
            wait_for("the console", lambda: url_file.exists() or None, 60)
            login = url_file.read_text().strip()
            base = login.split("/login")[0]
            driver.get(login)  # the session cookie
            html = driver.page_source
            static_port = free_port()
            _serve_static(html, static_port)
            pages = {
                "fleet page": f"{base}/fleet",
                "filtered (site=site-7)": f"{base}/fleet?selector=site%3Dsite-7",
                "static copy": f"http://127.0.0.1:{static_port}/fleet",
            }
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in pages}
            for _ in range(args.rounds):
                for name, url in pages.items():
                    samples[name].append(_timings(driver, url))
        finally:
            driver.quit()
            for process in (console, controller):
                process.terminate()
                process.wait(30)
            log.close()
    print(f"\nmedians of {args.rounds} loads each, interleaved; {args.devices} devices")
    print(f"{'page':<24} {'first paint ms':>15} {'HTML done ms':>13} {'rows':>5}")
    medians = {}
    for name, runs in samples.items():
        paint = statistics.median(r["paint"] for r in runs)
        done = statistics.median(r["html"] for r in runs)
        medians[name] = paint
        print(f"{name:<24} {paint:>15.0f} {done:>13.0f} {runs[0]['rows']:>5.0f}")
    ours, floor = medians["fleet page"], medians["static copy"]
    print(
        f"\nfleet page first paint {ours:.0f} ms (target <= 1000 ms): "
        f"{'met' if ours <= 1000 else 'NOT met'}; ours / static copy {ours:.0f} / {floor:.0f} "
        f"= {ours / floor:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--database-url", default=URL)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
