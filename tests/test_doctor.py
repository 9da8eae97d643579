"""doctor: each check with good and bad observations (pure), the plan it checks against, the report
and docs/doctor.md, and the probes that can run here (the host script, a TLS handshake, DNS values)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mockrun
from components.backup.plan import STATUS_FILE
from components.dns.records import Record, normal, ptr, txt_value
from doctor import checks, probe, report
from doctor.expect import expected, output_records
from doctor.model import (
    BackupStatus,
    Disk,
    DnsAnswer,
    Expected,
    Finding,
    HostFacts,
    Observations,
    Outbound,
    PortSpec,
    PortState,
    PortStateName,
    SmtpProbe,
    TlsEndpoint,
    TlsProbe,
    backup_status,
    host_facts,
)
from tests.conftest import VARIANTS, run_variant

PROJECT = Path(__file__).resolve().parents[1]
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def settings_of(variant: str) -> Any:
    from settings import load

    stack, overrides = VARIANTS[variant]
    cfg = {**mockrun.stack_config(stack), **mockrun.TEST_SECRETS}
    cfg.update({k: mockrun.encode_config(v) for k, v in overrides.items()})
    return load(stack, cfg, PROJECT)


def plan_of(variant: str, **changes: Any) -> Expected:
    e = expected(VARIANTS[variant][0], settings_of(variant), run_variant(variant).outputs)
    return dataclasses.replace(e, **changes)


@pytest.fixture(scope="module")
def lab() -> Expected:
    return plan_of("lab")


# The record sams-backup writes after a good night's run (components/backup/files/sams-backup.py
# run_backup): 9 hours before NOW, a Sunday, so restic check also read 10 % of the data back.
LAB_REPOSITORY = "rest:https://backup.lab.example:8000/sams/"
POSTGRES_SNAPSHOT = "4f3c2a1b" + "0d9e8f7a" * 7
FILES_SNAPSHOT = "9e8d7c6b" + "5a4f3e2d" * 7
OK_RECORD: dict[str, Any] = {
    "started": "2026-03-01T02:41:07Z",
    "finished": "2026-03-01T02:44:31Z",
    "result": "ok",
    "message": "opened the repository; removed 3 archived WAL files the snapshot holds; applied the retention",
    "repository": LAB_REPOSITORY,
    "run": "20260301T024107Z",
    "duration_s": 204.3,
    "snapshots": {"files": FILES_SNAPSHOT, "postgres": POSTGRES_SNAPSHOT},
    "bytes_added": 13_107_200,
    "files": 18_204,
    "bytes_total": 2_254_857_830,
    "check": {"result": "ok", "args": ["--read-data-subset=10%"]},
    "last_success": "2026-03-01T02:44:31Z",
    "last_success_snapshots": {"files": FILES_SNAPSHOT, "postgres": POSTGRES_SNAPSHOT},
}
# The next night's run, when the backup server's disk was full: no snapshots, the last success carried over.
FAILED_RECORD: dict[str, Any] = {
    "started": "2026-03-02T02:38:55Z",
    "finished": "2026-03-02T02:39:12Z",
    "result": "failed",
    "message": f"restic backup failed on {LAB_REPOSITORY} (exit 1): Fatal: unable to save snapshot: "
    "server response unexpected: 507 Insufficient Storage (507)",
    "repository": LAB_REPOSITORY,
    "run": "20260302T023855Z",
    "duration_s": 17.4,
    "last_success": "2026-03-01T02:44:31Z",
    "last_success_snapshots": {"files": FILES_SNAPSHOT, "postgres": POSTGRES_SNAPSHOT},
}
# A run that backed up, then failed in restic check: sams-backup records the check as failed, and the run too.
CHECK_FAILED_RECORD: dict[str, Any] = {
    **FAILED_RECORD,
    "message": f"restic check failed on {LAB_REPOSITORY} (exit 1): Fatal: repository contains errors",
    "check": {"result": "failed", "args": ["--read-data-subset=10%"]},
}


def with_backup(
    obs: Observations, record: dict[str, Any] | None, *, at: dt.datetime = NOW, error: str = ""
) -> Observations:
    """The observations with the host's status record (None: no file) read at `at`."""
    assert obs.host
    status = None if record is None else backup_status(record)
    host = dataclasses.replace(obs.host, backup_status=status, backup_status_error=error, taken_at=at.timestamp())
    return dataclasses.replace(obs, host=host)


def healthy(e: Expected) -> Observations:
    """What a host exactly as planned looks like from outside and inside."""
    rrsets: dict[tuple[str, str], list[str]] = {}
    for r in e.records:
        rrsets.setdefault((r.name, r.type), []).append(str(r.value))
    dns = [DnsAnswer(n, k, "ok", tuple(sorted(v))) for (n, k), v in rrsets.items()]  # type: ignore[arg-type]
    dns += [DnsAnswer(checks.reverse_name(a), "PTR", "ok", (normal(ptr(e.hostname)),)) for a in (e.ipv4, e.ipv6) if a]
    ports = [PortState(p.number, p.proto, "open" if p.proto == "tcp" else "unprobed") for p in e.public_ports]
    ports += [PortState(p.number, p.proto, "filtered") for p in e.private_ports]
    tls = [
        TlsProbe(
            t.port,
            t.mode,
            True,
            verified=True,
            not_after=NOW + dt.timedelta(days=60),
            names=(e.hostname,),
            version="TLSv1.3",
        )
        for t in e.tls
    ]
    smtp = SmtpProbe(
        True,
        banner=f"{e.hostname} ESMTP",
        ehlo=e.hostname,
        relay_rcpt="x@example.com",
        relay_reply=(554, "5.7.1 <x@example.com>: Relay access denied"),
    )
    target = f"{e.relay[0]}" if e.relay else probe.DEFAULT_OUTBOUND
    host = HostFacts(
        taken_at=NOW.timestamp(),
        disks=(Disk("/", 50 * 2**30, 30 * 2**30),),
        mem_total=4 * 2**30,
        mem_available=2 * 2**30,
        backup_status_file=STATUS_FILE,
        backup_status=backup_status(OK_RECORD),
        outbound=(Outbound(target, e.relay[1] if e.relay else 25, "open"),),
        wal_status=probe.WAL_STATUS,
        wal_seen=True,
    )
    return Observations(tuple(dns), tuple(ports), tuple(tls), smtp, host)


