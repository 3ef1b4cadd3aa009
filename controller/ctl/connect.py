"""How an operator command reaches the controller: the operator config named by
``--config`` or ``EDGEFLEETCTL_CONFIG``, and a client open for the command's run."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.cli_support import Handler
from edgefleet.errors import ConfigError

if TYPE_CHECKING:  # the client (gRPC, protobuf) loads when a command connects
    from edgefleet.controller.ctl.client import OperatorClient

CONFIG_ENV = "EDGEFLEETCTL_CONFIG"
Operation = Callable[["OperatorClient", argparse.Namespace], int]


def connect(args: argparse.Namespace) -> OperatorClient:
    """A client with the operator's credential (the controller address may be overridden)."""
    path = args.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is None:
        raise ConfigError(f"no operator config: pass --config or set {CONFIG_ENV}")
    from edgefleet.controller.ctl.client import OperatorClient, OperatorCredential

    return OperatorClient(OperatorCredential.load(path, args.controller))


def with_client(operation: Operation) -> Handler:
    """The handler that runs ``operation`` with a client, closed afterwards."""

    def handler(args: argparse.Namespace) -> int:
        client = connect(args)
        try:
            return operation(client, args)
        finally:
            client.close()

    _CLIENT_ONLY.add(handler)
    return handler


# Handlers made by with_client: they run no server code and log nothing (they print), so
# they skip structlog's set-up and its import.
_CLIENT_ONLY: set[Handler] = set()


def talks_to_the_controller_only(handler: Handler) -> bool:
    """Whether ``handler`` was made by :func:`with_client`."""
    return handler in _CLIENT_ONLY
