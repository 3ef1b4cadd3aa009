"""Key management on a controller data directory: draft, sign and publish root versions.

Every change to the fleet's keys is a new root version. Changes accumulate in a draft
(``metadata/root-draft.json``: the next root's exact payload and the signatures gathered
so far). The draft is published only when a threshold of the *current* root keys and a
threshold of the *new* root keys have signed it — checked with the same state machine
devices run, so a published root is one every device will follow. Root keys can live
on another machine: export the draft, sign it there (`edgefleetctl keys sign`, which
needs only the key file), import the signatures, publish.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.controller.app.datadir import ROOT_EXPIRY, DataDir
from edgefleet.controller.trust.keyring import load_private_keys
from edgefleet.errors import ConfigError, MalformedInputError, SignatureError
from edgefleet.files import write_atomically
from edgefleet.trust.envelope import Envelope, Signature, pae
from edgefleet.trust.keys import PublicKey, SigningKey
from edgefleet.trust.metadata import ROLES, ROOT_TYPE, RoleKeys, Root
from edgefleet.trust.verifier import TrustedState, root_fingerprint

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DraftStatus:
    """Where a draft stands: its root, and the signatures it has and needs."""

    root: Root
    signed_by: tuple[str, ...]
    missing: tuple[str, ...]


def draft_path(data: DataDir) -> Path:
    """Where the draft of the next root version is kept."""
    return data.root_metadata.parent / "root-draft.json"


def current_root(data: DataDir) -> Root:
    """The newest published root."""
    return Root.from_payload(data.root_chain()[-1].payload)


def load_draft(data: DataDir) -> Envelope | None:
    """The draft in progress, if any."""
    path = draft_path(data)
    return Envelope.from_json(path.read_bytes()) if path.exists() else None


def _save_draft(data: DataDir, root: Root, signatures: tuple[Signature, ...] = ()) -> Envelope:
    envelope = Envelope(ROOT_TYPE, root.to_payload(), signatures)
    write_atomically(draft_path(data), envelope.to_json())
    return envelope


def _draft_root(data: DataDir) -> Root:
    """The draft's root, or a new draft: the current root at the next version."""
    draft = load_draft(data)
    if draft is not None:
        return Root.from_payload(draft.payload)
    current = current_root(data)
    expires = datetime.now(UTC).replace(microsecond=0) + ROOT_EXPIRY
    return replace(current, version=current.version + 1, expires=expires)


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role


def _change(data: DataDir, root: Root) -> Root:
    """Validate a changed draft root and save it (gathered signatures no longer apply)."""
    checked = Root.from_payload(root.to_payload())
    _save_draft(data, checked)
    return checked


def _without_unused_keys(root: Root, roles: dict[str, RoleKeys]) -> Root:
    used = {k for r in roles.values() for k in r.keyids}
    return replace(root, roles=roles, keys={k: v for k, v in root.keys.items() if k in used})


def add_key(data: DataDir, role: str, public: PublicKey) -> Root:
    """Let ``public`` sign for ``role`` (the threshold is unchanged)."""
    root = _draft_root(data)
    named = root.roles[_check_role(role)]
    if public.keyid in named.keyids:
        raise ConfigError(f"key {public.keyid[:16]}… already signs for {role}")
    roles = dict(root.roles)
    roles[role] = RoleKeys((*named.keyids, public.keyid), named.threshold)
    return _change(data, replace(root, keys={**root.keys, public.keyid: public}, roles=roles))


def revoke_key(data: DataDir, role: str, keyid: str) -> Root:
    """Stop ``keyid`` signing for ``role``."""
    root = _draft_root(data)
    named = root.roles[_check_role(role)]
    matches = [k for k in named.keyids if k.startswith(keyid)] if len(keyid) >= 8 else []
    if len(matches) != 1:
        raise ConfigError(f"{keyid!r} names no single {role} key (give at least 8 hex digits)")
    kept = tuple(k for k in named.keyids if k != matches[0])
    if len(kept) < named.threshold:
        raise ConfigError(
            f"revoking it leaves {len(kept)} {role} key(s) for a threshold of {named.threshold}: "
            "add a key or lower the threshold first"
        )
    roles = dict(root.roles)
    roles[role] = RoleKeys(kept, named.threshold)
    return _change(data, _without_unused_keys(root, roles))


def set_threshold(data: DataDir, role: str, threshold: int) -> Root:
    """How many of ``role``'s keys must sign."""
    root = _draft_root(data)
    named = root.roles[_check_role(role)]
    if not 1 <= threshold <= len(named.keyids):
        raise ConfigError(f"{role} has {len(named.keyids)} key(s): threshold must be 1..that")
    roles = dict(root.roles)
    roles[role] = RoleKeys(named.keyids, threshold)
    return _change(data, replace(root, roles=roles))


def rotate_key(data: DataDir, role: str, public: PublicKey | None = None) -> tuple[Root, str]:
    """Replace every key of ``role`` by one new key (made here unless ``public`` is given).

    Returns the draft and where the new private key was written ('' when given).
    """
    root = _draft_root(data)
    _check_role(role)
    written = ""
    if public is None:
        key = SigningKey.generate()
        path = data.keys / f"{role}-{key.keyid[:16]}.key"
        key.save(path)
        public, written = key.public, str(path)
    roles = dict(root.roles)
    roles[role] = RoleKeys((public.keyid,), 1)
    rotated = replace(root, keys={**root.keys, public.keyid: public}, roles=roles)
    return _change(data, _without_unused_keys(rotated, roles)), written


