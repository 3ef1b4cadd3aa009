"""`make demo`: the main job end to end on embedded defaults, as real processes on loopback.

A controller and an agent in a throwaway directory: init, publish the bundled SmolLM2
model, enroll, roll out, wait for the verified install, ask one question through the
local OpenAI-compatible API, export the audit trail, stop both. The integration tests
drive the same :class:`Fleet` (tests/harness.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from edgefleet.bundled import bundled_model_path
from tests.harness import Fleet, active_models, http_json, wait_for


def step(number: int, text: str) -> None:
    print(f"\n[{number}] {text}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the throwaway directory")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    fleet = Fleet(root, echo=True)
    started = time.monotonic()
    try:
        step(
            1,
            f"Initialize a controller in {root}: root and role keys, CA, operator credential",
        )
        print(f"  root fingerprint {fleet.init_controller()}")
        step(2, "Start the controller (gRPC over mTLS, SQLite) on loopback")
        fleet.start_controller()
        print(f"  sync (mTLS) on {fleet.sync_address}, enrollment (TLS) on {fleet.enroll_address}")
        model = bundled_model_path()
        step(3, f"Publish the bundled model {model.name}: hash, read GGUF header, sign targets")
        print(
            "  "
            + fleet.ctl(
                "models", "publish", str(model), "--name", "smollm2", "--version", "1.0"
            ).stdout.strip()
        )
        step(4, "Enroll an agent with a one-time token, pinning the root fingerprint")
        device_id = fleet.enroll("gw1", {"site": "demo"})
        print(f"  enrolled {device_id}")
        step(5, "Roll smollm2@1.0 out to devices labelled site=demo")
        print(
            "  "
            + fleet.ctl(
                "rollout", "create", "smollm2@1.0", "--selector", "site=demo"
            ).stdout.strip()
        )
        step(6, "Create an API token for an application on the device (inference on smollm2*)")
        token = fleet.app_token("gw1", "app:demo", "smollm2*")
        print(f"  token {token[:16]}… (the device keeps only its SHA-256)")
        step(7, "Run the agent: it syncs, streams the blob, verifies signatures, length, SHA-256")
        api = fleet.start_agent("gw1")
        models = wait_for("the model to be active", lambda: active_models(api, token), 120)
        active = models[0]
        print(f"  active: {active['id']}@{active['version']} (sha256 {active['sha256'][:16]}…)")
        step(8, f"Ask a question through the local OpenAI-compatible API at http://{api}/v1")
        question = "What is the capital of France? Answer in one sentence."
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 48,
            "temperature": 0.2,
            "seed": 7,
        }
        answer = http_json(f"http://{api}/v1/chat/completions", body, token=token)
        print(f"  Q: {question}\n  A: {answer['choices'][0]['message']['content'].strip()}")
        print(f"  usage: {answer['usage']}")
        step(9, "Wait for the agent to ship its audit records, then export the trail")
        head = json.loads(fleet.agent("gw1", "status", "-o", "json").stdout)["audit"]["written"]
        wait_for(
            "audit records to reach the controller",
            lambda: True if fleet.devices()[0]["audit_stored_seq"] >= head else None,
            60,
        )
        out = root / "audit.jsonl"
        print("  " + fleet.ctl("audit", "export", "--out", str(out)).stdout.strip())
        for line in out.read_text().splitlines()[1:]:  # the first line is the signed header
            record = json.loads(line)
            print(
                f"  {record['device']:<22} #{record['seq']:<3} {record['action']:<16} "
                f"{record['actor']:<22} {record['target']} {record['outcome']}"
            )
        step(10, "Verify the export offline, as an auditor would, with only the root fingerprint")
        verify = ["audit", "verify", str(out), "--root-fingerprint", fleet.fingerprint]
        print("  " + fleet.run("edgefleetctl", *verify).stdout.strip())
        step(11, "Stop the agent and the controller")
    except Exception as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
        for name in fleet.processes:
            print(f"--- {name} log (tail) ---\n{fleet.log(name)[-3000:]}", file=sys.stderr)
        return 1
    finally:
        fleet.stop_all()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\ndemo finished in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
