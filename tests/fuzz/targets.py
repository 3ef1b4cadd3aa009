"""Every parser of untrusted bytes, as a fuzz target: bytes in, and the only way out is a
result or the error the parser documents for bad input. Anything else (an IndexError, a
RecursionError, a struct.error, a hang) is a finding.

The same targets run under hypothesis in `make test` (bounded, tests/fuzz/test_parsers.py)
and under atheris, coverage-guided, in `make fuzz` (tests/fuzz/run_atheris.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson
from google.protobuf.message import DecodeError

from edgefleet import serde
from edgefleet.agent.inference.api_errors import ApiError
from edgefleet.agent.inference.protocol import answer_from_wire, read_frame
from edgefleet.agent.inference.requests import parse_request
from edgefleet.audit import parse_record
from edgefleet.audit_export import verify_export
from edgefleet.bundle import BundleFile, BundleHeader
from edgefleet.errors import UntrustedInputError
from edgefleet.gguf import read_gguf_header
from edgefleet.rbac import Policy
from edgefleet.serde import blob_chunk_from_wire, status_from_pb
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.metadata import ModelManifest, Root, Targets, Timestamp
from edgefleet.v1 import device_pb2

FINGERPRINT = "ab" * 32  # verification fails at the root; parsing before it is exercised
BLOBS = ("cd" * 32, "ef" * 32)  # the model and chunk index of the seed bundle (seeds.py)


def gguf(data: bytes) -> None:
    """A model file's header (controller at publish, agent after download)."""
    with contextlib.suppress(UntrustedInputError):
        read_gguf_header(io.BytesIO(data))


def status_report(data: bytes) -> None:
    """A device's status report as the controller reads it: every field bounded."""
    try:
        message = device_pb2.StatusReport.FromString(data)
    except DecodeError:
        return  # refused by gRPC's deserializer before our code sees it
    report = status_from_pb(message)
    assert len(report.agent_version) <= 64 and len(report.last_error) <= 1024
    assert len(report.models) <= serde.MAX_REPORTED and len(report.health) <= serde.MAX_REPORTED
    for model in report.models:
        assert len(model.name) <= 64 and len(model.version) <= 64


def blob_chunk(data: bytes) -> None:
    """A ReadBlob message as the agent parses it by hand."""
    try:
        offset, view = blob_chunk_from_wire(data)
    except UntrustedInputError:
        return
    assert offset >= 0 and len(view) <= len(data)


def audit_record(data: bytes) -> None:
    """One audit record line (a device push, an export)."""
    with contextlib.suppress(UntrustedInputError):
        parse_record(data)


def audit_export(data: bytes) -> None:
    """A whole export file, JSONL or CSV, as `audit verify` reads it."""
    with contextlib.suppress(UntrustedInputError):
        verify_export(data, FINGERPRINT)


def signed_metadata(data: bytes) -> None:
    """Envelopes and every kind of signed document a device or controller parses."""
    for parse in (
        Envelope.from_json,
        Root.from_payload,
        Targets.from_payload,
        Timestamp.from_payload,
        Policy.from_payload,
        BundleHeader.from_bytes,
    ):
        with contextlib.suppress(UntrustedInputError):
            parse(data)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if isinstance(doc, dict):
        with contextlib.suppress(UntrustedInputError):
            ModelManifest.from_dict(doc)


def request_body(data: bytes) -> None:
    """An HTTP body of the local API: a 400 names the field, nothing else escapes."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return  # the API answers 400 before parse_request (tests/agent)
    for chat in (True, False):
        try:
            parse_request(body, chat, 1024)
        except ApiError as e:
            assert e.status == 400, e.status


def bundle(data: bytes) -> None:
    """A bundle file from a USB stick: its members and its header."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.bundle"
        path.write_bytes(data)
        try:
            opened = BundleFile(path)
        except UntrustedInputError:
            return
        try:
            opened.header()
            for sha256 in BLOBS:
                with contextlib.suppress(UntrustedInputError):
                    asyncio.run(_drain(opened, sha256))
        except UntrustedInputError:
            pass
        finally:
            opened.close()


async def _drain(opened: BundleFile, sha256: str) -> None:
    async for _ in opened.read_blob(sha256, 0):
        pass


def runner_frames(data: bytes) -> None:
    """What a model runner sends the agent (a runner a hostile model took over may send
    anything): frames, and each token's answer in them."""
    stream = io.BytesIO(data)
    with contextlib.suppress(UntrustedInputError):
        while (message := read_frame(stream)) is not None:
            if "piece" in message:
                answer_from_wire(message)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "gguf": gguf,
    "status_report": status_report,
    "blob_chunk": blob_chunk,
    "audit_record": audit_record,
    "audit_export": audit_export,
    "signed_metadata": signed_metadata,
    "request_body": request_body,
    "bundle": bundle,
    "runner_frames": runner_frames,
}
