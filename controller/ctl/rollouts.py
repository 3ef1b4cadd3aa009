"""`edgefleetctl rollout …`: create, plan, status, list, pause, resume, abort, rollback, pin,
unpin."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from edgefleet.cli_support import Subcommands, handled_by, key_value, positive_int, split_ref
from edgefleet.controller.ctl import HELP
from edgefleet.controller.ctl.connect import with_client
from edgefleet.controller.rollouts.strategy import STRATEGY_SCALARS, Strategy
from edgefleet.controller.rollouts.views import EXCLUDED, PinView, Plan, RolloutView
from edgefleet.errors import ConfigError, ConflictError, MalformedInputError, PermissionDeniedError
from edgefleet.output import (
    NAME,
    Column,
    add_output_option,
    labels,
    print_documents,
    print_list,
    when,
)

if TYPE_CHECKING:
    from edgefleet.controller.ctl.client import OperatorClient


def _add_strategy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="NAME@VERSION")
    parser.add_argument("--selector", type=key_value, action="append", default=[], metavar="K=V")
    defaults = Strategy()
    parser.add_argument("--canary", type=int, help="devices in the first wave (default: none)")
    parser.add_argument(
        "--waves",
        help="cumulative wave sizes after the canary, e.g. 25%%,50%%,100%% or 10,100 "
        "(default: every device in one wave)",
    )
    parser.add_argument(
        "--soak",
        type=int,
        dest="soak_seconds",
        help=f"seconds a wave stays healthy before the next (default {defaults.soak_seconds})",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        help=f"failed devices tolerated before the rollout halts (default {defaults.max_failures})",
    )
    parser.add_argument(
        "--max-error-rate",
        type=float,
        help=f"failed share of requests on a device (default {defaults.max_error_rate})",
    )
    parser.add_argument(
        "--min-requests",
        type=int,
        help=f"requests before the error rate is judged (default {defaults.min_requests})",
    )
    parser.add_argument(
        "--min-speed-ratio",
        type=float,
        help="smoke-test tokens/s against the version the device ran before "
        f"(default {defaults.min_speed_ratio})",
    )


def register(commands: Subcommands) -> None:
    """The `rollout` command group."""
    rollout = commands.add_parser("rollout", help=HELP["rollout"]).add_subparsers(
        dest="action", required=True
    )
    create = handled_by(
        rollout.add_parser(
            "create", help="roll NAME@VERSION out to matching devices, in gated waves"
        ),
        with_client(_create),
    )
    _add_strategy_arguments(create)
    create.add_argument(
        "--allow-empty",
        action="store_true",
        help="create it although no device matches yet (it waits for enrollments)",
    )
    create.add_argument(
        "--yes", action="store_true", help="no question when there is no --selector"
    )
    add_output_option(create, name=True)
    plan = handled_by(
        rollout.add_parser(
            "plan", help="which devices a rollout would give what, and why others are left out"
        ),
        with_client(_plan),
    )
    _add_strategy_arguments(plan)
    add_output_option(plan)
    status = handled_by(
        rollout.add_parser("status", help="a rollout and its devices"), with_client(_status)
    )
    status.add_argument("rollout_id", type=positive_int)
    status.add_argument(
        "--watch",
        action="store_true",
        help="follow until it ends: exit 0 when it completes, 1 when it halts or is aborted",
    )
    add_output_option(status)
    add_output_option(
        handled_by(
            rollout.add_parser("list", help="every rollout, newest first"), with_client(_list)
        )
    )
    for action, text in (
        ("pause", "stop starting new waves (health gates still halt)"),
        ("resume", "continue a paused rollout"),
        ("abort", "stop the rollout; devices keep what they have"),
        ("rollback", "return every device of the rollout to what it ran before"),
    ):
        handled_by(rollout.add_parser(action, help=text), with_client(_change)).add_argument(
            "rollout_id", type=positive_int
        )
    pin = handled_by(
        rollout.add_parser("pin", help="hold a device or group at NAME@VERSION"),
        with_client(_pin),
    )
    pin.add_argument("ref", metavar="NAME@VERSION")
    unpin = handled_by(
        rollout.add_parser("unpin", help="release a pin of NAME"), with_client(_unpin)
    )
    unpin.add_argument("name")
    pins = rollout.add_parser("pins", help="pins in force").add_subparsers(
        dest="pins_action", required=True
    )
    add_output_option(
        handled_by(
            pins.add_parser("list", help="every pin and how many devices it holds"),
            with_client(_pins_list),
        )
    )
    for parser in (pin, unpin):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--device", default="")
        target.add_argument("--selector", type=key_value, action="append", metavar="K=V")


def _strategy(args: argparse.Namespace) -> Strategy:
    given: dict[str, Any] = {}
    for name in STRATEGY_SCALARS:
        value = getattr(args, name)
        if value is not None:
            given[name] = value
    if args.waves is not None:
        given["waves"] = tuple(w.strip() for w in args.waves.split(",") if w.strip())
    try:
        return Strategy(**given, given=tuple(given))
    except MalformedInputError as e:
        raise ConfigError(str(e)) from e


def _print_plan(plan: Plan, name: str) -> None:
    included = [d for d in plan.devices if d.wave != EXCLUDED]
    excluded = [d for d in plan.devices if d.wave == EXCLUDED]
    for wave in range(plan.waves):
        members = [d for d in included if d.wave == wave]
        print(f"wave {wave + 1}: {len(members)} device(s)")
        for d in members:
            why = f" ({d.reason})" if d.reason else ""
            print(f"  {d.device_id}: {name}@{d.version}{why}")
    if excluded:
        print(f"excluded: {len(excluded)} device(s)")
        for d in excluded:
            print(f"  {d.device_id}: {d.reason}")


def _create(client: OperatorClient, args: argparse.Namespace) -> int:
    name, version = split_ref(args.ref)
    selector, strategy = dict(args.selector), _strategy(args)
    try:
        matched = len(client.plan_rollout(name, version, selector, strategy).devices)
    except PermissionDeniedError:  # a role that may create rollouts but not read plans
        matched = -1  # unknown: the controller decides alone
    if not matched and not args.allow_empty:
        raise ConfigError(
            f"{labels(selector) if selector else 'the fleet'} matches no device: check the "
            "labels (`devices list`), or pass --allow-empty to create a rollout that waits "
            "for devices to enroll"
        )
    if not selector:
        count = f" ({matched})" if matched >= 0 else ""
        print(f"no --selector: {name}@{version} goes to every device{count}", file=sys.stderr)
        if sys.stdin.isatty() and not args.yes and not _confirmed():
            raise ConfigError("not created (pass --selector, or --yes for the whole fleet)")
    response = client.create_rollout(name, version, selector, strategy)
    if args.output == NAME:
        print(response.rollout_id)
        return 0
    if args.output in ("json", "yaml"):
        print_documents(
            {
                "rollout_id": response.rollout_id,
                "device_ids": list(response.device_ids),
                "assigned": dict(response.assigned),
            },
            args.output,
        )
        return 0
    planned = sum(1 for d in response.plan.devices if d.wave != EXCLUDED)
    waves = f" in {response.plan.waves} waves" if response.plan.waves > 1 else ""
    print(
        f"rollout {response.rollout_id}: {name}@{version} assigned to "
        f"{len(response.device_ids)} device(s) now, {planned} in all{waves}"
    )
    for device_id in response.device_ids:
        given = response.assigned.get(device_id, version)
        print(f"  {device_id}" if given == version else f"  {device_id}: {name}@{given}")
    excluded = [d for d in response.plan.devices if d.wave == EXCLUDED]
    if excluded:
        print(f"excluded: {len(excluded)} device(s) (`rollout plan` says why)")
    return 0


def _confirmed() -> bool:
    try:
        return input("roll out to the whole fleet? [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _plan(client: OperatorClient, args: argparse.Namespace) -> int:
    name, version = split_ref(args.ref)
    plan = client.plan_rollout(name, version, dict(args.selector), _strategy(args))
    if args.output in ("json", "yaml"):
        print_documents(_document(plan), args.output)
        return 0
    _print_plan(plan, name)
    return 0


def _print_view(view: RolloutView, with_devices: bool) -> None:
    wave = f"wave {min(view.current_wave + 1, view.waves)}/{view.waves}"
    why = f" — {view.reason}" if view.reason else ""
    print(f"rollout {view.id}: {view.name}@{view.version} {view.state}, {wave}{why}")
    if not with_devices:
        return
    s = view.strategy
    print(
        f"  canary {s.canary}, waves {','.join(s.waves)}, soak {s.soak_seconds} s, "
        f"max failures {s.max_failures}, max error rate {s.max_error_rate:.1%} after "
        f"{s.min_requests} requests, min speed ratio {s.min_speed_ratio}"
    )
    for t in view.targets:
        before = f" (was {t.previous_version})" if t.previous_version else ""
        reason = f": {t.reason}" if t.reason else ""
        print(f"  wave {t.wave + 1} {t.device_id} {t.version}{before} {t.state}{reason}")


def _document(item: Plan | RolloutView) -> dict[str, Any]:
    """The documented JSON/YAML object of a plan or a rollout (docs/cli.md): snake_case,
    ids and counts as numbers; a rollout's strategy as it is in force."""
    document = asdict(item)
    if isinstance(item, RolloutView):
        document["strategy"].pop("given")  # which fields the operator set: internal
    return document


