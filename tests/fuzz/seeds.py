"""Valid inputs of each fuzz target, for mutation: most bugs hide one byte away from a valid
document, where random bytes rarely reach."""

from __future__ import annotations

import io
import json
import tempfile
from datetime import timedelta
from pathlib import Path

from edgefleet import serde
from edgefleet.agent.inference.decoding import Piece, TokenLogprob
from edgefleet.agent.inference.protocol import piece_to_wire, write_frame
from edgefleet.audit import GENESIS_HASH, AuditEvent, encode_record, record_hash
from edgefleet.audit_export import build_export
from edgefleet.bundle import BundleHeader, write_bundle
from edgefleet.fleet import InstalledModel, ModelHealth, StatusReport
from edgefleet.rbac import Binding, Policy, new_token
from edgefleet.trust.chunks import ChunkIndex
from tests.edgefleet.trustkit import NOW, Fleet, manifest
from tests.ggufkit import write_tiny_gguf


def _records(count: int) -> list[bytes]:
    records, prev = [], GENESIS_HASH
    for seq in range(1, count + 1):
        event = AuditEvent("app:x", "inference.chat", "m@1", "success", {"n": seq})
        canonical = encode_record("dev-a", seq, f"2026-01-01T00:00:{seq:02d}Z", event, prev)
        records.append(canonical)
        prev = record_hash(canonical)
    return records


def build() -> dict[str, list[bytes]]:
    """Seeds per target name (tests.fuzz.targets.TARGETS)."""
    fleet = Fleet()
    root = fleet.sign_root(fleet.root())
    targets = fleet.targets(1, manifest())
    _, entry = new_token("app:x")
    policy = Policy(
        2,
        {"inference": frozenset({"inference.invoke"})},
        (Binding("app:x", "inference", ("m*",)),),
        (entry,),
        expires=NOW + timedelta(days=1),
    )
    with tempfile.TemporaryDirectory() as folder:
        gguf = write_tiny_gguf(Path(folder) / "t.gguf").read_bytes()
        data = gguf
        index = ChunkIndex.of_file(Path(folder) / "t.gguf", 64 * 1024)
    model = manifest(sha="cd" * 32, length=len(data))
    header = BundleHeader(model.ref, (root,), fleet.timestamp(1, targets), targets, None)
    out = io.BytesIO()
    write_bundle(
        out, header, index.to_bytes(), model.chunks_sha256, model.sha256, len(data), iter([data])
    )
    report = StatusReport(
        agent_version="0.1.0",
        models=(InstalledModel("m", "1", "ab" * 32, True),),
        last_error="none",
        health=(ModelHealth("m", "1", "passed", "", 40.0, 10, 1),),
    )
    records = _records(4)
    export = build_export(records, [root], fleet.keys["audit"], {"dev-a": "ab" * 32}, {}, "jsonl")
    csv = build_export(records, [root], fleet.keys["audit"], {"dev-a": "ab" * 32}, {}, "csv")
    chat = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stop": ["\n"],
        "temperature": 0.5,
        "stream": True,
    }
    return {
        "gguf": [gguf[:4096]],
        "status_report": [serde.status_to_pb(report).SerializeToString()],
        "blob_chunk": [serde.blob_chunk_to_wire(1 << 20, b"model bytes")],
        "audit_record": records[:2],
        "audit_export": [export, csv],
        "signed_metadata": [
            root.to_json(),
            root.payload,
            targets.payload,
            policy.to_payload(),
            header.to_bytes(),
            json.dumps(model.to_dict()).encode(),
        ],
        "request_body": [json.dumps(chat).encode(), b'{"model": "m", "prompt": ["x"]}'],
        "bundle": [out.getvalue()],
        "runner_frames": [_runner_frames()],
    }


def _runner_frames() -> bytes:
    """A runner's answers to one generation: a token with its logprobs, then the end."""
    out = io.BytesIO()
    piece = Piece(
        "Hi", [TokenLogprob("Hi", b"Hi", -0.1, (("Hi", b"Hi", -0.1), ("Ho", b"Ho", -2.5)))]
    )
    totals = {"prompt_tokens": 5, "completion_tokens": 1, "finish_reason": "length"}
    write_frame(
        out, {"id": 1, "piece": piece_to_wire(piece), "totals": {**totals, "cached_tokens": 0}}
    )
    write_frame(out, {"id": 1, "end": True})
    return out.getvalue()
