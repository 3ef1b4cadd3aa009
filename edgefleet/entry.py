"""The `edgefleetctl` entry point, installed with every edgefleet package: on a gateway
(the agent alone, without the `controller` extra) it says what to install instead of
failing with a traceback."""

from __future__ import annotations

import sys

# Imported only by the controller and the operator CLI (the `controller` extra).
CONTROLLER_ONLY = frozenset({"alembic", "grpc_health", "grpc_reflection"})


def edgefleetctl() -> int:
    try:
        from controller.ctl.main import main

        return main()
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in CONTROLLER_ONLY:
            raise
        print(
            f"edgefleetctl: error: this installation holds the agent only ({e.name} is "
            "missing): install the controller with pip install 'edgefleet[controller]'",
            file=sys.stderr,
        )
        return 1
