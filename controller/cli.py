"""`edgefleetctl`: initialize and serve a controller, and operate it over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from controller.client import OperatorClient, OperatorCredential
from controller.config import load_controller_config
from controller.datadir import initialize
from controller.service import serve
from edgefleet.cli_support import key_value, run_command
from edgefleet.errors import ConfigError
from edgefleet.logging import configure_logging

PROG = "edgefleetctl"
CONFIG_ENV = "EDGEFLEETCTL_CONFIG"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Operate an edgefleet controller.")
    parser.add_argument("--config", type=Path, help=f"operator config file (env {CONFIG_ENV})")
    parser.add_argument("--controller", help="override the controller HOST:PORT of the config")
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="create a new controller data directory")
    init.add_argument("--data-dir", type=Path, required=True)
    init.add_argument("--fleet-name", default="edgefleet")
    init.add_argument("--host", action="append", default=[], help="extra name/IP for the TLS cert")
    init.add_argument("--advertise", default="127.0.0.1:7443", help="address operators dial")

    serve_cmd = commands.add_parser("serve", help="run the controller's gRPC server")
    serve_cmd.add_argument("--data-dir", type=Path, required=True)
    serve_cmd.add_argument("--listen", help="mTLS HOST:PORT (default 127.0.0.1:7443)")
    serve_cmd.add_argument("--enroll-listen", help="enrollment HOST:PORT (default 127.0.0.1:7444)")
    serve_cmd.add_argument("--database-url", help="SQLAlchemy URL (default SQLite in data dir)")
    serve_cmd.add_argument("--log-level", default="INFO")

    token = commands.add_parser("token", help="enrollment tokens").add_subparsers(
        dest="action", required=True
    )
    create = token.add_parser("create", help="a one-time enrollment token")
    create.add_argument("--label", type=key_value, action="append", default=[], metavar="K=V")
    create.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")

    models = commands.add_parser("models", help="the model catalog").add_subparsers(
        dest="action", required=True
    )
    publish = models.add_parser("publish", help="hash, check, sign and store a GGUF model")
    publish.add_argument("file", type=Path)
    publish.add_argument("--name", required=True)
    publish.add_argument("--version", required=True)

    rollout = commands.add_parser("rollout", help="model rollouts").add_subparsers(
        dest="action", required=True
    )
    rollout_create = rollout.add_parser("create", help="assign NAME@VERSION to matching devices")
    rollout_create.add_argument("ref", metavar="NAME@VERSION")
    rollout_create.add_argument("--selector", type=key_value, action="append", default=[])

    devices = commands.add_parser("devices", help="enrolled devices").add_subparsers(
        dest="action", required=True
    )
    devices_list = devices.add_parser("list", help="every device and its last report")
    devices_list.add_argument("--json", action="store_true")

    audit = commands.add_parser("audit", help="audit trail").add_subparsers(
        dest="action", required=True
    )
    export = audit.add_parser("export", help="write records verbatim as JSON lines")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--device", help="only this device's chain")
    return parser


def _client(args: argparse.Namespace) -> OperatorClient:
    path = args.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is None:
        raise ConfigError(f"no operator config: pass --config or set {CONFIG_ENV}")
    return OperatorClient(OperatorCredential.load(path, args.controller))


def _cmd_init(args: argparse.Namespace) -> int:
    result = initialize(args.data_dir, args.fleet_name, args.host, args.advertise)
    print(f"initialized {args.data_dir}")
    print(f"root fingerprint: {result.root_fingerprint}")
    print(f"operator config:  {result.operator_config}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    configure_logging("json", args.log_level)
    config = load_controller_config(
        args.data_dir,
        listen=args.listen,
        enroll_listen=args.enroll_listen,
        database_url=args.database_url,
    )
    asyncio.run(serve(config))
    return 0


def _split_ref(ref: str) -> tuple[str, str]:
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise ConfigError(f"{ref!r} is not NAME@VERSION")
    return name, version


def _operate(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        return _OPERATIONS[(args.command, args.action)](client, args)
    finally:
        client.close()


def _token_create(client: OperatorClient, args: argparse.Namespace) -> int:
    token, expires = client.create_token(dict(args.label), args.ttl)
    print(token)
    print(f"expires {expires}", file=sys.stderr)
    return 0


def _models_publish(client: OperatorClient, args: argparse.Namespace) -> int:
    r = client.publish(args.file, args.name, args.version)
    print(
        f"published {r.name}@{r.version} sha256={r.sha256} length={r.length} "
        f"arch={r.architecture} params={r.parameter_count} quant={r.quantization} "
        f"ctx={r.context_length} targets_version={r.targets_version}"
    )
    return 0


def _rollout_create(client: OperatorClient, args: argparse.Namespace) -> int:
    name, version = _split_ref(args.ref)
    rollout_id, device_ids = client.create_rollout(name, version, dict(args.selector))
    print(f"rollout {rollout_id}: {name}@{version} assigned to {len(device_ids)} device(s)")
    for device_id in device_ids:
        print(f"  {device_id}")
    return 0


def _devices_list(client: OperatorClient, args: argparse.Namespace) -> int:
    views = client.list_devices()
    if args.json:
        print(json.dumps([asdict(v) for v in views], indent=2))
        return 0
    print(f"{'DEVICE':<22} {'HOSTNAME':<20} {'LAST SEEN':<27} {'AUDIT':>6}  MODELS")
    for v in views:
        models = ", ".join(f"{m.name}@{m.version}{'*' if m.active else ''}" for m in v.models)
        print(
            f"{v.device_id:<22} {v.hostname[:20]:<20} {v.last_seen or 'never':<27} "
            f"{v.audit_stored_seq:>6}  {models or '-'}"
        )
        for b in v.bench:
            print(
                f"{'':<22} {b.model}@{b.version}: pp {b.prompt_tokens_per_second:.0f} tok/s, "
                f"tg {b.generation_tokens_per_second:.0f} tok/s ({b.threads} threads)"
            )
        if v.last_error:
            print(f"{'':<22} last error: {v.last_error}")
    return 0


def _audit_export(client: OperatorClient, args: argparse.Namespace) -> int:
    temporary = args.out.with_name(args.out.name + ".partial")
    count = 0
    with temporary.open("wb") as out:
        for _chain, _seq, canonical in client.export_audit(args.device):
            out.write(canonical + b"\n")
            count += 1
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(args.out)
    print(f"exported {count} record(s) to {args.out}")
    return 0


_OPERATIONS = {
    ("token", "create"): _token_create,
    ("models", "publish"): _models_publish,
    ("rollout", "create"): _rollout_create,
    ("devices", "list"): _devices_list,
    ("audit", "export"): _audit_export,
}


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "init":
        return _cmd_init(args)
    if args.command == "serve":
        return _cmd_serve(args)
    configure_logging("console", "WARNING")
    return _operate(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edgefleetctl`."""
    return run_command(PROG, _parser(), argv, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
