"""The status checks: pure functions from (what was planned, what was observed) to findings.

Modelled on Mail-in-a-Box's management/status_checks.py: every finding says in plain words what
is wrong and what to do, with the exact record, command or setting. Nothing here touches the
network or the host; :mod:`doctor.probe` gathers the observations.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from components.backup.plan import STATUS_FILE, UNIT
from components.dns.records import normal, ptr
from doctor.model import (
    BackupStatus,
    CheckInfo,
    DnsAnswer,
    Expected,
    ExpectedRecord,
    Finding,
    Observations,
    Status,
    TlsEndpoint,
    TlsProbe,
    txt_kind,
)

# A certificate closer than this to its end fails: certbot renews at 30 days left, so 14 means
# renewal has failed for two weeks.
CERT_MIN_DAYS = 14
# Backups: the nightly run, with two hours' slack for its randomized delay and its own length; older
# than this, a night was missed (issue 20: alert when the last successful backup is older than 26 hours).
BACKUP_MAX_AGE = timedelta(hours=26)
# WAL archiving: PostgreSQL retries a failing archive_command every minute; a segment still waiting
# after this long means it keeps failing.
WAL_MAX_WAIT = timedelta(minutes=15)
# ClamAV publishes daily signatures several times a day and freshclam looks 24 times a day: three
# days without a new file means freshclam keeps failing.
SIGNATURES_MAX_AGE = timedelta(hours=72)
# Free space and memory, as fractions (Mail-in-a-Box's thresholds: warn below 30 %/20 %, fail
# below 15 %/10 %).
DISK_WARN, DISK_FAIL = 0.30, 0.15
MEMORY_WARN, MEMORY_FAIL = 0.20, 0.10

CHECKS: dict[str, CheckInfo] = {
    c.id: c
    for c in (
        CheckInfo(
            "dns",
            "DNS records match the plan",
            "Other servers find the host (A/AAAA, MX), judge its mail (SPF, DKIM, DMARC) and protect the "
            "connection (MTA-STS, TLS-RPT) only through these records; clients find settings through SRV, "
            "autoconfig and autodiscover; CAA limits who may issue certificates.",
            "Asks the resolver given (--resolver, else the system's) for every record of the plan "
            "(`pulumi stack output dnsRecords`) and compares the answers with the planned values.",
            "With Cloudflare, `pulumi up` writes every record (a changed one is put back). With another DNS "
            "host, enter the record the finding shows (all of them: docs/dns_checklist.md). Two SPF "
            "records are an error for receivers: keep the planned one.",
        ),
        CheckInfo(
            "ptr",
            "Reverse DNS (PTR) names the host",
            "Receivers (Gmail, Microsoft) refuse or junk mail from an address whose PTR is missing or "
            "does not match the name the server greets with.",
            "Looks up the PTR of the public IPv4 (and IPv6) address and compares it with sams:hostname.",
            "Vultr: `pulumi up` sets it (ReverseIpv4/ReverseIpv6). Oracle Cloud and other hosts: set the "
            "reverse DNS of the address to the hostname in the provider's console or by a support request.",
        ),
        CheckInfo(
            "helo",
            "The SMTP greeting names the host",
            "The 220 greeting and the EHLO answer are the name receivers compare with the PTR; a mismatch "
            "costs reputation and trips spam filters.",
            "Connects to port 25 from outside and reads the greeting and the EHLO answer.",
            "myhostname in /etc/postfix/main.cf comes from sams:hostname: `pulumi up` rewrites it; "
            "`sudo postconf myhostname` shows what runs.",
        ),
        CheckInfo(
            "tls",
            "Certificates: trusted, for the hostname, not expiring",
            "Clients refuse an untrusted or expired certificate; MTA-STS senders refuse to deliver; a "
            "certificate that nearly expired means renewal has been failing.",
            f"A TLS handshake on each public TLS port (25 and 587 with STARTTLS; 465, 993, 995, 443 "
            f"directly), verifying the chain and the hostname; fails when fewer than {CERT_MIN_DAYS} days "
            "remain.",
            "`sudo certbot renew --dry-run` shows why renewal fails; `sudo certbot certificates` what is "
            "installed; the deploy hook reloads Postfix, Dovecot and nginx. A self-signed certificate "
            "means certbot never succeeded: check the DNS records and that port 80 is open.",
        ),
        CheckInfo(
            "ports",
            "Public ports open, private ports closed",
            "Mail and clients need 25, 465, 587 (993, 995, 443); SSH, PostgreSQL, Rspamd's UI and "
            "ManageSieve must only be reachable through the WireGuard tunnel.",
            "A TCP connection from outside to every port of the policy (components/firewall/policy.py) "
            "and to every never-public port; UDP (WireGuard) cannot be probed from outside.",
            "A closed public port: `sudo nft list ruleset`, the cloud firewall (`pulumi up`), and "
            "`sudo ss -tlnp` for the daemon. An open private port: `pulumi up` restores the firewall; "
            "find what listens with `sudo ss -tlnp`.",
        ),
        CheckInfo(
            "relay",
            "Not an open relay",
            "A server that accepts mail from anyone to anywhere is found by spammers within hours and blocklisted.",
            "From outside, without logging in, asks port 25 to take mail for a foreign domain "
            "(RCPT TO:<relay-test@...>); the answer must be a refusal.",
            "smtpd_relay_restrictions in /etc/postfix/main.cf must end in reject_unauth_destination: "
            "`pulumi up` rewrites it; check `sudo postconf -n | grep relay`.",
        ),
        CheckInfo(
            "outbound",
            "Outbound mail can leave",
            "Many providers block outbound port 25 (Oracle Cloud always, Vultr until asked); mail then "
            "stays in the queue.",
            "From the host (over SSH), a TCP connection to a well-known MX on port 25, or to the relay "
            "host (sams:relay) when one is configured.",
            "Ask the provider to open port 25, or send through a relay: set sams:relay (host, port, "
            "username) and `pulumi config set --secret sams:relayPassword`.",
        ),
        CheckInfo(
            "backup",
            "Backups are recent and the repository is sound",
            "Without a recent backup a lost disk loses the mail; a repository that restic check finds damaged "
            "may not restore.",
            f"Over SSH, the record {STATUS_FILE} that sams-backup writes after every run: fails when no run "
            f"has written one, when the last run failed (quoting its reason), when the last successful backup "
            f"is more than {BACKUP_MAX_AGE.total_seconds() / 3600:.0f} hours old, or when the run's restic "
            "check found a problem.",
            f"Set sams:backup.enabled (and sams:backup.repository, unless the program creates a bucket on Vultr "
            f"or Oracle Cloud). On the host `sudo journalctl -u {UNIT}` tells why the last run failed, "
            f"`sudo systemctl start {UNIT}` runs one now and `systemctl list-timers {UNIT}` shows when the next "
            "runs; docs/backup.md.",
        ),
        CheckInfo(
            "wal",
            "PostgreSQL archives its WAL",
            "The archived WAL is what restores the mail database to the minute after a lost disk; while "
            "archive_command fails, PostgreSQL also keeps every segment in pg_wal until the disk is full.",
            "Over SSH, the .ready files in the data directory's pg_wal/archive_status (segments not yet "
            f"archived); fails when one has waited more than {WAL_MAX_WAIT.total_seconds() / 60:.0f} minutes.",
            "`sudo journalctl -t sams-postgres | grep -i archive` shows why archive_command fails; "
            "`pulumi up` rewrites the unit that sets it.",
        ),
        CheckInfo(
            "antivirus",
            "ClamAV answers and its signatures are current",
            "With sams:antivirus.clamav on, Rspamd asks clamd about every attachment: while clamd is down, "
            "mail is delivered unscanned (CLAMAV_FAIL), and with old signatures new viruses pass.",
            "Over SSH, PING on clamd's socket and the time of the daily signatures; fails when clamd does not "
            f"answer or they are older than {SIGNATURES_MAX_AGE.total_seconds() / 3600:.0f} hours. Nothing is "
            "checked while ClamAV is off.",
            "`sudo journalctl -u clamav-daemon -u clamav-freshclam -n 50` says why; `pulumi up` starts clamd "
            "again (and fetches the first signatures). ClamAV's mirrors refuse clients that ask too often: "
            "freshclam's own schedule is enough.",
        ),
        CheckInfo(
            "disk",
            "Disk space",
            "A full disk stops Postfix accepting mail (it answers 452) and can corrupt mailboxes.",
            f"Over SSH, free space on / and the mailbox filesystem; warns below {DISK_WARN:.0%} free, "
            f"fails below {DISK_FAIL:.0%}.",
            "`sudo du -xsh /var/* | sort -h` finds the space; `sudo journalctl --vacuum-size=200M`, "
            "`sudo docker system prune`, or a larger volume.",
        ),
        CheckInfo(
            "memory",
            "Memory headroom",
            "Rspamd, Redis, PostgreSQL and Dovecot need room; under pressure the OOM killer stops a daemon.",
            f"Over SSH, MemAvailable against MemTotal; warns below {MEMORY_WARN:.0%}, fails below {MEMORY_FAIL:.0%}.",
            "`ps aux --sort=-rss | head` finds the consumer; a larger plan (sams:vultr.plan, sams:oci.memoryGbs).",
        ),
    )
}


def _f(check: str, subject: str, status: Status, message: str, fix: str = "") -> Finding:
    assert check in CHECKS, check
    return Finding(check, subject, status, message, fix if status != "ok" else "")


def _short(value: str, limit: int = 90) -> str:
    return value if len(value) <= limit else value[: limit - 15] + "…" + value[-14:]


# --- DNS --------------------------------------------------------------------------------------------


def _dns_fix(expected: Expected, record: ExpectedRecord, what: str) -> str:
    where = (
        "`pulumi up` writes it to Cloudflare"
        if expected.dns_provider == "cloudflare"
        else "enter it at your DNS host (docs/dns_checklist.md lists every record)"
    )
    return f"{what}: {record.zone_line} ({where})."


def check_record(expected: Expected, record: ExpectedRecord, answer: DnsAnswer | None) -> Finding:
    subject = f"{record.name} {record.type}"
    if answer is None or answer.status == "error":
        why = answer.error if answer else "not asked"
        return _f("dns", subject, "unchecked", f"{subject} could not be looked up: {why}.")
    if record.value is None:
        return _f(
            "dns",
            subject,
            "unchecked",
            f"{subject} ({record.purpose}): its planned value is not in the stack outputs given, so only "
            f"its presence was checked: {'present' if answer.values else 'MISSING'}.",
        )
    found = answer.values
    if not found:
        how = "does not exist (NXDOMAIN)" if answer.status == "nxdomain" else "has no such record"
        return _f(
            "dns",
            subject,
            "fail",
            f"{subject} is missing ({record.purpose}): the name {how}.",
            _dns_fix(expected, record, "Add"),
        )
    if record.type in ("A", "AAAA", "CNAME"):
        # One value only: a second address sends some clients and senders elsewhere.
        if set(found) == {record.value}:
            return _f("dns", subject, "ok", f"{subject} = {record.value}")
        return _f(
            "dns",
            subject,
            "fail",
            f"{subject} is {', '.join(found)}; the plan says {record.value} ({record.purpose}).",
            _dns_fix(expected, record, "Make it exactly"),
        )
    if record.type == "TXT":
        kind = txt_kind(record.value)
        same = [v for v in found if kind and txt_kind(v) == kind] if kind else list(found)
        if record.value in found:
            if kind == "v=spf1" and len(same) > 1:
                return _f(
                    "dns",
                    subject,
                    "fail",
                    f"{subject} has {len(same)} SPF records; receivers treat that as an error (permerror) "
                    f"and SPF fails for all mail.",
                    _dns_fix(expected, record, "Delete every other v=spf1 record and keep"),
                )
            return _f("dns", subject, "ok", f"{subject} = {_short(record.value)}")
        if same:
            return _f(
                "dns",
                subject,
                "fail",
                f"{subject} differs from the plan ({record.purpose}): found {_short(same[0])!r}, "
                f"expected {record.value!r}.",
                _dns_fix(expected, record, "Change it to"),
            )
        return _f(
            "dns",
            subject,
            "fail",
            f"{subject} is missing ({record.purpose}): no {kind or 'such'} TXT there.",
            _dns_fix(expected, record, "Add"),
        )
    # MX, SRV, CAA: sets; the planned value must be among them.
    if record.value in found:
        others = [v for v in found if v != record.value]
        if record.type == "MX" and others:
            return _f(
                "dns",
                subject,
                "warn",
                f"{subject} also lists {', '.join(others)}: some senders will deliver there, not to "
                f"{expected.hostname}.",
                f"Remove the other MX records unless they are your backup MX; keep: {record.zone_line}.",
            )
        return _f("dns", subject, "ok", f"{subject} has {record.value}")
    return _f(
        "dns",
        subject,
        "fail",
        f"{subject} lacks {record.value} ({record.purpose}); found: {', '.join(found)}.",
        _dns_fix(expected, record, "Add"),
    )


def check_dns(expected: Expected, obs: Observations) -> list[Finding]:
    answers = {(a.name, a.type): a for a in obs.dns}
    return [check_record(expected, r, answers.get((r.name, r.type))) for r in expected.records]


def reverse_name(address: str) -> str:
    import ipaddress

    return ipaddress.ip_address(address).reverse_pointer


def check_ptr(expected: Expected, obs: Observations) -> list[Finding]:
    answers = {(a.name, a.type): a for a in obs.dns}
    out = []
    for address in (expected.ipv4, expected.ipv6):
        if not address:
            continue
        subject = f"PTR of {address}"
        answer = answers.get((reverse_name(address), "PTR"))
        if expected.provider == "vultr":
            fix = f"`pulumi up` sets it (vultr ReverseIpv{'6' if ':' in address else '4'}); by hand: Vultr console → "
            fix += f"Settings → IPv{'6' if ':' in address else '4'} → Reverse DNS = {expected.hostname}."
        elif expected.provider == "oci":
            fix = (
                f"Oracle Cloud sets no PTR through its API: open a support request asking for the "
                f"reverse DNS of {address} to be {expected.hostname} (docs/dns_checklist.md)."
            )
        else:
            fix = f"Ask whoever runs {address} to set its reverse DNS to {expected.hostname}."
        if answer is None or answer.status == "error":
            why = answer.error if answer else "not asked"
            out.append(_f("ptr", subject, "unchecked", f"{subject} could not be looked up: {why}."))
        elif not answer.values:
            out.append(
                _f("ptr", subject, "fail", f"{address} has no PTR record; receivers distrust such senders.", fix)
            )
        elif set(answer.values) != {normal(ptr(expected.hostname))}:
            out.append(
                _f(
                    "ptr",
                    subject,
                    "fail",
                    f"{address} points back to {', '.join(answer.values)}, not to {expected.hostname} (the HELO name).",
                    fix,
                )
            )
        else:
            out.append(_f("ptr", subject, "ok", f"{address} → {expected.hostname}"))
    return out


def check_helo(expected: Expected, obs: Observations) -> list[Finding]:
    smtp = obs.smtp
    if smtp is None or not smtp.connected:
        why = smtp.error if smtp else "not probed"
        return [_f("helo", "port 25 greeting", "unchecked", f"No SMTP greeting to read ({why}); see the ports check.")]
    fix = (
        f"Postfix's myhostname must be {expected.hostname}: `pulumi up` rewrites /etc/postfix/main.cf; "
        f"`sudo postconf myhostname smtpd_banner` shows what runs."
    )
    out = []
    for what, text in (("greeting", smtp.banner), ("EHLO answer", smtp.ehlo)):
        name = normalize(text.split()[0]) if text.split() else ""
        subject = f"port 25 {what}"
        if name == expected.hostname:
            out.append(_f("helo", subject, "ok", f"the {what} names {name}"))
        else:
            out.append(
                _f(
                    "helo",
                    subject,
                    "fail",
                    f"the {what} is {text!r}: it names {name or 'nothing'}, not {expected.hostname}.",
                    fix,
                )
            )
    return out


def normalize(name: str) -> str:
    return name.rstrip(".").lower()


# --- TLS --------------------------------------------------------------------------------------------


def _name_matches(hostname: str, names: Iterable[str]) -> bool:
    """RFC 6125: a wildcard covers exactly one leftmost label."""
    for n in names:
        n = n.lower()
        if n == hostname or (
            n.startswith("*.") and fnmatch.fnmatchcase(hostname, n) and hostname.count(".") == n.count(".")
        ):
            return True
    return False


def check_tls_endpoint(expected: Expected, endpoint: TlsEndpoint, probe: TlsProbe | None, now: datetime) -> Finding:
    how = "STARTTLS" if endpoint.mode == "smtp-starttls" else "TLS"
    subject = f"certificate on {endpoint.port} ({how})"
    restart = f"`sudo systemctl status {endpoint.service}`; `sudo ss -tlnp | grep :{endpoint.port}`"
    if probe is None:
        return _f("tls", subject, "unchecked", f"Port {endpoint.port} was not probed.")
    if not probe.connected:
        return _f("tls", subject, "fail", f"No TLS on port {endpoint.port}: {probe.error}.", f"Check {restart}.")
    if probe.error:
        return _f(
            "tls",
            subject,
            "fail",
            f"The TLS handshake on port {endpoint.port} failed: {probe.error}.",
            f"Check {restart}; `sudo journalctl -u {endpoint.service} -n 50`.",
        )
    renew = "`sudo certbot renew --dry-run` says why renewal fails; `sudo certbot certificates` shows what is installed"
    problems: list[str] = []
    if not _name_matches(expected.hostname, probe.names):
        problems.append(f"it is for {', '.join(probe.names) or 'no name'}, not {expected.hostname}")
    if not probe.verified:
        problems.append(
            f"it is not trusted ({probe.verify_error or 'unverified'})"
            + (": self-signed, so certbot never installed one" if probe.self_signed else "")
        )
    if probe.not_after is None:
        problems.append("its expiry could not be read")
        left = None
    else:
        left = probe.not_after - now
        if left < timedelta(0):
            problems.append(f"it expired on {probe.not_after:%Y-%m-%d}")
        elif left < timedelta(days=CERT_MIN_DAYS):
            problems.append(f"it expires in {left.days} days ({probe.not_after:%Y-%m-%d}), fewer than {CERT_MIN_DAYS}")
    if problems:
        return _f(
            "tls",
            subject,
            "fail",
            f"The certificate on port {endpoint.port}: " + "; ".join(problems) + ".",
            f"{renew}. Daemons pick up a new certificate on reload (the deploy hook).",
        )
    days = f", {left.days} days left" if left is not None else ""
    return _f(
        "tls",
        subject,
        "ok",
        f"trusted, for {expected.hostname}, until {probe.not_after:%Y-%m-%d}{days}, {probe.version}",
    )


def check_tls(expected: Expected, obs: Observations, now: datetime) -> list[Finding]:
    probes = {p.port: p for p in obs.tls}
    return [check_tls_endpoint(expected, e, probes.get(e.port), now) for e in expected.tls]


# --- ports, relay, outbound ------------------------------------------------------------------------


def check_ports(expected: Expected, obs: Observations) -> list[Finding]:
    states = {(p.number, p.proto): p for p in obs.ports}
    out = []
    for spec, must_be_open in [(p, True) for p in expected.public_ports] + [(p, False) for p in expected.private_ports]:
        subject = f"port {spec.number}/{spec.proto} ({spec.service})"
        state = states.get((spec.number, spec.proto))
        if state is None or state.state == "unprobed":
            why = state.detail if state else "not probed"
            out.append(_f("ports", subject, "unchecked", f"{subject} was not checked from outside: {why}."))
        elif must_be_open and state.state == "open":
            out.append(_f("ports", subject, "ok", f"{subject} is open"))
        elif must_be_open:
            out.append(
                _f(
                    "ports",
                    subject,
                    "fail",
                    f"{subject} is {state.state} from outside ({state.detail or 'no connection'}); it must be open.",
                    f"`sudo ss -tlnp | grep :{spec.number}` (does {spec.service} listen?), `sudo nft list ruleset` "
                    "and the cloud firewall (`pulumi up` restores both).",
                )
            )
        elif state.state == "open":
            out.append(
                _f(
                    "ports",
                    subject,
                    "fail",
                    f"{subject} is reachable from the internet; it must only be reachable through the "
                    "WireGuard tunnel.",
                    f"`pulumi up` restores the firewall (cloud and nftables); `sudo ss -tlnp | grep :{spec.number}` "
                    f"shows what listens, and `sudo nft list ruleset` what lets it through.",
                )
            )
        else:
            out.append(_f("ports", subject, "ok", f"{subject} is {state.state} from outside"))
    return out


def check_relay(expected: Expected, obs: Observations) -> list[Finding]:
    smtp = obs.smtp
    subject = "relaying from outside"
    if smtp is None or not smtp.connected or smtp.relay_reply is None:
        why = (smtp.error if smtp else "") or "no answer to RCPT"
        return [_f("relay", subject, "unchecked", f"Could not ask port 25 to relay ({why}).")]
    code, text = smtp.relay_reply
    said = f"RCPT TO:<{smtp.relay_rcpt}> got {code} {text}"
    fix = (
        "Postfix relays for anyone: smtpd_relay_restrictions must be `permit_mynetworks, permit_sasl_authenticated, "
        "reject_unauth_destination` and mynetworks only 127.0.0.0/8 [::1]/128; `pulumi up` rewrites main.cf. "
        "Check the queue for spam now: `sudo postqueue -p`."
    )
    if 200 <= code < 400:
        return [_f("relay", subject, "fail", f"OPEN RELAY: unauthenticated {said}.", fix)]
    if 400 <= code < 500 and "relay" not in text.lower():
        return [
            _f(
                "relay",
                subject,
                "warn",
                f"Refused only for now: {said}; a spammer's retry might get through.",
                "Postfix should reject relaying with reject_unauth_destination (5xx); see `sudo postconf -n`.",
            )
        ]
    return [_f("relay", subject, "ok", f"refused: {said}")]


def check_outbound(expected: Expected, obs: Observations) -> list[Finding]:
    host = obs.host
    subject = f"outbound to {expected.relay[0]}:{expected.relay[1]} (relay)" if expected.relay else "outbound port 25"
    if host is None:
        return [_f("outbound", subject, "unchecked", f"Not checked: {_no_host(obs)}.")]
    if not host.outbound:
        return [_f("outbound", subject, "unchecked", "The host was not asked to connect anywhere.")]
    results = []
    for o in host.outbound:
        target = f"{o.target}:{o.port}"
        if o.result == "open":
            via = "through the relay" if expected.relay else "directly"
            results.append(_f("outbound", subject, "ok", f"the host reaches {target}: mail can leave {via}"))
        elif o.result in ("unresolved", "error"):
            results.append(
                _f(
                    "outbound",
                    subject,
                    "unchecked",
                    f"Not checked: the host could not look up {o.target} ({o.detail or o.result}), so nothing was "
                    f"tried; without internet DNS (a lab) outbound reachability cannot be known.",
                )
            )
        elif expected.relay:
            results.append(
                _f(
                    "outbound",
                    subject,
                    "fail",
                    f"The host cannot reach its relay {target} ({o.result}{': ' + o.detail if o.detail else ''}).",
                    "Check sams:relay.host and .port; the relay may want another port (587 or 465); "
                    "`sudo postqueue -p` shows what waits.",
                )
            )
        else:
            results.append(
                _f(
                    "outbound",
                    subject,
                    "fail",
                    f"The host cannot open port 25 to {target} ({o.result}): the provider probably blocks outbound "
                    "port 25, and mail to other domains stays in the queue.",
                    "Ask the provider to unblock port 25 (Vultr: a support ticket; Oracle Cloud: never, use a relay), "
                    "or set sams:relay (host, port, username) and `pulumi config set --secret sams:relayPassword`.",
                )
            )
    return results


# --- host facts -------------------------------------------------------------------------------------


def _no_host(obs: Observations) -> str:
    return obs.host_error or "no host access given (--ssh sams@<wireguardAddress>, or --host-facts FILE)"


def _repository(expected: Expected, status: BackupStatus | None = None) -> str:
    """The repository as the last run named it, else as the stack does."""
    if status is not None and status.repository:
        return status.repository
    return expected.backup_repository or "the program's bucket"


def _bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _ids(snapshots: tuple[tuple[str, str], ...]) -> str:
    """restic's short ids (its first 8 hex digits), by kind: 'files 9e8d7c6b, postgres 4f3c2a1b'."""
    return ", ".join(f"{kind} {sid[:8]}" for kind, sid in snapshots)