ROLLOUT_COLUMNS: tuple[Column[RolloutView], ...] = (
    Column("id", lambda v: v.id),
    Column("model", lambda v: f"{v.name}@{v.version}"),
    Column("state", lambda v: v.state),
    Column("wave", lambda v: f"{min(v.current_wave + 1, v.waves)}/{v.waves}"),
    Column("selector", lambda v: labels(v.selector) if v.selector else "(every device)"),
    Column("created", lambda v: when(v.created_at)),
    Column("by", lambda v: v.created_by, wide=True),
    Column("reason", lambda v: v.reason),
)


ENDED = {"completed": 0, "halted": 1, "aborted": 1, "rolled_back": 1}
WATCH_SECONDS = 2.0


def _progress(view: RolloutView) -> str:
    counts: dict[str, int] = {}
    for target in view.targets:
        counts[target.state] = counts.get(target.state, 0) + 1
    devices = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no devices"
    wave = f"wave {min(view.current_wave + 1, view.waves)}/{view.waves}"
    why = f": {view.reason}" if view.reason else ""
    return f"rollout {view.id} {view.state}, {wave}, {devices}{why}"


def _watch(client: OperatorClient, args: argparse.Namespace) -> int:
    """One line each time the rollout's progress changes, until it ends."""
    import time

    said = ""
    while True:
        view = client.get_rollout(args.rollout_id)
        line = _progress(view)
        if line != said:
            print(line, flush=True)
            said = line
        if view.state in ENDED:
            if args.output in ("json", "yaml"):
                print_documents(_document(view), args.output)
            if ENDED[view.state]:
                why = f": {view.reason}" if view.reason else ""
                raise ConflictError(f"rollout {view.id} {view.state.replace('_', ' ')}{why}")
            return 0
        time.sleep(WATCH_SECONDS)


