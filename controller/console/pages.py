"""The console's pages: each handler reads what it shows through the operator client (in a
thread: the client is synchronous gRPC) and renders one template.

Every page has a live part (`<div data-live>`): the page's script asks for the same URL
with `?fragment=live` every few seconds and swaps that part in, so the numbers move
without a reload and without a second set of read APIs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

import jinja2
from aiohttp import web

from edgefleet import output
from edgefleet.audit_export import render as render_export
from edgefleet.cli_support import time_bound
from edgefleet.controller.console.app import SESSION
from edgefleet.controller.console.charts import quantization_chart
from edgefleet.controller.ctl.client import OperatorClient
from edgefleet.controller.rollouts.strategy import Strategy
from edgefleet.controller.rollouts.views import ACTION_NEEDS, RolloutView
from edgefleet.errors import MalformedInputError, NotFoundError, TransportError
from edgefleet.fleet import DeviceView

TEMPLATES = Path(__file__).resolve().parent / "templates"
PAGE_SIZES = (25, 50, 100, 200)
REFRESH_SECONDS = 3
AUDIT_LIMIT = 200
LABEL = re.compile(r"^[A-Za-z0-9._/-]{1,63}$")

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Operator:
    """Who the console acts as, asked of the controller at each page."""

    name: str
    role: str
    permissions: frozenset[str]

    def may(self, permission: str) -> bool:
        return permission in self.permissions


class Pages:
    """The handlers, sharing one operator client and one template environment."""

    def __init__(self, client: OperatorClient) -> None:
        self.client = client
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(
            when=output.when,
            labels=output.labels,
            download=output.download,
            mib=lambda n: f"{n / 1048576:,.1f} MiB",
            percent=lambda x: f"{x:.1%}",
        )

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.home)
        app.router.add_get("/fleet", self.fleet)
        app.router.add_get("/devices/{device_id}", self.device)
        app.router.add_get("/rollouts", self.rollouts)
        app.router.add_get("/rollouts/plan", self.plan)
        app.router.add_get("/rollouts/{rollout_id:[0-9]{1,12}}", self.rollout)
        app.router.add_post("/rollouts/{rollout_id:[0-9]{1,12}}/{action}", self.change_rollout)
        app.router.add_get("/models", self.models)
        app.router.add_get("/models/{name}", self.model)
        app.router.add_get("/audit", self.audit)
        app.router.add_get("/audit/export", self.audit_export)

    async def _call(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(method, *args, **kwargs)

    async def _operator(self) -> Operator:
        name, role, permissions = await self._call(self.client.whoami)
        return Operator(name, role, permissions)

    def _page(
        self, request: web.Request, template: str, title: str, operator: Operator, **values: Any
    ) -> web.Response:
        """The whole page, or only its live part when the page's script asks."""
        fragment = request.query.get("fragment") == "live"
        html = self.templates.get_template(template).render(
            title=title,
            operator=operator,
            csrf=request.app[SESSION].csrf,
            controller=self.client.address,
            path=request.path,
            fragment=fragment,
            refresh_seconds=REFRESH_SECONDS,
            **values,
        )
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    def error_page(self, request: web.Request, status: int, message: str) -> web.Response:
        html = self.templates.get_template("error.html").render(
            title=f"{status}",
            status=status,
            message=message,
            operator=None,
            path="",
            controller=self.client.address,
            fragment=False,
            refresh_seconds=0,
            csrf="",
        )
        return web.Response(status=status, text=html, content_type="text/html", charset="utf-8")

    async def home(self, request: web.Request) -> web.Response:
        return web.Response(status=303, headers={"Location": "/fleet"})

    async def fleet(self, request: web.Request) -> web.Response:
        selector_text = request.query.get("selector", "").strip()
        selector = parse_selector(selector_text)
        size = _page_size(request.query.get("size", "50"))
        after = request.query.get("after", "")
        if len(after) > 64:
            raise MalformedInputError("after: not a device id")
        operator, summary, (devices, next_token) = await asyncio.gather(
            self._operator(),
            self._call(self.client.fleet_summary, selector),
            self._call(self.client.device_page, after, size, "", selector),
        )
        return self._page(
            request,
            "fleet.html",
            "Fleet",
            operator,
            summary=summary,
            devices=[DeviceRow(d) for d in devices],
            selector=selector_text,
            size=size,
            sizes=PAGE_SIZES,
            after=after,
            next_token=next_token,
        )

    async def device(self, request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        operator = await self._operator()
        found = await self._call(self.client.list_devices, device_id)
        if not found:
            raise NotFoundError(f"device {device_id} is not enrolled")
        records: list[dict[str, Any]] = []
        if operator.may("audit.read"):
            raw, _ = await self._call(self.client.query_audit, device_id, "", "", "", "", 20, False)
            records = [_record(r) for r in raw]
        return self._page(
            request,
            "device.html",
            f"Device {device_id}",
            operator,
            device=DeviceRow(found[0]),
            records=records,
        )

    async def rollouts(self, request: web.Request) -> web.Response:
        operator, views = await asyncio.gather(
            self._operator(), self._call(self.client.list_rollouts)
        )
        return self._page(
            request,
            "rollouts.html",
            "Rollouts",
            operator,
            rollouts=[RolloutProgress(v) for v in sorted(views, key=lambda v: -v.id)],
        )

    async def rollout(self, request: web.Request) -> web.Response:
        rollout_id = int(request.match_info["rollout_id"])
        operator, view = await asyncio.gather(
            self._operator(), self._call(self.client.get_rollout, rollout_id)
        )
        return self._page(
            request,
            "rollout.html",
            f"Rollout {rollout_id}",
            operator,
            rollout=RolloutProgress(view),
            done=request.query.get("done", ""),
        )

    async def change_rollout(self, request: web.Request) -> web.Response:
        rollout_id = int(request.match_info["rollout_id"])
        action = request.match_info["action"]
        if action not in ACTION_NEEDS:
            raise NotFoundError(f"no rollout action {action[:32]!r}: {', '.join(ACTION_NEEDS)}")
        await self._call(self.client.change_rollout, rollout_id, action)
        location = f"/rollouts/{rollout_id}?done={action}"
        return web.Response(status=303, headers={"Location": location})

    async def plan(self, request: web.Request) -> web.Response:
        query = request.query
        operator = await self._operator()
        ref = query.get("model", "").strip()
        plan = None
        if ref:
            name, _, version = ref.partition("@")
            strategy = Strategy(
                canary=_count(query.get("canary", "0"), "canary"),
                waves=tuple(w.strip() for w in query.get("waves", "100%").split(",")),
            )
            plan = await self._call(
                self.client.plan_rollout,
                name,
                version,
                parse_selector(query.get("selector", "")),
                strategy,
            )
        return self._page(
            request,
            "plan.html",
            "Plan a rollout",
            operator,
            plan=plan,
            query=query,
        )

    async def models(self, request: web.Request) -> web.Response:
        operator, entries = await asyncio.gather(
            self._operator(), self._call(self.client.list_models)
        )
        families: dict[str, list[Any]] = {}
        for entry in entries:
            families.setdefault(entry.name, []).append(entry)
        return self._page(request, "models.html", "Models", operator, families=families)

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        operator, (versions, speeds), entries = await asyncio.gather(
            self._operator(),
            self._call(self.client.model_report, name),
            self._call(self.client.list_models, name),
        )
        # the devices running each version: one call per version, made at once
        shown = await asyncio.gather(
            *(self._call(self.client.list_models, name, entry.version) for entry in entries)
        )
        where = {
            entry.version: found[0] if found else entry
            for entry, found in zip(entries, shown, strict=True)
        }
        return self._page(
            request,
            "model.html",
            f"Model {name}",
            operator,
            name=name,
            versions=versions,
            speeds=speeds,
            where=where,
            chart=quantization_chart(versions),
        )

    async def audit(self, request: web.Request) -> web.Response:
        query = request.query
        filters = {
            key: query.get(key, "").strip()[:128]
            for key in ("device", "actor", "action", "since", "until")
        }
        operator = await self._operator()
        records: list[dict[str, Any]] = []
        truncated = False
        if operator.may("audit.read"):
            raw, truncated = await self._call(
                self.client.query_audit,
                filters["device"],
                filters["actor"],
                filters["action"],
                _moment(filters["since"], "since"),
                _moment(filters["until"], "until"),
                AUDIT_LIMIT,
                False,
            )
            records = [_record(r) for r in raw]
        devices: list[DeviceView] = []
        tamper_alerts: int | None = None  # (unknown without devices.read)
        if filters["device"] and filters["device"] != "controller":
            devices = await self._call(self.client.list_devices, filters["device"])
        elif operator.may("devices.read"):
            tamper_alerts = (await self._call(self.client.fleet_summary)).tamper_alerts
        return self._page(
            request,
            "audit.html",
            "Audit",
            operator,
            records=records,
            truncated=truncated,
            filters=filters,
            limit=AUDIT_LIMIT,
            chains=[DeviceRow(d) for d in devices],
            tamper_alerts=tamper_alerts,
        )

    async def audit_export(self, request: web.Request) -> web.StreamResponse:
        """The signed export, as `edgefleetctl audit export` writes it, as a download."""
        query = request.query
        kind = query.get("format", "jsonl")
        if kind not in ("jsonl", "csv"):
            raise MalformedInputError("format: jsonl or csv")
        device = query.get("device", "").strip()[:128] or None
        since = _moment(query.get("since", "").strip(), "since")
        until = _moment(query.get("until", "").strip(), "until")
        name = f"audit-{device or 'fleet'}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{kind}"
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as records:
            header = await self._call(self._spool_export, records, device, since, until)
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/csv" if kind == "csv" else "application/x-ndjson",
                    "Content-Disposition": f'attachment; filename="{name}"',
                }
            )
            await response.prepare(request)
            blocks = render_export(header, _lines(records), kind)
            while (block := await self._call(next, blocks, None)) is not None:
                await response.write(block)
            await response.write_eof()
            return response

    def _spool_export(
        self, records: IO[bytes], device: str | None, since: str, until: str
    ) -> bytes:
        """Write the export's records to ``records`` (one per line); return its signed
        header (the controller sends it last)."""
        header = b""
        for record, trailer in self.client.export_audit(device, since, until):
            if trailer:
                header = trailer
            else:
                records.write(record + b"\n")
        if not header:
            raise TransportError("the export ended without its signed manifest")
        records.seek(0)
        return header