def _last_success(host_time: float, status: BackupStatus) -> str:
    if status.last_success is None:
        return "No backup has succeeded yet."
    hours = (host_time - status.last_success) / 3600
    held = f" ({_ids(status.last_success_snapshots)})" if status.last_success_snapshots else ""
    return f"The last successful backup finished {hours:.0f} hours ago, {_when(status.last_success)}{held}."


def check_backup(expected: Expected, obs: Observations) -> list[Finding]:
    subject = "backups"
    if not expected.backup_enabled:
        where = (
            "; pulumi config set --path sams:backup.repository rest:https://<server>:8000/<path>/ "
            "(its login: pulumi config set --secret sams:backupKeyId, sams:backupKeySecret)"
            if expected.provider == "existing"
            else " (the program creates a bucket for the repository, unless sams:backup.repository names one)"
        )
        return [
            _f(
                "backup",
                subject,
                "warn",
                "Backups are off (sams:backup.enabled is false): a lost disk loses the mail.",
                f"pulumi config set --path sams:backup.enabled true{where}; docs/backup.md",
            )
        ]
    if obs.host is None:
        return [_f("backup", subject, "unchecked", f"Backups to {_repository(expected)} not checked: {_no_host(obs)}.")]
    host = obs.host
    status = host.backup_status
    journal = f"`sudo journalctl -u {UNIT} -n 50` shows the last run"
    run_now = f"`sudo systemctl start {UNIT}` runs one now"
    if status is None and host.backup_status_error:
        return [
            _f(
                "backup",
                subject,
                "fail",
                f"The backup status record {host.backup_status_file} cannot be read ({host.backup_status_error}).",
                f"{journal}; {run_now} and writes the record again.",
            )
        ]
    if status is None:
        return [
            _f(
                "backup",
                subject,
                "fail",
                f"No backup has run yet: {host.backup_status_file} does not exist "
                f"(backups go to {_repository(expected)}).",
                f"{run_now}; `sudo journalctl -u {UNIT}` shows how it went; `systemctl list-timers {UNIT}` "
                "shows when the nightly run comes.",
            )
        ]
    repository = _repository(expected, status)
    ended = f", {_when(status.finished)}" if status.finished is not None else ""
    if status.check == "failed":
        reason = f": {status.message}" if status.result != "ok" and status.message else ""
        return [
            _f(
                "backup",
                subject,
                "fail",
                f"restic check found a problem in the repository {repository} (run {status.run}{ended})"
                f"{reason}. {_last_success(host.taken_at, status)}",
                f"{journal} with restic check's report; `sudo sams-backup check --read-data` reads every pack "
                "back; repair the repository (restic's docs: Troubleshooting) before the next prune.",
            )
        ]
    if status.result != "ok":
        return [
            _f(
                "backup",
                subject,
                "fail",
                f"The last backup run failed (run {status.run}{ended}): {status.message}. "
                f"{_last_success(host.taken_at, status)}",
                f"{journal}; once its cause is fixed, {run_now}.",
            )
        ]
    last = status.last_success
    assert last is not None  # an ok record always has it (doctor.model.backup_status)
    hours = (host.taken_at - last) / 3600
    if hours > BACKUP_MAX_AGE.total_seconds() / 3600:
        return [
            _f(
                "backup",
                subject,
                "fail",
                f"The last successful backup finished {hours:.0f} hours ago, {_when(last)} (more than "
                f"{BACKUP_MAX_AGE.total_seconds() / 3600:.0f}): no run since.",
                f"`systemctl list-timers {UNIT}` shows when it runs next; {run_now}; "
                f"`sudo journalctl -u {UNIT}` shows the runs.",
            )
        ]
    added = f"; {_bytes(status.bytes_added)} added" if status.bytes_added is not None else ""
    check = "; " + " ".join(("restic check", *status.check_args, "ok")) if status.check == "ok" else ""
    return [
        _f(
            "backup",
            subject,
            "ok",
            f"the last backup finished {hours:.1f} hours ago, {_when(last)}, to {repository}: "
            f"snapshots {_ids(status.snapshots or status.last_success_snapshots)}{added}{check}",
        )
    ]


