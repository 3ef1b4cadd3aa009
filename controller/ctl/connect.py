"""How an operator command reaches the controller: the operator config named by
``--config`` or ``EDGEFLEETCTL_CONFIG``, and a client open for the command's run."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from edgefleet.cli_support import Handler
from edgefleet.controller.ctl.client import OperatorClient, OperatorCredential
from edgefleet.errors import ConfigError

CONFIG_ENV = "EDGEFLEETCTL_CONFIG"
Operation = Callable[[OperatorClient, argparse.Namespace], int]


def connect(args: argparse.Namespace) -> OperatorClient:
    """A client with the operator's credential (the controller address may be overridden)."""
    path = args.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is None:
        raise ConfigError(f"no operator config: pass --config or set {CONFIG_ENV}")
    return OperatorClient(OperatorCredential.load(path, args.controller))


def with_client(operation: Operation) -> Handler:
    """The handler that runs ``operation`` with a client, closed afterwards."""

    def handler(args: argparse.Namespace) -> int:
        client = connect(args)
        try:
            return operation(client, args)
        finally:
            client.close()

    return handler
