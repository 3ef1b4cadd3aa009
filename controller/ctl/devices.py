"""`edgefleetctl token …` (enrollment tokens) and `devices …`: enroll, list, show, accept,
reject, revoke and preauthorize devices."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from edgefleet.cli_support import Subcommands, handled_by, key_value, positive_int
from edgefleet.controller.ctl.connect import with_client
from edgefleet.errors import ConfigError, NotFoundError

if TYPE_CHECKING:
    from edgefleet.controller.ctl.client import OperatorClient
    from edgefleet.fleet import DeviceView


def register_token(commands: Subcommands) -> None:
    token = commands.add_parser("token", help="enrollment tokens").add_subparsers(
        dest="action", required=True
    )
    create = handled_by(
        token.add_parser("create", help="a one-time enrollment token"), with_client(_token_create)
    )
    create.add_argument("--label", type=key_value, action="append", default=[], metavar="K=V")
    create.add_argument(
        "--ttl", type=positive_int, default=3600, help="seconds until it expires (default 3600)"
    )


def register_devices(commands: Subcommands) -> None:
    devices = commands.add_parser("devices", help="enrolled devices").add_subparsers(
        dest="action", required=True
    )
    devices_list = handled_by(
        devices.add_parser("list", help="every device and its last report"),
        with_client(_devices_list),
    )
    devices_list.add_argument("--json", action="store_true")
    devices_show = handled_by(
        devices.add_parser("show", help="one device: status, health, assignments"),
        with_client(_devices_show),
    )
    devices_show.add_argument("device_id")
    devices_show.add_argument("--json", action="store_true")
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
    preauthorize = handled_by(
        devices.add_parser("preauthorize", help="let a device key enroll without a token"),
        with_client(_devices_preauthorize),
    )
    preauthorize.add_argument("fingerprint", help="from `edgefleet-agent fingerprint`")
    preauthorize.add_argument("--label", type=key_value, action="append", default=[], metavar="K=V")


def _token_create(client: OperatorClient, args: argparse.Namespace) -> int:
    token, expires = client.create_token(dict(args.label), args.ttl)
    print(token)
    print(f"expires {expires}", file=sys.stderr)
    return 0


def _print_device(v: DeviceView, detail: bool) -> None:
    models = ", ".join(f"{m.name}@{m.version}{'*' if m.active else ''}" for m in v.models)
    seen = (v.last_seen or "never") + (" STALE" if v.stale else "")
    print(
        f"{v.device_id:<22} {v.hostname[:20]:<20} {seen:<33} "
        f"{v.audit_stored_seq:>6}  {models or '-'}"
    )
    pad = " " * 22
    active = {(m.name, m.version) for m in v.models if m.active}
    for a in v.assignments:
        if (a.name, a.version) not in active:
            print(f"{pad} to run {a.name}@{a.version} (not active yet)")
    if v.audit_head_seq > v.audit_stored_seq:
        print(f"{pad} audit backlog: {v.audit_head_seq - v.audit_stored_seq} record(s)")
    r = v.resources
    if r.known:
        print(
            f"{pad} {r.device_class}; model memory budget {r.memory_budget / 1048576:.0f}"
            f" MiB, disk free {r.disk_free / 1048576:.0f} MiB"
        )
    for b in v.bench:
        print(
            f"{pad} {b.model}@{b.version}: pp {b.prompt_tokens_per_second:.0f} tok/s, "
            f"tg {b.generation_tokens_per_second:.0f} tok/s ({b.threads} threads)"
        )
    for d in v.downloads:
        percent = 100 * d.received / d.total if d.total else 0
        why = f": {d.reason}" if d.reason else ""
        print(f"{pad} {d.name}@{d.version} {d.state} {percent:.0f} %{why}")
    if v.daily_data_budget:
        print(
            f"{pad} data today: {v.data_used_today / 1048576:.0f} of "
            f"{v.daily_data_budget / 1048576:.0f} MiB"
        )
    if detail:
        print(f"{pad} agent {v.agent_version or '?'}; labels {v.labels}")
        for h in v.health:
            speed = f", smoke {h.smoke_tokens_per_second:.1f} tok/s" if h.smoke else ""
            why = f" ({h.smoke_reason})" if h.smoke_reason else ""
            print(
                f"{pad} {h.name}@{h.version}: smoke {h.smoke or 'not run'}{why}{speed}, "
                f"{h.requests} requests, {h.errors} failed"
            )
    if v.state != "active":
        print(f"{pad} state: {v.state}")
    if v.audit_alert:
        print(f"{pad} AUDIT TAMPER ALERT: {v.audit_alert}")
    if v.last_error:
        print(f"{pad} last error: {v.last_error}")


def _devices_list(client: OperatorClient, args: argparse.Namespace) -> int:
    views = client.list_devices()
    if args.json:
        print(json.dumps([asdict(v) for v in views], indent=2))
        return 0
    print(f"{'DEVICE':<22} {'HOSTNAME':<20} {'LAST SEEN':<33} {'AUDIT':>6}  MODELS")
    for v in views:
        _print_device(v, detail=False)
    return 0


def _devices_show(client: OperatorClient, args: argparse.Namespace) -> int:
    view = next(iter(client.list_devices(args.device_id)), None)
    if view is None:
        raise NotFoundError(f"device {args.device_id} is not enrolled")
    if args.json:
        print(json.dumps(asdict(view), indent=2))
        return 0
    _print_device(view, detail=True)
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


def _devices_preauthorize(client: OperatorClient, args: argparse.Namespace) -> int:
    client.preauthorize(args.fingerprint.strip().lower(), dict(args.label))
    print(f"key {args.fingerprint[:16]}… may enroll without a token")
    return 0