def only(findings: list[Finding], check: str, subject: str = "") -> Finding:
    """The one finding of `check` whose subject is `subject` (or, failing that, contains it)."""
    mine = [f for f in findings if f.check == check and f.subject == subject]
    mine = mine or [f for f in findings if f.check == check and subject in f.subject]
    assert len(mine) == 1, mine
    return mine[0]


def replace_dns(obs: Observations, name: str, kind: str, answer: DnsAnswer) -> Observations:
    rest = tuple(a for a in obs.dns if (a.name, a.type) != (name, kind))
    return dataclasses.replace(obs, dns=(*rest, answer))


# --- the plan --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_planned_value_is_known_from_the_outputs(variant: str) -> None:
    e = plan_of(variant)
    assert e.records and all(r.value is not None and r.zone_line for r in e.records)
    dkim = [r for r in e.records if "._domainkey." in r.name]
    assert dkim and all(r.value and r.value.startswith("v=DKIM1; k=rsa; p=") for r in dkim)
    assert {22, 5432, 11334, 6379} <= {p.number for p in e.private_ports}
    assert not {p.number for p in e.private_ports} & {p.number for p in e.public_ports}


def test_dns_records_output_parses_back(lab: Expected) -> None:
    """`dnsRecords` is a list of JSON records (components/dns/records.py), read by field, not by column."""
    out = run_variant("lab").outputs["dnsRecords"]
    assert isinstance(out, list) and json.loads(json.dumps(out)) == out
    records = output_records({"dnsRecords": out})
    assert len(records) == len(lab.records)
    assert [(r.name, r.type) for r in records] == [(e.name, e.type) for e in lab.records]
    assert [r.line() for r in records] == [e.zone_line for e in lab.records]
    dkim = [txt_value(r.rdata()) for r in records if r.name.startswith("s1._domainkey.")]
    assert dkim and all(v.startswith("v=DKIM1; k=rsa; p=") and '"' not in v for v in dkim)
    assert output_records({}) == []
    # A stack output of the program before records became JSON: said plainly, not misread.
    with pytest.raises(ValueError, match="not a list of records"):
        output_records({"dnsRecords": "NAME  TYPE  VALUE  # PURPOSE"})
    with pytest.raises(ValueError, match="dnsRecords: not a record"):
        output_records({"dnsRecords": [{**out[0], "data": "not an address"}]})
    assert Record.from_json(out[0]).to_json() == out[0]


def test_tls_endpoints_follow_the_policy() -> None:
    assert [t.port for t in plan_of("prod").tls] == [25, 443, 465, 587, 993, 995]
    # No public web, IMAP and POP3 through the tunnel: only Postfix's ports are probed.
    bastion = plan_of("prod-bastion")
    assert [t.port for t in bastion.tls] == [25, 465, 587]
    assert {993, 995, 143} <= {p.number for p in bastion.private_ports}
    assert plan_of("dev").relay is not None and plan_of("prod").ipv6 == "2001:db8::25"


# --- all well ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_healthy_host_has_no_failure(variant: str) -> None:
    e = plan_of(variant)
    findings = checks.evaluate(e, healthy(e), NOW)
    bad = [f for f in findings if f.status not in ("ok", "unchecked")]
    if e.backup_enabled:
        assert bad == []
    else:  # backups off is worth a warning, nothing else
        assert [(f.check, f.status) for f in bad] == [("backup", "warn")]
    assert checks.exit_code(findings) == 0
    assert {f.check for f in findings} == set(checks.CHECKS)
    # Only UDP (WireGuard) cannot be looked at from outside.
    assert [f.subject for f in findings if f.status == "unchecked"] == [
        f"port {p.number}/udp (wireguard)" for p in e.public_ports if p.proto == "udp"
    ]


# --- DNS --------------------------------------------------------------------------------------------


def test_dkim_record_different_from_the_plan_fails_naming_record_and_value(lab: Expected) -> None:
    dkim = next(r for r in lab.records if "._domainkey." in r.name)
    assert dkim.value
    other = dkim.value[:-12] + "AAAAAAAAAAA="
    obs = replace_dns(healthy(lab), dkim.name, "TXT", DnsAnswer(dkim.name, "TXT", "ok", (other,)))
    findings = checks.evaluate(lab, obs, NOW)
    f = only(findings, "dns", f"{dkim.name} TXT")
    assert f.status == "fail" and dkim.name in f.message and "differs" in f.message
    assert dkim.zone_line in f.fix and "pulumi up" in f.fix
    assert checks.exit_code(findings) == 1


