"""Streaming length- and digest-bounded verification of a blob against its manifest."""

from __future__ import annotations

import hashlib

from edgefleet.errors import HashMismatchError


class BoundedDigest:
    """Hash bytes as they arrive; refuse past the expected length and on a wrong digest."""

    def __init__(self, expected_sha256: str, expected_length: int) -> None:
        self.expected_sha256 = expected_sha256
        self.expected_length = expected_length
        self.received = 0
        self._hash = hashlib.sha256()

    def update(self, data: bytes | memoryview) -> None:
        """Add the next bytes; raise before accepting anything beyond the expected length."""
        if self.received + len(data) > self.expected_length:
            raise HashMismatchError(
                f"blob is longer than its manifest's {self.expected_length} bytes"
            )
        self._hash.update(data)
        self.received += len(data)

    def finish(self) -> None:
        """Raise unless exactly the expected bytes were seen."""
        if self.received != self.expected_length:
            raise HashMismatchError(
                f"blob has {self.received} bytes, its manifest says {self.expected_length}"
            )
        actual = self._hash.hexdigest()
        if actual != self.expected_sha256:
            raise HashMismatchError(
                f"blob SHA-256 {actual[:16]}… does not match manifest {self.expected_sha256[:16]}…"
            )
