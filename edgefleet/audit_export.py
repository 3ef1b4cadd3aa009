"""Signed audit exports that an auditor verifies offline with only the fleet's root fingerprint.

An export is one file. Its first line is a header: the root metadata chain and a manifest
signed by the fleet's *audit* role key (named by the root). Every further line is one
audit record, byte for byte as the device wrote and hashed it. The manifest names, per
chain, the first and last sequence numbers, the ``prev`` of the first record, the hash of
the last one, the record count and the device's audit public key, plus a SHA-256 over
all record lines. Verification re-hashes bytes and walks each chain, and names exactly
which record fails and why: altered, missing, duplicated, out of order, foreign or cut.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edgefleet.audit import (
    CONTROLLER_CHAIN,
    AuditRecord,
    parse_record,
    verify_checkpoint,
    verify_key_attestation,
)
from edgefleet.canonical import canonical_bytes, parse_object
from edgefleet.errors import AuditChainError, MalformedInputError, SignatureError
from edgefleet.trust.envelope import Envelope, sign_envelope, verify_envelope
from edgefleet.trust.keys import PublicKey, SigningKey
from edgefleet.trust.metadata import AUDIT_EXPORT_TYPE, format_time
from edgefleet.trust.verifier import TrustedState

FORMAT_MARKER = "edgefleet_audit_export"
CSV_MARKER = "#edgefleet_audit_export"
CSV_COLUMNS = ("chain", "seq", "time", "actor", "action", "target", "outcome", "record")


@dataclass(frozen=True)
class ChainSummary:
    """What the manifest says about one chain in the export."""

    first_seq: int
    last_seq: int
    first_prev: str
    last_hash: str
    count: int
    public_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_prev": self.first_prev,
            "last_hash": self.last_hash,
            "count": self.count,
            "public_key": self.public_key,
        }


class ExportBuilder:
    """Accumulates records (in export order) and produces the signed header line."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._chains: dict[str, list[AuditRecord]] = {}  # first and last record of each chain
        self._counts: dict[str, int] = {}
        self.count = 0

    def add(self, canonical: bytes) -> AuditRecord:
        """Account for the next record line."""
        record = parse_record(canonical)
        self._digest.update(canonical + b"\n")
        ends = self._chains.setdefault(record.device, [record, record])
        ends[1] = record
        self._counts[record.device] = self._counts.get(record.device, 0) + 1
        self.count += 1
        return record

    def ranges(self) -> dict[str, tuple[int, int]]:
        """First and last sequence number of each chain seen so far."""
        return {chain: (ends[0].seq, ends[1].seq) for chain, ends in self._chains.items()}

    def header(
        self,
        root_chain: Sequence[Envelope],
        audit_key: SigningKey,
        device_keys: Mapping[str, str],
        filters: Mapping[str, str],
        checkpoints: Mapping[str, Sequence[Envelope]] | None = None,
        attestation: Envelope | None = None,
        alerts: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> bytes:
        """The first line of the export: root chain and the signed manifest.

        The controller signs with the fleet's audit key and carries the device-signed
        checkpoints and the tamper alerts of the chains exported. A device exporting its
        own log signs with its audit key and adds the attestation by which the fleet
        vouches for that key.
        """
        chains = {
            chain: ChainSummary(
                first.seq,
                last.seq,
                first.prev,
                last.hash,
                self._counts[chain],
                device_keys.get(chain, ""),
            ).to_dict()
            for chain, (first, last) in self._chains.items()
        }
        manifest = {
            "_type": "audit-export",
            "created": format_time(datetime.now(UTC)),
            "filters": dict(filters),
            "record_count": self.count,
            "records_sha256": self._digest.hexdigest(),
            "chains": chains,
            "checkpoints": {
                chain: [json.loads(e.to_json()) for e in envelopes]
                for chain, envelopes in (checkpoints or {}).items()
                if envelopes
            },
        }
        if alerts:
            manifest["alerts"] = {
                chain: [dict(a) for a in found] for chain, found in alerts.items() if found
            }
        envelope = sign_envelope(AUDIT_EXPORT_TYPE, canonical_bytes(manifest), [audit_key])
        header: dict[str, Any] = {
            FORMAT_MARKER: 1,
            "root_chain": [json.loads(e.to_json()) for e in root_chain],
            "manifest": json.loads(envelope.to_json()),
        }
        if attestation is not None:
            header["attestation"] = json.loads(attestation.to_json())
        return json.dumps(header, sort_keys=True).encode("utf-8")


def _records_digest(lines: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line + b"\n")
    return digest.hexdigest()


def render(header: bytes, records: Iterable[bytes], output_format: str) -> Iterator[bytes]:
    """The export file's bytes: JSONL (header line, then records verbatim) or CSV."""
    if output_format == "jsonl":
        yield header + b"\n"
        for record in records:
            yield record + b"\n"
        return
    if output_format != "csv":
        raise MalformedInputError(f"unknown export format {output_format!r} (jsonl or csv)")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([CSV_MARKER, header.decode("utf-8")])
    writer.writerow(CSV_COLUMNS)
    for raw in records:
        f = parse_record(raw).fields
        writer.writerow(
            [
                f["device"],
                f["seq"],
                f["time"],
                f["actor"],
                f["action"],
                f["target"],
                f["outcome"],
                raw.decode("utf-8"),
            ]
        )
        yield out.getvalue().encode("utf-8")
        out.seek(0)
        out.truncate()
    yield out.getvalue().encode("utf-8")


def build_export(
    records: Sequence[bytes],
    root_chain: Sequence[Envelope],
    audit_key: SigningKey,
    device_keys: Mapping[str, str],
    filters: Mapping[str, str],
    output_format: str = "jsonl",
) -> bytes:
    """A whole export in memory (the controller streams; tests and small exports use this)."""
    builder = ExportBuilder()
    for record in records:
        builder.add(record)
    header = builder.header(root_chain, audit_key, device_keys, filters)
    return b"".join(render(header, records, output_format))


@dataclass
class VerificationReport:
    """The outcome of verifying an export: what was checked and every problem found."""

    records: int = 0
    chains: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # Records that verify but that only the controller's audit key vouches for (no
    # device-signed checkpoint covers them), and alerts an operator has cleared.
    qualifications: list[str] = field(default_factory=list)
    # Each chain's device audit key id, to compare with the device's own (out of band).
    device_keys: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def attested(self) -> bool:
        """Verified, and every device record is covered by its device's own signature."""
        return self.ok and not self.qualifications


def _split(data: bytes) -> tuple[dict[str, Any], list[bytes], list[list[str]]]:
    """Header, record lines and (CSV only) the rows of readable columns."""
    if data.startswith(CSV_MARKER.encode()):
        try:
            rows = list(csv.reader(io.StringIO(data.decode("utf-8", errors="strict"))))
        except (UnicodeDecodeError, csv.Error) as e:
            raise MalformedInputError(f"the CSV export cannot be read: {e}") from e
        if len(rows) < 2 or len(rows[0]) != 2 or tuple(rows[1]) != CSV_COLUMNS:
            raise MalformedInputError("the CSV export has no header and column names")
        header = parse_object(rows[0][1].encode("utf-8"), "export header")
        body = [row for row in rows[2:] if row]
        return header, [row[-1].encode("utf-8") for row in body], body
    first, _, rest = data.partition(b"\n")
    header = parse_object(first, "export header")
    lines = rest.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return header, lines, []


def _check_csv_columns(rows: list[list[str]]) -> list[str]:
    """Review hole M4: the readable columns must say what the signed record says."""
    problems = []
    for number, row in enumerate(rows, start=3):
        if len(row) != len(CSV_COLUMNS):
            problems.append(f"line {number}: {len(row)} columns, not {len(CSV_COLUMNS)}")
            continue
        try:
            fields = parse_record(row[-1].encode("utf-8")).fields
        except MalformedInputError:
            continue  # reported with the record itself
        for column, shown in zip(CSV_COLUMNS[:-1], row[:-1], strict=True):
            signed = str(fields["device" if column == "chain" else column])
            if shown != signed:
                problems.append(
                    f"line {number}: column {column} says {shown[:64]!r}, "
                    f"the record says {signed[:64]!r}"
                )
    return problems


def _manifest(header: Mapping[str, Any], fingerprint: str) -> dict[str, Any]:
    if header.get(FORMAT_MARKER) != 1:
        raise MalformedInputError("not an edgefleet audit export")
    try:
        chain = [Envelope.from_json(json.dumps(e).encode()) for e in header["root_chain"]]
        envelope = Envelope.from_json(json.dumps(header["manifest"]).encode())
        attestation = header.get("attestation")
    except (KeyError, TypeError) as e:
        raise MalformedInputError("the export header is incomplete") from e
    # Offline verification of an old export: the root chain is checked from the pinned
    # fingerprint, without expiry (it vouches for keys, not for freshness).
    trusted = TrustedState.bootstrap(fingerprint, chain, now=datetime(1970, 1, 1, tzinfo=UTC))
    role = trusted.root.roles["audit"]
    if attestation is None:  # signed by the controller with the fleet's audit key
        payload = verify_envelope(
            envelope,
            AUDIT_EXPORT_TYPE,
            trusted.root.keys,
            role.keyids,
            role.threshold,
            "audit export manifest",
        )
        return parse_object(payload, "export manifest")
    # Signed by a device with its own audit key, which the fleet's audit key vouches for.
    device, key_hex = verify_key_attestation(
        Envelope.from_json(json.dumps(attestation).encode()),
        trusted.root.keys,
        role.keyids,
        role.threshold,
    )
    key = PublicKey.from_hex(key_hex)
    payload = verify_envelope(
        envelope,
        AUDIT_EXPORT_TYPE,
        {key.keyid: key},
        [key.keyid],
        1,
        f"export manifest signed by {device}",
    )
    manifest = parse_object(payload, "export manifest")
    if set(manifest.get("chains", {})) - {device}:
        raise SignatureError(f"a device export may only hold {device}'s own chain")
    return manifest


def verify_export(data: bytes, fingerprint: str) -> VerificationReport:
    """Verify an export file; every problem names the record (chain and sequence number)."""
    header, lines, rows = _split(data)
    manifest = _manifest(header, fingerprint)
    device_signed = "attestation" in header  # the device's own key signed the manifest
    report = VerificationReport(records=len(lines), problems=_check_csv_columns(rows))
    chains: dict[str, list[tuple[int, AuditRecord]]] = {}
    for number, line in enumerate(lines, start=2):
        try:
            record = parse_record(line)
        except MalformedInputError as e:
            report.problems.append(f"line {number}: not a valid record ({e})")
            continue
        chains.setdefault(record.device, []).append((number, record))
    expected: dict[str, Any] = manifest.get("chains", {})
    for chain in chains.keys() - expected.keys():
        report.problems.append(f"chain {chain}: not in the signed manifest (records were inserted)")
    alerts: dict[str, Any] = manifest.get("alerts", {})
    for chain, summary in expected.items():
        found = chains.get(chain, [])
        report.chains[chain] = len(found)
        report.problems.extend(_check_chain(chain, found, summary))
        signed = manifest.get("checkpoints", {}).get(chain, [])
        problems, covered = _check_checkpoints(chain, found, summary, signed)
        report.problems.extend(problems)
        if summary.get("public_key"):
            report.device_keys[chain] = PublicKey.from_hex(str(summary["public_key"])).keyid
        if chain != CONTROLLER_CHAIN and not device_signed:
            report.qualifications.extend(_unattested(chain, summary, covered))
        for alert in alerts.get(chain, []):
            _report_alert(report, chain, alert, summary)
    if not report.problems and _records_digest(lines) != manifest.get("records_sha256"):
        report.problems.append("the record lines differ from the signed digest")
    signed_count = manifest.get("record_count")
    if len(lines) != signed_count:
        report.problems.append(
            f"the export holds {len(lines)} records, the manifest signed {signed_count}"
        )
    return report


def _unattested(chain: str, summary: Mapping[str, Any], covered: int) -> list[str]:
    """Review hole M3: records past the last device-signed checkpoint are vouched for by the
    controller's audit key alone, which could have rewritten them."""
    first, last = int(summary["first_seq"]), int(summary["last_seq"])
    if covered >= last:
        return []
    start = max(first, covered + 1)
    span = f"#{start}" if start == last else f"#{start}..#{last}"
    return [
        f"records {chain} {span}: not device-attested (no checkpoint signed by the device "
        "covers them; only the controller's audit key vouches for them)"
    ]


def _report_alert(
    report: VerificationReport, chain: str, alert: Mapping[str, Any], summary: Mapping[str, Any]
) -> None:
    """Review hole M5: a range the controller flagged as tampered fails verification
    while the alert stands, and stays visibly qualified once an operator cleared it."""
    first, last = int(alert.get("first_seq", 0)), int(alert.get("last_seq", 0))
    if last < int(summary["first_seq"]) or first > int(summary["last_seq"]):
        return
    span = f"#{first}" if first == last else f"#{first}..#{last}"
    what = f"records {chain} {span}: flagged as tampered by the controller ({alert.get('reason')})"
    if alert.get("cleared_by"):
        report.qualifications.append(
            f"{what}; cleared by {alert['cleared_by']}: {alert.get('cleared_reason', '')}"
        )
    else:
        report.problems.append(what)


def _check_chain(
    chain: str, found: list[tuple[int, AuditRecord]], summary: Mapping[str, Any]
) -> list[str]:
    """Problems of one chain, each naming the record concerned."""
    problems: list[str] = []
    first, last = int(summary["first_seq"]), int(summary["last_seq"])
    by_seq: dict[int, AuditRecord] = {}
    previous_seq = first - 1
    for number, record in found:
        where = f"record {chain} #{record.seq} (line {number})"
        if record.seq in by_seq:
            problems.append(f"{where}: sequence number appears twice (a record was inserted)")
            continue
        if record.seq <= previous_seq:
            problems.append(f"{where}: out of order, after #{previous_seq}")
        elif record.seq > last:
            problems.append(f"{where}: beyond the signed last record #{last} (inserted)")
        by_seq[record.seq] = record
        previous_seq = max(previous_seq, record.seq)
    missing = [s for s in range(first, last + 1) if s not in by_seq]
    if missing:
        span = f"#{missing[0]}" if len(missing) == 1 else f"#{missing[0]}..#{missing[-1]}"
        tail = " (the export was cut)" if missing[-1] == last else ""
        problems.append(f"record {chain} {span}: missing{tail}")
    problems.extend(_check_links(chain, by_seq, first, last, summary))
    return problems


def _check_links(
    chain: str, by_seq: Mapping[int, AuditRecord], first: int, last: int, summary: Mapping[str, Any]
) -> list[str]:
    """Name altered records from broken links.

    Record N's hash is recorded in N+1's ``prev`` (and the last one's in the manifest).
    Changing N's content breaks only the link into N+1; changing N's own ``prev`` breaks
    the link into N and, since N's hash changes too, the link into N+1.
    """

    def expected_prev(seq: int) -> str | None:
        if seq == first:
            return str(summary["first_prev"])
        return by_seq[seq - 1].hash if seq - 1 in by_seq else None

    breaks = {
        seq for seq, r in by_seq.items() if first <= seq <= last and r.prev != expected_prev(seq)
    }
    last_altered = last in by_seq and by_seq[last].hash != summary["last_hash"]
    culprits = set()
    for seq in breaks:
        if expected_prev(seq) is None:
            continue  # its predecessor is missing: reported as such
        breaks_next = seq + 1 in breaks or (seq == last and last_altered)
        culprits.add(seq if breaks_next or seq == first else seq - 1)
    if last_altered and last not in breaks:
        culprits.add(last)
    return [
        f"record {chain} #{seq}: altered (its bytes no longer hash to what the chain recorded)"
        for seq in sorted(culprits)
    ]


def _check_checkpoints(
    chain: str, found: list[tuple[int, AuditRecord]], summary: Mapping[str, Any], signed: list[Any]
) -> tuple[list[str], int]:
    """Each device-signed checkpoint must verify with the chain's key and match its record.

    Returns the problems and the highest sequence number a matching checkpoint covers
    (the chain's links carry its signature back to every earlier record), or 0."""
    problems = []
    covered = 0
    by_seq = {record.seq: record for _, record in found}
    for raw in signed:
        try:
            envelope = Envelope.from_json(json.dumps(raw).encode())
            checkpoint = verify_checkpoint(envelope, str(summary.get("public_key", "")), chain)
        except (MalformedInputError, SignatureError, AuditChainError) as e:
            problems.append(f"chain {chain}: a checkpoint does not verify ({e})")
            continue
        record = by_seq.get(checkpoint.seq)
        if record is None:
            continue
        if record.hash != checkpoint.sha256:
            problems.append(
                f"record {chain} #{checkpoint.seq}: does not match the device-signed checkpoint"
            )
        else:
            covered = max(covered, checkpoint.seq)
    return problems, covered
