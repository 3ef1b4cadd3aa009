"""The one place protobuf messages become dataclasses and back (both sides use it)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import asdict
from typing import TypeVar

from edgefleet.errors import MalformedInputError
from edgefleet.fleet import (
    BenchResult,
    DesiredState,
    DeviceResources,
    DeviceView,
    DownloadProgress,
    InstalledModel,
    ModelAssignment,
    ModelHealth,
    StatusReport,
)
from edgefleet.trust.envelope import Envelope, Signature
from edgefleet.v1 import device_pb2, envelope_pb2, operator_pb2

_T = TypeVar("_T")


def envelope_to_pb(envelope: Envelope) -> envelope_pb2.SignedEnvelope:
    """Dataclass → message."""
    return envelope_pb2.SignedEnvelope(
        payload_type=envelope.payload_type,
        payload=envelope.payload,
        signatures=[envelope_pb2.Signature(keyid=s.keyid, sig=s.sig) for s in envelope.signatures],
    )


def envelope_from_pb(message: envelope_pb2.SignedEnvelope) -> Envelope:
    """Message → dataclass (signatures are checked later, by the verifier)."""
    return Envelope(
        payload_type=message.payload_type,
        payload=bytes(message.payload),
        signatures=tuple(Signature(s.keyid, bytes(s.sig)) for s in message.signatures),
    )


def _models_to_pb(models: Iterable[InstalledModel]) -> list[device_pb2.InstalledModel]:
    return [
        device_pb2.InstalledModel(name=m.name, version=m.version, sha256=m.sha256, active=m.active)
        for m in models
    ]


# A device's report is untrusted input: every list and string is bounded here, the one
# place it is read (a device could otherwise grow every operator's `devices list` reply).
MAX_REPORTED = 256
NAME_CHARS, DIGEST_CHARS, REASON_CHARS, ERROR_CHARS = 64, 64, 512, 1024


def _some(items: Iterable[_T]) -> Iterable[_T]:
    return itertools.islice(items, MAX_REPORTED)


def _models_from_pb(models: Iterable[device_pb2.InstalledModel]) -> tuple[InstalledModel, ...]:
    return tuple(
        InstalledModel(
            m.name[:NAME_CHARS], m.version[:NAME_CHARS], m.sha256[:DIGEST_CHARS], m.active
        )
        for m in _some(models)
    )


def _bench_to_pb(results: Iterable[BenchResult]) -> list[device_pb2.BenchResult]:
    return [device_pb2.BenchResult(**asdict(r)) for r in results]


def _bench_from_pb(results: Iterable[device_pb2.BenchResult]) -> tuple[BenchResult, ...]:
    return tuple(
        BenchResult(
            r.model[:NAME_CHARS],
            r.version[:NAME_CHARS],
            r.sha256[:DIGEST_CHARS],
            r.threads,
            r.prompt_tokens,
            r.generated_tokens,
            r.prompt_tokens_per_second,
            r.generation_tokens_per_second,
            r.measured_at[:32],
        )
        for r in _some(results)
    )


def _downloads_to_pb(downloads: tuple[DownloadProgress, ...]) -> list[device_pb2.DownloadProgress]:
    return [
        device_pb2.DownloadProgress(
            name=d.name,
            version=d.version,
            received=d.received,
            total=d.total,
            state=d.state,
            reason=d.reason,
            bytes_per_second=d.bytes_per_second,
        )
        for d in downloads
    ]


def _downloads_from_pb(
    messages: Iterable[device_pb2.DownloadProgress],
) -> tuple[DownloadProgress, ...]:
    return tuple(
        DownloadProgress(
            d.name[:NAME_CHARS],
            d.version[:NAME_CHARS],
            d.received,
            d.total,
            d.state[:16],
            d.reason[:REASON_CHARS],
            d.bytes_per_second,
        )
        for d in _some(messages)
    )


def _health_to_pb(health: Iterable[ModelHealth]) -> list[device_pb2.ModelHealth]:
    return [device_pb2.ModelHealth(**asdict(h)) for h in health]


def _health_from_pb(messages: Iterable[device_pb2.ModelHealth]) -> tuple[ModelHealth, ...]:
    """A device's own figures: bounded, stored and judged, never trusted for anything else."""
    return tuple(
        ModelHealth(
            name=h.name[:NAME_CHARS],
            version=h.version[:NAME_CHARS],
            smoke=h.smoke if h.smoke in ("passed", "failed") else "",
            smoke_reason=h.smoke_reason[:REASON_CHARS],
            smoke_tokens_per_second=(
                h.smoke_tokens_per_second
                if math.isfinite(h.smoke_tokens_per_second) and h.smoke_tokens_per_second > 0
                else 0.0
            ),
            requests=h.requests,
            errors=min(h.errors, h.requests),
        )
        for h in _some(messages)
    )


