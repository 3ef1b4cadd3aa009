"""An emulated Raspberry Pi OS gateway, end to end (`make test-arm64`): a Debian bookworm
arm64 root run through qemu-user (binfmt), the fleet's signed offline bundle installed
in it with no network, then an x86-64 controller on loopback and the arm64 agent: enroll,
a rollout of the bundled model, verified and activated, one chat completion through its
API to the official `openai` client, audit shipped and the exported trail verified.

`make test-arm64` builds (and caches under .cache/arm64) the root and the bundle and sets
EDGEFLEET_ARM64_ROOT and EDGEFLEET_ARM64_BUNDLE; without them this skips, saying so."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.bundled import bundled_model_path
from tests.harness import Fleet, free_port, tree_rss_mib, wait_for

ROOT = os.environ.get("EDGEFLEET_ARM64_ROOT", "")
BUNDLE = os.environ.get("EDGEFLEET_ARM64_BUNDLE", "")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (ROOT and BUNDLE), reason="the emulated arm64 gateway runs with make test-arm64"
    ),
]
DATA = "/var/lib/edgefleet-agent"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
AGENT = "/opt/edgefleet/venv/bin/edgefleet-agent"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of the cached arm64 root with /proc and /dev bound in."""
    root = tmp_path / "pi"
    subprocess.run(["cp", "-a", ROOT, str(root)], check=True)
    mounted: list[Path] = []
    try:
        for path in ("proc", "dev"):
            (root / path).mkdir(exist_ok=True)
            subprocess.run(["mount", "--bind", f"/{path}", str(root / path)], check=True)
            mounted.append(root / path)
        yield root
    finally:
        for mount in reversed(mounted):
            subprocess.run(["umount", "-l", str(mount)], check=False)


def _in(root: Path, *command: str, network: bool = True, env: dict[str, str] | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess[str]:  # fmt: skip
    prefix = [] if network else [UNSHARE, "--net"]
    return subprocess.run(
        [*prefix, CHROOT, str(root), *command],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", **(env or {})},
    )


def _runbook_install_block() -> str:
    """The gateway's commands of docs/operations.md, "Install a gateway with no network"."""
    text = (Path(__file__).resolve().parents[2] / "docs/operations.md").read_text()
    section = text.split("## Install a gateway with no network", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 2, "the section has a build machine block and a gateway block"
    return str(blocks[1])


def _x86_answer(messages: list[dict[str, str]]) -> str:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(bundled_model_path()), n_ctx=256, verbose=False)
    reply = llm.create_chat_completion(messages=messages, max_tokens=6, temperature=0)  # type: ignore[arg-type]
    return str(reply["choices"][0]["message"]["content"])


def test_an_emulated_pi_installs_offline_enrolls_and_serves(gateway: Path, tmp_path: Path) -> None:
    assert _in(gateway, "uname", "-m").stdout.strip() == "aarch64"
    fleet = Fleet(tmp_path / "fleet")
    agent = None
    try:
        fleet.init_controller()
        signed = tmp_path / "signed.tar"
        fleet.run("edgefleetctl", "agent-bundle", "sign", BUNDLE, "--data-dir",
                  str(fleet.controller_dir), "--out", str(signed))  # fmt: skip
        # docs/operations.md's gateway steps, as written, on the Pi with no network
        (gateway / "media" / "offline").mkdir(parents=True)
        shutil.copyfile(signed, gateway / "media" / "offline" / "edgefleet-agent.tar")
        started = time.monotonic()
        installed = _in(gateway, "/bin/sh", "-euc", _runbook_install_block(), network=False,
                        env={"ROOT_FINGERPRINT": fleet.fingerprint})  # fmt: skip
        assert installed.returncode == 0, installed.stdout + installed.stderr
        print(f"installed offline under emulation in {time.monotonic() - started:.0f} s")
        assert "for aarch64" in installed.stdout
        assert (gateway / "etc/systemd/system/edgefleet-agent.service").exists()
        assert "edgefleet:" in (gateway / "etc/passwd").read_text()
        assert (gateway / DATA.lstrip("/") / "agent.toml").exists()

        fleet.start_controller()
        fleet.ctl("models", "publish", str(bundled_model_path()), "--name", "smollm2",
                  "--version", "1.0")  # fmt: skip
        token = fleet.ctl("token", "create", "--label", "site=pi").stdout.strip()
        enrolled = _in(gateway, AGENT, "--data-dir", DATA, "enroll", "--controller",
                       fleet.enroll_address, "--token", token, "--root-fingerprint",
                       fleet.fingerprint)  # fmt: skip
        assert enrolled.returncode == 0, enrolled.stderr
        fleet.ctl("rollout", "create", "smollm2@1.0", "--selector", "site=pi")
        port = free_port()
        log = (tmp_path / "pi-agent.log").open("ab")
        env = {"PATH": "/usr/bin:/bin", "EDGEFLEET_AGENT_N_THREADS": "2"}
        agent = subprocess.Popen(
            [CHROOT, str(gateway), AGENT, "--data-dir", DATA, "run",
             "--api-listen", f"127.0.0.1:{port}", "--sync-interval", "2"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip

        def active() -> bool | None:
            listed = _in(
                gateway, AGENT, "--data-dir", DATA, "models", "list", "-o", "json", timeout=120
            )
            active = {
                f"{m['name']}@{m['version']}" for m in json.loads(listed.stdout) if m["active"]
            }
            return True if "smollm2@1.0" in active else None

        wait_for("the model verified and active on the arm64 agent", active, 900, interval=5)
        app = _in(gateway, AGENT, "--data-dir", DATA, "tokens", "create", "app:pi",
                  "--model", "smollm2*").stdout.strip()  # fmt: skip
        openai = pytest.importorskip("openai")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=app, timeout=600)
        answer = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=6,
            temperature=0,
        )
        text = answer.choices[0].message.content or ""
        assert answer.usage is not None and answer.usage.completion_tokens > 0 and text.strip()
        # The real model: x86-64's llama.cpp, greedy, starts the same way (the two builds'
        # texts part after about 14 tokens, never within the first few)
        reference = _x86_answer([{"role": "user", "content": "What is the capital of France?"}])
        assert text[:6] == reference[:6], (text, reference)
        rss = tree_rss_mib(agent.pid)
        print(f"uname -m: aarch64; the arm64 agent answered {text!r}; resident {rss:.0f} MiB "
              "with the model loaded (the agent and its model runner, under qemu-user, the "
              "emulator included)")  # fmt: skip
        device = fleet.devices()[0]["device_id"]
        export = tmp_path / "pi-audit.jsonl"

        def chat_record_shipped() -> bool | None:
            fleet.ctl("audit", "export", "--device", device, "--out", str(export), quiet=True)
            return True if '"action":"inference.chat"' in export.read_text() else None

        wait_for("the arm64 agent's chat record at the controller", chat_record_shipped, 300, 5)
        verified = fleet.run("edgefleetctl", "audit", "verify", str(export),
                             "--root-fingerprint", fleet.fingerprint, check=False)  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
        fleet.stop_all()
        shutil.rmtree(gateway / "tmp", ignore_errors=True)
