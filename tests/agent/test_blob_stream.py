"""The agent reads ReadBlob's messages in place, and a hostile stream ends in a clean error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from edgefleet.agent.sync.client import SyncClient
from edgefleet.controller.trust.ca import CertificateAuthority
from edgefleet.errors import MalformedInputError
from edgefleet.serde import blob_chunk_to_wire
from edgefleet.tls import cert_pem, key_pem, new_tls_key
from edgefleet.v1 import device_pb2


async def _read_from(messages: list[bytes]) -> list[tuple[int, bytes]]:
    """Serve ``messages`` as one ReadBlob stream over mTLS; read them with SyncClient."""
    ca = CertificateAuthority.create("test")
    server_key, device_key = new_tls_key(), new_tls_key()
    server_cert = ca.issue_server(server_key, ["127.0.0.1"])
    device_cert = ca.issue_client(device_key.public_key(), "dev-1")

    async def read_blob(
        request: device_pb2.ReadBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        for message in messages:
            yield message

    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        read_blob,
        request_deserializer=device_pb2.ReadBlobRequest.FromString,
        response_serializer=bytes,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("edgefleet.v1.DeviceService", {"ReadBlob": handler}),)
    )
    credentials = grpc.ssl_server_credentials(
        [(key_pem(server_key), cert_pem(server_cert))],
        root_certificates=cert_pem(ca.cert),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    client = SyncClient(
        f"127.0.0.1:{port}",
        cert_pem(ca.cert),
        key_pem(device_key),
        cert_pem(device_cert),
        timeout=10,
        max_message_bytes=4 << 20,
    )
    try:
        return [(at, bytes(data)) async for at, data in client.read_blob("ab" * 32, 0)]
    finally:
        await client.close()
        await server.stop(None)


def test_chunks_arrive_as_sent_whichever_encoder_made_them() -> None:
    """Messages from blob_chunk_to_wire and from protobuf itself read alike."""
    data = [bytes([i]) * (1 << 20) for i in range(3)]
    messages = [
        blob_chunk_to_wire(0, data[0]),
        device_pb2.BlobChunk(offset=1 << 20, data=data[1]).SerializeToString(),
        blob_chunk_to_wire(2 << 20, data[2]),
    ]
    assert asyncio.run(_read_from(messages)) == [(i << 20, d) for i, d in enumerate(data)]


def test_an_unreadable_chunk_is_malformed_input() -> None:
    """A truncated message from a hostile controller raises MalformedInputError, naming it."""
    messages = [blob_chunk_to_wire(0, b"x" * 10), b"\x08\x00\x12\x05abc"]
    with pytest.raises(MalformedInputError, match="bad blob chunk: .*truncated"):
        asyncio.run(_read_from(messages))