def check_wal(expected: Expected, obs: Observations) -> list[Finding]:
    subject = "WAL archiving"
    if obs.host is None:
        return [_f("wal", subject, "unchecked", f"Not checked: {_no_host(obs)}.")]
    h = obs.host
    fix = (
        "Read why archive_command fails: `sudo journalctl -t sams-postgres --since -1h | grep -i archive`; "
        "`pulumi up` rewrites the unit that sets it (/etc/systemd/system/sams-postgres.service)."
    )
    if not h.wal_seen:
        return [_f("wal", subject, "fail", f"{h.wal_status} does not exist: is PostgreSQL deployed?", fix)]
    if h.wal_oldest is None:
        return [_f("wal", subject, "ok", "no WAL segment is waiting to be archived")]
    minutes = (h.taken_at - h.wal_oldest) / 60
    if minutes > WAL_MAX_WAIT.total_seconds() / 60:
        return [
            _f(
                "wal",
                subject,
                "fail",
                f"{h.wal_waiting} WAL segment(s) not archived, the oldest for {minutes:.0f} minutes: "
                "archive_command keeps failing.",
                fix,
            )
        ]
    return [_f("wal", subject, "ok", f"{h.wal_waiting} WAL segment(s) waiting, the oldest for {minutes:.0f} minutes")]