def _status(client: OperatorClient, args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(client, args)
    view = client.get_rollout(args.rollout_id)
    if args.output in ("json", "yaml"):
        print_documents(_document(view), args.output)
        return 0
    _print_view(view, with_devices=True)
    return 0


def _list(client: OperatorClient, args: argparse.Namespace) -> int:
    print_list(client.list_rollouts(), ROLLOUT_COLUMNS, args.output, _document, "no rollouts")
    return 0


def _change(client: OperatorClient, args: argparse.Namespace) -> int:
    _print_view(client.change_rollout(args.rollout_id, args.action), with_devices=True)
    return 0


PIN_COLUMNS: tuple[Column[PinView], ...] = (
    Column("model", lambda p: f"{p.model}@{p.version}"),
    Column("device", lambda p: p.device_id),
    Column("selector", lambda p: labels(p.selector) if p.selector else ""),
    Column("devices", lambda p: p.devices),
    Column("by", lambda p: p.created_by),
    Column("since", lambda p: when(p.created_at)),
)


def _pins_list(client: OperatorClient, args: argparse.Namespace) -> int:
    print_list(client.list_pins(), PIN_COLUMNS, args.output, asdict, empty="no pins")
    return 0


def _pin(client: OperatorClient, args: argparse.Namespace) -> int:
    name, version = split_ref(args.ref)
    held = client.pin(name, version, args.device, dict(args.selector or []))
    print(f"{name} pinned at {version} on {len(held)} device(s)")
    for device_id in held:
        print(f"  {device_id}")
    return 0


def _unpin(client: OperatorClient, args: argparse.Namespace) -> int:
    released = client.unpin(args.name, args.device, dict(args.selector or []))
    print(f"{args.name} unpinned on {len(released)} device(s)")
    return 0
