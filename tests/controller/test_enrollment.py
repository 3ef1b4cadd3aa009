"""Enrollment: single-use expiring tokens, approval, preauthorization, renewal, revocation."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import pytest

from edgefleet.audit import verify_chain
from edgefleet.controller.audit.log import ExportFilter, export_page
from edgefleet.controller.fleet.enrollment import Enrollment, EnrollmentRequest, token_id
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import Device
from edgefleet.controller.trust.ca import CertificateAuthority
from edgefleet.errors import ConflictError, EnrollmentError, MalformedInputError, NotFoundError
from edgefleet.tls import common_name, key_fingerprint, load_certificate, make_csr, new_tls_key
from edgefleet.trust.keys import SigningKey

AUDIT_KEY = SigningKey.generate().public.hex


@pytest.fixture
def enrollment(database: Database) -> Enrollment:
    return Enrollment(database, CertificateAuthority.create("test"), timedelta(days=1))


def request(token: str = "", key: object = None) -> EnrollmentRequest:
    return EnrollmentRequest(token, make_csr(key or new_tls_key()), "gw", "0.1", AUDIT_KEY)  # type: ignore[arg-type]


def test_token_enrolls_once(enrollment: Enrollment) -> None:
    """A token yields a short-lived certificate naming the new device; reusing it is refused."""
    token, _ = enrollment.create_token("admin", {"site": "a"}, timedelta(minutes=5))
    enrolled = enrollment.enroll(request(token))
    assert enrolled.status == "enrolled" and enrolled.labels == {"site": "a"}
    cert = load_certificate(enrolled.certificate_pem)
    assert common_name(enrolled.certificate_pem) == f"device:{enrolled.device_id}"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=1, minutes=5)
    with pytest.raises(EnrollmentError, match="already used"):
        enrollment.enroll(request(token))


def test_expired_and_unknown_tokens_are_refused(enrollment: Enrollment) -> None:
    """An expired token and a made-up one are refused with their reasons."""
    token, _ = enrollment.create_token("admin", {}, timedelta(seconds=1))
    time.sleep(1.1)
    with pytest.raises(EnrollmentError, match="expired"):
        enrollment.enroll(request(token))
    with pytest.raises(EnrollmentError, match="unknown"):
        enrollment.enroll(request("eft_made_up"))


def test_approval_flow(enrollment: Enrollment) -> None:
    """Without a token a device is pending until accepted; then its key gets a certificate."""
    key = new_tls_key()
    first = enrollment.enroll(request(key=key))
    assert first.status == "pending" and not first.certificate_pem
    assert enrollment.enroll(request(key=key)).status == "pending"
    enrollment.set_state("admin", first.device_id, "accept")
    accepted = enrollment.enroll(request(key=key))
    assert accepted.status == "enrolled" and accepted.device_id == first.device_id
    with pytest.raises(EnrollmentError, match="cannot enroll again"):
        enrollment.enroll(request(key=key))


def test_rejected_device_stays_out(enrollment: Enrollment) -> None:
    """A rejected device cannot enroll, and only pending devices can be accepted."""
    key = new_tls_key()
    pending = enrollment.enroll(request(key=key))
    enrollment.set_state("admin", pending.device_id, "reject")
    with pytest.raises(EnrollmentError, match="rejected"):
        enrollment.enroll(request(key=key))
    with pytest.raises(MalformedInputError, match="it is rejected"):
        enrollment.set_state("admin", pending.device_id, "accept")


def test_preauthorized_key_enrolls_at_once(enrollment: Enrollment) -> None:
    """A key preauthorized by fingerprint enrolls without a token, with the labels given."""
    key = new_tls_key()
    enrollment.preauthorize("admin", key_fingerprint(key), {"site": "b"})
    enrolled = enrollment.enroll(request(key=key))
    assert enrolled.status == "enrolled" and enrolled.labels == {"site": "b"}
    assert enrollment.enroll(request()).status == "pending"  # another key is not covered


def _age_certificate(enrollment: Enrollment, device_id: str, days: float) -> None:
    """Pretend the device's current certificate was issued ``days`` ago."""
    from datetime import UTC, datetime

    with enrollment.db.session() as session:
        device = session.get(Device, device_id)
        assert device is not None
        device.certificate_issued_at = datetime.now(UTC) - timedelta(days=days)


def test_renewal_keeps_the_previous_serial_until_replaced(enrollment: Enrollment) -> None:
    """Renewal issues a new certificate; the controller accepts the new and the previous serial."""
    token, _ = enrollment.create_token("admin", {}, timedelta(minutes=5))
    key = new_tls_key()
    enrolled = enrollment.enroll(request(token, key))
    first = format(load_certificate(enrolled.certificate_pem).serial_number, "x")
    _age_certificate(enrollment, enrolled.device_id, 0.7)  # lifetime 1 day: due
    renewed = enrollment.renew(enrolled.device_id, make_csr(key))
    second = format(load_certificate(renewed).serial_number, "x")
    with enrollment.db.session() as session:
        device = session.get(Device, enrolled.device_id)
        assert device is not None
        assert (device.certificate_serial, device.previous_serial) == (second, first)
    enrollment.set_state("admin", enrolled.device_id, "revoke")
    with pytest.raises(EnrollmentError, match="may not renew"):
        enrollment.renew(enrolled.device_id, make_csr(key))