def test_missing_record_fails_with_the_record_to_add(lab: Expected) -> None:
    dmarc = next(r for r in lab.records if r.name.startswith("_dmarc."))
    obs = replace_dns(healthy(lab), dmarc.name, "TXT", DnsAnswer(dmarc.name, "TXT", "nxdomain"))
    f = only(checks.check_dns(lab, obs), "dns", f"{dmarc.name} TXT")
    assert f.status == "fail" and "missing" in f.message and "NXDOMAIN" in f.message
    assert f.fix.startswith("Add: ") and dmarc.zone_line in f.fix


def test_manual_dns_says_where_to_enter_it(lab: Expected) -> None:
    manual = dataclasses.replace(lab, dns_provider="manual")
    a = lab.records[0]
    obs = replace_dns(healthy(lab), a.name, a.type, DnsAnswer(a.name, a.type, "nodata"))
    f = only(checks.check_dns(manual, obs), "dns", f"{a.name} {a.type}")
    assert f.status == "fail" and "docs/dns_checklist.md" in f.fix and "pulumi up" not in f.fix


def test_address_record_must_be_exactly_the_host(lab: Expected) -> None:
    a = next(r for r in lab.records if r.type == "A")
    obs = replace_dns(healthy(lab), a.name, "A", DnsAnswer(a.name, "A", "ok", (str(a.value), "198.18.0.99")))
    f = only(checks.check_dns(lab, obs), "dns", f"{a.name} A")
    assert f.status == "fail" and "198.18.0.99" in f.message


def test_two_spf_records_fail(lab: Expected) -> None:
    spf = next(r for r in lab.records if r.value and r.value.startswith("v=spf1"))
    obs = replace_dns(
        healthy(lab), spf.name, "TXT", DnsAnswer(spf.name, "TXT", "ok", (str(spf.value), "v=spf1 a -all"))
    )
    f = only(checks.check_dns(lab, obs), "dns", f"{spf.name} TXT")
    assert f.status == "fail" and "2 SPF records" in f.message
    # Another kind of TXT beside it (a site verification) is fine.
    obs = replace_dns(
        healthy(lab), spf.name, "TXT", DnsAnswer(spf.name, "TXT", "ok", (str(spf.value), "google-site-verification=x"))
    )
    assert only(checks.check_dns(lab, obs), "dns", f"{spf.name} TXT").status == "ok"


def test_foreign_mx_warns_and_unanswered_query_is_unchecked(lab: Expected) -> None:
    mx = next(r for r in lab.records if r.type == "MX")
    obs = replace_dns(
        healthy(lab), mx.name, "MX", DnsAnswer(mx.name, "MX", "ok", (str(mx.value), "20 mx.elsewhere.example"))
    )
    assert only(checks.check_dns(lab, obs), "dns", f"{mx.name} MX").status == "warn"
    obs = replace_dns(healthy(lab), mx.name, "MX", DnsAnswer(mx.name, "MX", "error", error="Timeout"))
    f = only(checks.check_dns(lab, obs), "dns", f"{mx.name} MX")
    assert f.status == "unchecked" and "Timeout" in f.message


def test_unknown_planned_value_only_checks_presence(lab: Expected) -> None:
    r = dataclasses.replace(lab.records[0], value=None, zone_line="")
    e = dataclasses.replace(lab, records=(r,))
    f = checks.check_dns(e, healthy(lab))[0]
    assert f.status == "unchecked" and "present" in f.message


# --- PTR and HELO -------------------------------------------------------------------------------------


def test_ptr_missing_or_wrong_fails_with_the_providers_fix() -> None:
    for variant, words in (("prod", "pulumi up"), ("dev", "support request"), ("lab", "Ask whoever runs")):
        e = plan_of(variant)
        name = checks.reverse_name(e.ipv4)
        missing = replace_dns(healthy(e), name, "PTR", DnsAnswer(name, "PTR", "nxdomain"))
        f = only(checks.check_ptr(e, missing), "ptr", e.ipv4)
        assert f.status == "fail" and "no PTR" in f.message and words in f.fix and e.hostname in f.fix
        wrong = replace_dns(healthy(e), name, "PTR", DnsAnswer(name, "PTR", "ok", ("vps-1234.provider.example",)))
        f = only(checks.check_ptr(e, wrong), "ptr", e.ipv4)
        assert f.status == "fail" and "vps-1234.provider.example" in f.message
    prod = plan_of("prod")
    assert [f.status for f in checks.check_ptr(prod, healthy(prod))] == ["ok", "ok"]  # IPv4 and IPv6


def test_helo_must_name_the_host(lab: Expected) -> None:
    obs = dataclasses.replace(healthy(lab), smtp=SmtpProbe(True, banner="localhost ESMTP Postfix", ehlo=lab.hostname))
    greeting, ehlo = checks.check_helo(lab, obs)
    assert greeting.status == "fail" and "localhost" in greeting.message and "myhostname" in greeting.fix
    assert ehlo.status == "ok"
    down = dataclasses.replace(healthy(lab), smtp=SmtpProbe(False, "ConnectionRefusedError"))
    assert [f.status for f in checks.check_helo(lab, down)] == ["unchecked"]


# --- TLS ------------------------------------------------------------------------------------------------


