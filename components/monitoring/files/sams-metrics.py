#!/usr/bin/python3
"""sams-metrics: what SAMS knows about the host, as node_exporter textfile metrics (installed by SAMS).

Reads /etc/sams/metrics.json (written by the monitoring step): the backup's status record and config,
the certificates in use, the mail directory, the WireGuard interface, PostgreSQL's container; asks
Postfix's queue (postqueue -j), WireGuard (wg show), fail2ban (fail2ban-client), PostgreSQL
(pg_stat_archiver through docker exec), the DNS blocklists (through the host's own resolver) and the mail
log's running totals (`sams-logs counters`: the
journal read since the last run) as root; writes one .prom file
atomically, so node_exporter never reads half of it. Run every minute by sams-metrics.timer.
Python's standard library only. A source that cannot be asked is left out, never guessed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CONFIG = "/etc/sams/metrics.json"


def parse_time(text: str) -> float:
    """sams-backup's ISO times (2026-12-06T02:31:07Z) -> Unix seconds."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def metric(lines: list[str], name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
    if not samples:
        return
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{text}}} {value!r}" if text else f"{name} {value!r}")


def backup_metrics(cfg: dict[str, Any], lines: list[str]) -> None:
    if not Path(cfg["backup_config"]).exists():
        return  # backups are off: no metric, so no alert
    try:
        status = json.loads(Path(cfg["backup_status"]).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        status = {}
    # Since when a backup is due: the config's age, until the first success (a new host is not late at once).
    metric(
        lines, "sams_backup_expected_since_timestamp_seconds", "gauge",
        "when backups were set up (the config file's time): the age a never-successful backup is measured from",
        [({}, Path(cfg["backup_config"]).stat().st_mtime)],
    )  # fmt: skip
    if status.get("last_success"):
        metric(
            lines, "sams_backup_last_success_timestamp_seconds", "gauge",
            "when the last successful backup finished", [({}, parse_time(status["last_success"]))],
        )  # fmt: skip
    if status.get("finished"):
        metric(
            lines, "sams_backup_last_run_timestamp_seconds", "gauge",
            "when the last backup run finished", [({}, parse_time(status["finished"]))],
        )  # fmt: skip
    if status.get("result"):
        metric(
            lines, "sams_backup_last_run_ok", "gauge", "1 if the last backup run succeeded, else 0",
            [({}, 1.0 if status["result"] == "ok" else 0.0)],
        )  # fmt: skip
    check = status.get("check")
    if isinstance(check, dict) and check.get("result"):
        metric(
            lines, "sams_backup_check_ok", "gauge", "1 if the last run's restic check passed, else 0",
            [({}, 1.0 if check["result"] == "ok" else 0.0)],
        )  # fmt: skip
    figures = {
        "bytes_added": ("sams_backup_last_run_added_bytes", "new data the last run added to the repository"),
        "duration_s": ("sams_backup_last_run_duration_seconds", "how long the last run took"),
        "cpu_s": ("sams_backup_last_run_cpu_seconds", "CPU time of the last run's programs (restic, the dump)"),
    }
    for key, (name, help_text) in figures.items():
        if isinstance(status.get(key), (int, float)):
            metric(lines, name, "gauge", help_text, [({}, float(status[key]))])
    if isinstance(status.get("peak_rss_mib"), (int, float)):
        metric(
            lines, "sams_backup_last_run_peak_rss_bytes", "gauge",
            "peak resident memory of the last run's largest program",
            [({}, float(status["peak_rss_mib"]) * 1024 * 1024)],
        )  # fmt: skip


def certificate_expiry(path: str) -> float | None:
    """The certificate's notAfter as Unix seconds (openssl: ca-certificates depends on it)."""
    proc = subprocess.run(
        ["openssl", "x509", "-noout", "-enddate", "-in", path], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or "=" not in proc.stdout:
        return None
    # notAfter=Mar  7 12:00:00 2027 GMT
    text = " ".join(proc.stdout.strip().split("=", 1)[1].split())
    return dt.datetime.strptime(text, "%b %d %H:%M:%S %Y GMT").replace(tzinfo=dt.UTC).timestamp()


def mount_point(path: str) -> str:
    """The mount point of the filesystem that holds `path` (the nearest existing ancestor's)."""
    current = Path(path)
    while not current.exists():
        current = current.parent
    current = current.resolve()
    while not os.path.ismount(current):
        current = current.parent
    return str(current)


def command(*argv: str) -> str | None:
    """A command's output, or None when it fails (its metrics are then left out)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def queue_metrics(lines: list[str]) -> None:
    """Postfix's queue by recipient domain: messages per queue, and the oldest deferred one's arrival."""
    out = command("postqueue", "-j")
    if out is None:
        return
    counts: dict[tuple[str, str], int] = {}
    oldest: dict[str, float] = {}
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        queue = str(msg.get("queue_name", "unknown"))
        domains = {str(r.get("address", "")).rpartition("@")[2].lower() or "(local)" for r in msg.get("recipients", [])}
        for domain in domains:
            counts[(queue, domain)] = counts.get((queue, domain), 0) + 1
            if queue == "deferred":
                arrival = float(msg.get("arrival_time", 0))
                oldest[domain] = min(oldest.get(domain, arrival), arrival)
    metric(
        lines, "sams_postfix_queue_messages", "gauge",
        "messages in Postfix's queue, by queue and recipient domain (a message counts once per domain)",
        [({"queue": q, "domain": d}, float(n)) for (q, d), n in sorted(counts.items())],
    )  # fmt: skip
    metric(
        lines, "sams_postfix_queue_oldest_deferred_timestamp_seconds", "gauge",
        "arrival time of the oldest deferred message, by recipient domain",
        [({"domain": d}, t) for d, t in sorted(oldest.items())],
    )  # fmt: skip
    metric(lines, "sams_postfix_queue_readable", "gauge", "1: postqueue answered", [({}, 1.0)])


def wireguard_metrics(interface: str, lines: list[str]) -> None:
    """Each peer's latest handshake (0: never), from `wg show <interface> latest-handshakes`."""
    out = command("wg", "show", interface, "latest-handshakes")
    if out is None:
        return
    samples = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            samples.append(({"interface": interface, "peer": parts[0]}, float(parts[1])))
    metric(
        lines, "sams_wireguard_latest_handshake_timestamp_seconds", "gauge",
        "when the peer last completed a handshake (0: never)", samples,
    )  # fmt: skip


def fail2ban_metrics(lines: list[str]) -> None:
    """Each jail's failures since fail2ban started (a counter) and the addresses banned now."""
    out = command("fail2ban-client", "status")
    if out is None:
        return
    found = re.search(r"Jail list:\s*(.*)", out)
    jails = [j.strip() for j in found.group(1).split(",") if j.strip()] if found else []
    failed, banned = [], []
    for jail in jails:
        text = command("fail2ban-client", "status", jail)
        total = re.search(r"Total failed:\s*(\d+)", text or "")
        now = re.search(r"Currently banned:\s*(\d+)", text or "")
        if total and now:
            failed.append(({"jail": jail}, float(total.group(1))))
            banned.append(({"jail": jail}, float(now.group(1))))
    metric(
        lines, "sams_fail2ban_failed_total", "counter", "failed logins the jail matched since fail2ban started", failed
    )
    metric(lines, "sams_fail2ban_banned", "gauge", "addresses the jail bans now", banned)


def postgres_metrics(pg: dict[str, str], lines: list[str]) -> None:
    """PostgreSQL in its container: whether it answers a query, and its WAL archiver's counts
    (pg_stat_archiver): a failing archive_command leaves point-in-time restores with a gap."""
    query = (
        "SELECT archived_count, failed_count, "
        "coalesce(extract(epoch FROM last_archived_time), 0), coalesce(extract(epoch FROM last_failed_time), 0) "
        "FROM pg_stat_archiver"
    )
    out = command("docker", "exec", pg["container"], "psql", "-U", pg["superuser"], "-XAt", "-F", " ", "-c", query)
    fields = out.split() if out else []
    up = len(fields) == 4
    metric(lines, "sams_postgres_up", "gauge", "1 if PostgreSQL answered a query, else 0", [({}, 1.0 if up else 0.0)])
    if not up:
        return
    archived, failed, last_ok, last_failed = (float(f) for f in fields)
    metric(lines, "sams_postgres_wal_archived_total", "counter", "WAL segments archived since the statistics reset",
           [({}, archived)])  # fmt: skip
    metric(lines, "sams_postgres_wal_archive_failed_total", "counter", "failed WAL archive attempts",
           [({}, failed)])  # fmt: skip
    metric(lines, "sams_postgres_wal_last_archived_timestamp_seconds", "gauge", "when a WAL segment was last archived "
           "(0: never)", [({}, last_ok)])  # fmt: skip
    metric(lines, "sams_postgres_wal_last_failed_timestamp_seconds", "gauge", "when archiving last failed (0: never)",
           [({}, last_failed)])  # fmt: skip


# The mail log's running totals (sams-logs counters): each kind, its metric, label and help.
LOG_COUNTERS = {
    "rejects": ("sams_mail_rejects_total", "status", "mail refused in the SMTP session, by enhanced status code"),
    "deliveries": ("sams_mail_deliveries_total", "status", "delivery results (sent, deferred, bounced, expired)"),
    "submitted": ("sams_mail_submitted_total", "login", "messages submitted on 587/465, by login"),
    "auth_failures": ("sams_mail_auth_failures_total", "service", "failed logins (imap, pop3, smtp-auth)"),
}


def log_metrics(tool: str, state: str, hold: float, lines: list[str]) -> None:
    """Counters from Postfix's and Dovecot's journal, from the saved log queries' own patterns; a new
    series stays at 0 for `hold` seconds (two scrapes), so Prometheus sees its first rise."""
    out = command(tool, "counters", "--state", state, "--hold", str(hold))
    try:
        totals = json.loads(out) if out else None
    except json.JSONDecodeError:
        totals = None
    if not isinstance(totals, dict):
        return
    for kind, (name, label, help_text) in LOG_COUNTERS.items():
        counts = totals.get(kind) or {}
        metric(lines, name, "counter", help_text, [({label: k}, float(n)) for k, n in sorted(counts.items())])
    metric(lines, "sams_mail_log_readable", "gauge", "1: the mail log's counters were read", [({}, 1.0)])


def dns_a(name: str, server: tuple[str, int], timeout: float = 3.0) -> list[str] | None:
    """The A records of `name` from one resolver over UDP: [] for NXDOMAIN or no A, None when the
    resolver did not answer or failed (SERVFAIL, REFUSED). Python's resolver would ask whatever
    /etc/resolv.conf names; blocklists must be asked through the host's own."""
    ident = random.randrange(65536)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"
    query = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query, server)
            reply, _ = sock.recvfrom(4096)
        except OSError:
            return None
    got, flags, _qd, answers = struct.unpack(">HHHH", reply[:8])
    rcode = flags & 0xF
    if got != ident or rcode not in (0, 3):
        return None
    if rcode == 3:
        return []
    at, found = 12 + len(question) + 4, []
    for _ in range(answers):
        while reply[at] not in (0,) and reply[at] < 0xC0:  # the owner name: labels ...
            at += reply[at] + 1
        at += 2 if reply[at] >= 0xC0 else 1  # ... ending in a pointer or the root
        kind, _cls, _ttl, length = struct.unpack(">HHIH", reply[at : at + 10])
        at += 10
        if kind == 1 and length == 4:
            found.append(socket.inet_ntoa(reply[at : at + 4]))
        at += length
    return found


def dnsbl_metrics(cfg: dict[str, Any], lines: list[str]) -> None:
    """Whether each blocklist lists the host's public addresses: 1 for an answer in 127.0.0.0/8, 0 for
    none; left out when the resolver failed or the list refused (127.255.255.x: Spamhaus's "query
    refused", which says nothing about the address)."""
    host, _, port = cfg["resolver"].rpartition(":")
    samples = []
    for address in cfg["public_addresses"]:
        reverse = ".".join(reversed(address.split("."))) if ipaddress.ip_address(address).version == 4 else None
        if reverse is None:
            continue  # IPv6 lists differ per zone; not asked yet
        for zone in cfg["blocklists"]:
            found = dns_a(f"{reverse}.{zone}", (host, int(port)))
            if found is None or any(a.startswith("127.255.255.") for a in found):
                continue
            listed = any(ipaddress.ip_address(a) in ipaddress.ip_network("127.0.0.0/8") for a in found)
            samples.append(({"zone": zone, "address": address}, 1.0 if listed else 0.0))
    metric(lines, "sams_dnsbl_listed", "gauge", "1 if the blocklist lists the address, 0 if not", samples)


def unit_metrics(units: list[str], lines: list[str]) -> None:
    """1 for each watched unit systemd says is active, else 0 (stopped, failed, restarting)."""
    try:
        proc = subprocess.run(["systemctl", "is-active", *units], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return
    states = proc.stdout.split()
    if len(states) != len(units):
        return  # systemctl did not answer for each: nothing rather than a guess
    metric(
        lines, "sams_unit_active", "gauge", "1 if systemd says the unit is active, else 0",
        [({"unit": unit}, 1.0 if state == "active" else 0.0) for unit, state in zip(units, states, strict=True)],
    )  # fmt: skip


def dkim_metrics(dkim: dict[str, Any], lines: list[str]) -> None:
    """The DKIM rotation phase the last `pulumi up` applied, and when its next phase is due (the phases
    advance only when the program runs again)."""
    metric(
        lines, "sams_dkim_rotation_phase", "gauge", "1 for the rotation phase and signing selector in effect",
        [({"phase": dkim["phase"], "signing": dkim["signing"]}, 1.0)],
    )  # fmt: skip
    if dkim.get("next_change") is not None:
        metric(
            lines, "sams_dkim_rotation_next_change_timestamp_seconds", "gauge",
            "when the next rotation phase starts (a `pulumi up` from then on applies it)",
            [({}, float(dkim["next_change"]))],
        )  # fmt: skip


def main() -> int:
    cfg = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else CONFIG).read_text())
    lines: list[str] = []
    backup_metrics(cfg, lines)
    expiries = [(path, certificate_expiry(path)) for path in cfg["certificates"] if Path(path).exists()]
    metric(
        lines, "sams_tls_certificate_expiry_timestamp_seconds", "gauge",
        "when the certificate the daemons serve expires (notAfter)",
        [({"path": path}, when) for path, when in expiries if when is not None],
    )  # fmt: skip
    metric(
        lines, "sams_mail_filesystem", "gauge", "1 for the filesystem that holds the mailboxes",
        [({"mountpoint": mount_point(cfg["mail_root"])}, 1.0)],
    )  # fmt: skip
    queue_metrics(lines)
    wireguard_metrics(cfg["wireguard_interface"], lines)
    fail2ban_metrics(lines)
    postgres_metrics(cfg["postgres"], lines)
    log_metrics(cfg["logs_tool"], cfg["log_counters"], float(cfg["log_counters_hold_s"]), lines)
    if cfg.get("public_addresses"):
        dnsbl_metrics(cfg, lines)
    unit_metrics(cfg.get("units", []), lines)
    if cfg.get("dkim"):
        dkim_metrics(cfg["dkim"], lines)
    metric(
        lines, "sams_metrics_written_timestamp_seconds", "gauge", "when sams-metrics last wrote this file",
        [({}, time.time())],
    )  # fmt: skip
    target = Path(cfg["textfile"])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")  # node_exporter reads *.prom only
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o644)
    tmp.replace(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