def test_renewal_is_bound_to_the_enrolled_key_and_cannot_be_cycled(
    enrollment: Enrollment,
) -> None:
    """Review hole L4: a stolen certificate renewed for a new key moved the identity to the
    thief, and renewing again pushed the real device's certificate out. Renewal is for the
    enrolled key only, and not before half the current lifetime has passed."""
    from edgefleet.errors import ResourceError

    key = new_tls_key()
    token, _ = enrollment.create_token("admin", {}, timedelta(minutes=5))
    enrolled = enrollment.enroll(request(token, key))
    _age_certificate(enrollment, enrolled.device_id, 0.7)
    with pytest.raises(EnrollmentError, match="enrolled key only"):
        enrollment.renew(enrolled.device_id, make_csr(new_tls_key()))
    enrollment.renew(enrolled.device_id, make_csr(key))
    with pytest.raises(ResourceError, match="half its lifetime"):
        enrollment.renew(enrolled.device_id, make_csr(key))


def test_refusals_are_audited_in_an_intact_chain(enrollment: Enrollment) -> None:
    """Denied enrollments leave audit records, and the controller chain stays intact."""
    with pytest.raises(EnrollmentError):
        enrollment.enroll(request("eft_nope"))
    records = [
        c for _chain, _seq, c in export_page(enrollment.db, ExportFilter("controller"), None)
    ]
    assert verify_chain("controller", records) == 1
    assert b'"outcome":"denied"' in records[0]


def test_bad_csr_and_labels_are_refused(enrollment: Enrollment) -> None:
    """A CSR that is not PEM and labels with odd characters are malformed input."""
    token, _ = enrollment.create_token("admin", {}, timedelta(minutes=5))
    with pytest.raises(MalformedInputError, match="signing request"):
        enrollment.enroll(EnrollmentRequest(token, b"-----BEGIN junk", "gw", "0.1", AUDIT_KEY))
    with pytest.raises(MalformedInputError, match="label"):
        enrollment.create_token("admin", {"Site Name": "x y"}, timedelta(minutes=5))


def _race(count: int, call: Callable[[], object]) -> list[object]:
    """Run ``call`` from ``count`` threads released at once; return results or errors."""
    return _race_each([call] * count)


def test_one_token_enrolls_one_device_among_16_racing_callers(enrollment: Enrollment) -> None:
    """Review hole H2: 16 concurrent enrollments with one token enroll exactly one device;
    every loser is told the token was already used (never an internal error)."""
    token, _ = enrollment.create_token("admin", {"site": "a"}, timedelta(minutes=5))
    outcomes = _race(16, lambda: enrollment.enroll(request(token)))
    enrolled = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(enrolled) == 1
    assert all(
        isinstance(o, EnrollmentError) and "already used" in str(o)
        for o in outcomes
        if isinstance(o, Exception)
    ), outcomes
    with enrollment.db.session() as session:
        assert session.query(Device).count() == 1


def test_one_preauthorization_enrolls_one_device_among_16_racing_callers(
    enrollment: Enrollment,
) -> None:
    """A preauthorized key raced by 16 callers becomes one device, no pending extras."""
    key = new_tls_key()
    enrollment.preauthorize("admin", key_fingerprint(key), {"site": "p"})
    outcomes = _race(16, lambda: enrollment.enroll(request(key=key)))
    enrolled = [o for o in outcomes if not isinstance(o, Exception)]
    assert [o.status for o in enrolled] == ["enrolled"]  # type: ignore[attr-defined]
    assert all(isinstance(o, EnrollmentError) for o in outcomes if isinstance(o, Exception))
    with enrollment.db.session() as session:
        assert session.query(Device).count() == 1


def test_a_new_key_raced_by_16_callers_is_one_pending_device(enrollment: Enrollment) -> None:
    """Without a token, the same key asking 16 times at once waits as one device."""
    key = new_tls_key()
    outcomes = _race(16, lambda: enrollment.enroll(request(key=key)))
    assert {o.status for o in outcomes} == {"pending"}, outcomes  # type: ignore[attr-defined]
    assert len({o.device_id for o in outcomes}) == 1  # type: ignore[attr-defined]
    with enrollment.db.session() as session:
        assert session.query(Device).count() == 1


