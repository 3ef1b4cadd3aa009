"""The console's HTTP side without a browser or a controller (a fake operator client):
the session, the Host check, CSRF, escaping of what devices and operators wrote, error
pages, and 16 racing requests."""

from __future__ import annotations

import asyncio
import html
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, cast

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from edgefleet.controller.catalog.quantization.views import VersionView
from edgefleet.controller.console.app import COOKIE, Session, build
from edgefleet.controller.console.charts import quantization_chart
from edgefleet.controller.console.pages import Pages, parse_selector
from edgefleet.controller.ctl.client import OperatorClient
from edgefleet.controller.fleet.views import FleetSummary
from edgefleet.controller.rollouts.strategy import Strategy
from edgefleet.controller.rollouts.views import RolloutView, TargetView
from edgefleet.errors import ConflictError, MalformedInputError, PermissionDeniedError
from edgefleet.fleet import DeviceView, DownloadProgress

EVIL = "<script>alert('x')</script>"
ADMIN = frozenset({"devices.read", "rollouts.read", "rollouts.manage", "audit.read"})


@dataclass
class FakeController:
    """What the console asks of the controller, answered from memory."""

    permissions: frozenset[str] = ADMIN
    state: str = "running"
    changes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    address: str = "127.0.0.1:7443"

    def whoami(self) -> tuple[str, str, frozenset[str]]:
        return (
            "ana",
            "admin" if "rollouts.manage" in self.permissions else "viewer",
            self.permissions,
        )

    def fleet_summary(self, selector: dict[str, str] | None = None) -> FleetSummary:
        return FleetSummary({"active": 1}, {"aarch64 4 cpu 8 GiB": 1}, 0, 1, 1, 3)

    def _device(self) -> DeviceView:
        return DeviceView(
            device_id="dev-1",
            hostname=EVIL,
            labels={"site": EVIL},
            last_seen="2026-11-29T10:00:00Z",
            agent_version=EVIL,
            last_error=EVIL,
            audit_alert=EVIL,
            downloads=(DownloadProgress(EVIL, "1", 10, 100, "downloading", "", 1000),),
        )

    def device_page(
        self, page_token: str = "", size: int = 0, device_id: str = "",
        selector: dict[str, str] | None = None,
    ) -> tuple[list[DeviceView], str]:  # fmt: skip
        return [self._device()], ""

    def list_devices(
        self, device_id: str = "", selector: dict[str, str] | None = None
    ) -> list[DeviceView]:
        return [self._device()] if device_id in ("", "dev-1") else []

    def _rollout(self) -> RolloutView:
        target = TargetView("dev-1", 0, "1", "", "assigned", EVIL)
        return RolloutView(
            1, "tiny", "1", {"site": "lab"}, self.state, EVIL, 0, 2,
            Strategy(canary=1, waves=("100%",)), "ana", "2026-11-29T10:00:00Z", (target,),
        )  # fmt: skip

    def list_rollouts(self) -> list[RolloutView]:
        return [self._rollout()]

    def get_rollout(self, rollout_id: int) -> RolloutView:
        return self._rollout()

    def change_rollout(self, rollout_id: int, action: str) -> RolloutView:
        if "rollouts.manage" not in self.permissions:
            raise PermissionDeniedError("operator:vera lacks rollouts.manage for ChangeRollout")
        with self.lock:  # the controller's row lock: one change at a time
            if action == "pause" and self.state != "running":
                raise ConflictError(f"rollout 1 is {self.state}: pause needs it running")
            self.state = "paused"
            self.changes.append(action)
        return self._rollout()

    def query_audit(self, *args: Any) -> tuple[list[bytes], bool]:
        record = (
            '{"time": "2026-11-29T10:00:00Z", "device": "dev-1", "seq": 1, "actor": '
            '"<b>x</b>", "action": "a", "target": "t", "outcome": "o", "details": {}}'
        )
        return [record.encode()], False


def _pages(fake: FakeController) -> tuple[Pages, Session]:
    pages = Pages(cast(OperatorClient, fake))
    return pages, Session()


def _run(
    fake: FakeController, test: Callable[[TestClient[Any, Any], Session], Awaitable[None]]
) -> None:
    async def main() -> None:
        pages, session = _pages(fake)
        app = build(session, pages.routes, pages.error_page)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            session.serve(f"127.0.0.1:{client.port}")
            await test(client, session)

    asyncio.run(main())