def tls_finding(e: Expected, port: int, **probe_fields: Any) -> Finding:
    ep = next(t for t in e.tls if t.port == port)
    base = TlsProbe(port, ep.mode, True, verified=True, not_after=NOW + dt.timedelta(days=60), names=(e.hostname,))
    return checks.check_tls_endpoint(e, ep, dataclasses.replace(base, **probe_fields), NOW)


def test_certificate_expiring_in_10_days_fails(lab: Expected) -> None:
    f = tls_finding(lab, 993, not_after=NOW + dt.timedelta(days=10))
    assert f.status == "fail" and "expires in 10 days" in f.message and "certbot renew" in f.fix
    assert tls_finding(lab, 993, not_after=NOW + dt.timedelta(days=20)).status == "ok"
    assert "expired" in tls_finding(lab, 465, not_after=NOW - dt.timedelta(days=1)).message


def test_untrusted_or_wrong_name_certificate_fails(lab: Expected) -> None:
    f = tls_finding(lab, 25, verified=False, verify_error="self-signed certificate", self_signed=True)
    assert f.status == "fail" and "self-signed" in f.message and "STARTTLS" in f.subject
    f = tls_finding(lab, 587, names=("other.example",))
    assert f.status == "fail" and "not mail.sams.test" in f.message
    wildcard = "*." + lab.hostname.split(".", 1)[1]
    assert tls_finding(lab, 587, names=(wildcard,)).status == "ok"
    assert tls_finding(lab, 587, names=("*.test",)).status == "fail"  # one label only


def test_no_tls_on_a_port_fails(lab: Expected) -> None:
    f = tls_finding(lab, 443, connected=False, error="ConnectionRefusedError")
    assert f.status == "fail" and "nginx" in f.fix


# --- ports, relay, outbound ------------------------------------------------------------------------------


def with_port(obs: Observations, number: int, state: PortStateName) -> Observations:
    ports = tuple(dataclasses.replace(p, state=state) if p.number == number else p for p in obs.ports)
    return dataclasses.replace(obs, ports=ports)


def test_private_port_open_fails(lab: Expected) -> None:
    f = only(checks.check_ports(lab, with_port(healthy(lab), 5432, "open")), "ports", "port 5432/")
    assert f.status == "fail" and "postgresql" in f.subject and "WireGuard" in f.message and "pulumi up" in f.fix
    assert only(checks.check_ports(lab, healthy(lab)), "ports", "port 5432/").status == "ok"


def test_public_port_closed_fails(lab: Expected) -> None:
    states: tuple[PortStateName, ...] = ("closed", "filtered")
    for state in states:
        f = only(checks.check_ports(lab, with_port(healthy(lab), 587, state)), "ports", "port 587/")
        assert f.status == "fail" and state in f.message and "nft list ruleset" in f.fix


def test_open_relay_fails(lab: Expected) -> None:
    def relay(code: int, text: str) -> Finding:
        smtp = SmtpProbe(
            True, banner=lab.hostname, ehlo=lab.hostname, relay_rcpt="x@example.com", relay_reply=(code, text)
        )
        return checks.check_relay(lab, dataclasses.replace(healthy(lab), smtp=smtp))[0]

    f = relay(250, "2.1.5 Ok")
    assert f.status == "fail" and "OPEN RELAY" in f.message and "reject_unauth_destination" in f.fix
    assert relay(554, "5.7.1 <x@example.com>: Relay access denied").status == "ok"
    assert relay(454, "4.7.1 <x@example.com>: Relay access denied").status == "ok"
    assert relay(450, "4.1.2 <x@example.com>: Recipient address rejected: Domain not found").status == "warn"


def test_outbound(lab: Expected) -> None:
    def outbound(e: Expected, result: Any) -> Finding:
        host = healthy(e).host
        assert host
        o = dataclasses.replace(host.outbound[0], result=result, detail="x")
        return checks.check_outbound(e, dataclasses.replace(healthy(e), host=dataclasses.replace(host, outbound=(o,))))[
            0
        ]

    f = outbound(lab, "timeout")
    assert f.status == "fail" and "blocks outbound" in f.message and "sams:relay" in f.fix
    f = outbound(lab, "unresolved")
    assert f.status == "unchecked" and "could not look up" in f.message
    dev = plan_of("dev")
    assert dev.relay
    assert outbound(dev, "open").status == "ok" and "relay" in outbound(dev, "open").subject
    assert "cannot reach its relay" in outbound(dev, "closed").message
    no_host = checks.check_outbound(lab, dataclasses.replace(healthy(lab), host=None, host_error="ssh: timeout"))
    assert no_host[0].status == "unchecked" and "ssh: timeout" in no_host[0].message


# --- host facts ---------------------------------------------------------------------------------------


def test_backup_repository_comes_from_the_stack() -> None:
    assert plan_of("lab").backup_repository == LAB_REPOSITORY
    assert plan_of("prod").backup_repository == "rest:https://backup.example.org:8000/sams-prod/"
    # Unset on Vultr or Oracle Cloud: the program makes a bucket, and the doctor says so.
    bucket = dataclasses.replace(plan_of("prod"), backup_repository=None)
    (f,) = checks.check_backup(bucket, Observations(host_error="ssh: timeout"))
    assert (f.status, f.message) == ("unchecked", "Backups to the program's bucket not checked: ssh: timeout.")