def _lines(records: IO[bytes]) -> Iterator[bytes]:
    for line in records:
        yield line.rstrip(b"\n")


class DeviceRow:
    """A device as the fleet table and the device page show it."""

    def __init__(self, view: DeviceView) -> None:
        self.view = view
        active = {m.name: m.version for m in view.models if m.active}
        self.running = sorted(f"{n}@{v}" for n, v in active.items())
        self.to_run = sorted(f"{a.name}@{a.version}" for a in view.assignments)
        self.converged = set(self.running) >= set(self.to_run)
        self.backlog = max(0, view.audit_head_seq - view.audit_stored_seq)
        requests = sum(h.requests for h in view.health)
        errors = sum(h.errors for h in view.health)
        if any(h.smoke == "failed" for h in view.health):
            self.health = "smoke test failed"
        elif errors:
            self.health = f"{errors} errors in {requests} requests"
        else:
            self.health = "ok" if view.health else "not reported"

    @property
    def status(self) -> str:
        """One word for the row's badge."""
        if self.view.state != "active":
            return self.view.state
        if self.view.audit_alert:
            return "tamper"
        if self.view.stale:
            return "stale"
        return "ok" if self.converged else "updating"


class RolloutProgress:
    """A rollout's waves, each with its devices counted by state, and its gates."""

    def __init__(self, view: RolloutView) -> None:
        self.view = view
        waves: dict[int, dict[str, int]] = {}
        for target in view.targets:
            counts = waves.setdefault(target.wave, {})
            counts[target.state] = counts.get(target.state, 0) + 1
        self.waves = [
            Wave(
                index,
                counts,
                _phase(index, view.current_wave, view.state),
                view.strategy.canary > 0,
            )
            for index, counts in sorted(waves.items())
        ]
        self.failed = sum(w.counts.get("failed", 0) for w in self.waves)
        self.actions = view.actions

    @property
    def wave_label(self) -> str:
        return f"{min(self.view.current_wave + 1, self.view.waves)}/{self.view.waves}"


