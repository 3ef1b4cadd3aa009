"""`edgefleetctl init`, `serve` and `health`: the commands run beside a controller rather
than against it. Server code is imported only when one of them runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefleet.cli_support import Subcommands, handled_by
from edgefleet.config_files import split_address
from edgefleet.controller.ctl import HELP
from edgefleet.errors import TransportError
from edgefleet.logging import add_service_log_options, configure_logging, service_renderer
from edgefleet.output import NAME, add_output_option, print_documents


def register(commands: Subcommands) -> None:
    init = handled_by(commands.add_parser("init", help=HELP["init"]), _init)
    init.add_argument("--data-dir", type=Path, required=True)
    init.add_argument("--fleet-name", default="edgefleet")
    init.add_argument("--host", action="append", default=[], help="extra name/IP for the TLS cert")
    init.add_argument("--advertise", default="127.0.0.1:7443", help="address operators dial")
    add_output_option(init, name=True)  # name: the root fingerprint alone

    serve = handled_by(commands.add_parser("serve", help=HELP["serve"]), _serve)
    serve.add_argument("--data-dir", type=Path, required=True)
    serve.add_argument("--listen", help="mTLS HOST:PORT (default 127.0.0.1:7443)")
    serve.add_argument("--enroll-listen", help="enrollment HOST:PORT (default 127.0.0.1:7444)")
    serve.add_argument("--database-url", help="SQLAlchemy URL (default SQLite in data dir)")
    serve.add_argument(
        "--health-listen", help='plaintext gRPC health HOST:PORT (default 127.0.0.1:7445; "" off)'
    )
    serve.add_argument(
        "--metrics-listen", help='Prometheus /metrics HOST:PORT (default 127.0.0.1:9464; "" off)'
    )
    add_service_log_options(serve)

    health = handled_by(
        commands.add_parser("health", help=HELP["health"]),
        _health,
    )
    health.add_argument("--address", default="127.0.0.1:7445", help="its health_listen")
    health.add_argument("--timeout", type=float, default=3.0)


def _init(args: argparse.Namespace) -> int:
    from edgefleet.controller.app.datadir import initialize

    result = initialize(args.data_dir, args.fleet_name, args.host, args.advertise)
    if args.output == NAME:
        print(result.root_fingerprint)
        return 0
    if args.output in ("json", "yaml"):
        document = {
            "data_dir": str(args.data_dir),
            "root_fingerprint": result.root_fingerprint,
            "operator_config": str(result.operator_config),
        }
        print_documents(document, args.output)
        return 0
    print(f"initialized {args.data_dir}")
    print(f"root fingerprint: {result.root_fingerprint}")
    print(f"operator config:  {result.operator_config}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from edgefleet.controller.app.config import load_controller_config
    from edgefleet.controller.app.service import serve

    configure_logging(service_renderer(args.log_format), args.log_level)
    config = load_controller_config(
        args.data_dir,
        listen=args.listen,
        enroll_listen=args.enroll_listen,
        database_url=args.database_url,
        health_listen=args.health_listen,
        metrics_listen=args.metrics_listen,
    )
    import asyncio

    asyncio.run(serve(config))
    return 0


def _health(args: argparse.Namespace) -> int:
    """For container health checks and scripts: no credentials, one line, exit status."""
    import grpc
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