def test_backups_off_warn_and_say_how_to_turn_them_on(lab: Expected) -> None:
    (f,) = checks.check_backup(dataclasses.replace(lab, backup_enabled=False), healthy(lab))
    assert f.status == "warn" and "sams:backup.enabled is false" in f.message
    # An existing host has no object storage the program could create a bucket in.
    assert f.fix.startswith("pulumi config set --path sams:backup.enabled true; ")
    assert "pulumi config set --path sams:backup.repository rest:https://" in f.fix and "backupKeyId" in f.fix
    prod = plan_of("prod")
    (f,) = checks.check_backup(dataclasses.replace(prod, backup_enabled=False), healthy(prod))
    assert f.status == "warn" and "the program creates a bucket" in f.fix


def test_a_good_nights_backup_is_ok_with_its_snapshots_and_size(lab: Expected) -> None:
    assert lab.backup_enabled
    (f,) = checks.check_backup(lab, healthy(lab))
    assert f.status == "ok" and f.fix == ""
    assert f.message == (
        f"the last backup finished 9.3 hours ago, 2026-03-01 02:44 UTC, to {LAB_REPOSITORY}: "
        "snapshots files 9e8d7c6b, postgres 4f3c2a1b; 12.5 MiB added; restic check --read-data-subset=10% ok"
    )
    # A weekday's run checks the structure only.
    plain = {**OK_RECORD, "check": {"result": "ok", "args": []}, "bytes_added": 812}
    (f,) = checks.check_backup(lab, with_backup(healthy(lab), plain))
    assert f.status == "ok" and f.message.endswith("; 812 B added; restic check ok")


def test_no_backup_run_yet_fails_saying_how_to_run_one(lab: Expected) -> None:
    (f,) = checks.check_backup(lab, with_backup(healthy(lab), None))
    assert f.status == "fail"
    assert f.message == f"No backup has run yet: {STATUS_FILE} does not exist (backups go to {LAB_REPOSITORY})."
    assert "`sudo systemctl start sams-backup` runs one now" in f.fix and "journalctl -u sams-backup" in f.fix


def test_an_unreadable_status_record_fails(lab: Expected) -> None:
    error = "JSONDecodeError: Expecting value: line 1 column 1 (char 0)"
    (f,) = checks.check_backup(lab, with_backup(healthy(lab), None, error=error))
    assert f.status == "fail" and STATUS_FILE in f.message and error in f.message


def test_a_failed_run_fails_quoting_its_reason(lab: Expected) -> None:
    at = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)
    (f,) = checks.check_backup(lab, with_backup(healthy(lab), FAILED_RECORD, at=at))
    assert f.status == "fail"
    assert f.message == (
        f"The last backup run failed (run 20260302T023855Z, 2026-03-02 02:39 UTC): {FAILED_RECORD['message']}. "
        "The last successful backup finished 29 hours ago, 2026-03-01 02:44 UTC (files 9e8d7c6b, postgres 4f3c2a1b)."
    )
    assert "journalctl -u sams-backup" in f.fix and "systemctl start sams-backup" in f.fix
    # Failed an hour after a good run (a manual start), the last success is recent: still a failure.
    retry = {**FAILED_RECORD, "started": "2026-03-01T03:40:00Z", "finished": "2026-03-01T03:40:09Z"}
    (f,) = checks.check_backup(lab, with_backup(healthy(lab), retry))
    assert f.status == "fail" and "507 Insufficient Storage" in f.message and "9 hours ago" in f.message
    # The very first run failed: nothing to fall back on.
    first = {**FAILED_RECORD, "last_success": None, "last_success_snapshots": None}
    (f,) = checks.check_backup(lab, with_backup(healthy(lab), first, at=at))
    assert f.status == "fail" and f.message.endswith("No backup has succeeded yet.")


@pytest.mark.parametrize(("hours", "status"), [(25, "ok"), (27, "fail"), (72, "fail")])
def test_the_last_success_older_than_26_hours_fails(lab: Expected, hours: int, status: str) -> None:
    """The timer did not run (host down, timer off): the record still says ok, but it is old."""
    finished = dt.datetime(2026, 3, 1, 2, 44, 31, tzinfo=dt.UTC)
    (f,) = checks.check_backup(lab, with_backup(healthy(lab), OK_RECORD, at=finished + dt.timedelta(hours=hours)))
    assert f.status == status
    if status == "fail":
        assert f"finished {hours} hours ago, 2026-03-01 02:44 UTC (more than 26): no run since" in f.message
        assert "systemctl list-timers sams-backup" in f.fix and "systemctl start sams-backup" in f.fix


@pytest.mark.parametrize("run_result", ["failed", "ok"])
def test_a_failed_restic_check_fails_naming_the_repository(lab: Expected, run_result: str) -> None:
    record = {**CHECK_FAILED_RECORD, "result": run_result}
    at = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)
    (f,) = checks.check_backup(lab, with_backup(healthy(lab), record, at=at))
    assert f.status == "fail"
    assert f.message.startswith(
        f"restic check found a problem in the repository {LAB_REPOSITORY} (run 20260302T023855Z"
    )
    assert ("Fatal: repository contains errors" in f.message) == (run_result == "failed")
    assert "sams-backup check --read-data" in f.fix


def test_the_status_record_parses_strictly() -> None:
    """Times with their zone, as sams-backup writes them; an ok run is its own last success; anything
    else is not taken for a record (the check then says it cannot read it)."""
    status = backup_status(OK_RECORD)
    assert status.finished == status.last_success == dt.datetime(2026, 3, 1, 2, 44, 31, tzinfo=dt.UTC).timestamp()
    assert status.check_args == ("--read-data-subset=10%",) and status.bytes_added == 13_107_200
    bare = {k: v for k, v in OK_RECORD.items() if not k.startswith("last_success")}
    assert backup_status(bare) == status
    for bad in ({"result": "ok"}, {**OK_RECORD, "finished": "2026-03-01 02:44:31"}, {**OK_RECORD, "check": "ok"}):
        with pytest.raises(ValueError, match=r"time|record"):
            backup_status(bad)


