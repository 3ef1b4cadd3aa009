"""gRPC servicers: decode messages, call the controller's services off the event loop, encode."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import Message

from edgefleet import serde
from edgefleet.audit import CONTROLLER_CHAIN, AuditEvent, sign_key_attestation, sign_receipt
from edgefleet.audit_export import ExportBuilder
from edgefleet.controller.audit.log import (
    ExportFilter,
    alerts_of,
    audit_public_keys,
    checkpoints_between,
    clear_alert,
    export_page,
    ingest,
    query_page,
    record_alone,
    through_next_checkpoint,
)
from edgefleet.controller.catalog.listing import list_catalog
from edgefleet.controller.catalog.published import PublishedVersion
from edgefleet.controller.catalog.quantization.family import model_report
from edgefleet.controller.fleet.devices import fleet_summary, list_devices, may_read_blob
from edgefleet.controller.fleet.enrollment import EnrollmentRequest, token_id
from edgefleet.controller.rbac.operators import (
    add_operator,
    held_role,
    list_operators,
    remove_operator,
)
from edgefleet.controller.rbac.policies import latest_policy
from edgefleet.controller.rollouts.engine import change_rollout, create_rollout, describe_rollouts
from edgefleet.controller.rollouts.engine import plan as plan_rollout
from edgefleet.controller.rollouts.pins import list_pins, pin_model, unpin_model
from edgefleet.controller.rpc.guard import caller
from edgefleet.controller.rpc.serde import (
    catalog_to_pb,
    created_to_pb,
    operator_to_pb,
    pin_to_pb,
    plan_to_pb,
    published_to_pb,
    removed_to_pb,
    report_to_pb,
    strategy_from_pb,
    summary_to_pb,
    token_to_pb,
    view_to_pb,
)
from edgefleet.controller.trust.snapshots import RECHECK_SECONDS, bundle_header
from edgefleet.errors import MalformedInputError, NotFoundError
from edgefleet.trust.metadata import format_time, parse_time
from edgefleet.v1 import device_pb2, device_pb2_grpc, operator_pb2, operator_pb2_grpc

if TYPE_CHECKING:
    from edgefleet.controller.app.service import ControllerApp


MAX_QUERY_RECORDS = 10_000
_Message = TypeVar("_Message", bound=Message)
_Key = TypeVar("_Key", str, int)


def peer_address(peer: str) -> str:
    """The network address of a gRPC peer ("ipv4:10.0.0.5:41234" -> "10.0.0.5")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer[:64]


def _page_size(asked: int, default: int, most: int) -> int:
    return min(asked or default, most)


def _page_after(token: str, kind: Callable[[str], _Key]) -> _Key:
    """The position a page token names (the last key of the previous page)."""
    if len(token) > 64:
        raise MalformedInputError("page_token is not one this server gave")
    try:
        return kind(token)
    except ValueError as e:
        raise MalformedInputError("page_token is not one this server gave") from e


READ_AHEAD_CHUNKS = 4


async def _blob_chunks(
    app: ControllerApp, sha256: str, offset: int, limit: int
) -> AsyncIterator[tuple[int, bytes]]:
    """(offset, bytes) of a stored blob, reading a few chunks per trip to a thread."""
    chunks = app.blobs.read(sha256, offset, limit, app.config.blob_chunk_bytes)
    while batch := await asyncio.to_thread(list, itertools.islice(chunks, READ_AHEAD_CHUNKS)):
        for item in batch:
            yield item