def test_an_accepted_device_gets_one_certificate_among_16_racing_callers(
    enrollment: Enrollment,
) -> None:
    """Racing to collect an approved device's certificate issues it once."""
    key = new_tls_key()
    pending = enrollment.enroll(request(key=key))
    enrollment.set_state("admin", pending.device_id, "accept")
    outcomes = _race(16, lambda: enrollment.enroll(request(key=key)))
    assert len([o for o in outcomes if not isinstance(o, Exception)]) == 1
    assert all(isinstance(o, EnrollmentError) for o in outcomes if isinstance(o, Exception))


def test_a_device_is_accepted_or_rejected_once_among_16_racing_operators(
    enrollment: Enrollment,
) -> None:
    """Accept and reject raced on one pending device: one wins, the rest are refused."""
    pending = enrollment.enroll(request(key=new_tls_key()))
    actions = iter(["accept", "reject"] * 8)
    outcomes = _race(16, lambda: enrollment.set_state("admin", pending.device_id, next(actions)))
    won = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(won) == 1
    assert all(isinstance(o, MalformedInputError) for o in outcomes if isinstance(o, Exception))
    with enrollment.db.session() as session:
        device = session.get(Device, pending.device_id)
        assert device is not None and device.state == won[0]


def test_a_revoked_token_enrolls_nothing_and_says_so(enrollment: Enrollment) -> None:
    """`token revoke`: an unused token is revoked (audited); enrolling with it is refused
    by name; a used one cannot be revoked (revoke the device); the list shows each state."""
    revoked, _ = enrollment.create_token("admin", {"site": "a"}, timedelta(minutes=5))
    used, _ = enrollment.create_token("admin", {}, timedelta(minutes=5))
    enrolled = enrollment.enroll(request(used))
    view = enrollment.revoke_token("ops", token_id(revoked))
    assert view.state == "revoked" and view.labels == {"site": "a"}
    with pytest.raises(EnrollmentError, match="enrollment token was revoked"):
        enrollment.enroll(request(revoked))
    with pytest.raises(ConflictError, match=f"was used by {enrolled.device_id}"):
        enrollment.revoke_token("ops", token_id(used))
    with pytest.raises(NotFoundError, match="no enrollment token"):
        enrollment.revoke_token("ops", "0" * 16)
    with pytest.raises(MalformedInputError, match="16 hexadecimal digits"):
        enrollment.revoke_token("ops", "eft_secret")
    states = {t.token_id: t.state for t in enrollment.list_tokens()}
    assert states == {token_id(revoked): "revoked", token_id(used): "used"}
    records = [r for _, _, r in export_page(enrollment.db, ExportFilter("controller"), None)]
    assert any(b'"action":"token.revoke"' in r and b'"actor":"operator:ops"' in r for r in records)


def test_a_token_raced_by_16_revokes_and_enrollments_is_spent_once(
    enrollment: Enrollment,
) -> None:
    """8 revocations and 8 enrollments at once: either one device enrolled and every
    revocation was refused, or one revocation won and nothing enrolled."""
    token, _ = enrollment.create_token("admin", {}, timedelta(minutes=5))
    calls: list[Callable[[], object]] = [
        lambda: enrollment.revoke_token("ops", token_id(token))
    ] * 8
    calls += [lambda: enrollment.enroll(request(token))] * 8
    outcomes = _race_each(calls)
    wins = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(wins) == 1, outcomes
    assert all(isinstance(o, ConflictError | EnrollmentError) for o in outcomes if o not in wins)
    with enrollment.db.session() as session:
        devices = session.query(Device).count()
    assert devices == (0 if getattr(wins[0], "state", "") == "revoked" else 1)


def _race_each(calls: list[Callable[[], object]]) -> list[object]:
    """Run each call from its own thread, all released at once."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    barrier = Barrier(len(calls))

    def one(call: Callable[[], object]) -> object:
        barrier.wait()
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - the outcome under test
            return e

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def test_labels_are_set_and_removed_audited(enrollment: Enrollment) -> None:
    """`devices label`: a device accepted by approval (no labels) gets the labels a
    selector needs; removing and setting the same key at once is refused."""
    pending = enrollment.enroll(request())
    enrollment.set_state("admin", pending.device_id, "accept")
    assert enrollment.label("ops", pending.device_id, {"site": "lab", "row": "3"}, []) == {
        "row": "3",
        "site": "lab",
    }
    assert enrollment.label("ops", pending.device_id, {}, ["row"]) == {"site": "lab"}
    with pytest.raises(NotFoundError, match="has no label row"):
        enrollment.label("ops", pending.device_id, {}, ["row"])
    with pytest.raises(MalformedInputError, match="both set and removed"):
        enrollment.label("ops", pending.device_id, {"site": "x"}, ["site"])
    with pytest.raises(MalformedInputError, match="outside"):
        enrollment.label("ops", pending.device_id, {"Bad Key": "x"}, [])
    with pytest.raises(NotFoundError, match="no device"):
        enrollment.label("ops", "dev-nope", {"a": "b"}, [])
    records = [r for _, _, r in export_page(enrollment.db, ExportFilter("controller"), None)]
    assert sum(b'"action":"device.label"' in r for r in records) == 2