def test_backups_unchecked_without_the_host(lab: Expected) -> None:
    (f,) = checks.check_backup(lab, dataclasses.replace(healthy(lab), host=None))
    assert f.status == "unchecked" and LAB_REPOSITORY in f.message and "--ssh" in f.message


def test_the_doctor_reads_the_records_sams_backup_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sams-backup's own run_backup, restic replaced by a stand-in on PATH, writes the record the host
    script reads: a good run is ok; a failing restic check, then a failing backup, fail with restic's
    words, the last success carried over."""
    from components.backup.steps import TOOL_SOURCE, tool_config
    from tests.scripts import load_script

    tool = load_script("sams_backup_for_doctor", TOOL_SOURCE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    restic = bin_dir / "restic"
    restic.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "args = [a for a in sys.argv[1:] if a not in ('--retry-lock', '10m')]\n"
        "if args[0] == 'backup' and os.environ.get('FAKE_BACKUP_FAILS'):\n"
        "    print('Fatal: unable to save snapshot: server response unexpected: 507 Insufficient Storage',\n"
        "          file=sys.stderr)\n"
        "    sys.exit(1)\n"
        "elif args[0] == 'backup':\n"
        "    kind = 'postgres' if 'postgres' in args else 'files'\n"
        "    sid = ('4f3c2a1b' if kind == 'postgres' else '9e8d7c6b') + '0' * 56\n"
        "    print(json.dumps({'message_type': 'summary', 'snapshot_id': sid, 'data_added': 1048576,\n"
        "                      'total_files_processed': 3, 'total_bytes_processed': 4096}))\n"
        "elif args[0] == 'check' and os.environ.get('FAKE_CHECK_FAILS'):\n"
        "    print('Fatal: repository contains errors', file=sys.stderr)\n"
        "    sys.exit(1)\n"
    )
    restic.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    # No server behind the lab's repository name here: the reachability probe has its own tests.
    monkeypatch.setattr(tool.Restic, "reach", lambda self, **_: None)
    cfg: dict[str, Any] = {
        **tool_config(settings_of("lab")),
        "repository": LAB_REPOSITORY,
        "env_file": str(tmp_path / "env"),
        "password_file": str(tmp_path / "password"),
        "cacert": None,
        "cache_dir": str(tmp_path / "cache"),
        "status_file": str(tmp_path / "status.json"),
        "paths": [str(tmp_path / "vmail")],
        "excludes": [],
    }
    cfg["postgres"] = {**cfg["postgres"], "wal_archive": str(tmp_path / "wal")}
    (tmp_path / "vmail").mkdir()

    def doctor() -> Finding:
        args = {"paths": ["/"], "backup_status": cfg["status_file"], "wal_status": "/nonexistent", "outbound": []}
        facts = host_facts(run_host_script(args))
        (f,) = checks.check_backup(plan_of("lab"), Observations(host=facts))
        return f

    f = doctor()
    assert f.status == "fail" and "No backup has run yet" in f.message
    assert tool.run_backup(cfg)["result"] == "ok"
    f = doctor()
    assert f.status == "ok" and "0.0 hours ago" in f.message and "files 9e8d7c6b, postgres 4f3c2a1b" in f.message
    assert "2.0 MiB added" in f.message
    monkeypatch.setenv("FAKE_CHECK_FAILS", "1")
    assert tool.run_backup(cfg)["result"] == "failed"
    f = doctor()
    assert f.status == "fail" and f"restic check found a problem in the repository {LAB_REPOSITORY}" in f.message
    assert "Fatal: repository contains errors" in f.message
    assert "The last successful backup finished 0 hours ago" in f.message and "files 9e8d7c6b" in f.message
    monkeypatch.delenv("FAKE_CHECK_FAILS")
    monkeypatch.setenv("FAKE_BACKUP_FAILS", "1")
    assert tool.run_backup(cfg)["result"] == "failed"
    f = doctor()
    assert f.status == "fail" and f.message.startswith("The last backup run failed (run ")
    assert f"restic backup failed on {LAB_REPOSITORY} (exit 1): Fatal: unable to save snapshot" in f.message
    assert "The last successful backup finished 0 hours ago" in f.message and "files 9e8d7c6b" in f.message


def test_wal_archiving(lab: Expected) -> None:
    obs = healthy(lab)
    assert obs.host
    assert [(f.status, f.message) for f in checks.check_wal(lab, obs)] == [
        ("ok", "no WAL segment is waiting to be archived")
    ]
    # A segment waits while archive_command runs or is retried; only a long wait fails.
    recent = dataclasses.replace(obs.host, wal_waiting=1, wal_oldest=NOW.timestamp() - 120)
    assert checks.check_wal(lab, dataclasses.replace(obs, host=recent))[0].status == "ok"
    stuck = dataclasses.replace(obs.host, wal_waiting=25, wal_oldest=NOW.timestamp() - 3600)
    f = checks.check_wal(lab, dataclasses.replace(obs, host=stuck))[0]
    assert f.status == "fail" and "25 WAL segment(s) not archived, the oldest for 60 minutes" in f.message
    assert "journalctl -t sams-postgres" in f.fix
    missing = dataclasses.replace(obs.host, wal_seen=False)
    f = checks.check_wal(lab, dataclasses.replace(obs, host=missing))[0]
    assert f.status == "fail" and probe.WAL_STATUS in f.message
    assert checks.check_wal(lab, dataclasses.replace(obs, host=None))[0].status == "unchecked"


def test_antivirus(lab: Expected) -> None:
    obs = healthy(lab)
    assert obs.host and not lab.antivirus
    # ClamAV off is a choice, not a fault: said, not warned about.
    assert [(f.status, f.message) for f in checks.check_antivirus(lab, obs)] == [
        ("ok", "ClamAV is off (sams:antivirus.clamav): attachments are not scanned")
    ]
    on = dataclasses.replace(lab, antivirus=True)
    fresh = dataclasses.replace(obs.host, clamd="PONG", clamav_daily=NOW.timestamp() - 5 * 3600)
    assert [(f.status, f.message) for f in checks.check_antivirus(on, dataclasses.replace(obs, host=fresh))] == [
        ("ok", "clamd answers; the daily signatures are 5 hours old")
    ]
    down = dataclasses.replace(fresh, clamd="FileNotFoundError: [Errno 2] No such file or directory")
    f = checks.check_antivirus(on, dataclasses.replace(obs, host=down))[0]
    assert f.status == "fail" and "FileNotFoundError" in f.message and "unscanned (CLAMAV_FAIL)" in f.message
    assert "journalctl -u clamav-daemon" in f.fix
    stale = dataclasses.replace(fresh, clamav_daily=NOW.timestamp() - 80 * 3600)
    f = checks.check_antivirus(on, dataclasses.replace(obs, host=stale))[0]
    assert f.status == "fail" and "80 hours old: freshclam has not updated them" in f.message
    none = dataclasses.replace(fresh, clamav_daily=None)
    assert checks.check_antivirus(on, dataclasses.replace(obs, host=none))[0].status == "fail"
    assert checks.check_antivirus(on, dataclasses.replace(obs, host=None))[0].status == "unchecked"


def test_disk_and_memory_headroom(lab: Expected) -> None:
    obs = healthy(lab)
    assert obs.host
    for free, status in ((0.10, "fail"), (0.20, "warn"), (0.50, "ok")):
        disks = (Disk("/", 100 * 2**30, int(free * 100 * 2**30)),)
        f = checks.check_disk(lab, dataclasses.replace(obs, host=dataclasses.replace(obs.host, disks=disks)))[0]
        assert f.status == status and f"{free:.0%}" in f.message
    for free, status in ((0.05, "fail"), (0.15, "warn"), (0.50, "ok")):
        host = dataclasses.replace(obs.host, mem_total=8 * 2**30, mem_available=int(free * 8 * 2**30))
        assert checks.check_memory(lab, dataclasses.replace(obs, host=host))[0].status == status


# --- the report and the docs ------------------------------------------------------------------------------


def test_report_shows_problems_with_their_fix(lab: Expected) -> None:
    findings = checks.evaluate(lab, with_port(healthy(lab), 5432, "open"), NOW)
    out = report.text(findings)
    assert "[FAIL] port 5432/tcp (postgresql)" in out and "fix: `pulumi up` restores the firewall" in out
    assert "[ok  ]" not in out and "[ok  ]" in report.text(findings, verbose=True)
    assert report.from_json(report.to_json(findings)) == findings


def test_docs_doctor_md_is_generated_from_the_checks() -> None:
    text = (PROJECT / "docs" / "doctor.md").read_text()
    assert text == report.markdown(), "docs/doctor.md is out of date: python -m doctor docs"
    assert all(f"(`{c}`)" in text for c in checks.CHECKS)


# --- probes that run here ------------------------------------------------------------------------------------


def test_probe_normal_form_matches_the_plans(lab: Expected) -> None:
    """Each planned record, parsed from its zone line as a DNS server would serve it, reads back as planned."""
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    for r in lab.records:
        text = r.zone_line.split(f" IN {r.type} ", 1)[1]
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(r.type), text)
        assert normal(rdata) == r.value, r


def run_host_script(args: dict[str, Any]) -> dict[str, Any]:
    """doctor/hostscript.py as the probe ships it (`python3 - ARGS`, the script on stdin): its JSON."""
    out = subprocess.run(
        [sys.executable, "-", json.dumps(args)],
        input=probe.HOST_SCRIPT.read_text(),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return dict(json.loads(out))


def test_host_script_reports_facts(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    status.write_text(json.dumps(FAILED_RECORD, indent=1, sort_keys=True) + "\n")
    wal_status = tmp_path / "archive_status"
    wal_status.mkdir()
    for name, age in (("000000010000000000000002.ready", 600), ("000000010000000000000003.ready", 60)):
        (wal_status / name).touch()
        os.utime(wal_status / name, (time.time() - age, time.time() - age))
    (wal_status / "000000010000000000000001.done").touch()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        closed_port = listener.getsockname()[1]  # bound, never listening: refused
        args = {
            "paths": ["/", str(tmp_path)],
            "backup_status": str(status),
            "wal_status": str(wal_status),
            "outbound": [["127.0.0.1", closed_port], ["no-such-host.invalid", 25]],
        }
        facts = host_facts(run_host_script(args))
    assert facts.disks and facts.disks[0].path == "/" and 0 < facts.disks[0].available <= facts.disks[0].size
    assert 0 < facts.mem_available <= facts.mem_total
    assert facts.backup_status_file == str(status) and facts.backup_status_error == ""
    assert facts.backup_status == BackupStatus(
        result="failed",
        message=FAILED_RECORD["message"],
        repository=LAB_REPOSITORY,
        run="20260302T023855Z",
        started=dt.datetime(2026, 3, 2, 2, 38, 55, tzinfo=dt.UTC).timestamp(),
        finished=dt.datetime(2026, 3, 2, 2, 39, 12, tzinfo=dt.UTC).timestamp(),
        last_success=dt.datetime(2026, 3, 1, 2, 44, 31, tzinfo=dt.UTC).timestamp(),
        last_success_snapshots=(("files", FILES_SNAPSHOT), ("postgres", POSTGRES_SNAPSHOT)),
    )
    assert (facts.wal_seen, facts.wal_waiting) == (True, 2)
    assert facts.wal_oldest == pytest.approx(time.time() - 600, abs=5)
    assert [o.result for o in facts.outbound] == ["closed", "unresolved"]


def test_host_script_asks_clamd_only_where_clamav_is_on(tmp_path: Path) -> None:
    """PING on a unix socket that answers as clamd does, the newest daily file's time; and nothing
    of ClamAV's is looked at when the plan has it off."""
    path = str(tmp_path / "clamd.ctl")
    daily = tmp_path / "daily.cld"
    daily.touch()
    os.utime(daily, (time.time() - 7200, time.time() - 7200))
    heard: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen()

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                heard.append(conn.recv(64))
                conn.sendall(b"PONG\0")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()

        def run(clamav: object) -> dict[str, Any]:
            nothing = {"paths": ["/"], "backup_status": "/nonexistent", "wal_status": "/nonexistent", "outbound": []}
            return run_host_script({**nothing, "clamav": clamav})

        on = host_facts(run({"socket": path, "daily": [str(tmp_path / "daily.cvd"), str(daily)]}))
        thread.join(5)
    assert heard == [b"zPING\0"] and on.clamd == "PONG"
    assert on.clamav_daily == pytest.approx(time.time() - 7200, abs=5)
    gone = host_facts(run({"socket": path, "daily": []}))  # nobody listens any more
    assert gone.clamd.startswith("ConnectionRefusedError") and gone.clamav_daily is None
    off = run(None)
    assert "clamd" not in off and host_facts(off).clamd == ""


