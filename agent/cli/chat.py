"""`edgefleet-agent chat`: talk to a model through the running agent's local API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from edgefleet.agent.cli import HELP
from edgefleet.cli_support import Subcommands, handled_by, positive_int
from edgefleet.errors import ConfigError, TransportError

TOKEN_ENV = "EDGEFLEET_TOKEN"  # noqa: S105 - a variable name


def register(commands: Subcommands) -> None:
    """`chat MODEL [PROMPT]`."""
    chat = handled_by(
        commands.add_parser("chat", help=HELP["chat"]),
        _cmd_chat,
    )
    chat.add_argument("model")
    chat.add_argument("prompt", nargs="?", help="one question; without it, an interactive session")
    chat.add_argument("--max-tokens", type=positive_int, default=256)
    chat.add_argument("--temperature", type=float, help="0 for the most likely answer")
    chat.add_argument("--token", help=f"API bearer token (env {TOKEN_ENV})")


def _api_base(data_dir: Path) -> str:
    from edgefleet.agent.app.config import load_agent_config

    address_file = data_dir / "api.addr"
    if address_file.exists():
        return "http://" + address_file.read_text().strip()
    return "http://" + load_agent_config(data_dir).api_listen


def _cmd_chat(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV, "")
    url = _api_base(args.data_dir) + "/v1/chat/completions"
    if args.prompt is not None:
        _ask(url, token, args, [{"role": "user", "content": args.prompt}])
        return 0
    print(f"chatting with {args.model}; an empty line or Ctrl-D ends the session", file=sys.stderr)
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            return 0
        history.append({"role": "user", "content": line})
        answer = _ask(url, token, args, history)
        history.append({"role": "assistant", "content": answer})


def _ask(url: str, token: str, args: argparse.Namespace, messages: list[dict[str, str]]) -> str:
    """Stream one answer to stdout and return it."""
    import urllib.error
    import urllib.request
    from http import HTTPStatus

    from edgefleet.agent.cli import PROG

    body: dict[str, object] = {
        "model": args.model,
        "stream": True,
        "max_tokens": args.max_tokens,
        "messages": messages,
    }
    if args.temperature is not None:
        body["temperature"] = args.temperature
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)  # noqa: S310
    answer = ""
    try:
        with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                piece = json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                answer += piece
                print(piece, end="", flush=True)
    except urllib.error.HTTPError as e:
        if e.code == HTTPStatus.UNAUTHORIZED and not token:
            raise ConfigError(
                f"the agent's API needs a token: create one with `{PROG} tokens create "
                f"app:NAME` and pass it with --token or {TOKEN_ENV}"
            ) from e
        try:
            message = json.loads(e.read() or b"{}").get("error", {}).get("message", e.reason)
        except (ValueError, AttributeError):
            message = e.reason
        raise ConfigError(f"the agent refused: {message}") from e
    except urllib.error.URLError as e:
        raise TransportError(
            f"the agent's API is not reachable at {url} ({e.reason}): is `{PROG} run` "
            "running on this data directory?"
        ) from e
    print()
    return answer