def resources_to_pb(resources: DeviceResources) -> device_pb2.DeviceResources:
    """Dataclass → message."""
    return device_pb2.DeviceResources(**asdict(resources))


def resources_from_pb(message: device_pb2.DeviceResources) -> DeviceResources:
    """Message → dataclass (a device's own figures: stored and shown, never trusted)."""
    return DeviceResources(
        machine=message.machine[:32],
        cpu_count=message.cpu_count,
        memory_total=message.memory_total,
        memory_budget=message.memory_budget,
        context=message.context,
        slots=message.slots,
        disk_free=message.disk_free,
        max_model_bytes=message.max_model_bytes,
    )


def status_to_pb(report: StatusReport) -> device_pb2.StatusReport:
    """Dataclass → message."""
    return device_pb2.StatusReport(
        agent_version=report.agent_version,
        models=_models_to_pb(report.models),
        audit_head_seq=report.audit_head_seq,
        last_error=report.last_error,
        bench=_bench_to_pb(report.bench),
        downloads=_downloads_to_pb(report.downloads),
        data_used_today=report.data_used_today,
        daily_data_budget=report.daily_data_budget,
        resources=resources_to_pb(report.resources),
        health=_health_to_pb(report.health),
    )


def status_from_pb(message: device_pb2.StatusReport) -> StatusReport:
    """Message → dataclass, bounded (a device's report is untrusted input)."""
    return StatusReport(
        agent_version=message.agent_version[:NAME_CHARS],
        models=_models_from_pb(message.models),
        audit_head_seq=message.audit_head_seq,
        last_error=message.last_error[:ERROR_CHARS],
        bench=_bench_from_pb(message.bench),
        downloads=_downloads_from_pb(message.downloads),
        data_used_today=message.data_used_today,
        daily_data_budget=message.daily_data_budget,
        resources=resources_from_pb(message.resources),
        health=_health_from_pb(message.health),
    )


def desired_to_pb(state: DesiredState) -> device_pb2.DesiredState:
    """Dataclass → message."""
    return device_pb2.DesiredState(
        root_chain=[envelope_to_pb(e) for e in state.root_chain],
        timestamp=envelope_to_pb(state.timestamp),
        targets=envelope_to_pb(state.targets),
        assignments=[
            device_pb2.Assignment(name=a.name, version=a.version) for a in state.assignments
        ],
        audit_acked_seq=state.audit_acked_seq,
        policy=envelope_to_pb(state.policy) if state.policy else None,
    )


def desired_from_pb(message: device_pb2.DesiredState) -> DesiredState:
    """Message → dataclass."""
    return DesiredState(
        root_chain=tuple(envelope_from_pb(e) for e in message.root_chain),
        timestamp=envelope_from_pb(message.timestamp),
        targets=envelope_from_pb(message.targets),
        assignments=tuple(ModelAssignment(a.name, a.version) for a in message.assignments),
        audit_acked_seq=message.audit_acked_seq,
        policy=envelope_from_pb(message.policy) if message.HasField("policy") else None,
    )


def device_view_to_pb(view: DeviceView) -> operator_pb2.DeviceView:
    """Dataclass → message."""
    return operator_pb2.DeviceView(
        device_id=view.device_id,
        hostname=view.hostname,
        labels=view.labels,
        last_seen=view.last_seen,
        agent_version=view.agent_version,
        models=_models_to_pb(view.models),
        audit_stored_seq=view.audit_stored_seq,
        last_error=view.last_error,
        bench=_bench_to_pb(view.bench),
        state=view.state,
        key_fingerprint=view.key_fingerprint,
        audit_alert=view.audit_alert,
        downloads=_downloads_to_pb(view.downloads),
        data_used_today=view.data_used_today,
        daily_data_budget=view.daily_data_budget,
        resources=resources_to_pb(view.resources),
        health=_health_to_pb(view.health),
        stale=view.stale,
        audit_head_seq=view.audit_head_seq,
        assignments=[
            device_pb2.Assignment(name=a.name, version=a.version) for a in view.assignments
        ],
        enrolled_from=view.enrolled_from,
    )