def test_host_script_reads_no_record_and_a_broken_one(tmp_path: Path) -> None:
    def facts(content: str | None) -> HostFacts:
        path = tmp_path / "status.json"
        path.unlink(missing_ok=True)
        if content is not None:
            path.write_text(content)
        args = {"paths": ["/"], "backup_status": str(path), "wal_status": "/nonexistent", "outbound": []}
        return host_facts(run_host_script(args))

    none = facts(None)
    assert (none.backup_status, none.backup_status_error) == (None, "")
    cut = facts('{"started": "2026-03-01T02:41:07Z", "res')
    assert cut.backup_status is None and cut.backup_status_error.startswith("JSONDecodeError: ")
    assert facts("[]").backup_status_error == "not a JSON object but list"
    # Valid JSON, but not the tool's record: said, not taken for a success.
    odd = facts('{"result": "maybe"}')
    assert odd.backup_status is None and "not a backup status record" in odd.backup_status_error
    ok = facts(json.dumps(OK_RECORD))
    assert ok.backup_status and ok.backup_status.check == "ok" and ok.backup_status.bytes_added == 13_107_200
    assert ok.backup_status.snapshots == (("files", FILES_SNAPSHOT), ("postgres", POSTGRES_SNAPSHOT))


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path, dt.datetime]]:
    """An implicit-TLS server on 127.0.0.1 with a self-signed certificate for mail.sams.test, 10 days left."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.sams.test")])
    now = dt.datetime.now(dt.UTC)
    not_after = (now + dt.timedelta(days=10)).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mail.sams.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "cert.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile = tmp_path / "key.pem"
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem, keyfile)
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass  # the client refused our certificate: its first handshake

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], pem, not_after
    stop.set()
    thread.join()
    server.close()


def test_tls_probe_reads_trust_and_expiry(tls_server: tuple[int, Path, dt.datetime]) -> None:
    port, pem, not_after = tls_server
    ep = TlsEndpoint(port, "implicit", "dovecot")
    trusted = probe.tls_probe(ep, "mail.sams.test", probe.ProbeOptions("127.0.0.1", cafile=str(pem)))
    assert trusted.connected and trusted.verified and trusted.not_after == not_after
    assert trusted.names == ("mail.sams.test",) and trusted.version.startswith("TLSv1.")
    stranger = probe.tls_probe(ep, "mail.sams.test", probe.ProbeOptions("127.0.0.1"))
    assert stranger.connected and not stranger.verified and stranger.self_signed
    assert "self-signed" in stranger.verify_error and stranger.not_after == not_after
    e = dataclasses.replace(plan_of("lab"), tls=(ep,))
    f = checks.check_tls_endpoint(e, ep, trusted, dt.datetime.now(dt.UTC))
    assert f.status == "fail" and "expires in 9 days" in f.message


def test_tcp_state_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        state = probe.tcp_state("127.0.0.1", PortSpec(port, "tcp", "x"), 2.0)
    assert state.state == "closed"