class _Registration:
    """Stands in for a server to collect the generated method handlers of a service."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_device_service(server: grpc.aio.Server, servicer: DeviceServicer) -> None:
    """Register the device API as generated, except that ReadBlob's messages come
    serialized already (:func:`edgefleet.serde.blob_chunk_to_wire`: one copy of the data
    instead of three)."""
    registration = _Registration()
    device_pb2_grpc.add_DeviceServiceServicer_to_server(servicer, registration)
    handlers = registration.handlers
    handlers["ReadBlob"] = grpc.unary_stream_rpc_method_handler(
        servicer.ReadBlob,
        request_deserializer=device_pb2.ReadBlobRequest.FromString,
        response_serializer=bytes,
    )
    generic = grpc.method_handlers_generic_handler(registration.service, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(registration.service, handlers)


class DeviceServicer(device_pb2_grpc.DeviceServiceServicer):
    """The agent-facing API."""

    def __init__(self, app: ControllerApp) -> None:
        self.app = app

    async def GetTrustBootstrap(
        self, request: device_pb2.GetTrustBootstrapRequest, context: grpc.aio.ServicerContext
    ) -> device_pb2.TrustBootstrap:
        return device_pb2.TrustBootstrap(
            root_chain=[serde.envelope_to_pb(e) for e in self.app.root_chain],
            ca_certificate_pem=self.app.ca_pem,
        )

    async def Enroll(
        self, request: device_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> device_pb2.EnrollResponse:
        enrollment_request = EnrollmentRequest(
            token=request.token,
            csr_pem=bytes(request.csr_pem),
            hostname=request.hostname,
            agent_version=request.agent_version,
            audit_key=request.audit_public_key,
            source=peer_address(context.peer()),
        )
        enrolled = await asyncio.to_thread(self.app.enrollment.enroll, enrollment_request)
        attestation = None
        if enrolled.status == "enrolled":
            envelope = sign_key_attestation(
                enrolled.device_id, request.audit_public_key, self.app.audit_key
            )
            attestation = serde.envelope_to_pb(envelope)
        return device_pb2.EnrollResponse(
            audit_key_attestation=attestation,
            device_id=enrolled.device_id,
            certificate_pem=enrolled.certificate_pem,
            ca_certificate_pem=self.app.ca_pem,
            labels=enrolled.labels or {},
            sync_port=self.app.sync_port,
            status=enrolled.status,
        )

    async def RenewCertificate(
        self, request: device_pb2.RenewCertificateRequest, context: grpc.aio.ServicerContext
    ) -> device_pb2.RenewCertificateResponse:
        certificate = await asyncio.to_thread(
            self.app.enrollment.renew, caller().name, bytes(request.csr_pem)
        )
        self.app.access.forget(caller().name)  # other replicas: at their next recheck
        return device_pb2.RenewCertificateResponse(certificate_pem=certificate)

    async def Sync(
        self, request: device_pb2.StatusReport, context: grpc.aio.ServicerContext
    ) -> device_pb2.DesiredState:
        report = serde.status_from_pb(request)
        snapshots = self.app.snapshots
        snapshot = snapshots.fresh(keys_max_age=RECHECK_SECONDS)  # as for the versions
        if snapshot is None:
            snapshot = await asyncio.to_thread(snapshots.current)
        state = await self.app.syncs.sync(caller().name, report, snapshot)
        return serde.desired_to_pb(state)

    async def ReadBlob(  # type: ignore[override]  # serialized BlobChunks, not messages
        self, request: device_pb2.ReadBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Serialized BlobChunk messages (see :func:`add_device_service`) of a blob the
        device may read: one of a model version it is (or was) assigned, unless the fleet
        lets devices read any (blob_access = "any"); any other is answered as absent."""
        if self.app.config.blob_access == "assigned" and not await asyncio.to_thread(
            may_read_blob, self.app.db, caller().name, request.sha256
        ):
            raise NotFoundError(f"blob {request.sha256[:16]}… is not stored")  # as if absent
        stream = _blob_chunks(self.app, request.sha256, request.offset, request.limit)
        async for offset, data in stream:
            yield serde.blob_chunk_to_wire(offset, data)

    async def Watch(
        self, request: device_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[device_pb2.WatchEvent]:
        changes = self.app.changes
        seen = changes.generation
        self.app.metrics.watch_streams.inc()
        try:
            yield device_pb2.WatchEvent(kind="hello")
            while not changes.closed:
                current = await changes.wait(seen, self.app.config.watch_heartbeat_seconds)
                if changes.closed:
                    return
                kind = "changed" if current != seen else "heartbeat"
                seen = current
                yield device_pb2.WatchEvent(kind=kind)
        finally:
            self.app.metrics.watch_streams.dec()

    async def PushAudit(
        self, request: device_pb2.PushAuditRequest, context: grpc.aio.ServicerContext
    ) -> device_pb2.PushAuditResponse:
        if len(request.records) > self.app.config.max_audit_batch:
            raise MalformedInputError(f"at most {self.app.config.max_audit_batch} records a push")
        records = [(r.seq, bytes(r.canonical)) for r in request.records]
        checkpoints = [serde.envelope_from_pb(e) for e in request.checkpoints]
        device = caller().name
        result = await asyncio.to_thread(ingest, self.app.db, device, records, checkpoints)
        self.app.metrics.audit_records.inc(result.stored)
        self.app.metrics.audit_pushes.labels("tamper" if result.tamper_reason else "stored").inc()
        self.app.syncs.acked(device, result.acked_seq)
        now = format_time(datetime.now(UTC))
        receipt = sign_receipt(
            device, result.acked_seq, result.acked_sha256, now, self.app.audit_key
        )
        return device_pb2.PushAuditResponse(
            acked_seq=result.acked_seq, receipt=serde.envelope_to_pb(receipt)
        )


class OperatorServicer(operator_pb2_grpc.OperatorServiceServicer):
    """The edgefleetctl-facing API."""

    def __init__(self, app: ControllerApp) -> None:
        self.app = app

    async def CreateEnrollmentToken(
        self, request: operator_pb2.CreateEnrollmentTokenRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.CreateEnrollmentTokenResponse:
        ttl = request.ttl_seconds or self.app.config.token_ttl_seconds
        token, expires = await asyncio.to_thread(
            self.app.enrollment.create_token,
            caller().name,
            dict(request.labels),
            timedelta(seconds=ttl),
        )
        return operator_pb2.CreateEnrollmentTokenResponse(
            token=token, expires_at=format_time(expires), token_id=token_id(token)
        )

    async def PublishModel(
        self,
        request_iterator: AsyncIterator[operator_pb2.PublishModelRequest],
        context: grpc.aio.ServicerContext,
    ) -> operator_pb2.PublishModelResponse:
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        if first is None or first.WhichOneof("part") != "header":
            raise MalformedInputError("the first message of a publish must be its header")
        header = first.header
        upload = await asyncio.to_thread(
            self.app.catalog.start_upload,
            header.name,
            header.version,
            header.length,
            header.evaluation_json,
        )
        try:
            async for part in stream:
                if part.WhichOneof("part") != "data":
                    raise MalformedInputError("only data may follow the publish header")
                await asyncio.to_thread(upload.write, part.data)
        except BaseException:
            upload.abort()
            raise
        published = await asyncio.to_thread(upload.finish, caller().name)
        m = published.manifest
        return published_to_pb(
            PublishedVersion(
                name=m.name,
                version=m.version,
                sha256=m.sha256,
                length=m.length,
                architecture=m.architecture,
                parameter_count=m.parameter_count,
                quantization=m.quantization,
                context_length=m.context_length,
                targets_version=published.targets_version,
            )
        )

    async def CreateRollout(
        self, request: operator_pb2.CreateRolloutRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.CreateRolloutResponse:
        await self.app.syncs.flush()  # decide from the latest reports
        created = await asyncio.to_thread(
            create_rollout,
            self.app.db,
            caller().name,
            request.name,
            request.version,
            dict(request.selector),
            strategy_from_pb(request.strategy),
        )
        return created_to_pb(created)

    async def PlanRollout(
        self, request: operator_pb2.CreateRolloutRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.RolloutPlan:
        await self.app.syncs.flush()  # decide from the latest reports
        planned = await asyncio.to_thread(
            plan_rollout,
            self.app.db,
            request.name,
            request.version,
            dict(request.selector),
            strategy_from_pb(request.strategy),
        )
        return plan_to_pb(planned)

    async def GetRollout(
        self, request: operator_pb2.GetRolloutRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.RolloutView:
        (view,) = await asyncio.to_thread(describe_rollouts, self.app.db, request.id)
        return view_to_pb(view)

    async def ListRollouts(
        self, request: operator_pb2.ListRolloutsRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.ListRolloutsResponse:
        size = _page_size(request.page_size, 50, 500)
        before = _page_after(request.page_token, int) if request.page_token else None
        views = await asyncio.to_thread(describe_rollouts, self.app.db, None, before, size + 1)
        page, more = self._page([view_to_pb(v) for v in views], size)
        return operator_pb2.ListRolloutsResponse(
            rollouts=page, next_page_token=str(page[-1].id) if more else ""
        )

    def _page(self, messages: list[_Message], size: int) -> tuple[list[_Message], bool]:
        """At most ``size`` of ``messages`` (fetched ``size + 1``) and at most half the
        message limit of them (never none); and whether more remain."""
        budget, used = self.app.config.max_message_bytes // 2, 0
        page: list[_Message] = []
        for message in messages[:size]:
            used += message.ByteSize() + 8
            if page and used > budget:
                return page, True
            page.append(message)
        return page, len(messages) > size

    async def ChangeRollout(
        self, request: operator_pb2.ChangeRolloutRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.RolloutView:
        await asyncio.to_thread(
            change_rollout, self.app.db, caller().name, request.id, request.action
        )
        (view,) = await asyncio.to_thread(describe_rollouts, self.app.db, request.id)
        return view_to_pb(view)

    async def PinModel(
        self, request: operator_pb2.PinModelRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.PinModelResponse:
        held = await asyncio.to_thread(
            pin_model,
            self.app.db,
            caller().name,
            request.name,
            request.version,
            request.device_id,
            dict(request.selector),
        )
        return operator_pb2.PinModelResponse(device_ids=held)

    async def UnpinModel(
        self, request: operator_pb2.PinModelRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.PinModelResponse:
        released = await asyncio.to_thread(
            unpin_model,
            self.app.db,
            caller().name,
            request.name,
            request.device_id,
            dict(request.selector),
        )
        return operator_pb2.PinModelResponse(device_ids=released)

    async def ExportBundle(
        self, request: operator_pb2.ExportBundleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[operator_pb2.ExportBundleChunk]:
        header, manifest = await asyncio.to_thread(
            bundle_header, self.app.snapshots, request.name, request.version
        )
        index = await asyncio.to_thread(self.app.blobs.read_all, manifest.chunks_sha256)
        event = AuditEvent(
            f"operator:{caller().name}",
            "model.export",
            manifest.ref,
            "success",
            {"sha256": manifest.sha256},
        )
        await asyncio.to_thread(record_alone, self.app.db, event)
        yield operator_pb2.ExportBundleChunk(header=header.to_bytes())
        yield operator_pb2.ExportBundleChunk(chunk_index=index)
        async for _, data in _blob_chunks(self.app, manifest.sha256, 0, 0):
            yield operator_pb2.ExportBundleChunk(data=data)

    async def GetModelReport(
        self, request: operator_pb2.GetModelReportRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.GetModelReportResponse:
        await self.app.syncs.flush()  # decide from the latest reports
        versions, speeds = await asyncio.to_thread(model_report, self.app.db, request.name)
        return report_to_pb(request.name, versions, speeds)

    async def ListDevices(
        self, request: operator_pb2.ListDevicesRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.ListDevicesResponse:
        stale_after = timedelta(seconds=self.app.config.stale_after_seconds)
        size = _page_size(request.page_size, 100, 1000)
        after = _page_after(request.page_token, str)
        await self.app.syncs.flush()  # show the reports this replica has received
        views = await asyncio.to_thread(
            list_devices,
            self.app.db,
            stale_after,
            after,
            size + 1,
            request.device_id,
            dict(request.selector),
        )
        page, more = self._page([serde.device_view_to_pb(v) for v in views], size)
        return operator_pb2.ListDevicesResponse(
            devices=page, next_page_token=page[-1].device_id if more else ""
        )

    async def GetFleetSummary(
        self, request: operator_pb2.GetFleetSummaryRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.FleetSummary:
        stale_after = timedelta(seconds=self.app.config.stale_after_seconds)
        await self.app.syncs.flush()
        summary = await asyncio.to_thread(
            fleet_summary, self.app.db, stale_after, dict(request.selector)
        )
        return summary_to_pb(summary)

    async def WhoAmI(
        self, request: operator_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.WhoAmIResponse:
        name = caller().name
        role, permissions = await asyncio.to_thread(self._held_role, name)
        return operator_pb2.WhoAmIResponse(name=name, role=role, permissions=sorted(permissions))

    def _held_role(self, name: str) -> tuple[str, frozenset[str]]:
        with self.app.db.session() as session:
            policy = latest_policy(session)
            return held_role(session, name, policy[0] if policy else None)

    async def ExportAudit(
        self, request: operator_pb2.ExportAuditRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[operator_pb2.ExportAuditChunk]:
        where = ExportFilter(request.device_id or None, request.since, request.until)
        for bound in (where.since, where.until):
            if bound:
                parse_time(bound, "export time bound")
        builder = ExportBuilder()
        after: tuple[str, int] | None = None
        while True:
            page = await asyncio.to_thread(export_page, self.app.db, where, after)
            for record_chain, seq, canonical in page:
                builder.add(canonical)
                record = operator_pb2.ExportedAuditRecord(
                    device_id=record_chain, seq=seq, canonical=canonical
                )
                yield operator_pb2.ExportAuditChunk(record=record)
            if not page:
                break
            after = (page[-1][0], page[-1][1])
        for chain, (_, last) in builder.ranges().items():  # tails up to a device checkpoint
            if chain != CONTROLLER_CHAIN:
                tail = await asyncio.to_thread(through_next_checkpoint, self.app.db, chain, last)
                for record_chain, seq, canonical in tail:
                    builder.add(canonical)
                    record = operator_pb2.ExportedAuditRecord(
                        device_id=record_chain, seq=seq, canonical=canonical
                    )
                    yield operator_pb2.ExportAuditChunk(record=record)
        keys = await asyncio.to_thread(audit_public_keys, self.app.db)
        checkpoints = {
            chain: await asyncio.to_thread(checkpoints_between, self.app.db, chain, first, last)
            for chain, (first, last) in builder.ranges().items()
        }
        alerts = await asyncio.to_thread(alerts_of, self.app.db, builder.ranges())
        header = builder.header(
            self.app.root_chain,
            self.app.audit_key,
            keys,
            where.as_dict(),
            checkpoints,
            alerts=alerts,
        )
        yield operator_pb2.ExportAuditChunk(header=header)

    async def QueryAudit(
        self, request: operator_pb2.QueryAuditRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.QueryAuditResponse:
        where = ExportFilter(
            request.device_id or None, request.since, request.until, request.actor, request.action
        )
        for bound in (where.since, where.until):
            if bound:
                parse_time(bound, "query time bound")
        limit = min(request.limit or 100, MAX_QUERY_RECORDS)
        page = await asyncio.to_thread(
            query_page, self.app.db, where, limit + 1, request.oldest_first
        )
        records, more = self._page(
            [
                operator_pb2.ExportedAuditRecord(device_id=chain, seq=seq, canonical=canonical)
                for chain, seq, canonical in page
            ],
            limit,
        )
        return operator_pb2.QueryAuditResponse(records=records, truncated=more)

    async def ClearAuditAlert(
        self, request: operator_pb2.ClearAuditAlertRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.ClearAuditAlertResponse:
        cleared = await asyncio.to_thread(
            clear_alert, self.app.db, caller().name, request.device_id, request.reason
        )
        return operator_pb2.ClearAuditAlertResponse(cleared=cleared)

    async def AddOperator(
        self, request: operator_pb2.AddOperatorRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.AddOperatorResponse:
        certificate = await asyncio.to_thread(
            add_operator,
            self.app.db,
            self.app.ca,
            caller().name,
            request.name,
            request.role,
            bytes(request.csr_pem),
            self.app.policies.current(),
        )
        return operator_pb2.AddOperatorResponse(
            certificate_pem=certificate, ca_certificate_pem=self.app.ca_pem
        )

    async def ApplyPolicy(
        self, request: operator_pb2.ApplyPolicyRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.PolicyResponse:
        policy = await asyncio.to_thread(
            self.app.policies.apply, caller().name, bytes(request.document)
        )
        return operator_pb2.PolicyResponse(version=policy.version, document=policy.to_payload())

    async def GetPolicy(
        self, request: operator_pb2.GetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.PolicyResponse:
        policy = await asyncio.to_thread(self.app.policies.current)
        if policy is None:
            return operator_pb2.PolicyResponse()
        return operator_pb2.PolicyResponse(version=policy.version, document=policy.to_payload())

    async def CreateAppToken(
        self, request: operator_pb2.CreateAppTokenRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.CreateAppTokenResponse:
        token, token_id, policy = await asyncio.to_thread(
            self.app.policies.create_token,
            caller().name,
            request.subject,
            request.role,
            tuple(request.models),
            dict(request.devices),
        )
        return operator_pb2.CreateAppTokenResponse(
            token=token, token_id=token_id, policy_version=policy.version
        )

    async def RevokeAppToken(
        self, request: operator_pb2.RevokeAppTokenRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.PolicyResponse:
        policy = await asyncio.to_thread(
            self.app.policies.revoke_token, caller().name, request.token_id
        )
        return operator_pb2.PolicyResponse(version=policy.version, document=policy.to_payload())

    async def SetDeviceState(
        self, request: operator_pb2.SetDeviceStateRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.SetDeviceStateResponse:
        if request.all_pending:
            if request.action != "reject" or request.device_id:
                raise MalformedInputError("all_pending goes with action reject and no device_id")
            count = await asyncio.to_thread(
                self.app.enrollment.reject_pending, caller().name, request.source
            )
            return operator_pb2.SetDeviceStateResponse(state="rejected", count=count)
        state = await asyncio.to_thread(
            self.app.enrollment.set_state, caller().name, request.device_id, request.action
        )
        return operator_pb2.SetDeviceStateResponse(state=state, count=1)

    async def RemoveModel(
        self, request: operator_pb2.RemoveModelRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.RemoveModelResponse:
        removed = await asyncio.to_thread(
            self.app.catalog.remove, caller().name, request.name, request.version, request.force
        )
        return removed_to_pb(removed)

    async def ListPins(
        self, request: operator_pb2.ListPinsRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.ListPinsResponse:
        views = await asyncio.to_thread(list_pins, self.app.db)
        return operator_pb2.ListPinsResponse(pins=[pin_to_pb(v) for v in views])

    async def RemoveDevice(
        self, request: operator_pb2.RemoveDeviceRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.RemoveDeviceResponse:
        await asyncio.to_thread(self.app.enrollment.remove, caller().name, request.device_id)
        return operator_pb2.RemoveDeviceResponse()

    async def ListModels(
        self, request: operator_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.ListModelsResponse:
        await self.app.syncs.flush()  # count devices from their latest reports
        entries = await asyncio.to_thread(list_catalog, self.app.db, request.name, request.version)
        return operator_pb2.ListModelsResponse(models=[catalog_to_pb(e) for e in entries])

    async def LabelDevice(
        self, request: operator_pb2.LabelDeviceRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.LabelDeviceResponse:
        labels = await asyncio.to_thread(
            self.app.enrollment.label,
            caller().name,
            request.device_id,
            dict(request.set),
            list(request.remove),
        )
        return operator_pb2.LabelDeviceResponse(labels=labels)

    async def ListEnrollmentTokens(
        self, request: operator_pb2.ListEnrollmentTokensRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.ListEnrollmentTokensResponse:
        views = await asyncio.to_thread(self.app.enrollment.list_tokens)
        return operator_pb2.ListEnrollmentTokensResponse(tokens=[token_to_pb(v) for v in views])

    async def RevokeEnrollmentToken(
        self, request: operator_pb2.RevokeEnrollmentTokenRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.EnrollmentTokenView:
        view = await asyncio.to_thread(
            self.app.enrollment.revoke_token, caller().name, request.token_id
        )
        return token_to_pb(view)

    async def ListOperators(
        self, request: operator_pb2.ListOperatorsRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.ListOperatorsResponse:
        views = await asyncio.to_thread(list_operators, self.app.db)
        return operator_pb2.ListOperatorsResponse(operators=[operator_to_pb(v) for v in views])

    async def RemoveOperator(
        self, request: operator_pb2.RemoveOperatorRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.RemoveOperatorResponse:
        await asyncio.to_thread(
            remove_operator, self.app.db, caller().name, request.name, self.app.policies.current()
        )
        return operator_pb2.RemoveOperatorResponse()

    async def PreauthorizeDevice(
        self, request: operator_pb2.PreauthorizeDeviceRequest, context: grpc.aio.ServicerContext
    ) -> operator_pb2.PreauthorizeDeviceResponse:
        await asyncio.to_thread(
            self.app.enrollment.preauthorize,
            caller().name,
            request.key_fingerprint,
            dict(request.labels),
        )
        return operator_pb2.PreauthorizeDeviceResponse()
