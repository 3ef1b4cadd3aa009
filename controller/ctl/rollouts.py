"""`edgefleetctl rollout …`: create, plan, status, list, pause, resume, abort, rollback, pin,
unpin."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from edgefleet.cli_support import Subcommands, handled_by, key_value, positive_int, split_ref
from edgefleet.controller.ctl.connect import with_client
from edgefleet.controller.rollouts.strategy import STRATEGY_SCALARS, Strategy
from edgefleet.controller.rollouts.views import EXCLUDED, Plan, RolloutView
from edgefleet.errors import ConfigError, MalformedInputError

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
    rollout = commands.add_parser("rollout", help="model rollouts").add_subparsers(
        dest="action", required=True
    )
    _add_strategy_arguments(
        handled_by(
            rollout.add_parser(
                "create", help="roll NAME@VERSION out to matching devices, in gated waves"
            ),
            with_client(_create),
        )
    )
    plan = handled_by(
        rollout.add_parser(
            "plan", help="which devices a rollout would give what, and why others are left out"
        ),
        with_client(_plan),
    )
    _add_strategy_arguments(plan)
    plan.add_argument("--json", action="store_true")
    status = handled_by(
        rollout.add_parser("status", help="a rollout and its devices"), with_client(_status)
    )
    status.add_argument("rollout_id", type=positive_int)
    status.add_argument("--json", action="store_true")
    handled_by(
        rollout.add_parser("list", help="every rollout, newest first"), with_client(_list)
    ).add_argument("--json", action="store_true")
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
    response = client.create_rollout(name, version, dict(args.selector), _strategy(args))
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


def _plan(client: OperatorClient, args: argparse.Namespace) -> int:
    name, version = split_ref(args.ref)
    plan = client.plan_rollout(name, version, dict(args.selector), _strategy(args))
    if args.json:
        print(_as_json(plan))
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


def _as_json(item: Plan | RolloutView) -> str:
    from edgefleet.controller.rpc.serde import as_json

    return json.dumps(as_json(item), indent=2)


def _status(client: OperatorClient, args: argparse.Namespace) -> int:
    view = client.get_rollout(args.rollout_id)
    if args.json:
        print(_as_json(view))
        return 0
    _print_view(view, with_devices=True)
    return 0


def _list(client: OperatorClient, args: argparse.Namespace) -> int:
    views = client.list_rollouts()
    if args.json:
        from edgefleet.controller.rpc.serde import as_json

        print(json.dumps([as_json(v) for v in views], indent=2))
        return 0
    for view in views:
        _print_view(view, with_devices=False)
    return 0


def _change(client: OperatorClient, args: argparse.Namespace) -> int:
    _print_view(client.change_rollout(args.rollout_id, args.action), with_devices=True)
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
