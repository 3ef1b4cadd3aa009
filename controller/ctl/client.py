"""The operator's gRPC client, configured by an edgefleetctl.toml credential file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from edgefleet import serde
from edgefleet.config_files import read_toml, split_address
from edgefleet.controller.catalog.published import CatalogEntry, PublishedVersion, RemovedVersion
from edgefleet.controller.catalog.quantization.views import ClassSpeed, VersionView
from edgefleet.controller.fleet.views import FleetSummary, TokenView
from edgefleet.controller.rbac.views import OperatorView
from edgefleet.controller.rollouts.strategy import Strategy
from edgefleet.controller.rollouts.views import PinView, Plan, RolloutCreated, RolloutView
from edgefleet.controller.rpc.serde import (
    catalog_from_pb,
    created_from_pb,
    operator_from_pb,
    pin_from_pb,
    plan_from_pb,
    published_from_pb,
    removed_from_pb,
    report_from_pb,
    strategy_to_pb,
    summary_from_pb,
    token_from_pb,
    view_from_pb,
)
from edgefleet.errors import AuthenticationError, ConfigError, TransportError
from edgefleet.fleet import DeviceView
from edgefleet.rpc_status import map_rpc_errors
from edgefleet.v1 import operator_pb2, operator_pb2_grpc

UPLOAD_CHUNK = 1024 * 1024
CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class OperatorCredential:
    """Where the controller is and the operator's mTLS material."""

    controller: str
    ca_pem: bytes
    certificate_pem: bytes
    key_pem: bytes

    @classmethod
    def load(cls, path: Path, controller_override: str | None = None) -> OperatorCredential:
        """Read an edgefleetctl.toml; its paths are absolute or relative to the file."""
        doc = read_toml(path)
        if not doc:
            raise ConfigError(f"operator config {path} is missing or empty")

        def read(key: str) -> bytes:
            value = doc.get(key)
            if not isinstance(value, str):
                raise ConfigError(f"{path}: {key!r} must name a file")
            target = (path.parent / value).resolve()
            try:
                return target.read_bytes()
            except OSError as e:
                raise ConfigError(f"{path}: cannot read {key} file {target}: {e.strerror}") from e

        controller = controller_override or doc.get("controller")
        if not isinstance(controller, str):
            raise ConfigError(f"{path}: 'controller' must be HOST:PORT")
        split_address(controller)
        return cls(controller, read("ca"), read("certificate"), read("key"))


# Where `serve` says the operator port is (the first line of serve.addr, "sync=" in its log).
WHERE_THE_PORT_IS = "the sync address `serve` logs and writes first in serve.addr"


def explain_unreachable(address: str, failure: str) -> str | None:
    """A plain-words reason (with the fix) for a call that did not reach the controller's
    operator service at ``address``; None when the failure is something else."""
    if "needs a client certificate" in failure:
        # The enrollment listener asks for no client certificate: operators are not served.
        return (
            f"{address} is the controller's enrollment port, where devices join: "
            f"operators connect to {WHERE_THE_PORT_IS}"
        )
    if "WRONG_VERSION_NUMBER" in failure or "handshake failed" in failure.lower():
        return (
            f"{address} does not answer TLS: it is not the controller's operator port (its "
            f"health or metrics port, perhaps); use {WHERE_THE_PORT_IS}"
        )
    if "Connection refused" in failure:
        return (
            f"nothing listens at {address} (connection refused): start the controller "
            f"(`edgefleetctl serve`), or check --controller and the config's address"
        )
    if "DNS resolution failed" in failure or "Name or service not known" in failure:
        return f"cannot resolve the host of {address}: check --controller and the config"
    if failure.startswith("deadline_exceeded"):
        return f"no answer from {address} in time: is it the controller, and is it up?"
    return None


