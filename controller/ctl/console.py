"""`edgefleetctl console`: serve the web console on this machine until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.cli_support import Subcommands, handled_by
from edgefleet.config_files import is_loopback, split_address
from edgefleet.controller.ctl import HELP
from edgefleet.controller.ctl.connect import with_client
from edgefleet.errors import ConfigError

if TYPE_CHECKING:
    from edgefleet.controller.ctl.client import OperatorClient

DEFAULT_LISTEN = "127.0.0.1:8470"


def register(commands: Subcommands) -> None:
    console = handled_by(
        commands.add_parser(
            "console",
            help=HELP["console"],
            description="Serve the fleet console on this machine. It acts with your operator "
            "credential; open the login URL it prints (its secret token sets the session cookie).",
        ),
        with_client(_console),
    )
    console.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where to serve it: a loopback address ({DEFAULT_LISTEN}; port 0 picks one)",
    )
    console.add_argument("--open", action="store_true", help="open it in the default browser")
    console.add_argument(
        "--url-file",
        metavar="PATH",
        help="also write the login URL to this file (mode 0600), for scripts",
    )


def _console(client: OperatorClient, args: argparse.Namespace) -> int:
    host, _ = split_address(args.listen)
    if not is_loopback(host):
        raise ConfigError(
            f"--listen {args.listen}: the console serves your operator credential, so it "
            "listens on loopback only (reach it from elsewhere through an SSH tunnel)"
        )
    client.whoami()  # a wrong credential or address fails here, before anything listens
    return asyncio.run(_serve(client, args))


async def _serve(client: OperatorClient, args: argparse.Namespace) -> int:
    from edgefleet.controller.console.app import Session, build
    from edgefleet.controller.console.pages import Pages
    from edgefleet.lifecycle import listen_http, until_signalled

    pages = Pages(client)
    session = Session()
    runner, bound = await listen_http(build(session, pages.routes, pages.error_page), args.listen)
    session.serve(bound)
    url = session.login_url()
    try:
        if args.url_file:
            from edgefleet.files import write_atomically

            write_atomically(Path(args.url_file).resolve(), (url + "\n").encode())
        print(f"edgefleet console for {client.address}: open {url}", flush=True)
        print("(the link logs this browser in once; Ctrl-C stops the console)", file=sys.stderr)
        if args.open:
            webbrowser.open(url)
        await until_signalled(signal.SIGINT, signal.SIGTERM)
    finally:
        await runner.cleanup()
    return 0
