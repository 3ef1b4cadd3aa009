"""The fleet's counts and its label-filtered pages, computed by the database (SQLite and
PostgreSQL): each count is checked against the same figure worked out device by device."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from edgefleet.controller.fleet.devices import fleet_summary, list_devices
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import AuditHead, Device

GIB = 1024**3
STALE_AFTER = timedelta(minutes=5)


def _devices(db: Database) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for index in range(40):
        labels = {"site": f"s{index % 4}", "tier": "edge" if index % 2 else "core"}
        if index % 10 == 0:
            labels["device-class"] = "pi5"
        rows.append(
            {
                "device_id": f"dev-{index:03d}",
                "hostname": f"gw-{index}",
                "labels": labels,
                "state": ("active", "active", "active", "pending", "revoked")[index % 5],
                "key_fingerprint": f"{index:064x}",
                "certificate_serial": "0",
                "audit_public_key": "a" * 64,
                "enrolled_at": now,
                "last_seen": None if index % 7 == 0 else now - timedelta(minutes=index % 9),
                "installed": [],
                "bench": [],
                "downloads": [
                    {"name": "m", "version": "1", "received": 1, "total": 2, "state": "downloading"}
                ]
                if index % 6 == 0
                else [],
                "resources": {"machine": "aarch64" if index % 3 else "x86_64", "cpu_count": 4,
                              "memory_total": (8 if index % 2 else 4) * GIB},
                "health": [],
                "audit_head_seq": index * 10,
            }
        )  # fmt: skip
    heads = [
        {"chain": f"dev-{i:03d}", "last_seq": i * 7, "last_sha256": "0" * 64,
         "tamper_alert": i % 8 == 0, "tamper_reason": "x" if i % 8 == 0 else ""}
        for i in range(0, 40, 2)
    ]  # fmt: skip
    with db.engine.begin() as connection:
        connection.execute(insert(Device), rows)
        connection.execute(insert(AuditHead), heads)
    return rows


def _expected(rows: list[dict[str, Any]], selector: dict[str, str]) -> dict[str, Any]:
    now = datetime.now(UTC)
    heads = {f"dev-{i:03d}": (i * 7, i % 8 == 0) for i in range(0, 40, 2)}
    chosen = [r for r in rows if all(r["labels"].get(k) == v for k, v in selector.items())]
    active = [r for r in chosen if r["state"] == "active"]
    states: dict[str, int] = {}
    for r in chosen:
        states[str(r["state"])] = states.get(str(r["state"]), 0) + 1
    classes: dict[str, int] = {}
    for r in active:
        res = r["resources"]
        kind = r["labels"].get("device-class") or (
            f"{res['machine']} {res['cpu_count']} cpu {res['memory_total'] // GIB} GiB"
        )
        classes[kind] = classes.get(kind, 0) + 1
    return {
        "states": states,
        "classes": classes,
        "stale": sum(
            1 for r in active if r["last_seen"] is None or now - r["last_seen"] > STALE_AFTER
        ),
        "tamper_alerts": sum(1 for r in chosen if heads.get(str(r["device_id"]), (0, False))[1]),
        "downloading": sum(1 for r in active if r["downloads"]),
        "audit_backlog": sum(
            max(0, int(r["audit_head_seq"]) - heads.get(str(r["device_id"]), (0, False))[0])
            for r in active
        ),
    }


def test_counts_and_pages_follow_the_selector(database: Database) -> None:
    rows = _devices(database)
    for selector in ({}, {"site": "s1"}, {"site": "s2", "tier": "core"}, {"site": "nowhere"}):
        summary = fleet_summary(database, STALE_AFTER, selector)
        expected = _expected(rows, selector)
        assert {
            "states": summary.states,
            "classes": summary.classes,
            "stale": summary.stale,
            "tamper_alerts": summary.tamper_alerts,
            "downloading": summary.downloading,
            "audit_backlog": summary.audit_backlog,
        } == expected, selector
        matching = sorted(
            str(r["device_id"])
            for r in rows
            if all(r["labels"].get(k) == v for k, v in selector.items())
        )
        pages: list[str] = []
        after = ""
        while True:  # pages of 3, as a console pages them
            page = list_devices(database, STALE_AFTER, after, 3, selector=selector)
            pages += [view.device_id for view in page]
            if len(page) < 3:
                break
            after = page[-1].device_id
        assert pages == matching, selector


def test_a_selector_value_is_data_not_sql(database: Database) -> None:
    _devices(database)
    hostile = {"site": "s1' OR '1'='1", 'tier\\"': "x"}
    assert fleet_summary(database, STALE_AFTER, hostile).total == 0
    assert list_devices(database, STALE_AFTER, selector=hostile) == []