def _phase(index: int, current: int, state: str) -> str:
    """Where one wave stands: done, current, waiting; once the rollout ended early, the
    wave it ended in says how (halted, aborted, rolled_back) and later ones never began."""
    if index < current or state == "completed":
        return "done"
    if index > current:
        return "waiting" if state in ("running", "paused") else "never started"
    return "current" if state == "running" else state


@dataclass(frozen=True)
class Wave:
    """One wave of a rollout: its devices counted by state, and where the rollout is."""

    index: int
    counts: dict[str, int]
    phase: str
    has_canary: bool

    @property
    def name(self) -> str:
        return "canary" if self.index == 0 and self.has_canary else f"wave {self.index + 1}"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def healthy(self) -> int:
        return self.counts.get("healthy", 0)


def parse_selector(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (the form's field) as a selector; bad input is one clear error."""
    selector: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not LABEL.match(key.strip()) or not LABEL.match(value.strip()):
            raise MalformedInputError(
                f"selector: {part[:80]!r} is not key=value (letters, digits, . _ / -)"
            )
        selector[key.strip()] = value.strip()
    if len(selector) > 16:
        raise MalformedInputError("selector: at most 16 labels")
    return selector


def _page_size(text: str) -> int:
    size = _count(text, "size")
    if size not in PAGE_SIZES:
        raise MalformedInputError(f"size: one of {', '.join(map(str, PAGE_SIZES))}")
    return size


def _count(text: str, what: str) -> int:
    if not text.strip().isdigit() or len(text.strip()) > 7:
        raise MalformedInputError(f"{what}: a whole number")
    return int(text)


def _moment(text: str, what: str) -> str:
    """A time filter as `audit query --since` takes it (``-2h``, ``today``, a date)."""
    if not text:
        return ""
    try:
        return time_bound(text)
    except argparse.ArgumentTypeError as e:
        raise MalformedInputError(f"{what}: {e}") from e


def _record(raw: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(raw)
    document["details_text"] = json.dumps(document.get("details", {}), sort_keys=True)
    return document