async def _login(client: TestClient[Any, Any], session: Session) -> None:
    reply = await client.get(f"/login?token={session.secret}", allow_redirects=False)
    assert reply.status == 303 and reply.headers["Location"] == "/fleet"
    cookie = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_only_the_login_link_opens_a_session() -> None:
    async def test(client: TestClient[Any, Any], session: Session) -> None:
        assert (await client.get("/fleet")).status == 401
        wrong = await client.get("/login?token=guess", allow_redirects=False)
        assert wrong.status == 403
        forged_cookie = await client.get("/fleet", cookies={COOKIE: "guess"})
        assert forged_cookie.status == 401
        await _login(client, session)
        page = await client.get("/fleet")
        assert page.status == 200
        for reply in (page, wrong):
            assert "script-src 'self'" in reply.headers["Content-Security-Policy"]
            assert reply.headers["X-Frame-Options"] == "DENY"
            assert reply.headers["Cache-Control"] == "no-store"

    _run(FakeController(), test)


def test_a_page_under_another_host_name_is_refused() -> None:
    """DNS rebinding: a hostile site's name resolving to 127.0.0.1 reaches the port."""

    async def test(client: TestClient[Any, Any], session: Session) -> None:
        await _login(client, session)
        rebound = await client.get("/fleet", headers={"Host": f"evil.example:{client.port}"})
        assert rebound.status == 421

    _run(FakeController(), test)


def test_what_devices_and_operators_wrote_is_escaped() -> None:
    async def test(client: TestClient[Any, Any], session: Session) -> None:
        await _login(client, session)
        for path in ("/fleet", "/devices/dev-1", "/rollouts", "/rollouts/1", "/audit?device=dev-1"):
            body = await (await client.get(path)).text()
            assert "<script>alert" not in body and "<b>x</b>" not in body, path
        fleet = await (await client.get("/fleet")).text()
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in fleet

    _run(FakeController(), test)


async def _post(
    client: TestClient[Any, Any], path: str, form: dict[str, str], **headers: str
) -> ClientResponse:
    return await client.post(path, data=form, headers=headers, allow_redirects=False)


def test_actions_need_the_sessions_csrf_token_and_origin() -> None:
    fake = FakeController()

    async def test(client: TestClient[Any, Any], session: Session) -> None:
        await _login(client, session)
        origin = f"http://127.0.0.1:{client.port}"
        refused = [
            await _post(client, "/rollouts/1/pause", {}),
            await _post(client, "/rollouts/1/pause", {"csrf": "0" * 64}),
            await _post(client, "/rollouts/1/pause", {"csrf": session.csrf}, Origin="http://evil.example"),
            await _post(client, "/rollouts/1/pause", {"csrf": session.csrf}, Origin="null"),
            await _post(
                client, "/rollouts/1/pause", {"csrf": session.csrf},
                **{"Sec-Fetch-Site": "cross-site"},
            ),
        ]  # fmt: skip
        assert [r.status for r in refused] == [403] * 5
        assert fake.changes == []
        done = await _post(client, "/rollouts/1/pause", {"csrf": session.csrf}, Origin=origin)
        assert done.status == 303 and done.headers["Location"] == "/rollouts/1?done=pause"
        assert fake.changes == ["pause"]
        unknown = await _post(client, "/rollouts/1/explode", {"csrf": session.csrf})
        assert unknown.status == 404
        put = await client.put("/rollouts/1/pause")
        assert put.status == 405

    _run(fake, test)


def test_sixteen_racing_pauses_pause_once() -> None:
    fake = FakeController()

    async def test(client: TestClient[Any, Any], session: Session) -> None:
        await _login(client, session)
        replies = await asyncio.gather(
            *(_post(client, "/rollouts/1/pause", {"csrf": session.csrf}) for _ in range(16))
        )
        statuses = sorted(r.status for r in replies)
        assert statuses == [303] + [409] * 15
        conflict = next(r for r in replies if r.status == 409)
        assert "rollout 1 is paused: pause needs it running" in await conflict.text()
        pages = await asyncio.gather(*(client.get("/fleet") for _ in range(16)))
        assert {p.status for p in pages} == {200}

    _run(fake, test)