def device_view_from_pb(message: operator_pb2.DeviceView) -> DeviceView:
    """Message → dataclass."""
    return DeviceView(
        device_id=message.device_id,
        hostname=message.hostname,
        labels=dict(sorted(message.labels.items())),  # a map has no order: show a stable one
        last_seen=message.last_seen,
        agent_version=message.agent_version,
        models=_models_from_pb(message.models),
        audit_stored_seq=message.audit_stored_seq,
        last_error=message.last_error,
        bench=_bench_from_pb(message.bench),
        state=message.state,
        key_fingerprint=message.key_fingerprint,
        audit_alert=message.audit_alert,
        downloads=_downloads_from_pb(message.downloads),
        data_used_today=message.data_used_today,
        daily_data_budget=message.daily_data_budget,
        resources=resources_from_pb(message.resources),
        health=_health_from_pb(message.health),
        stale=message.stale,
        audit_head_seq=message.audit_head_seq,
        assignments=tuple(ModelAssignment(a.name, a.version) for a in message.assignments),
        enrolled_from=message.enrolled_from,
    )


# --- BlobChunk without copying its data ---------------------------------------------
# A blob streams as messages of about 1 MiB. Built and parsed through protobuf objects,
# each message's data is copied twice more on each side (into the message, out of it),
# and copies into fresh 1 MiB buffers are dear (a page fault per 4 KiB): in
# benchmarks/transfer.py the controller spent 2.07 s of CPU per GB served that way and
# 1.37 s/GB this way (transport alone: 435 -> 599 MiB/s). So ReadBlob's messages are
# written and read here, in protobuf's own wire format (any protobuf client reads them as
# BlobChunk).

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_OFFSET_KEY = bytes([1 << 3 | _VARINT])
_DATA_KEY = bytes([2 << 3 | _LENGTH])
_UINT64 = (1 << 64) - 1


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _decode_varint(view: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(view):
            raise MalformedInputError("blob chunk message is truncated")
        byte = view[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & _UINT64, at
        shift += 7
        if shift >= 70:
            raise MalformedInputError("blob chunk message has an overlong varint")


def blob_chunk_to_wire(offset: int, data: bytes) -> bytes:
    """A serialized ``BlobChunk(offset=offset, data=data)``, copying ``data`` once."""
    return b"".join(
        (_OFFSET_KEY, _encode_varint(offset), _DATA_KEY, _encode_varint(len(data)), data)
    )


def blob_chunk_from_wire(message: bytes) -> tuple[int, memoryview]:
    """(offset, data) of a serialized ``BlobChunk``; ``data`` is a view into ``message``.

    Parsed as protobuf parses it (unknown fields skipped, the last value of a field wins,
    a known field with another wire type is unknown); groups, truncation and overlong
    varints are refused with MalformedInputError.
    """
    view = memoryview(message)
    offset, data, at = 0, view[:0], 0
    while at < len(view):
        key, at = _decode_varint(view, at)
        field, wire = key >> 3, key & 7
        if not 0 < field < 1 << 29:
            raise MalformedInputError(f"blob chunk message has a field numbered {field}")
        if wire == _VARINT:
            value, at = _decode_varint(view, at)
            if field == 1:
                offset = value
        elif wire == _LENGTH:
            size, at = _decode_varint(view, at)
            if at + size > len(view):
                raise MalformedInputError("blob chunk message is truncated")
            if field == 2:
                data = view[at : at + size]
            at += size
        elif wire in (_FIXED64, _FIXED32):
            at += 8 if wire == _FIXED64 else 4
            if at > len(view):
                raise MalformedInputError("blob chunk message is truncated")
        else:
            raise MalformedInputError(f"blob chunk message has wire type {wire}")
    return offset, data