def renew(data: DataDir) -> Root:
    """A draft with no change but the next version and a fresh expiry."""
    return _change(data, _draft_root(data))


def sign_draft_file(path: Path, key: SigningKey) -> Root:
    """Add ``key``'s signature to an exported draft (runs on the machine holding the key)."""
    try:
        envelope = Envelope.from_json(path.read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    if envelope.payload_type != ROOT_TYPE:
        raise MalformedInputError(f"{path} is not a root metadata draft")
    root = Root.from_payload(envelope.payload)
    signature = Signature(key.keyid, key.sign(pae(ROOT_TYPE, envelope.payload)))
    kept = tuple(s for s in envelope.signatures if s.keyid != key.keyid)
    write_atomically(path, Envelope(ROOT_TYPE, envelope.payload, (*kept, signature)).to_json())
    return root


def import_signatures(data: DataDir, path: Path) -> DraftStatus:
    """Merge valid signatures from a signed copy of the draft into the draft."""
    draft = load_draft(data)
    if draft is None:
        raise ConfigError("there is no draft: make a change with `edgefleetctl keys ...` first")
    other = Envelope.from_json(path.read_bytes())
    if other.payload != draft.payload:
        raise SignatureError(f"{path} signs another root than the current draft")
    message = pae(ROOT_TYPE, draft.payload)
    known = _signing_keys(data, Root.from_payload(draft.payload))
    merged = {s.keyid: s for s in draft.signatures}
    for signature in other.signatures:
        key = known.get(signature.keyid)
        if key is None or not key.verifies(signature.sig, message):
            raise SignatureError(f"the signature of key {signature.keyid[:16]}… is not valid")
        merged[signature.keyid] = signature
    _save_draft(data, Root.from_payload(draft.payload), tuple(merged.values()))
    return draft_status(data)


def _signing_keys(data: DataDir, new: Root) -> dict[str, PublicKey]:
    old = current_root(data)
    return {
        k: v for root in (old, new) for k, v in root.keys.items() if k in root.roles["root"].keyids
    }


def draft_status(data: DataDir) -> DraftStatus:
    """The draft's root, who signed it, and what is still missing."""
    draft = load_draft(data)
    if draft is None:
        raise ConfigError("there is no draft")
    new = Root.from_payload(draft.payload)
    old = current_root(data)
    signed = {s.keyid for s in draft.signatures}
    missing = []
    for label, root in (("current", old), ("new", new)):
        named = root.roles["root"]
        have = len(signed & set(named.keyids))
        if have < named.threshold:
            missing.append(f"{named.threshold - have} more of the {label} root keys")
    return DraftStatus(new, tuple(sorted(signed)), tuple(missing))


def publish(data: DataDir, now: datetime | None = None) -> Root:
    """Sign the draft with root keys held here, check it as a device would, publish it."""
    draft = load_draft(data)
    if draft is None:
        raise ConfigError("there is no draft to publish")
    new = Root.from_payload(draft.payload)
    chain = data.root_chain()
    signatures = {s.keyid: s for s in draft.signatures}
    message = pae(ROOT_TYPE, draft.payload)
    may_sign = _signing_keys(data, new)
    for keyid, key in load_private_keys(data.keys).items():
        if keyid in may_sign and keyid not in signatures:
            signatures[keyid] = Signature(keyid, key.sign(message))
    signed = Envelope(ROOT_TYPE, draft.payload, tuple(signatures.values()))
    now = now or datetime.now(UTC)
    state = TrustedState.bootstrap(root_fingerprint(chain[0]), chain, EPOCH)
    try:
        state.update_root_chain([signed], now)
    except SignatureError as e:
        _save_draft(data, new, signed.signatures)
        status = draft_status(data)
        raise SignatureError(
            f"root version {new.version} needs {' and '.join(status.missing)} "
            f"({e}); sign the exported draft where those keys are, then import it"
        ) from e
    target = data.root_metadata / f"{new.version}.json"
    write_atomically(target, signed.to_json())
    draft_path(data).unlink()
    _retire_unused_keys(data, new)
    return new


def _retire_unused_keys(data: DataDir, root: Root) -> None:
    """Move private keys the new root no longer names out of the keyring's folder."""
    named = {k for r in root.roles.values() for k in r.keyids}
    retired = data.keys / "retired"
    for path in sorted(data.keys.glob("*.key")):
        if SigningKey.load(path).keyid not in named:
            retired.mkdir(mode=0o700, exist_ok=True)
            os.replace(path, retired / path.name)


def describe(root: Root, held: set[str]) -> str:
    """A readable listing of a root's roles and keys (``*``: private key held here)."""
    lines = [f"root version {root.version}, expires {root.expires:%Y-%m-%d}"]
    for role in ROLES:
        named = root.roles[role]
        keys = ", ".join(f"{k[:16]}{'*' if k in held else ''}" for k in named.keyids)
        lines.append(f"  {role:<10} {named.threshold}-of-{len(named.keyids)}  {keys}")
    return "\n".join(lines)


def draft_json(data: DataDir) -> str:
    """The draft's root payload, pretty-printed for review before signing."""
    draft = load_draft(data)
    if draft is None:
        raise ConfigError("there is no draft")
    return json.dumps(json.loads(draft.payload), indent=2, sort_keys=True)
