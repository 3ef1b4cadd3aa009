"""`edgefleetctl token …` (enrollment tokens) and `devices …`: enroll, list, show, accept,
reject, revoke and preauthorize devices."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from edgefleet.cli_support import Subcommands, handled_by, key_value, positive_int
from edgefleet.controller.ctl import HELP
from edgefleet.controller.ctl.connect import with_client
from edgefleet.errors import ConfigError, NotFoundError
from edgefleet.output import (
    Column,
    add_output_option,
    download,
    labels,
    print_documents,
    print_list,
    when,
)

if TYPE_CHECKING:
    from edgefleet.controller.ctl.client import OperatorClient
    from edgefleet.controller.fleet.views import TokenView
    from edgefleet.fleet import DeviceView


def register_token(commands: Subcommands) -> None:
    token = commands.add_parser("token", help=HELP["token"]).add_subparsers(
        dest="action", required=True
    )
    create = handled_by(
        token.add_parser("create", help="a one-time enrollment token"), with_client(_token_create)
    )
    create.add_argument("--label", type=key_value, action="append", default=[], metavar="K=V")
    create.add_argument(
        "--ttl", type=positive_int, default=3600, help="seconds until it expires (default 3600)"
    )
    add_output_option(create, name=True)
    add_output_option(
        handled_by(
            token.add_parser("list", help="enrollment tokens: unused, used, expired, revoked"),
            with_client(_token_list),
        )
    )
    revoke = handled_by(
        token.add_parser("revoke", help="revoke an unused token (it enrolls nothing after)"),
        with_client(_token_revoke),
    )
    revoke.add_argument("token_id", help="from `token list` (16 hex digits)")


def register_devices(commands: Subcommands) -> None:
    devices = commands.add_parser("devices", help=HELP["devices"]).add_subparsers(
        dest="action", required=True
    )
    devices_list = handled_by(
        devices.add_parser("list", help="every device and its last report"),
        with_client(_devices_list),
    )
    devices_list.add_argument(
        "--selector", type=key_value, action="append", default=[], metavar="K=V",
        help="only devices with these labels (all of them)",
    )  # fmt: skip
    add_output_option(devices_list)
    devices_show = handled_by(
        devices.add_parser("show", help="one device: status, health, assignments"),
        with_client(_devices_show),
    )
    devices_show.add_argument("device_id")
    add_output_option(devices_show)
    for action, text in (
        ("accept", "accept a pending device"),
        ("revoke", "cut a device off from its next call"),
    ):
        handled_by(devices.add_parser(action, help=text), with_client(_devices_state)).add_argument(
            "device_id"
        )
    reject = handled_by(
        devices.add_parser("reject", help="reject a pending device (or all of them)"),
        with_client(_devices_state),
    )
    reject.add_argument("device_id", nargs="?", default="")
    reject.add_argument(
        "--all-pending", action="store_true", help="every device waiting for approval"
    )
    reject.add_argument("--from", dest="source", default="", help="only those from this address")
    handled_by(
        devices.add_parser("rm", help="forget a rejected or revoked device (audit kept)"),
        with_client(_devices_rm),
    ).add_argument("device_id")
    label = handled_by(
        devices.add_parser("label", help="set (k=v) and remove (--remove k) a device's labels"),
        with_client(_devices_label),
    )
    label.add_argument("device_id")
    label.add_argument("labels", nargs="*", type=key_value, metavar="K=V")
    label.add_argument("--remove", action="append", default=[], metavar="K")
    preauthorize = handled_by(
        devices.add_parser("preauthorize", help="let a device key enroll without a token"),
        with_client(_devices_preauthorize),
    )
    preauthorize.add_argument("fingerprint", help="from `edgefleet-agent fingerprint`")
    preauthorize.add_argument("--label", type=key_value, action="append", default=[], metavar="K=V")


def _token_create(client: OperatorClient, args: argparse.Namespace) -> int:
    """The secret alone on stdout (table and name), or the JSON/YAML document."""
    token, expires, token_id = client.create_token(dict(args.label), args.ttl)
    if args.output in ("json", "yaml"):
        document = {"token": token, "token_id": token_id, "expires_at": expires}
        print_documents({**document, "labels": dict(sorted(args.label))}, args.output)
        return 0
    print(token)
    print(f"token {token_id}, expires {when(expires)}; it is not shown again", file=sys.stderr)
    return 0


TOKEN_COLUMNS: tuple[Column[TokenView], ...] = (
    Column("token id", lambda t: t.token_id),
    Column("state", lambda t: t.state),
    Column("labels", lambda t: labels(t.labels)),
    Column("expires", lambda t: when(t.expires_at)),
    Column("device", lambda t: t.device_id),
    Column("created", lambda t: when(t.created_at), wide=True),
)


def _token_list(client: OperatorClient, args: argparse.Namespace) -> int:
    print_list(client.list_tokens(), TOKEN_COLUMNS, args.output, asdict, empty="no tokens")
    return 0


def _token_revoke(client: OperatorClient, args: argparse.Namespace) -> int:
    view = client.revoke_token(args.token_id.strip().lower())
    print(f"token {view.token_id} revoked: it enrolls nothing from now on")
    return 0


def _describe(v: DeviceView) -> None:
    """`devices show`: everything the controller knows of one device, one fact a line."""

    def line(key: str, value: object) -> None:
        print(f"{key + ':':<15}{value}")

    line("device", v.device_id)
    line("hostname", v.hostname or "-")
    line("state", _state(v))
    line("labels", labels(v.labels))
    line("last seen", when(v.last_seen))
    line("agent", v.agent_version or "?")
    if v.enrolled_from:
        line("enrolled from", v.enrolled_from)
    line("models", _models(v) or "-")
    active = {(m.name, m.version) for m in v.models if m.active}
    for a in v.assignments:
        if (a.name, a.version) not in active:
            line("to run", f"{a.name}@{a.version} (not active yet)")
    r = v.resources
    if r.known:
        line(
            "resources",
            f"{r.device_class}; model memory budget {r.memory_budget / 1048576:.0f} MiB, "
            f"disk free {r.disk_free / 1048576:.0f} MiB",
        )
    for b in v.bench:
        line(
            "speed",
            f"{b.model}@{b.version}: pp {b.prompt_tokens_per_second:.0f} tok/s, "
            f"tg {b.generation_tokens_per_second:.0f} tok/s ({b.threads} threads)",
        )
    for d in v.downloads:
        line("download", f"{download(d)} ({d.received}/{d.total} bytes)")
    if v.daily_data_budget:
        line(
            "data today",
            f"{v.data_used_today / 1048576:.0f} of {v.daily_data_budget / 1048576:.0f} MiB",
        )
    for h in v.health:
        speed = f", smoke {h.smoke_tokens_per_second:.1f} tok/s" if h.smoke else ""
        why = f" ({h.smoke_reason})" if h.smoke_reason else ""
        line(
            "health",
            f"{h.name}@{h.version}: smoke {h.smoke or 'not run'}{why}{speed}, "
            f"{h.requests} requests, {h.errors} failed",
        )
    backlog = v.audit_head_seq - v.audit_stored_seq
    line("audit", f"{v.audit_stored_seq} stored" + (f", {backlog} to come" if backlog > 0 else ""))
    if v.audit_alert:
        line("AUDIT TAMPER ALERT", v.audit_alert)
    if v.last_error:
        line("last error", v.last_error)


def _state(v: DeviceView) -> str:
    return f"{v.state}, stale" if v.stale else v.state


def _models(v: DeviceView) -> str:
    return " ".join(f"{m.name}@{m.version}{'*' if m.active else ''}" for m in v.models)


def _notes(v: DeviceView) -> str:
    """What needs an operator's eye, most urgent first."""
    notes = ["AUDIT TAMPER ALERT"] if v.audit_alert else []
    notes += [f"{h.name}@{h.version} FAILED smoke test" for h in v.health if h.smoke == "failed"]
    active = {(m.name, m.version) for m in v.models if m.active}
    notes += [
        f"to run {a.name}@{a.version}" for a in v.assignments if (a.name, a.version) not in active
    ]
    notes += [download(d, reason=False) for d in v.downloads]
    if v.audit_head_seq > v.audit_stored_seq:
        notes.append(f"audit backlog {v.audit_head_seq - v.audit_stored_seq}")
    if v.last_error:
        notes.append(f"error: {v.last_error[:60]}")
    return "; ".join(notes)


