"""`edgefleetctl`: initialize and serve a controller, and operate it over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import grpc

from controller.app.config import load_controller_config
from controller.app.datadir import initialize
from controller.app.service import serve
from controller.ctl.client import OperatorClient, OperatorCredential
from controller.ctl.commands import OPERATIONS, audit_verify
from controller.ctl.keys import run_keys_command
from controller.ctl.quantize import add_quantize_parser, quantize_command
from controller.ctl.rollouts import add_rollout_parser
from edgefleet.cli_support import (
    add_completion_command,
    key_value,
    output_file,
    positive_int,
    run_command,
)
from edgefleet.config_files import split_address
from edgefleet.errors import ConfigError, TransportError
from edgefleet.logging import configure_logging

PROG = "edgefleetctl"
CONFIG_ENV = "EDGEFLEETCTL_CONFIG"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Operate an edgefleet controller.")
    parser.add_argument("--config", type=Path, help=f"operator config file (env {CONFIG_ENV})")
    parser.add_argument("--controller", help="override the controller HOST:PORT of the config")
    commands = parser.add_subparsers(dest="command", required=True)
    add_completion_command(commands)

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
    serve_cmd.add_argument(
        "--health-listen", help='plaintext gRPC health HOST:PORT (default 127.0.0.1:7445; "" off)'
    )
    serve_cmd.add_argument(
        "--metrics-listen", help='Prometheus /metrics HOST:PORT (default 127.0.0.1:9464; "" off)'
    )
    serve_cmd.add_argument("--log-level", default="INFO")

    health = commands.add_parser(
        "health", help="exit 0 when a controller's plaintext health port answers SERVING"
    )
    health.add_argument("--address", default="127.0.0.1:7445", help="its health_listen")
    health.add_argument("--timeout", type=float, default=3.0)

    _add_keys_parser(commands)

    token = commands.add_parser("token", help="enrollment tokens").add_subparsers(
        dest="action", required=True
    )
    create = token.add_parser("create", help="a one-time enrollment token")
    create.add_argument("--label", type=key_value, action="append", default=[], metavar="K=V")
    create.add_argument(
        "--ttl", type=positive_int, default=3600, help="seconds until it expires (default 3600)"
    )

    models = commands.add_parser("models", help="the model catalog").add_subparsers(
        dest="action", required=True
    )
    publish = models.add_parser("publish", help="hash, check, sign and store a GGUF model")
    publish.add_argument("file", type=Path)
    publish.add_argument("--name", required=True)
    publish.add_argument("--version", required=True)
    add_quantize_parser(models)

    bundle = commands.add_parser(
        "bundle", help="model bundles for air-gapped sites"
    ).add_subparsers(dest="action", required=True)
    bundle_export = bundle.add_parser(
        "export", help="one file with NAME@VERSION and its signed metadata chain"
    )
    bundle_export.add_argument("ref", metavar="NAME@VERSION")
    bundle_export.add_argument("--out", type=output_file, required=True)

    agent_bundle = commands.add_parser(
        "agent-bundle", help="offline install bundles of the agent for gateways"
    ).add_subparsers(dest="action", required=True)
    build = agent_bundle.add_parser(
        "build", help="the agent, its dependencies and llama.cpp for one platform (network)"
    )
    build.add_argument("--arch", choices=("aarch64", "x86_64"), required=True)
    build.add_argument("--llama-dir", type=Path, help="the llama.cpp wheels (make wheels-arm64)")
    build.add_argument("--out", type=output_file, required=True)
    sign_bundle = agent_bundle.add_parser(
        "sign", help="sign a bundle for this fleet with the controller's targets key(s)"
    )
    sign_bundle.add_argument("bundle", type=Path)
    sign_bundle.add_argument("--data-dir", type=Path, required=True)
    sign_bundle.add_argument("--out", type=output_file, required=True)

    add_rollout_parser(commands)

    devices = commands.add_parser("devices", help="enrolled devices").add_subparsers(
        dest="action", required=True
    )
    devices_list = devices.add_parser("list", help="every device and its last report")
    devices_list.add_argument("--json", action="store_true")
    devices_show = devices.add_parser("show", help="one device: status, health, assignments")
    devices_show.add_argument("device_id")
    devices_show.add_argument("--json", action="store_true")

    for action, text in (
        ("accept", "accept a pending device"),
        ("revoke", "cut a device off from its next call"),
    ):
        devices.add_parser(action, help=text).add_argument("device_id")
    reject = devices.add_parser("reject", help="reject a pending device (or all of them)")
    reject.add_argument("device_id", nargs="?", default="")
    reject.add_argument(
        "--all-pending", action="store_true", help="every device waiting for approval"
    )
    reject.add_argument("--from", dest="source", default="", help="only those from this address")
    preauthorize = devices.add_parser(
        "preauthorize", help="let a device key enroll without a token"
    )
    preauthorize.add_argument("fingerprint", help="from `edgefleet-agent fingerprint`")
    preauthorize.add_argument("--label", type=key_value, action="append", default=[], metavar="K=V")

    operator = commands.add_parser("operator", help="operators").add_subparsers(
        dest="action", required=True
    )
    add = operator.add_parser("add", help="a credential for a new operator, with a role")
    add.add_argument("name")
    add.add_argument(
        "--role",
        required=True,
        help="admin, release-manager, device-manager, auditor, viewer or a custom role",
    )
    add.add_argument("--out", type=Path, required=True, help="directory for the new credential")

    policy = commands.add_parser("policy", help="the fleet's signed RBAC policy").add_subparsers(
        dest="action", required=True
    )
    policy.add_parser("apply", help="validate, version and sign a policy file").add_argument(
        "file", type=Path
    )
    policy.add_parser("show", help="the policy in force")
    policy.add_parser("diff", help="what applying a file would change").add_argument(
        "file", type=Path
    )

    apps = commands.add_parser(
        "tokens", help="application tokens in the signed policy"
    ).add_subparsers(dest="action", required=True)
    app_create = apps.add_parser("create", help="a token for an application (printed once)")
    app_create.add_argument("subject", help="kind:name, e.g. app:sensor-hub")
    app_create.add_argument("--role", required=True, help="a role the policy defines")
    app_create.add_argument("--model", action="append", default=[], help="model name pattern")
    app_create.add_argument(
        "--device",
        type=key_value,
        action="append",
        default=[],
        metavar="K=V",
        help="only on devices with this label",
    )
    apps.add_parser("revoke", help="revoke a token").add_argument("token_id")

    audit = commands.add_parser("audit", help="audit trail").add_subparsers(
        dest="action", required=True
    )
    export = audit.add_parser("export", help="records verbatim with a signed manifest")
    export.add_argument("--out", type=output_file, required=True)
    export.add_argument("--device", help="only this device's chain (or `controller`)")
    export.add_argument("--since", default="", help="YYYY-MM-DDTHH:MM:SSZ, inclusive")
    export.add_argument("--until", default="", help="YYYY-MM-DDTHH:MM:SSZ, inclusive")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    query = audit.add_parser("query", help="find records by device, actor, action and time")
    query.add_argument("--device", default="")
    query.add_argument("--actor", default="")
    query.add_argument("--action", dest="record_action", default="")
    query.add_argument("--since", default="")
    query.add_argument("--until", default="")
    query.add_argument("--limit", type=int, default=100)
    query.add_argument("--json", action="store_true", help="the records verbatim, one per line")
    clear = audit.add_parser(
        "clear-alert", help="let a chain flagged as tampered take records again"
    )
    clear.add_argument("device_id")
    clear.add_argument("--reason", required=True, help="what the investigation found")
    verify = audit.add_parser("verify", help="verify an export offline, with the root fingerprint")
    verify.add_argument("file", type=Path)
    verify.add_argument("--root-fingerprint", required=True)
    return parser


def _add_keys_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser(
        "keys", help="the fleet's signing keys: every change is a new root version"
    ).add_subparsers(dest="action", required=True)

    def local(name: str, text: str) -> argparse.ArgumentParser:
        action = keys.add_parser(name, help=text)
        action.add_argument("--data-dir", type=Path, required=True)
        return action

    local("list", "roles, thresholds and keys of the current root and the draft")
    generate = keys.add_parser("generate", help="a new Ed25519 key file (e.g. for an offline root)")
    generate.add_argument("--out", type=output_file, required=True)
    for name, text in (("add", "let a key sign for a role"), ("rotate", "replace a role's keys")):
        action = local(name, text)
        action.add_argument("role")
        action.add_argument("--public", help="hex public key (from `keys generate`)")
    revoke = local("revoke", "stop a key signing for a role")
    revoke.add_argument("role")
    revoke.add_argument("keyid", help="at least 8 leading hex digits")
    threshold = local("threshold", "how many of a role's keys must sign")
    threshold.add_argument("role")
    threshold.add_argument("count", type=positive_int)
    local("renew", "the same keys as a new root version with a fresh expiry")
    local("show-draft", "the draft root, its signatures and what it still needs")
    export = local("export-draft", "write the draft for signing on another machine")
    export.add_argument("--out", type=output_file, required=True)
    sign = keys.add_parser("sign", help="sign an exported draft with a key file (offline)")
    sign.add_argument("file", type=Path)
    sign.add_argument("--key", type=Path, required=True)
    local("import-signatures", "merge the signatures of a signed draft").add_argument(
        "file", type=Path
    )
    local("publish", "publish the draft once a threshold of old and new root keys signed it")


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
        health_listen=args.health_listen,
        metrics_listen=args.metrics_listen,
    )
    asyncio.run(serve(config))
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    """For container health checks and scripts: no credentials, one line, exit status."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    split_address(args.address)
    with grpc.insecure_channel(args.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=args.timeout
            )
        except grpc.RpcError as e:
            raise TransportError(f"{args.address}: {e.code().name.lower()}") from e
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _cmd_agent_bundle(args: argparse.Namespace) -> int:
    from controller.catalog.agent_bundles import build_bundle, sign_bundle

    if args.action == "build":
        release = build_bundle(args.arch, args.out, args.llama_dir)
        size = args.out.stat().st_size / 1024**2
        builds = ", ".join(b.name for b in release.llama)
        print(f"{args.out}: agent {release.version} for {release.arch}, {len(release.files)} "
              f"files, {size:.0f} MiB, llama.cpp builds: {builds} (unsigned)")  # fmt: skip
        return 0
    release = sign_bundle(args.bundle, args.data_dir, args.out)
    installer = hashlib.sha256(_member(args.out, "install.py")).hexdigest()
    print(f"{args.out}: agent {release.version} for {release.arch}, signed for this fleet")
    print(f"install.py sha256 {installer} (check it on site before running it)")
    return 0


def _member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        top = tar.getnames()[0].split("/")[0]
        extracted = tar.extractfile(f"{top}/{name}")
        return extracted.read() if extracted is not None else b""


def _operate(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        return OPERATIONS[(args.command, args.action)](client, args)
    finally:
        client.close()


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "init":
        return _cmd_init(args)
    if args.command == "serve":
        return _cmd_serve(args)
    if args.command == "health":
        configure_logging("console", "WARNING")
        return _cmd_health(args)
    if (args.command, getattr(args, "action", "")) == ("audit", "verify"):
        configure_logging("console", "WARNING")
        return audit_verify(args)
    if args.command == "agent-bundle":
        configure_logging("console", "WARNING")
        return _cmd_agent_bundle(args)
    if args.command == "keys":
        configure_logging("console", "WARNING")
        return run_keys_command(args)
    if (args.command, getattr(args, "action", "")) == ("models", "quantize"):
        configure_logging("console", "WARNING")
        return quantize_command(args, lambda: _client(args))
    configure_logging("console", "WARNING")
    return _operate(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edgefleetctl`."""
    return run_command(PROG, _parser(), argv, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
