"""What the doctor knows: findings, the plan it checks against, and what the probes observed.

Everything here is plain, frozen data (JSON round-trips through :mod:`doctor.report` and
:mod:`doctor.hostfacts`): the checks in :mod:`doctor.checks` are pure functions of these values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

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

RecordKind = Literal["A", "AAAA", "CNAME", "MX", "TXT", "SRV", "CAA", "PTR"]


@dataclass(frozen=True)
class ExpectedRecord:
    name: str  # fully qualified, lower case, no trailing dot
    type: RecordKind
    value: str | None  # normalized (see normalize_*); None: unknown here (not in the outputs given)
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
    backup_target: str | None
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
class HostFacts:
    taken_at: float  # the host's clock, epoch seconds
    disks: tuple[Disk, ...]
    mem_total: int  # bytes
    mem_available: int  # bytes
    backup_stamp: str  # the path looked at
    backup_last: float | None  # mtime of the stamp, epoch seconds; None: the file does not exist
    outbound: tuple[Outbound, ...]
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


def mx_value(preference: int, exchange: str) -> str:
    return f"{preference} {normalize_name(exchange)}"


def srv_value(priority: int, weight: int, port: int, target: str) -> str:
    return f"{priority} {weight} {port} {normalize_name(target)}"


def caa_value(flags: int, tag: str, value: str) -> str:
    return f'{flags} {tag.lower()} "{value}"'


def txt_kind(value: str) -> str:
    """The record kind a TXT value announces ('v=spf1', 'v=dmarc1', ...), '' if none."""
    head = value.strip().split(";", 1)[0].split(" ", 1)[0].lower()
    return head if head.startswith("v=") else ""


def host_facts(data: Mapping[str, Any]) -> HostFacts:
    """HostFacts from the JSON doctor/hostscript.py prints."""
    last = data["backup_last"]
    return HostFacts(
        taken_at=float(data["taken_at"]),
        disks=tuple(Disk(**x) for x in data["disks"]),
        mem_total=int(data["mem_total"]),
        mem_available=int(data["mem_available"]),
        backup_stamp=str(data["backup_stamp"]),
        backup_last=None if last is None else float(last),
        outbound=tuple(Outbound(**x) for x in data["outbound"]),
        wal_status=str(data["wal_status"]),
        wal_seen=bool(data["wal_seen"]),
        wal_waiting=int(data["wal_waiting"]),
        wal_oldest=None if data["wal_oldest"] is None else float(data["wal_oldest"]),
        clamd=str(data.get("clamd", "")),
        clamav_daily=None if data.get("clamav_daily") is None else float(data["clamav_daily"]),
    )