def _speed(v: DeviceView) -> str:
    return " ".join(
        f"{b.model}@{b.version} tg {b.generation_tokens_per_second:.0f} tok/s" for b in v.bench
    )


def _mib(value: int) -> str:
    return f"{value / 1048576:.0f} MiB" if value else ""


DEVICE_COLUMNS: tuple[Column[DeviceView], ...] = (
    Column("device", lambda v: v.device_id),
    Column("state", _state),
    Column("labels", lambda v: labels(v.labels)),
    Column("last seen", lambda v: when(v.last_seen)),
    Column("models", _models),
    Column("hostname", lambda v: v.hostname[:32], wide=True),
    Column("agent", lambda v: v.agent_version, wide=True),
    Column("class", lambda v: v.resources.device_class, wide=True),
    Column("budget", lambda v: _mib(v.resources.memory_budget), wide=True),
    Column("disk free", lambda v: _mib(v.resources.disk_free), wide=True),
    Column("data today", lambda v: _mib(v.data_used_today), wide=True),
    Column("speed", _speed, wide=True),
    Column("notes", _notes),
)


def _devices_list(client: OperatorClient, args: argparse.Namespace) -> int:
    views = client.list_devices(selector=dict(args.selector))
    print_list(views, DEVICE_COLUMNS, args.output, asdict, empty="no devices")
    return 0


