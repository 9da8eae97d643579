"""What the doctor knows: findings, the plan it checks against, and what the probes observed.

Everything here is plain, frozen data (JSON round-trips through :mod:`doctor.report` and
:mod:`doctor.hostscript`): the checks in :mod:`doctor.checks` are pure functions of these values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from components.dns.records import RecordType

# ok: as planned. warn: works, but something is off. fail: broken, or a promise is not kept.
# unchecked: the doctor could not look (no host access, no answer, nothing to compare with);
# the message says what was not checked and why. Only `fail` makes the CLI exit non-zero.
Status = Literal["ok", "warn", "fail", "unchecked"]
STATUSES: tuple[Status, ...] = ("fail", "warn", "unchecked", "ok")


@dataclass(frozen=True)
class Finding:
    check: str  # a CheckInfo.id
    subject: str  # what was looked at: "s1._domainkey.example.org TXT", "port 5432/tcp"
    status: Status
    message: str  # what is (or is not) the case, in plain words
    fix: str = ""  # what to do: the exact record, command or setting; empty when ok


@dataclass(frozen=True)
class CheckInfo:
    """One kind of check, described once for the report and docs/doctor.md."""

    id: str
    title: str
    why: str  # what breaks when this check fails
    how: str  # how the doctor looks
    fixes: str  # the usual fixes, in general terms (findings carry the exact ones)


# --- the plan the doctor checks against -----------------------------------------------------------

RecordKind = RecordType  # components/dns/records.py


@dataclass(frozen=True)
class ExpectedRecord:
    name: str  # fully qualified, lower case, no trailing dot
    type: RecordKind
    value: str | None  # components.dns.records.normal of its data; None: unknown here (not in the outputs)
    purpose: str
    zone_line: str  # the record as one zone-file line, for the fix ("" when the value is unknown)


@dataclass(frozen=True)
class PortSpec:
    number: int
    proto: Literal["tcp", "udp"]
    service: str


TlsMode = Literal["implicit", "smtp-starttls"]


@dataclass(frozen=True)
class TlsEndpoint:
    port: int
    mode: TlsMode
    service: str  # the daemon that serves it: postfix, dovecot, nginx


@dataclass(frozen=True)
class Expected:
    stack: str
    provider: Literal["vultr", "oci", "existing"]
    dns_provider: Literal["cloudflare", "manual"]
    hostname: str
    ipv4: str
    ipv6: str | None
    records: tuple[ExpectedRecord, ...]
    public_ports: tuple[PortSpec, ...]
    private_ports: tuple[PortSpec, ...]  # must be closed from outside
    tls: tuple[TlsEndpoint, ...]
    relay: tuple[str, int] | None  # sams:relay host and port, when mail leaves through one
    backup_enabled: bool
    backup_repository: str | None  # sams:backup.repository; None: the bucket the program creates
    mail_root: str  # where the mailboxes live on the host (for the disk check)
    antivirus: bool = False  # sams:antivirus.clamav


# --- what the probes saw ---------------------------------------------------------------------------

AnswerStatus = Literal["ok", "nxdomain", "nodata", "error"]


@dataclass(frozen=True)
class DnsAnswer:
    name: str
    type: RecordKind
    status: AnswerStatus
    values: tuple[str, ...] = ()  # normalized like ExpectedRecord.value
    error: str = ""


PortStateName = Literal["open", "closed", "filtered", "unprobed"]


@dataclass(frozen=True)
class PortState:
    number: int
    proto: Literal["tcp", "udp"]
    state: PortStateName  # closed: refused (RST); filtered: no answer (dropped)
    detail: str = ""


@dataclass(frozen=True)
class TlsProbe:
    port: int
    mode: TlsMode
    connected: bool  # TCP (and STARTTLS) got as far as a TLS handshake attempt
    error: str = ""  # connection or handshake error
    verified: bool = False  # chain and name verified against the trust store given
    verify_error: str = ""
    not_after: datetime | None = None  # UTC
    names: tuple[str, ...] = ()  # subjectAltName DNS names (or the CN when there are none)
    self_signed: bool = False
    version: str = ""  # TLSv1.3 ...


@dataclass(frozen=True)
class SmtpProbe:
    """Port 25 as another mail server sees it: the greeting, the EHLO answer, a relay attempt."""

    connected: bool
    error: str = ""
    banner: str = ""  # the 220 greeting text, without the code
    ehlo: str = ""  # the first line of the EHLO answer, without the code
    relay_rcpt: str = ""
    relay_reply: tuple[int, str] | None = None  # the answer to RCPT TO:<relay_rcpt>


@dataclass(frozen=True)
class Disk:
    path: str
    size: int  # bytes
    available: int  # bytes


@dataclass(frozen=True)
class Outbound:
    target: str
    port: int
    result: Literal["open", "closed", "timeout", "unresolved", "error"]
    detail: str = ""


@dataclass(frozen=True)
class BackupStatus:
    """The last run's record, as sams-backup writes it after every run (components/backup/plan.py
    STATUS_FILE); times as epoch seconds, None where the record has none."""

    result: str  # "ok" or "failed"
    message: str  # on failure: what failed, naming the repository and restic's reason
    repository: str = ""  # without credentials
    run: str = ""  # the run's id (its snapshots' run: tag)
    started: float | None = None
    finished: float | None = None
    snapshots: tuple[tuple[str, str], ...] = ()  # (kind, id) this run made (files, postgres), by kind
    bytes_added: int | None = None  # new data the run stored in the repository
    check: str = ""  # restic check's result, "ok" or "failed"; "": the run stopped before it
    check_args: tuple[str, ...] = ()  # its options (--read-data-subset=... on the read-back day)
    last_success: float | None = None  # the last ok run's end (this run's, if ok), carried over by failed runs
    last_success_snapshots: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HostFacts:
    taken_at: float  # the host's clock, epoch seconds
    disks: tuple[Disk, ...]
    mem_total: int  # bytes
    mem_available: int  # bytes
    backup_status_file: str  # the path looked at
    backup_status: BackupStatus | None  # None: no record (no run yet), or it could not be read
    outbound: tuple[Outbound, ...]
    backup_status_error: str = ""  # why the record could not be read ("" when it was, or is absent)
    # PostgreSQL's archive_status directory: the segments still waiting for archive_command.
    wal_status: str = ""  # the path looked at
    wal_seen: bool = False  # the directory exists
    wal_waiting: int = 0  # segments marked .ready
    wal_oldest: float | None = None  # mtime of the oldest .ready, epoch seconds
    # ClamAV, asked only where sams:antivirus.clamav is on: clamd's answer to PING on its socket
    # ("PONG", or why there was none) and when freshclam last wrote the daily signatures.
    clamd: str = ""
    clamav_daily: float | None = None  # epoch seconds; None: no daily signatures


@dataclass(frozen=True)
class Observations:
    dns: tuple[DnsAnswer, ...] = ()
    ports: tuple[PortState, ...] = ()
    tls: tuple[TlsProbe, ...] = ()
    smtp: SmtpProbe | None = None
    host: HostFacts | None = None
    host_error: str = ""  # why there are no host facts ("" with host=None: no access was given)


# --- one normal form for record values, shared by the plan and the probes -------------------------


def normalize_name(name: str) -> str:
    """Lower case without the trailing dot; the root stays '.'."""
    return "." if name in (".", "") else name.rstrip(".").lower()


def normalize_address(text: str) -> str:
    return str(ipaddress.ip_address(text))


def txt_kind(value: str) -> str:
    """The record kind a TXT value announces ('v=spf1', 'v=dmarc1', ...), '' if none."""
    head = value.strip().split(";", 1)[0].split(" ", 1)[0].lower()
    return head if head.startswith("v=") else ""


def _epoch(value: Any) -> float | None:
    """An ISO 8601 time with its zone ('2026-03-01T02:41:07Z') as epoch seconds; None when absent."""
    if value is None or value == "":
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"a time without its zone: {value!r}")
    return parsed.timestamp()


def _snapshots(value: Any) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in (value or {}).items()))


def backup_status(record: Mapping[str, Any]) -> BackupStatus:
    """BackupStatus from the status record's JSON (ValueError when it is not one)."""
    if not isinstance(record, Mapping) or record.get("result") not in ("ok", "failed"):
        raise ValueError("not a backup status record (no result ok or failed)")
    check = record.get("check") or {}
    try:
        status = BackupStatus(
            result=str(record["result"]),
            message=str(record.get("message", "")),
            repository=str(record.get("repository", "")),
            run=str(record.get("run", "")),
            started=_epoch(record.get("started")),
            finished=_epoch(record.get("finished")),
            snapshots=_snapshots(record.get("snapshots")),
            bytes_added=None if record.get("bytes_added") is None else int(record["bytes_added"]),
            check=str(check.get("result", "")),
            check_args=tuple(str(a) for a in check.get("args", ())),
            last_success=_epoch(record.get("last_success")),
            last_success_snapshots=_snapshots(record.get("last_success_snapshots")),
        )
    except (AttributeError, TypeError) as exc:
        raise ValueError(f"not a backup status record: {exc}") from None
    if status.result == "ok" and status.last_success is None:
        if status.finished is None:
            raise ValueError("not a backup status record: an ok run without its time")
        status = replace(status, last_success=status.finished, last_success_snapshots=status.snapshots)
    return status


def host_facts(data: Mapping[str, Any]) -> HostFacts:
    """HostFacts from the JSON doctor/hostscript.py prints."""
    status, status_error = None, str(data.get("backup_status_error", ""))
    if data.get("backup_status") is not None:
        try:
            status = backup_status(data["backup_status"])
        except ValueError as exc:
            status_error = str(exc)
    return HostFacts(
        taken_at=float(data["taken_at"]),
        disks=tuple(Disk(**x) for x in data["disks"]),
        mem_total=int(data["mem_total"]),
        mem_available=int(data["mem_available"]),
        backup_status_file=str(data["backup_status_file"]),
        backup_status=status,
        backup_status_error=status_error,
        outbound=tuple(Outbound(**x) for x in data["outbound"]),
        wal_status=str(data["wal_status"]),
        wal_seen=bool(data["wal_seen"]),
        wal_waiting=int(data["wal_waiting"]),
        wal_oldest=None if data["wal_oldest"] is None else float(data["wal_oldest"]),
        clamd=str(data.get("clamd", "")),
        clamav_daily=None if data.get("clamav_daily") is None else float(data["clamav_daily"]),
    )
