"""Blob sources besides the controller: HTTP(S) mirrors and CDNs, and LAN peers.

A source here needs no trust: what it sends is held to the signed manifest and chunk
index exactly like the controller's bytes. Blobs are addressed by content at
``<base URL><sha256>`` — the layout of the controller's ``blobs/sha256/`` folder and of a
peer agent's ``/blobs/`` route — and resumed with HTTP Range requests.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.errors import MalformedInputError, TransportError
from edgefleet.trust.metadata import SHA256_PATTERN

READ_SIZE = 1024 * 1024
log = structlog.get_logger("agent.mirrors")


class HttpSource:
    """Streams blobs from one HTTP(S) base URL with Range requests."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession, timeout: float) -> None:
        self.base_url = base_url
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)

    def __repr__(self) -> str:
        return self.base_url

    async def read_blob(
        self, sha256: str, offset: int, limit: int = 0
    ) -> AsyncIterator[tuple[int, bytes]]:
        """The blob's bytes from ``offset`` (``limit`` of them, or to the end)."""
        if not SHA256_PATTERN.match(sha256):
            raise MalformedInputError("blob name is not a hex SHA-256")
        end = f"{offset + limit - 1}" if limit else ""
        headers = {"Range": f"bytes={offset}-{end}"} if offset or limit else {}
        try:
            async with self.session.get(
                self.base_url + sha256, headers=headers, timeout=self.timeout
            ) as response:
                if response.status not in (200, 206) or (headers and response.status != 206):
                    raise TransportError(f"{self.base_url}{sha256[:16]}…: HTTP {response.status}")
                position = offset
                async for data in response.content.iter_chunked(READ_SIZE):
                    yield position, data
                    position += len(data)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise TransportError(f"{self.base_url}: {e or type(e).__name__}") from e


def client_session(ca_file: str) -> aiohttp.ClientSession:
    """An HTTP client trusting the system CAs, or ``ca_file`` for private mirrors."""
    context = ssl.create_default_context(cafile=ca_file or None)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=4))


def peer_app(blobs: BlobStore) -> web.Application:
    """What an agent serves to its LAN peers: its verified blobs, read-only, with Range."""

    async def blob(request: web.Request) -> web.StreamResponse:
        sha256 = request.match_info["sha256"]
        if not SHA256_PATTERN.match(sha256):
            raise web.HTTPNotFound()
        path: Path = blobs.path_of(sha256)
        if not path.is_file():
            raise web.HTTPNotFound()
        log.info("peer.blob_requested", sha256=sha256, peer=request.remote)
        return web.FileResponse(path, chunk_size=READ_SIZE)

    app = web.Application()
    app.router.add_get("/blobs/{sha256}", blob)
    return app