def _devices_show(client: OperatorClient, args: argparse.Namespace) -> int:
    view = next(iter(client.list_devices(args.device_id)), None)
    if view is None:
        raise NotFoundError(f"device {args.device_id} is not enrolled")
    if args.output in ("json", "yaml"):
        print_documents(asdict(view), args.output)
        return 0
    _describe(view)
    return 0


def _devices_state(client: OperatorClient, args: argparse.Namespace) -> int:
    if getattr(args, "all_pending", False):
        if args.device_id:
            raise ConfigError("give a device id or --all-pending, not both")
        count = client.reject_pending(args.source)
        print(f"{count} pending device(s) rejected")
        return 0
    if not args.device_id:
        raise ConfigError(f"devices {args.action} needs a device id")
    if getattr(args, "source", ""):
        raise ConfigError("--from goes with --all-pending")
    print(f"{args.device_id}: {client.set_device_state(args.device_id, args.action)}")
    return 0


def _devices_rm(client: OperatorClient, args: argparse.Namespace) -> int:
    client.remove_device(args.device_id)
    print(f"{args.device_id} removed (its audit records stay)")
    return 0


def _devices_label(client: OperatorClient, args: argparse.Namespace) -> int:
    if not args.labels and not args.remove:
        raise ConfigError("give labels to set (k=v) or to remove (--remove k)")
    after = client.label_device(args.device_id, dict(args.labels), args.remove)
    print(f"{args.device_id}: {labels(after)}")
    return 0


def _devices_preauthorize(client: OperatorClient, args: argparse.Namespace) -> int:
    client.preauthorize(args.fingerprint.strip().lower(), dict(args.label))
    print(f"key {args.fingerprint[:16]}… may enroll without a token")
    return 0
