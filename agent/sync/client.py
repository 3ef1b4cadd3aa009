"""The agent's gRPC clients: a TLS-only one for enrollment and an mTLS one for sync."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc

from edgefleet import serde
from edgefleet.agent.sync.fetch import Chunk
from edgefleet.errors import MalformedInputError, TransportError
from edgefleet.fleet import DesiredState, StatusReport
from edgefleet.rpc_status import map_rpc_errors
from edgefleet.trust.envelope import Envelope
from edgefleet.v1 import device_pb2, device_pb2_grpc

STREAM_WINDOW_BYTES = 4 * 1024 * 1024
READ_BLOB_METHOD = f"/{device_pb2.DESCRIPTOR.services_by_name['DeviceService'].full_name}/ReadBlob"


def _read_chunk(message: bytes) -> tuple[int, Chunk] | MalformedInputError:
    """A BlobChunk read in place, or why it cannot be read (grpc would log and drop an
    exception raised here)."""
    try:
        return serde.blob_chunk_from_wire(message)
    except MalformedInputError as e:
        return e


@dataclass(frozen=True)
class Bootstrap:
    """Trust material as received; the caller verifies it before use."""

    root_chain: tuple[Envelope, ...]
    ca_pem: bytes


@dataclass(frozen=True)
class EnrollResult:
    """The controller's answer to a successful enrollment."""

    device_id: str
    certificate_pem: bytes
    ca_pem: bytes
    labels: dict[str, str]
    sync_port: int
    status: str
    audit_key_attestation: Envelope | None


class EnrollmentClient:
    """Blocking client for the enrollment listener, trusting one given certificate."""

    def __init__(self, address: str, trusted_pem: bytes, timeout: float) -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=trusted_pem)
        self._channel = grpc.secure_channel(address, credentials)
        self._stub = device_pb2_grpc.DeviceServiceStub(self._channel)
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def bootstrap(self) -> Bootstrap:
        """The controller's root chain and CA certificate (unverified)."""
        with map_rpc_errors():
            r = self._stub.GetTrustBootstrap(
                device_pb2.GetTrustBootstrapRequest(), timeout=self._timeout
            )
        return Bootstrap(
            tuple(serde.envelope_from_pb(e) for e in r.root_chain), bytes(r.ca_certificate_pem)
        )

    def enroll(
        self, token: str, csr_pem: bytes, hostname: str, agent_version: str, audit_key: str
    ) -> EnrollResult:
        """Spend the token for a certificate."""
        request = device_pb2.EnrollRequest(
            token=token,
            csr_pem=csr_pem,
            hostname=hostname,
            agent_version=agent_version,
            audit_public_key=audit_key,
        )
        with map_rpc_errors():
            r = self._stub.Enroll(request, timeout=self._timeout)
        return EnrollResult(
            r.device_id,
            bytes(r.certificate_pem),
            bytes(r.ca_certificate_pem),
            dict(r.labels),
            r.sync_port,
            r.status,
            serde.envelope_from_pb(r.audit_key_attestation)
            if r.HasField("audit_key_attestation")
            else None,
        )


class SyncClient:
    """Async mTLS client used by the running agent."""

    def __init__(
        self,
        address: str,
        ca_pem: bytes,
        key_pem: bytes,
        cert_pem: bytes,
        timeout: float,
        max_message_bytes: int,
    ) -> None:
        self._address, self._ca_pem, self._key_pem = address, ca_pem, key_pem
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Reconnect soon after a cut link; the sync worker's own backoff decides how
            # often calls are attempted while the controller stays unreachable.
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.min_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 10_000),
            # A fixed flow-control window instead of one that grows with the bandwidth-delay
            # product: a cut link loses at most the window (measured: about half a MiB per
            # cut on a 64 MB/s link), and throughput stays near the transport's limit.
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
        ]
        self._timeout = timeout
        self._connect(cert_pem)

    def _connect(self, cert_pem: bytes) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._ca_pem, private_key=self._key_pem, certificate_chain=cert_pem
        )
        self._channel = grpc.aio.secure_channel(self._address, credentials, options=self._options)
        self._stub = device_pb2_grpc.DeviceServiceStub(self._channel)
        # BlobChunk messages are read in place (serde.blob_chunk_from_wire): no copies of
        # the data on the way to the file.
        self._read_blob = self._channel.unary_stream(
            READ_BLOB_METHOD,
            request_serializer=device_pb2.ReadBlobRequest.SerializeToString,
            response_deserializer=_read_chunk,
        )

    async def use_certificate(self, cert_pem: bytes) -> None:
        """Switch to a renewed certificate (new connections use it at once)."""
        old = self._channel
        self._connect(cert_pem)
        await old.close(grace=5)

    async def close(self) -> None:
        await self._channel.close()

    async def sync(self, report: StatusReport) -> DesiredState:
        """Report status and receive the desired state."""
        with map_rpc_errors():
            response = await self._stub.Sync(serde.status_to_pb(report), timeout=self._timeout)
        return serde.desired_from_pb(response)

    async def read_blob(
        self, sha256: str, offset: int, limit: int = 0
    ) -> AsyncIterator[tuple[int, Chunk]]:
        """Stream (offset, bytes) from ``offset``: ``limit`` bytes, or to the end when 0."""
        call = self._read_blob(
            device_pb2.ReadBlobRequest(sha256=sha256, offset=offset, limit=limit)
        )
        try:
            with map_rpc_errors():
                async for item in call:
                    if isinstance(item, MalformedInputError):
                        raise MalformedInputError(f"the controller sent a bad blob chunk: {item}")
                    yield item
        finally:
            call.cancel()

    async def watch(self, idle_timeout: float) -> AsyncIterator[str]:
        """Event kinds from the controller's watch stream; TransportError when it ends or
        stays silent for ``idle_timeout`` seconds (heartbeats come more often)."""
        call = self._stub.Watch(device_pb2.WatchRequest())
        stream = aiter(call)
        try:
            with map_rpc_errors():
                while True:
                    try:
                        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                        # cancellation that lands as the read fails, and the agent then never
                        # stops (its watch loop carried on after SIGTERM)
                        async with asyncio.timeout(idle_timeout):
                            event = await anext(stream)
                    except StopAsyncIteration as e:
                        raise TransportError("the controller closed the watch stream") from e
                    except TimeoutError as e:
                        raise TransportError(
                            f"no word from the controller in {idle_timeout:g} s"
                        ) from e
                    yield event.kind
        finally:
            call.cancel()

    async def renew_certificate(self, csr_pem: bytes) -> bytes:
        """A fresh certificate for the device's key."""
        request = device_pb2.RenewCertificateRequest(csr_pem=csr_pem)
        with map_rpc_errors():
            response = await self._stub.RenewCertificate(request, timeout=self._timeout)
        return bytes(response.certificate_pem)

    async def push_audit(
        self, records: Sequence[tuple[int, bytes]], checkpoints: Sequence[Envelope] = ()
    ) -> tuple[int, Envelope | None]:
        """Ship records and signed checkpoints; return the acknowledgement and its receipt."""
        request = device_pb2.PushAuditRequest(
            records=[device_pb2.AuditRecord(seq=s, canonical=c) for s, c in records],
            checkpoints=[serde.envelope_to_pb(e) for e in checkpoints],
        )
        with map_rpc_errors():
            response = await self._stub.PushAudit(
                request, timeout=self._timeout, compression=grpc.Compression.Gzip
            )
        receipt = serde.envelope_from_pb(response.receipt) if response.HasField("receipt") else None
        return int(response.acked_seq), receipt
