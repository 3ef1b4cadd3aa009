"""Review holes M6 (controller side) and L2: unauthenticated enrollment traffic flooded the
controller's audit log with fsynced records (125 a second), and anyone could fill the
1,000-place approval queue in 10 s. Now a source's failures cost one record a minute and a
counter, a source past its limit is refused before any database work, pending requests are
limited per source, expire, and can be rejected at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from edgefleet.controller.audit.log import ExportFilter, export_page
from edgefleet.controller.fleet.enrollment import Enrollment, EnrollmentLimits, EnrollmentRequest
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import Device
from edgefleet.controller.trust.ca import CertificateAuthority
from edgefleet.errors import EnrollmentError, ResourceError
from edgefleet.tls import make_csr, new_tls_key
from edgefleet.trust.keys import SigningKey

AUDIT_KEY = SigningKey.generate().public.hex


@pytest.fixture
def enrollment(database: Database) -> Enrollment:
    limits = EnrollmentLimits(failures_per_minute=5, pending_per_source=3)
    return Enrollment(database, CertificateAuthority.create("t"), timedelta(days=1), limits)


def _ask(enrollment: Enrollment, token: str = "", source: str = "203.0.113.7") -> object:
    request = EnrollmentRequest(token, make_csr(new_tls_key()), "gw", "0.1", AUDIT_KEY, source)
    try:
        return enrollment.enroll(request)
    except (EnrollmentError, ResourceError) as e:
        return e


def _denials(db: Database) -> int:
    records = export_page(db, ExportFilter("controller"), None, 10_000)
    return sum(b'"device.enroll"' in r and b'"denied"' in r for _c, _s, r in records)


def test_a_flood_of_bad_tokens_costs_one_record_then_is_refused(enrollment: Enrollment) -> None:
    """100 bad tokens from one address: one audit record, then "too many" for the rest of
    the minute (no database work); another address is unaffected."""
    outcomes = [_ask(enrollment, token=f"eft_bad_{i}") for i in range(100)]
    assert [type(o).__name__ for o in outcomes[:5]] == ["EnrollmentError"] * 5
    assert all(isinstance(o, ResourceError) and "too many" in str(o) for o in outcomes[5:])
    assert _denials(enrollment.db) == 1
    elsewhere = _ask(enrollment, token="eft_bad", source="198.51.100.1")
    assert isinstance(elsewhere, EnrollmentError)
    assert _denials(enrollment.db) == 2


def test_pending_requests_are_limited_per_source_expire_and_reject_at_once(
    enrollment: Enrollment,
) -> None:
    """Three pending devices per address; older requests expire; reject --all-pending."""
    waiting = [_ask(enrollment) for _ in range(5)]
    assert [getattr(w, "status", "") for w in waiting[:3]] == ["pending"] * 3
    assert all(isinstance(w, ResourceError) and "already waiting" in str(w) for w in waiting[3:])
    assert getattr(_ask(enrollment, source="198.51.100.1"), "status", "") == "pending"
    with enrollment.db.session() as session:  # the first request asked four days ago
        oldest = session.get(Device, waiting[0].device_id)  # type: ignore[attr-defined]
        assert oldest is not None
        oldest.enrolled_at = datetime.now(UTC) - timedelta(days=4)
    assert getattr(_ask(enrollment), "status", "") == "pending"  # room again: it expired
    with enrollment.db.session() as session:
        assert session.get(Device, waiting[0].device_id) is None  # type: ignore[attr-defined]
    assert enrollment.reject_pending("admin", source="203.0.113.7") == 3
    assert enrollment.reject_pending("admin") == 1
    with enrollment.db.session() as session:
        states = set(session.execute(select(Device.state)).scalars())
    assert states == {"rejected"}
