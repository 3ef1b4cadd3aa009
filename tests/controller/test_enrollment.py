"""Enrollment tokens are single use, expire, and every attempt is audited."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from controller.auditlog import export_page
from controller.ca import CertificateAuthority
from controller.enrollment import Enrollment
from controller.store.database import Database
from edgefleet.audit import verify_chain
from edgefleet.errors import EnrollmentError, MalformedInputError
from edgefleet.tls import common_name, make_csr, new_tls_key
from edgefleet.trust.keys import SigningKey

AUDIT_KEY = SigningKey.generate().public.hex


@pytest.fixture
def enrollment(tmp_path: Path) -> Enrollment:
    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    db.create_schema()
    return Enrollment(db, CertificateAuthority.create("test"))


def test_token_enrolls_once(enrollment: Enrollment) -> None:
    """A token yields a certificate naming the new device; reusing it is refused."""
    token, _ = enrollment.create_token("admin", {"site": "a"}, timedelta(minutes=5))
    enrolled = enrollment.enroll(token, make_csr(new_tls_key()), "gw", "0.1", AUDIT_KEY)
    assert common_name(enrolled.certificate_pem) == f"device:{enrolled.device_id}"
    assert enrolled.labels == {"site": "a"}
    with pytest.raises(EnrollmentError, match="already used"):
        enrollment.enroll(token, make_csr(new_tls_key()), "gw2", "0.1", AUDIT_KEY)


def test_expired_and_unknown_tokens_are_refused(enrollment: Enrollment) -> None:
    """An expired token and a made-up one are refused with their reasons."""
    token, _ = enrollment.create_token("admin", {}, timedelta(seconds=1))
    time.sleep(1.1)
    with pytest.raises(EnrollmentError, match="expired"):
        enrollment.enroll(token, make_csr(new_tls_key()), "gw", "0.1", AUDIT_KEY)
    with pytest.raises(EnrollmentError, match="unknown"):
        enrollment.enroll("eft_made_up", make_csr(new_tls_key()), "gw", "0.1", AUDIT_KEY)


def test_refusals_are_audited_in_an_intact_chain(enrollment: Enrollment) -> None:
    """Denied enrollments leave audit records, and the controller chain stays intact."""
    with pytest.raises(EnrollmentError):
        enrollment.enroll("eft_nope", make_csr(new_tls_key()), "gw", "0.1", AUDIT_KEY)
    records = [c for _chain, _seq, c in export_page(enrollment.db, "controller", None)]
    assert verify_chain("controller", records) == 1
    assert b'"outcome":"denied"' in records[0]


def test_bad_csr_and_labels_are_refused(enrollment: Enrollment) -> None:
    """A CSR that is not PEM and labels with odd characters are malformed input."""
    token, _ = enrollment.create_token("admin", {}, timedelta(minutes=5))
    with pytest.raises(MalformedInputError, match="signing request"):
        enrollment.enroll(token, b"-----BEGIN junk", "gw", "0.1", AUDIT_KEY)
    with pytest.raises(MalformedInputError, match="label"):
        enrollment.create_token("admin", {"Site Name": "x y"}, timedelta(minutes=5))