def check_antivirus(expected: Expected, obs: Observations) -> list[Finding]:
    subject = "ClamAV"
    if not expected.antivirus:
        return [_f("antivirus", subject, "ok", "ClamAV is off (sams:antivirus.clamav): attachments are not scanned")]
    if obs.host is None:
        return [_f("antivirus", subject, "unchecked", f"Not checked: {_no_host(obs)}.")]
    h = obs.host
    fix = (
        "`sudo journalctl -u clamav-daemon -u clamav-freshclam -n 50` says why; `pulumi up` starts clamd again "
        "and fetches missing signatures."
    )
    if h.clamd != "PONG":
        return [
            _f(
                "antivirus",
                subject,
                "fail",
                f"clamd does not answer ({h.clamd or 'no answer'}): attachments are delivered unscanned (CLAMAV_FAIL).",
                fix,
            )
        ]
    if h.clamav_daily is None:
        return [_f("antivirus", subject, "fail", "clamd answers, but there are no daily signatures.", fix)]
    hours = (h.taken_at - h.clamav_daily) / 3600
    if hours > SIGNATURES_MAX_AGE.total_seconds() / 3600:
        return [
            _f(
                "antivirus",
                subject,
                "fail",
                f"The daily signatures are {hours:.0f} hours old: freshclam has not updated them.",
                fix,
            )
        ]
    return [_f("antivirus", subject, "ok", f"clamd answers; the daily signatures are {hours:.0f} hours old")]


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _headroom(free: float, warn: float, fail: float) -> Status:
    return "fail" if free < fail else "warn" if free < warn else "ok"


