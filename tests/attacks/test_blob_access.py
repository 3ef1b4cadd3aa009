"""Review hole L3: any enrolled device could download any model's blob. A device now reads
only the files and chunk indexes of model versions it is or was assigned (so it can repair
what it runs and what it keeps for rollback); anything else is answered exactly as a blob
that does not exist. A fleet can opt out (blob_access = "any")."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import select

from edgefleet.controller.store.schema import Model
from edgefleet.v1 import device_pb2, device_pb2_grpc
from tests.harness import Fleet
from tests.integration.fleets import publish_tiny, roll_out_and_wait_active

pytestmark = pytest.mark.integration


def _read(fleet: Fleet, sha256: str) -> tuple[grpc.StatusCode, str]:
    """ReadBlob as device gw, with its own certificate: the status and its message."""
    identity = fleet.agent_dir("gw") / "identity"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(fleet.controller_dir / "tls" / "ca.pem").read_bytes(),
        private_key=(identity / "device.key").read_bytes(),
        certificate_chain=(identity / "device.pem").read_bytes(),
    )
    with grpc.secure_channel(fleet.sync_address, credentials) as channel:
        stub = device_pb2_grpc.DeviceServiceStub(channel)
        try:
            for _ in stub.ReadBlob(device_pb2.ReadBlobRequest(sha256=sha256), timeout=10):
                pass
        except grpc.RpcError as e:
            return e.code(), str(e.details()).replace(sha256[:16], "<blob>")
    return grpc.StatusCode.OK, ""


def _models(fleet: Fleet) -> dict[str, Model]:
    db = fleet.controller_database()
    try:
        with db.session() as session:
            return {f"{m.name}@{m.version}": m for m in session.execute(select(Model)).scalars()}
    finally:
        db.dispose()


def test_a_device_reads_only_blobs_of_models_it_was_assigned(
    small_fleet: tuple[Fleet, str],
) -> None:
    fleet, _device = small_fleet
    publish_tiny(fleet, "1", seed=1)
    roll_out_and_wait_active(fleet, "1")
    publish_tiny(fleet, "2", seed=2)  # published, never assigned to gw
    models = _models(fleet)
    mine, other = models["tiny@1"], models["tiny@2"]
    assert _read(fleet, mine.sha256) == (grpc.StatusCode.OK, "")
    assert _read(fleet, str(mine.manifest["chunks_sha256"])) == (grpc.StatusCode.OK, "")
    refused, absent = _read(fleet, other.sha256), _read(fleet, "cd" * 32)
    assert refused[0] == grpc.StatusCode.NOT_FOUND and refused == absent  # nothing learned
    assert _read(fleet, str(other.manifest["chunks_sha256"])) == absent

    fleet.stop("controller")  # a fleet that lets any device read any model
    (fleet.controller_dir / "controller.toml").write_text('blob_access = "any"\n')
    fleet.start_controller()
    assert _read(fleet, other.sha256) == (grpc.StatusCode.OK, "")