def test_a_viewer_gets_no_forms_and_the_controllers_refusal() -> None:
    fake = FakeController(permissions=frozenset({"devices.read", "rollouts.read"}))

    async def test(client: TestClient[Any, Any], session: Session) -> None:
        await _login(client, session)
        page = await (await client.get("/rollouts/1")).text()
        assert "<form" not in page and "data-actions" not in page
        audit = await (await client.get("/audit")).text()
        assert "does not read audit records" in audit and "Download signed export" not in audit
        forged = await _post(client, "/rollouts/1/abort", {"csrf": session.csrf})
        assert forged.status == 403
        assert "operator:vera lacks rollouts.manage for ChangeRollout" in await forged.text()

    _run(fake, test)


def test_bad_input_is_one_clear_error_page() -> None:
    async def test(client: TestClient[Any, Any], session: Session) -> None:
        await _login(client, session)
        cases = {
            "/fleet?selector=site": (400, "selector: 'site' is not key=value"),
            "/fleet?size=7": (400, "size: one of 25, 50, 100, 200"),
            "/fleet?after=" + "x" * 65: (400, "after: not a device id"),
            "/devices/nobody": (404, "device nobody is not enrolled"),
            "/audit?since=yesterdayish": (400, "since: "),
            "/audit/export?format=xml": (400, "format: jsonl or csv"),
            "/rollouts/99999999999999": (404, ""),
        }
        for path, (status, message) in cases.items():
            reply = await client.get(path)
            assert reply.status == status, (path, await reply.text())
            assert message in html.unescape(await reply.text()), path

    _run(FakeController(), test)


def test_selectors_parse_or_say_why() -> None:
    assert parse_selector(" site=lab , tier=edge ") == {"site": "lab", "tier": "edge"}
    assert parse_selector("") == {}
    for bad in (
        "site",
        "=lab",
        "site=",
        "a=b=c",
        "site=<x>",
        ",".join(f"k{i}=v" for i in range(17)),
    ):
        try:
            parse_selector(bad)
        except MalformedInputError as e:
            assert str(e).startswith("selector: ")
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_the_quantization_chart_escapes_its_labels() -> None:
    versions = [
        VersionView("1.0", "a" * 64, 100 << 20, "", "2026-11-01T00:00:00Z", None),
        VersionView("1.0+q4_0", "b" * 64, 40 << 20, EVIL, "2026-11-01T00:00:00Z",
                    {"perplexity_increase_percent": 3.2, "passed": True}),
        VersionView("1.0+q8_0", "c" * 64, 70 << 20, "q8_0", "2026-11-01T00:00:00Z",
                    {"perplexity_increase_percent": 0.4, "passed": False}),
    ]  # fmt: skip
    svg = str(quantization_chart(versions))
    assert svg.startswith("<svg") and svg.count("<circle") == 2
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'class="point failed"' in svg and 'class="point passed"' in svg
    assert re.search(r"<title>1\.0\+q8_0: 70\.0 MiB, \+0\.40 %</title>", svg)
    assert str(quantization_chart(versions[:1])) == ""


def test_the_session_knows_its_address_as_browsers_write_it() -> None:
    session = Session()
    session.serve("::1:8470")
    assert session.hosts == {"[::1]:8470", "localhost:8470"}
    assert session.login_url() == f"http://[::1]:8470/login?token={session.secret}"
    session.serve("127.0.0.1:8470")
    assert session.hosts == {"127.0.0.1:8470", "localhost:8470"}


class _Form(HTMLParser):
    """Inputs, selects and labels of a page, and the order of its focusable elements."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[str] = []
        self.labels: set[str] = set()
        self.focusable: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("input", "select") and a.get("type") != "hidden":
            self.fields.append(a.get("id") or f"<{tag} name={a.get('name')} without id>")
        if tag == "label" and a.get("for"):
            self.labels.add(str(a["for"]))
        if tag in ("a", "button", "input", "select") and a.get("type") != "hidden":
            self.focusable.append(a.get("href") or tag)


def test_every_field_has_a_label_and_the_skip_link_comes_first() -> None:
    async def test(client: TestClient[Any, Any], session: Session) -> None:
        await _login(client, session)
        for path in ("/fleet", "/audit", "/rollouts/plan", "/rollouts/1", "/devices/dev-1"):
            page = _Form()
            page.feed(await (await client.get(path)).text())
            assert page.focusable[0] == "#main", path  # keyboard users skip the navigation
            unlabelled = [f for f in page.fields if f not in page.labels]
            assert unlabelled == [], (path, unlabelled)
            assert page.fields or path in ("/rollouts/1", "/devices/dev-1")

    _run(FakeController(permissions=ADMIN | {"audit.export"}), test)