def check_disk(expected: Expected, obs: Observations) -> list[Finding]:
    if obs.host is None:
        return [_f("disk", "disk space", "unchecked", f"Not checked: {_no_host(obs)}.")]
    out = []
    for d in obs.host.disks:
        free = d.available / d.size if d.size else 0.0
        status = _headroom(free, DISK_WARN, DISK_FAIL)
        out.append(
            _f(
                "disk",
                f"disk {d.path}",
                status,
                f"{d.path}: {_gib(d.available)} of {_gib(d.size)} free ({free:.0%})",
                f"Free space on {d.path}: `sudo du -xsh {d.path.rstrip('/')}/* | sort -h | tail`; "
                "`sudo journalctl --vacuum-size=200M`; `sudo docker system prune`; or grow the volume.",
            )
        )
    return out or [_f("disk", "disk space", "unchecked", "The host reported no filesystems.")]


def check_memory(expected: Expected, obs: Observations) -> list[Finding]:
    if obs.host is None:
        return [_f("memory", "memory", "unchecked", f"Not checked: {_no_host(obs)}.")]
    h = obs.host
    free = h.mem_available / h.mem_total if h.mem_total else 0.0
    return [
        _f(
            "memory",
            "memory",
            _headroom(free, MEMORY_WARN, MEMORY_FAIL),
            f"{_gib(h.mem_available)} of {_gib(h.mem_total)} available ({free:.0%})",
            "`ps aux --sort=-rss | head` shows who uses it; a larger plan (sams:vultr.plan or sams:oci.memoryGbs).",
        )
    ]


# --- all of them ------------------------------------------------------------------------------------

CheckFn = Callable[[Expected, Observations], list[Finding]]


def evaluate(expected: Expected, obs: Observations, now: datetime) -> list[Finding]:
    """Every finding, in the order of CHECKS. `now`: timezone-aware (certificate expiry)."""
    fns: list[CheckFn] = [
        check_dns,
        check_ptr,
        check_helo,
        lambda e, o: check_tls(e, o, now),
        check_ports,
        check_relay,
        check_outbound,
        check_backup,
        check_wal,
        check_antivirus,
        check_disk,
        check_memory,
    ]
    return [f for fn in fns for f in fn(expected, obs)]


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(f.status == "fail" for f in findings) else 0