class OperatorClient:
    """Calls the OperatorService; every failure surfaces as an EdgefleetError."""

    def __init__(self, credential: OperatorCredential) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=credential.ca_pem,
            private_key=credential.key_pem,
            certificate_chain=credential.certificate_pem,
        )
        self.address = credential.controller
        self._channel = grpc.secure_channel(credential.controller, credentials)
        self._stub = operator_pb2_grpc.OperatorServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """map_rpc_errors, with a failure to reach the controller explained: which port
        this is not, and what to do."""
        try:
            with map_rpc_errors():
                yield
        except (TransportError, AuthenticationError) as e:
            explained = explain_unreachable(self.address, str(e))
            if explained is None:
                raise
            raise TransportError(explained) from e

    def _call(self, method: Any, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        with self._errors():
            return method(request, timeout=timeout)

    def create_token(self, labels: dict[str, str], ttl_seconds: int) -> tuple[str, str, str]:
        """A one-time enrollment token, its expiry and its id."""
        request = operator_pb2.CreateEnrollmentTokenRequest(labels=labels, ttl_seconds=ttl_seconds)
        response = self._call(self._stub.CreateEnrollmentToken, request)
        return response.token, response.expires_at, response.token_id

    def list_models(self, name: str = "", version: str = "") -> list[CatalogEntry]:
        """The catalog (of ``name``; with the devices' ids for one ``version``)."""
        request = operator_pb2.ListModelsRequest(name=name, version=version)
        return [catalog_from_pb(m) for m in self._call(self._stub.ListModels, request).models]

    def remove_model(self, name: str, version: str, force: bool) -> RemovedVersion:
        """Take a version out of the catalog (``force``: even while in use)."""
        request = operator_pb2.RemoveModelRequest(name=name, version=version, force=force)
        return removed_from_pb(self._call(self._stub.RemoveModel, request))

    def list_pins(self) -> list[PinView]:
        """Every pin and how many devices it holds."""
        response = self._call(self._stub.ListPins, operator_pb2.ListPinsRequest())
        return [pin_from_pb(p) for p in response.pins]

    def remove_device(self, device_id: str) -> None:
        """Forget a rejected or revoked device."""
        request = operator_pb2.RemoveDeviceRequest(device_id=device_id)
        self._call(self._stub.RemoveDevice, request)

    def list_tokens(self) -> list[TokenView]:
        """Every enrollment token, newest first."""
        request = operator_pb2.ListEnrollmentTokensRequest()
        return [
            token_from_pb(t) for t in self._call(self._stub.ListEnrollmentTokens, request).tokens
        ]

    def revoke_token(self, token_id: str) -> TokenView:
        """Revoke an unused enrollment token."""
        request = operator_pb2.RevokeEnrollmentTokenRequest(token_id=token_id)
        return token_from_pb(self._call(self._stub.RevokeEnrollmentToken, request))

    def list_operators(self) -> list[OperatorView]:
        """Every registered operator."""
        response = self._call(self._stub.ListOperators, operator_pb2.ListOperatorsRequest())
        return [operator_from_pb(o) for o in response.operators]

    def remove_operator(self, name: str) -> None:
        """Unregister an operator (their certificate is refused from then on)."""
        self._call(self._stub.RemoveOperator, operator_pb2.RemoveOperatorRequest(name=name))

    def label_device(
        self, device_id: str, labels: dict[str, str], remove: list[str]
    ) -> dict[str, str]:
        """Set and remove labels of a device; return its labels."""
        request = operator_pb2.LabelDeviceRequest(device_id=device_id, set=labels, remove=remove)
        return dict(sorted(self._call(self._stub.LabelDevice, request).labels.items()))

    def publish(
        self,
        path: Path,
        name: str,
        version: str,
        evaluation_json: str = "",
        sent: Callable[[int], None] = lambda count: None,
    ) -> PublishedVersion:
        """Upload a GGUF file (a quantized variant with its measurements); the controller
        hashes, checks, signs and stores it. ``sent`` hears of each block sent."""
        try:
            length = path.stat().st_size
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from e

        def parts() -> Iterator[operator_pb2.PublishModelRequest]:
            header = operator_pb2.PublishModelHeader(
                name=name, version=version, length=length, evaluation_json=evaluation_json
            )
            yield operator_pb2.PublishModelRequest(header=header)
            with path.open("rb") as f:
                for block in iter(lambda: f.read(UPLOAD_CHUNK), b""):
                    yield operator_pb2.PublishModelRequest(data=block)
                    sent(len(block))

        return published_from_pb(self._call(self._stub.PublishModel, parts(), timeout=3600))

    def create_rollout(
        self,
        name: str,
        version: str,
        selector: dict[str, str],
        strategy: Strategy | None = None,
    ) -> RolloutCreated:
        """Start rolling name@version out; the response names the devices its first wave
        was assigned (for a model family: the variant and why) and the whole plan."""
        request = _rollout_request(name, version, selector, strategy)
        return created_from_pb(self._call(self._stub.CreateRollout, request))

    def plan_rollout(
        self,
        name: str,
        version: str,
        selector: dict[str, str],
        strategy: Strategy | None = None,
    ) -> Plan:
        """Which devices a rollout would give what, in which wave, and who is left out."""
        request = _rollout_request(name, version, selector, strategy)
        return plan_from_pb(self._call(self._stub.PlanRollout, request))

    def get_rollout(self, rollout_id: int) -> RolloutView:
        """One rollout with its devices."""
        request = operator_pb2.GetRolloutRequest(id=rollout_id)
        return view_from_pb(self._call(self._stub.GetRollout, request))

    def list_rollouts(self) -> list[RolloutView]:
        """Every rollout, newest first, page by page."""
        views: list[RolloutView] = []
        token = ""
        while True:
            request = operator_pb2.ListRolloutsRequest(page_token=token)
            response = self._call(self._stub.ListRollouts, request)
            views.extend(view_from_pb(v) for v in response.rollouts)
            token = response.next_page_token
            if not token:
                return views

    def change_rollout(self, rollout_id: int, action: str) -> RolloutView:
        """pause | resume | abort | rollback."""
        request = operator_pb2.ChangeRolloutRequest(id=rollout_id, action=action)
        return view_from_pb(self._call(self._stub.ChangeRollout, request))

    def pin(self, name: str, version: str, device_id: str, selector: dict[str, str]) -> list[str]:
        """Hold name at version on one device or the devices a selector matches."""
        request = operator_pb2.PinModelRequest(
            name=name, version=version, device_id=device_id, selector=selector
        )
        return list(self._call(self._stub.PinModel, request).device_ids)

    def unpin(self, name: str, device_id: str, selector: dict[str, str]) -> list[str]:
        """Remove a pin; return the devices it held."""
        request = operator_pb2.PinModelRequest(name=name, device_id=device_id, selector=selector)
        return list(self._call(self._stub.UnpinModel, request).device_ids)

    def model_report(self, name: str) -> tuple[list[VersionView], list[ClassSpeed]]:
        """Every version of ``name`` with its evaluation, and device speeds by class."""
        request = operator_pb2.GetModelReportRequest(name=name)
        return report_from_pb(self._call(self._stub.GetModelReport, request))

    def list_devices(
        self, device_id: str = "", selector: dict[str, str] | None = None
    ) -> list[DeviceView]:
        """Every enrolled device (or only ``device_id``; only those with the ``selector``'s
        labels), page by page."""
        views: list[DeviceView] = []
        token = ""
        while True:
            page, token = self.device_page(token, device_id=device_id, selector=selector)
            views.extend(page)
            if not token:
                return views

    def device_page(
        self,
        page_token: str = "",
        size: int = 0,
        device_id: str = "",
        selector: dict[str, str] | None = None,
    ) -> tuple[list[DeviceView], str]:
        """One page of devices (``size``: 0 for the server's default) and the next page's
        token ("" after the last)."""
        request = operator_pb2.ListDevicesRequest(
            page_token=page_token, page_size=size, device_id=device_id, selector=selector or {}
        )
        response = self._call(self._stub.ListDevices, request)
        views = [serde.device_view_from_pb(d) for d in response.devices]
        return views, response.next_page_token

    def fleet_summary(self, selector: dict[str, str] | None = None) -> FleetSummary:
        """Counts over the devices the selector matches (every device: None)."""
        request = operator_pb2.GetFleetSummaryRequest(selector=selector or {})
        return summary_from_pb(self._call(self._stub.GetFleetSummary, request))

    def whoami(self) -> tuple[str, str, frozenset[str]]:
        """The calling operator's name, role and permissions."""
        response = self._call(self._stub.WhoAmI, operator_pb2.WhoAmIRequest())
        return response.name, response.role, frozenset(response.permissions)

    def export_audit(
        self, device_id: str | None, since: str = "", until: str = ""
    ) -> Iterator[tuple[bytes, bytes]]:
        """Stream (record bytes verbatim, b"") pairs, then (b"", signed export header)."""
        request = operator_pb2.ExportAuditRequest(
            device_id=device_id or "", since=since, until=until
        )
        with self._errors():
            for chunk in self._stub.ExportAudit(request, timeout=3600):
                if chunk.WhichOneof("part") == "record":
                    yield bytes(chunk.record.canonical), b""
                else:
                    yield b"", bytes(chunk.header)

    def export_bundle(self, name: str, version: str) -> Iterator[tuple[str, bytes]]:
        """Stream ("header"|"chunk_index"|"data", bytes) parts of a model bundle."""
        request = operator_pb2.ExportBundleRequest(name=name, version=version)
        with self._errors():
            for chunk in self._stub.ExportBundle(request, timeout=24 * 3600):
                part = chunk.WhichOneof("part")
                yield str(part), bytes(getattr(chunk, str(part)))

    def add_operator(self, name: str, role: str, csr_pem: bytes) -> tuple[bytes, bytes]:
        """The new operator's certificate and the CA certificate."""
        request = operator_pb2.AddOperatorRequest(name=name, role=role, csr_pem=csr_pem)
        response = self._call(self._stub.AddOperator, request)
        return bytes(response.certificate_pem), bytes(response.ca_certificate_pem)

    def apply_policy(self, document: bytes) -> tuple[int, bytes]:
        """Apply a policy document; return the signed version and its payload."""
        response = self._call(
            self._stub.ApplyPolicy, operator_pb2.ApplyPolicyRequest(document=document)
        )
        return int(response.version), bytes(response.document)

    def get_policy(self) -> tuple[int, bytes]:
        """The policy in force (version 0 and no document before the first)."""
        response = self._call(self._stub.GetPolicy, operator_pb2.GetPolicyRequest())
        return int(response.version), bytes(response.document)

    def create_app_token(
        self, subject: str, role: str, models: list[str], devices: dict[str, str]
    ) -> tuple[str, str, int]:
        """(token shown once, token id, new policy version)."""
        request = operator_pb2.CreateAppTokenRequest(
            subject=subject, role=role, models=models, devices=devices
        )
        response = self._call(self._stub.CreateAppToken, request)
        return response.token, response.token_id, int(response.policy_version)

    def revoke_app_token(self, token_id: str) -> int:
        """Revoke a token; return the new policy version."""
        request = operator_pb2.RevokeAppTokenRequest(token_id=token_id)
        return int(self._call(self._stub.RevokeAppToken, request).version)

    def set_device_state(self, device_id: str, action: str) -> str:
        """accept | reject | revoke; return the device's new state."""
        request = operator_pb2.SetDeviceStateRequest(device_id=device_id, action=action)
        return str(self._call(self._stub.SetDeviceState, request).state)

    def reject_pending(self, source: str) -> int:
        """Reject every device waiting for approval (from ``source`` only, if given)."""
        request = operator_pb2.SetDeviceStateRequest(
            action="reject", all_pending=True, source=source
        )
        return int(self._call(self._stub.SetDeviceState, request).count)

    def preauthorize(self, fingerprint: str, labels: dict[str, str]) -> None:
        """Let the device key with this fingerprint enroll without a token."""
        request = operator_pb2.PreauthorizeDeviceRequest(key_fingerprint=fingerprint, labels=labels)
        self._call(self._stub.PreauthorizeDevice, request)

    def clear_audit_alert(self, device_id: str, reason: str) -> int:
        """Clear the open tamper alerts of ``device_id``'s chain; return how many."""
        request = operator_pb2.ClearAuditAlertRequest(device_id=device_id, reason=reason)
        return int(self._call(self._stub.ClearAuditAlert, request).cleared)

    def query_audit(
        self,
        device_id: str,
        actor: str,
        action: str,
        since: str,
        until: str,
        limit: int,
        oldest_first: bool = False,
    ) -> tuple[list[bytes], bool]:
        """Matching records verbatim (the latest first unless ``oldest_first``), and whether
        more matched than ``limit``."""
        request = operator_pb2.QueryAuditRequest(
            device_id=device_id,
            actor=actor,
            action=action,
            since=since,
            until=until,
            limit=limit,
            oldest_first=oldest_first,
        )
        response = self._call(self._stub.QueryAudit, request)
        return [bytes(r.canonical) for r in response.records], bool(response.truncated)


def _rollout_request(
    name: str, version: str, selector: dict[str, str], strategy: Strategy | None
) -> operator_pb2.CreateRolloutRequest:
    return operator_pb2.CreateRolloutRequest(
        name=name,
        version=version,
        selector=selector,
        strategy=strategy_to_pb(strategy) if strategy is not None else None,
    )
