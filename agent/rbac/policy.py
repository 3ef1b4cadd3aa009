"""The device's RBAC policy for the local API, kept in ``policy.json`` in the data directory.

Until the controller distributes signed policy bundles, a device's administrator manages
application tokens here with `edgefleet-agent tokens ...`. The running agent picks up
changes without a restart (it re-reads the file when its modification time changes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from edgefleet.errors import ConfigError, NotFoundError
from edgefleet.files import exclusive_lock, write_atomically
from edgefleet.rbac import Binding, Policy, new_token

POLICY_FILE = "policy.json"
DEFAULT_ROLES = {
    "inference": frozenset({"inference.invoke", "inference.embed", "models.read"}),
    "embedder": frozenset({"inference.embed", "models.read"}),
    "reader": frozenset({"models.read"}),
}


# No tokens, the built-in local roles: in force while the device has no policy file.
EMPTY_POLICY = Policy(version=0, roles=DEFAULT_ROLES)


class LocalPolicy:
    """Reads and changes ``policy.json``; caches the parsed policy by modification time."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / POLICY_FILE
        self._cached: tuple[float, Policy] | None = None

    def current(self) -> Policy:
        """The policy in force (re-read only if the file changed)."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return EMPTY_POLICY
        if self._cached is None or self._cached[0] != mtime:
            try:
                self._cached = (mtime, Policy.from_payload(self.path.read_bytes()))
            except OSError as e:
                raise ConfigError(f"cannot read {self.path}: {e.strerror}") from e
        return self._cached[1]

    @contextlib.contextmanager
    def _changing(self) -> Iterator[Policy]:
        """The policy as stored now, with other changers (processes too) kept out until the
        change is written: concurrent `tokens create` lost tokens they had printed."""
        with exclusive_lock(self.path.with_name(POLICY_FILE + ".lock")):
            try:
                current = Policy.from_payload(self.path.read_bytes())
            except FileNotFoundError:
                current = EMPTY_POLICY
            except OSError as e:
                raise ConfigError(f"cannot read {self.path}: {e.strerror}") from e
            yield current

    def _save(self, policy: Policy) -> None:
        write_atomically(self.path, policy.to_payload())

    def create_token(self, subject: str, role: str, models: tuple[str, ...]) -> tuple[str, str]:
        """Add a token for ``subject`` bound to ``role`` on ``models``; return (token, id)."""
        with self._changing() as policy:
            return self._add_token(policy, subject, role, models)

    def _add_token(
        self, policy: Policy, subject: str, role: str, models: tuple[str, ...]
    ) -> tuple[str, str]:
        if role not in policy.roles:
            raise ConfigError(f"unknown role {role!r}; roles: {', '.join(sorted(policy.roles))}")
        token, entry = new_token(subject)
        binding = Binding(subject, role, models or ("*",))
        bindings = policy.bindings if binding in policy.bindings else (*policy.bindings, binding)
        self._save(
            replace(
                policy,
                version=policy.version + 1,
                bindings=bindings,
                tokens=(*policy.tokens, entry),
            )
        )
        return token, entry.token_id

    def revoke_token(self, token_id: str) -> str:
        """Remove a token; return its subject."""
        with self._changing() as policy:
            return self._remove_token(policy, token_id)

    def _remove_token(self, policy: Policy, token_id: str) -> str:
        kept = tuple(t for t in policy.tokens if t.token_id != token_id)
        if len(kept) == len(policy.tokens):
            raise NotFoundError(f"no token with id {token_id}")
        subject = next(t.subject for t in policy.tokens if t.token_id == token_id)
        self._save(replace(policy, version=policy.version + 1, tokens=kept))
        return subject


def merge(signed: Policy | None, local: Policy) -> Policy:
    """The policy a device enforces: the fleet's signed policy plus the device's own tokens.

    Roles of the signed policy win over local roles of the same name; a local token whose
    id collides with a signed one is ignored.
    """
    if signed is None:
        return local
    signed_ids = {t.token_id for t in signed.tokens}
    return replace(
        signed,
        audit_redact=tuple(dict.fromkeys((*signed.audit_redact, *local.audit_redact))),
        roles={**local.roles, **signed.roles},
        bindings=(*signed.bindings, *local.bindings),
        tokens=(*signed.tokens, *(t for t in local.tokens if t.token_id not in signed_ids)),
    )


class DevicePolicy:
    """The policy in force on the device: the last verified signed policy plus the local one."""

    def __init__(self, local: LocalPolicy, signed: Policy | None) -> None:
        self.local = local
        self.signed = signed
        self._merged: tuple[Policy | None, Policy, Policy] | None = None  # (signed, local, merged)

    def set_signed(self, policy: Policy) -> None:
        """Adopt a newly verified signed policy (called by the syncer)."""
        self.signed = policy

    def current(self) -> Policy:
        """The merged policy, merged again only when either side changed."""
        local = self.local.current()
        cached = self._merged
        if cached is None or cached[0] is not self.signed or cached[1] is not local:
            cached = (self.signed, local, merge(self.signed, local))
            self._merged = cached
        return cached[2]
