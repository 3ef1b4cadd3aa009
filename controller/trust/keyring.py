"""The controller's trust material as of now: the root chain and the online signing keys.

Both live in the data directory and change under `edgefleetctl keys ...` while the
controller runs; the keyring notices (one ``stat`` of each folder per use) and reloads,
so a published root rotation reaches devices at their next sync with no restart.
Private keys are found by key id: any ``keys/*.key`` file whose key the current root
names for a role signs for that role.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.controller.app.datadir import DataDir
from edgefleet.errors import ConfigError, SignatureError
from edgefleet.trust.envelope import Envelope, SignedDocument, sign_document, verify_envelope
from edgefleet.trust.keys import SigningKey
from edgefleet.trust.metadata import Root


@dataclass(frozen=True)
class TrustMaterial:
    """One consistent view: the root chain and the private keys held here."""

    root_chain: tuple[Envelope, ...]
    root: Root
    private_keys: dict[str, SigningKey]

    def signers(self, role: str) -> list[SigningKey]:
        """A threshold of keys for ``role`` held here, or ConfigError naming what is missing."""
        named = self.root.roles[role]
        held = [self.private_keys[k] for k in named.keyids if k in self.private_keys]
        if len(held) < named.threshold:
            raise ConfigError(
                f"the controller holds {len(held)} of the {named.threshold} {role} key(s) "
                f"root version {self.root.version} requires"
            )
        return held[: named.threshold]

    def signer(self, role: str) -> SigningKey:
        """The single key of a role that signs alone (audit receipts and exports)."""
        signers = self.signers(role)
        if len(signers) != 1:
            raise ConfigError(f"the {role} role must have threshold 1 on the controller")
        return signers[0]

    def sign(self, role: str, document: SignedDocument) -> Envelope:
        """Sign ``document`` with a threshold of ``role``'s keys (once it parses back)."""
        return sign_document(document, self.signers(role))

    def vouches(self, role: str, envelope: Envelope) -> bool:
        """Tell whether the current root's keys for ``role`` signed ``envelope``."""
        named = self.root.roles[role]
        try:
            verify_envelope(
                envelope, envelope.payload_type, self.root.keys, named.keyids, named.threshold, role
            )
        except SignatureError:
            return False
        return True


def load_private_keys(folder: Path) -> dict[str, SigningKey]:
    """Every Ed25519 key file in ``folder``, by key id."""
    keys = {}
    for path in sorted(folder.glob("*.key")):
        key = SigningKey.load(path)
        keys[key.keyid] = key
    return keys


class Keyring:
    """Hands out the current trust material, reloading it when the data directory changes."""

    def __init__(self, data: DataDir) -> None:
        self.data = data
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._material: TrustMaterial | None = None
        self._looked_at = 0.0

    def _folder_stamp(self) -> tuple[int, int]:
        return (
            self.data.root_metadata.stat().st_mtime_ns,
            self.data.keys.stat().st_mtime_ns,
        )

    def current(self, max_age: float = 0.0) -> TrustMaterial:
        """The trust material as the data directory holds it now — or as it held it at
        most ``max_age`` seconds ago (no look at the files: for every device sync)."""
        material = self._material
        if material is not None and time.monotonic() - self._looked_at < max_age:
            return material
        stamp = self._folder_stamp()
        with self._lock:
            if self._material is None or stamp != self._stamp:
                chain = tuple(self.data.root_chain())
                root = Root.from_payload(chain[-1].payload)
                self._material = TrustMaterial(chain, root, load_private_keys(self.data.keys))
                self._stamp = stamp
            self._looked_at = time.monotonic()
            return self._material
