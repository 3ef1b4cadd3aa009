"""Model bundles: one file that carries a model to an air-gapped site.

A bundle is an uncompressed POSIX tar (models do not compress; ``tar tvf`` shows what is
inside) with exactly three members, in this order:

``edgefleet-bundle.json``
    the metadata chain: every root version, the timestamp, the targets and the policy it
    names, as signed envelopes, and the ``name@version`` it carries.
``chunks/<sha256>``
    the model's chunk index.
``blobs/<sha256>``
    the model file.

Nothing in a bundle is trusted because it is in a bundle: an agent verifies it exactly
as it verifies a sync (pinned root, thresholds, rollback, expiry, snapshot, chunk and
file hashes). Members are read by name and streamed, never extracted, so a member name
cannot place a file anywhere.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edgefleet.canonical import parse_object
from edgefleet.errors import MalformedInputError
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.metadata import SHA256_PATTERN

HEADER_NAME = "edgefleet-bundle.json"
FORMAT = 1
MAX_HEADER_BYTES = 16 * 1024 * 1024
READ_BLOCK = 1024 * 1024


def _envelope_doc(envelope: Envelope) -> Any:
    return json.loads(envelope.to_json())


def _envelope(doc: object, what: str) -> Envelope:
    if not isinstance(doc, dict):
        raise MalformedInputError(f"bundle: {what} is not a signed envelope")
    return Envelope.from_json(json.dumps(doc).encode("utf-8"))


@dataclass(frozen=True)
class BundleHeader:
    """The metadata a bundle carries."""

    model: str
    root_chain: tuple[Envelope, ...]
    timestamp: Envelope
    targets: Envelope
    policy: Envelope | None

    def to_bytes(self) -> bytes:
        """JSON form (envelopes verbatim)."""
        return json.dumps(
            {
                "format": FORMAT,
                "model": self.model,
                "root_chain": [_envelope_doc(e) for e in self.root_chain],
                "timestamp": _envelope_doc(self.timestamp),
                "targets": _envelope_doc(self.targets),
                "policy": _envelope_doc(self.policy) if self.policy else None,
            },
            indent=1,
        ).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> BundleHeader:
        """Parse a header (its signatures are checked by the trust state machine)."""
        doc = parse_object(data, "bundle header")
        if doc.get("format") != FORMAT:
            raise MalformedInputError(f"bundle: format {doc.get('format')!r} is not {FORMAT}")
        chain = doc.get("root_chain")
        model = doc.get("model")
        if not isinstance(chain, list) or not chain or not isinstance(model, str):
            raise MalformedInputError("bundle: root_chain or model is missing")
        policy = doc.get("policy")
        return cls(
            model,
            tuple(_envelope(e, "a root version") for e in chain),
            _envelope(doc.get("timestamp"), "timestamp"),
            _envelope(doc.get("targets"), "targets"),
            None if policy is None else _envelope(policy, "policy"),
        )


class _StreamReader:
    """A file-like view of an iterator of byte strings (for tarfile.addfile)."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._parts = parts
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            part = next(self._parts, None)
            if part is None:
                break
            self._buffer += part
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def write_bundle(
    out: IO[bytes],
    header: BundleHeader,
    chunk_index: bytes,
    chunks_sha256: str,
    sha256: str,
    length: int,
    blob: Iterator[bytes],
) -> None:
    """Write a bundle to ``out``, streaming the model from ``blob`` (``length`` bytes)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            (HEADER_NAME, header.to_bytes()),
            (f"chunks/{chunks_sha256}", chunk_index),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o444
            tar.addfile(info, _StreamReader(iter([data])))
        info = tarfile.TarInfo(f"blobs/{sha256}")
        info.size = length
        info.mode = 0o444
        tar.addfile(info, _StreamReader(blob))


class BundleFile:
    """Reads a bundle's members by name; a source of blobs for the fetcher."""

    def __init__(self, path: Path) -> None:
        try:
            self._tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by close()
        except (OSError, tarfile.TarError) as e:
            raise MalformedInputError(f"{path} is not a model bundle: {e}") from e
        self._members: dict[str, tarfile.TarInfo] = {}
        try:
            for member in self._tar:
                if len(self._members) >= 3:
                    raise MalformedInputError(f"{path} has more members than a bundle")
                if not member.isreg():
                    raise MalformedInputError(f"{path}: member {member.name!r} is not a file")
                self._members[member.name] = member
        except tarfile.TarError as e:
            raise MalformedInputError(f"{path} is not a model bundle: {e}") from e

    def close(self) -> None:
        """Close the file."""
        self._tar.close()

    def _member(self, name: str) -> tarfile.TarInfo:
        member = self._members.get(name)
        if member is None:
            raise MalformedInputError(f"the bundle has no {name}")
        return member

    def header(self) -> BundleHeader:
        """The bundle's metadata (not yet verified)."""
        member = self._member(HEADER_NAME)
        if member.size > MAX_HEADER_BYTES:
            raise MalformedInputError("bundle: the header is too large")
        handle = self._tar.extractfile(member)
        assert handle is not None
        return BundleHeader.from_bytes(handle.read())

    async def read_blob(
        self, sha256: str, offset: int, limit: int = 0
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Stream a blob (the model or its chunk index) like the controller does."""
        if not SHA256_PATTERN.match(sha256):
            raise MalformedInputError("blob name is not a hex SHA-256")
        names = (f"blobs/{sha256}", f"chunks/{sha256}")
        member = next((self._members[n] for n in names if n in self._members), None)
        if member is None:
            raise MalformedInputError(f"the bundle does not carry blob {sha256[:16]}…")
        handle = self._tar.extractfile(member)
        assert handle is not None
        handle.seek(offset)
        end = member.size if limit == 0 else min(member.size, offset + limit)
        position = offset
        while position < end:
            data = handle.read(min(READ_BLOCK, end - position))
            if not data:
                raise MalformedInputError("the bundle is truncated")
            yield position, data
            position += len(data)
