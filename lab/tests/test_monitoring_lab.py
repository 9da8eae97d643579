"""Monitoring on the lab host (sams:monitoring, mode host), with Debian 13's own daemons:

* the step applies: node_exporter 1.9, Prometheus 2.53 and Alertmanager 0.28 run, each listening
  on the WireGuard address only (their ports on wg0 in the firewall's one list);
* from the admin's laptop (sams-admin, over the tunnel) each answers, and Prometheus's API says
  every target is up; from the internet (sams-inet) no monitoring port answers;
* the textfile metrics are what a real backup run's status record says;
* a real fault (the backup server gone, so the nightly run fails) becomes an alert that reaches a
  Slack-compatible webhook in the lab's internet (lab/webhook.py) and a mailbox there (the lab's
  independent receiver), and resolves once a run succeeds again;
* the mail log's counters (sams-logs counters through sams-metrics) move with a real refusal and a
  real submission, and one login sending more than `loginMessagesPerHour` reaches the webhook;
* a blocklist zone in the lab's DNS that lists the host becomes SamsBlocklisted at the webhook;
* the memory the daemons take (PSS, /proc/<pid>/smaps_rollup) after several minutes;
* monitoring off again stops every unit and leaves no listener, port or secret behind.
"""

from __future__ import annotations

import email
import json
import socket
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from cryptography import x509

from components.backup.plan import STATUS_FILE
from components.backup.plan import UNIT as BACKUP_UNIT
from components.database.steps import CONTAINER as DB_CONTAINER
from components.database.steps import UNIT as DB_UNIT
from components.firewall.policy import DOVECOT_STATS_PORT
from components.monitoring.plan import (
    ALERTMANAGER_PORT,
    ALERTMANAGER_UNIT,
    HEALTH_PORT,
    METRICS_UNIT,
    NODE_EXPORTER_PORT,
    NODE_EXPORTER_UNIT,
    PROMETHEUS_PORT,
    PROMETHEUS_UNIT,
    TEXTFILE,
    WATCHED_UNITS,
    WEBHOOK_URL_FILE,
)
from components.monitoring.rules import HEARTBEAT
from components.monitoring.steps import scrape_configs
from components.tls.certs import TLS_FULLCHAIN
from lab import backupserver, dns, receiver, webhook
from lab.dns import RECEIVER_DOMAIN, SENDER_DOMAIN
from lab.hostcmd import sh
from lab.netclient import imap_login_from, in_netns, message, mx_attempt
from lab.session import Lab, up_with
from lab.spec import NAMES
from lab.world import subject, world

pytestmark = pytest.mark.lab

PORTS = (NODE_EXPORTER_PORT, PROMETHEUS_PORT, ALERTMANAGER_PORT)
UNITS = (NODE_EXPORTER_UNIT, PROMETHEUS_UNIT, ALERTMANAGER_UNIT)
CLUSTER_PORT = 9094  # Alertmanager's gossip port: off (--cluster.listen-address=)
ALERT_MAIL_TO = f"ops@{RECEIVER_DOMAIN}"
# The shortest scrape and notification interval the settings allow: the lab waits less for each
# step of an alert.
SCRAPE_S = 15
NOTIFY_MIN = 1
# Low enough for a test to cross with a few messages (sending limits refuse at 100 an hour).
LOGIN_MESSAGES_PER_HOUR = 3


# --- clients (run in a namespace) ---------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.status, reply.read().decode()


def connects(address: str, ports: tuple[int, ...], timeout: float = 3.0) -> dict[int, str]:
    """port -> "open", "refused" or "silent" (dropped), as a client on the internet meets it."""
    seen = {}
    for port in ports:
        try:
            socket.create_connection((address, port), timeout).close()
            seen[port] = "open"
        except ConnectionRefusedError:
            seen[port] = "refused"
        except OSError:
            seen[port] = "silent"
    return seen


# --- helpers ----------------------------------------------------------------------------------------------


def https_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """The host's own certificate (a bootstrap or the lab CA's) is not what this checks."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:
        return reply.status, reply.read().decode()


def daemon_metrics(lab: Lab, job: str) -> dict[str, float]:
    """A daemon's own metrics, as Prometheus scrapes them: nginx's /metrics/<job> over the tunnel."""
    url = f"https://{lab.spec.vpn_host}:{HEALTH_PORT}/metrics/{job}"
    status, body = in_netns(NAMES.ns_admin, {}, https_get, url)
    assert status == 200, (url, status)
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def admin_get(lab: Lab, port: int, path: str) -> tuple[int, str]:
    return in_netns(NAMES.ns_admin, {}, http_get, f"http://{lab.spec.vpn_host}:{port}{path}")


def prometheus(lab: Lab, query: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus's HTTP API, from the admin's laptop over the tunnel."""
    status, body = admin_get(lab, PROMETHEUS_PORT, "/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    data = json.loads(body)
    assert status == 200 and data["status"] == "success", body
    return list(data["data"]["result"])


def wait_for(what: str, check: Any, timeout: float, every: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def node_metrics(lab: Lab) -> dict[str, float]:
    """node_exporter's sams_* samples (name{labels} -> value), read over the tunnel."""
    status, body = admin_get(lab, NODE_EXPORTER_PORT, "/metrics")
    assert status == 200
    out = {}
    for line in body.splitlines():
        if line.startswith("sams_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def status_record(lab: Lab) -> dict[str, Any]:
    return dict(json.loads(sh(lab, f"cat {STATUS_FILE}")))


def run_backup(lab: Lab) -> dict[str, Any]:
    """The nightly unit, started as its timer would, then the metrics writer (its timer runs it each minute)."""
    lab.shell.run(["sudo", "-n", "systemctl", "start", f"{BACKUP_UNIT}.service"], check=False)
    sh(lab, f"systemctl start {METRICS_UNIT}.service")
    return status_record(lab)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def listeners(lab: Lab) -> list[str]:
    """Local addresses of the host's TCP listeners on the monitoring ports."""
    ports = "|".join(str(p) for p in (*PORTS, CLUSTER_PORT))
    out = sh(lab, f"ss -ltnH | awk '{{print $4}}' | grep -E ':({ports})$' || true")
    return sorted(out.split())


def pss_mib(lab: Lab, unit: str) -> float:
    """The unit's processes' proportional set size (smaps_rollup), in MiB."""
    script = (
        f"for p in $(cat /sys/fs/cgroup/system.slice/{unit}.service/cgroup.procs); do "
        "awk '/^Pss:/ {print $2}' /proc/$p/smaps_rollup; done"
    )
    return sum(int(kib) for kib in sh(lab, script).split()) / 1024


# --- the module: monitoring on, a webhook in the internet ------------------------------------------------


@pytest.fixture(scope="module")
def monitored(lab: Lab) -> Iterator[Lab]:
    webhook.start(lab.paths, lab.spec.inet_ipv4)
    try:
        up_with(
            lab,
            {
                "sams:monitoring": {
                    "enabled": True,
                    "scrapeIntervalSeconds": SCRAPE_S,
                    "notifyIntervalMinutes": NOTIFY_MIN,
                    "emailTo": [ALERT_MAIL_TO],
                    "loginMessagesPerHour": LOGIN_MESSAGES_PER_HOUR,
                },
                "sams:monitoringWebhookUrl": webhook.url(lab.spec.inet_ipv4),
                "sams:monitoringHeartbeatUrl": webhook.heartbeat_url(lab.spec.inet_ipv4),
            },
        )
        yield lab
    finally:
        webhook.stop(lab.paths)
        if not backupserver.running(lab.paths):
            backupserver.start(lab.paths, lab.spec.inet_ipv4)


def test_debian_13s_daemons_run_and_listen_on_the_tunnel_only(monitored: Lab) -> None:
    lab = monitored
    assert sh(lab, f"systemctl is-active {' '.join(UNITS)} {METRICS_UNIT}.timer").split() == ["active"] * 4
    versions = sh(
        lab,
        "prometheus-node-exporter --version 2>&1 | head -1; prometheus --version 2>&1 | head -1; "
        "prometheus-alertmanager --version 2>&1 | head -1",
    )
    assert "version 1.9." in versions and "version 2.53." in versions and "version 0.28." in versions, versions
    # Debian 13's own checkers accept the files the program rendered (the step ran them too).
    sh(
        lab,
        "promtool check config /etc/prometheus/prometheus.yml && amtool check-config /etc/prometheus/alertmanager.yml",
    )
    vpn = lab.spec.vpn_host
    assert listeners(lab) == sorted(f"{vpn}:{p}" for p in PORTS)
    # Dovecot's OpenMetrics listener: loopback only (nginx passes /metrics/dovecot to it).
    stats = sh(lab, f"ss -ltnH | awk '{{print $4}}' | grep -E ':{DOVECOT_STATS_PORT}$' || true").split()
    assert stats == [f"127.0.0.1:{DOVECOT_STATS_PORT}"], stats
    # The webhook URL is a secret: in its own file, not world-readable.
    assert sh(lab, f"stat -c '%a %U %G' {WEBHOOK_URL_FILE}").split() == ["640", "root", "prometheus"]
    # The firewall step put the ports on wg0 (the running host's nftables, not only first boot's).
    ruleset = sh(lab, "nft list chain inet sams input")
    vpn_rule = next(line for line in ruleset.splitlines() if 'iifname "wg0" tcp dport' in line)
    assert all(str(p) in vpn_rule for p in PORTS), vpn_rule


def test_the_tunnel_reaches_monitoring_and_the_internet_does_not(monitored: Lab) -> None:
    lab = monitored
    for port, path in (
        (NODE_EXPORTER_PORT, "/metrics"),
        (PROMETHEUS_PORT, "/-/ready"),
        (ALERTMANAGER_PORT, "/-/ready"),
    ):
        status, _ = admin_get(lab, port, path)
        assert status == 200, (port, path)
    from_internet = in_netns(NAMES.ns_inet, {}, connects, lab.spec.public_ipv4, (*PORTS, CLUSTER_PORT))
    assert set(from_internet.values()) <= {"silent", "refused"}, from_internet


def test_prometheus_scrapes_every_target(monitored: Lab) -> None:
    lab = monitored

    # The program's own scrape jobs: one target per static target of each.
    jobs = sorted(
        str(c["job_name"])
        for c in scrape_configs(lab.settings, server=True)
        for group in c["static_configs"]  # type: ignore[attr-defined]
        for _ in group["targets"]
    )
    assert {"node", "prometheus", "alertmanager", "health", "dovecot", "rspamd"} <= set(jobs)

    def targets() -> list[dict[str, Any]] | None:
        _, body = admin_get(lab, PROMETHEUS_PORT, "/api/v1/targets?state=active")
        active = json.loads(body)["data"]["activeTargets"]
        return active if len(active) == len(jobs) and all(t["health"] == "up" for t in active) else None

    active = wait_for("every target up", targets, timeout=3 * SCRAPE_S + 30)
    assert sorted(t["labels"]["job"] for t in active) == jobs
    assert {t["labels"]["host"] for t in active} == {str(lab.settings.config.hostname)}
    # (The lab's tree has the packages baked in, so at boot Prometheus ran once with Debian's own
    # config: its samples of localhost:9100 may linger; a real host never runs that config.)
    assert len(prometheus(lab, f'up{{job="node", host="{lab.settings.config.hostname}"}} == 1')) == 1


def test_textfile_metrics_are_a_real_backup_runs_record(monitored: Lab) -> None:
    lab = monitored
    record = run_backup(lab)
    assert record["result"] == "ok" and record["check"]["result"] == "ok", record
    metrics = node_metrics(lab)
    assert metrics["sams_backup_last_success_timestamp_seconds"] == epoch(record["last_success"])
    assert metrics["sams_backup_last_run_timestamp_seconds"] == epoch(record["finished"])
    assert metrics["sams_backup_last_run_ok"] == 1 and metrics["sams_backup_check_ok"] == 1
    assert metrics["sams_backup_last_run_added_bytes"] == record["bytes_added"]
    assert metrics["sams_backup_last_run_cpu_seconds"] == record["cpu_s"]
    assert metrics["sams_backup_last_run_peak_rss_bytes"] == record["peak_rss_mib"] * 1024 * 1024
    # The certificate the daemons serve, read here with another parser.
    cert = x509.load_pem_x509_certificate(sh(lab, f"cat {TLS_FULLCHAIN}").encode())
    key = f'sams_tls_certificate_expiry_timestamp_seconds{{path="{TLS_FULLCHAIN}"}}'
    assert metrics[key] == cert.not_valid_after_utc.timestamp()
    assert any(k.startswith("sams_mail_filesystem{") for k in metrics), metrics
    # And Prometheus has scraped it.
    success = epoch(record["last_success"])
    wait_for(
        "Prometheus has the run's success time",
        lambda: prometheus(lab, f"sams_backup_last_success_timestamp_seconds == {success}"),
        timeout=3 * SCRAPE_S + 30,
    )


def _alert_posts(lab: Lab, name: str, status: str, since: float) -> list[dict[str, Any]]:
    out = []
    for post in webhook.posts(lab.paths):
        text = json.dumps(post["body"])
        if (
            post["received"] >= since
            and post["path"] == webhook.PATH
            and name in text
            and post["body"]["attachments"][0]["title"].startswith(status.upper())
        ):
            out.append(post)
    return out


def firing_at_webhook(lab: Lab, name: str, since: float) -> list[dict[str, Any]]:
    """The alert's "firing" posts at the webhook since then, waited for: a scrape or three, the rule,
    and the group's notify interval, with room to spare."""
    return wait_for(
        f"{name} at the webhook",
        lambda: _alert_posts(lab, name, "firing", since),
        timeout=3 * SCRAPE_S + NOTIFY_MIN * 60 + 90,
        every=2,
    )


def test_a_failed_backup_alerts_the_webhook_and_a_mailbox_then_resolves(monitored: Lab) -> None:
    lab = monitored
    name = "SamsBackupFailed"
    spool = receiver.spool(lab.paths) / "new"
    mails_before = set(spool.glob("*")) if spool.exists() else set()
    backupserver.stop(lab.paths)
    try:
        fault = time.time()
        record = run_backup(lab)
        assert record["result"] == "failed", record
        firing = wait_for(
            f"{name} firing at the webhook", lambda: _alert_posts(lab, name, "firing", fault), timeout=240, every=2
        )
        latency = firing[0]["received"] - fault
        print(f"\nfault -> webhook: {latency:.0f} s (scrape {SCRAPE_S} s, rules every {SCRAPE_S} s, group_wait 30 s)")
        body = firing[0]["body"]
        assert firing[0]["path"] == webhook.PATH
        assert "docs/monitoring.md#samsbackupfailed" in body["attachments"][0]["text"], body

        def alert_mail() -> list[bytes]:
            new = set(spool.glob("*")) - mails_before if spool.exists() else set()
            return [m for m in (p.read_bytes() for p in new) if name.encode() in m]

        mails = wait_for(f"{name} mailed to {ALERT_MAIL_TO}", alert_mail, timeout=120, every=2)
        assert f"To: {ALERT_MAIL_TO}".encode() in mails[0]
    finally:
        backupserver.start(lab.paths, lab.spec.inet_ipv4)
    fixed = time.time()
    record = run_backup(lab)
    assert record["result"] == "ok", record
    # Alertmanager sends the all-clear at the group's next interval (group_interval, NOTIFY_MIN).
    try:
        resolved = wait_for(
            f"{name} resolved at the webhook",
            lambda: _alert_posts(lab, name, "resolved", fixed),
            timeout=NOTIFY_MIN * 60 + 120,
            every=5,
        )
    except AssertionError as missing:
        raise AssertionError(
            f"{missing}; firing: {prometheus(lab, 'ALERTS')}; posts: {webhook.posts(lab.paths)[-3:]}"
        ) from None
    print(f"fixed -> resolved at the webhook: {resolved[0]['received'] - fixed:.0f} s")
    # One outage, one message, and one all-clear: nothing repeated while it lasted.
    assert len(_alert_posts(lab, name, "firing", fault)) == 1 and len(resolved) == 1, webhook.posts(lab.paths)
    assert not prometheus(lab, f'ALERTS{{alertstate="firing",alertname!="{HEARTBEAT}"}}'), "an alert still fires"


def test_the_heartbeat_reaches_the_dead_mans_switch_alone(monitored: Lab) -> None:
    """The always-firing heartbeat is POSTed to the heartbeat URL (Alertmanager's webhook format) and
    again every 5 minutes; never to the owner's Slack-compatible webhook."""
    lab = monitored

    def pings() -> list[dict[str, Any]]:
        return [p for p in webhook.posts(lab.paths) if p["path"] == webhook.HEARTBEAT_PATH]

    first = wait_for("a heartbeat ping", pings, timeout=180, every=5)
    alert = first[0]["body"]["alerts"][0]
    assert alert["labels"]["alertname"] == HEARTBEAT and alert["labels"]["host"] == str(lab.settings.config.hostname)
    assert first[0]["body"]["status"] == "firing"
    slack = [p for p in webhook.posts(lab.paths) if p["path"] == webhook.PATH]
    assert not any(HEARTBEAT in json.dumps(p["body"]) for p in slack), slack


def test_a_backup_older_than_allowed_alerts_then_resolves(monitored: Lab) -> None:
    """The last successful backup 27 hours old (the status record's times set back: the lab cannot wait
    a day) is SamsBackupStale at the webhook; a real run that succeeds ends it. That the all-clear then
    reaches the webhook is Alertmanager's, the same for every alert: the failed-backup test waits for it,
    this one only for Prometheus to stop firing."""
    lab = monitored
    name = "SamsBackupStale"
    record = status_record(lab)
    assert record["result"] == "ok", record
    old = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 27 * 3600))
    aged = {**record, "last_success": old, "finished": old, "started": old}
    sh(lab, f"cat > {STATUS_FILE}.new && mv {STATUS_FILE}.new {STATUS_FILE}", stdin=json.dumps(aged))
    fault = time.time()
    sh(lab, f"systemctl start {METRICS_UNIT}.service")
    firing = firing_at_webhook(lab, name, fault)
    print(f"\nbackup 27 h old -> {name} at the webhook: {firing[0]['received'] - fault:.0f} s")
    fixed = time.time()
    assert run_backup(lab)["result"] == "ok"
    wait_for(
        f"{name} no longer firing",
        lambda: not prometheus(lab, f'ALERTS{{alertname="{name}",alertstate="firing"}}'),
        timeout=3 * SCRAPE_S + 30,
    )
    print(f"a run that succeeds -> {name} no longer firing in Prometheus: {time.time() - fixed:.0f} s")


def _queue_series(lab: Lab) -> dict[str, float]:
    sh(lab, f"systemctl start {METRICS_UNIT}.service")
    return {k: v for k, v in node_metrics(lab).items() if f'domain="{RECEIVER_DOMAIN}"' in k}


def test_the_queue_for_a_domain_that_refuses_is_a_metric(monitored: Lab) -> None:
    """Mail for a domain whose server is down waits in Postfix's queue: node_exporter reports it by
    domain (what the queue alert watches), Prometheus has scraped it over the tunnel, and once the
    server is back and the queue flushed the series is gone."""
    lab = monitored
    start = time.time()
    receiver.stop(lab.paths)
    try:
        for n in range(3):
            note = f"printf 'Subject: queued {n}\\n\\nwaiting\\n'"
            sh(lab, f"{note} | sendmail -f root postmaster-q{n}@{RECEIVER_DOMAIN}")
        series = wait_for(
            "3 deferred messages for the receiver's domain in the metrics",
            lambda: (
                (q := _queue_series(lab)).get(
                    f'sams_postfix_queue_messages{{domain="{RECEIVER_DOMAIN}",queue="deferred"}}', 0
                )
                >= 3
                and q
            ),
            timeout=120,
        )
        oldest = series[f'sams_postfix_queue_oldest_deferred_timestamp_seconds{{domain="{RECEIVER_DOMAIN}"}}']
        assert start - 5 <= oldest <= time.time(), (start, oldest)
        query = f'sams_postfix_queue_messages{{domain="{RECEIVER_DOMAIN}",queue="deferred"}}'
        scraped = wait_for("Prometheus has the queue series", lambda: prometheus(lab, query), timeout=60)
        assert float(scraped[0]["value"][1]) >= 3, scraped
    finally:
        receiver.start(lab.spec, lab.paths, name=f"mx.{RECEIVER_DOMAIN}", domain=RECEIVER_DOMAIN)
    sh(lab, "postqueue -f")
    wait_for("the queue for the receiver's domain empty again", lambda: not _queue_series(lab), timeout=120)
    assert node_metrics(lab)["sams_postfix_queue_readable"] == 1


def test_failed_logins_and_the_tunnel_are_metrics(monitored: Lab) -> None:
    """A wrong IMAP password from the internet adds one to the dovecot jail's failure counter; the
    hub's WireGuard handshake is recent."""
    lab = monitored
    before = node_metrics(lab).get('sams_fail2ban_failed_total{jail="dovecot"}')
    assert before is not None, node_metrics(lab)
    dovecot_before = daemon_metrics(lab, "dovecot").get("dovecot_auth_failures_total", 0)
    host = str(lab.settings.config.hostname)
    # Any client will do for a wrong password: this one does not check the lab CA's certificate.
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    reply = in_netns(
        NAMES.ns_inet, {host: lab.spec.public_ipv4}, imap_login_from, host, context, lab.spec.inet_ipv4,
        "alice@sams.test", "not-her-password",
    )  # fmt: skip
    replies = ["failed"] if reply.startswith(b"a NO") else [reply.decode(errors="replace")]
    assert replies == ["failed"], replies
    wait_for(
        "the failure counted",
        lambda: (
            (sh(lab, f"systemctl start {METRICS_UNIT}.service") is not None)
            and node_metrics(lab).get('sams_fail2ban_failed_total{jail="dovecot"}') == before + 1
        ),
        timeout=60,
    )
    # Dovecot's own count (its stats service, through nginx's /metrics/dovecot) saw the same failure.
    assert daemon_metrics(lab, "dovecot").get("dovecot_auth_failures_total", 0) == dovecot_before + 1
    sh(lab, f"fail2ban-client set dovecot unbanip {lab.spec.inet_ipv4} >/dev/null 2>&1 || true")
    handshakes = {k: v for k, v in node_metrics(lab).items() if k.startswith("sams_wireguard_latest_handshake")}
    assert handshakes and all(time.time() - v < 300 for v in handshakes.values()), handshakes


def test_postgresql_and_its_wal_archiver_are_metrics(monitored: Lab) -> None:
    """The WAL archiver's counts are PostgreSQL's own (pg_stat_archiver); with the container stopped
    the writer says PostgreSQL does not answer, and it answers again once started."""
    lab = monitored

    def archived() -> float:
        query = "SELECT archived_count FROM pg_stat_archiver"
        return float(sh(lab, f"docker exec {DB_CONTAINER} psql -U postgres -XAtc '{query}'").strip())

    before = archived()
    sh(lab, f"systemctl start {METRICS_UNIT}.service")
    metrics = node_metrics(lab)
    after = archived()  # WAL may be archived meanwhile: the metric lies between the two reads
    assert metrics["sams_postgres_up"] == 1, metrics
    assert before <= metrics["sams_postgres_wal_archived_total"] <= after, (before, metrics, after)
    sh(lab, f"systemctl stop {DB_UNIT}")
    try:
        sh(lab, f"systemctl start {METRICS_UNIT}.service")
        assert node_metrics(lab)["sams_postgres_up"] == 0
    finally:
        sh(lab, f"systemctl start {DB_UNIT}")
    sh(lab, f"systemctl start {METRICS_UNIT}.service")
    assert node_metrics(lab)["sams_postgres_up"] == 1


def _mail_log(lab: Lab) -> dict[str, float]:
    sh(lab, f"systemctl start {METRICS_UNIT}.service")
    return {k: v for k, v in node_metrics(lab).items() if k.startswith(("sams_mail_rejects", "sams_mail_deliveries",
                                                                         "sams_mail_submitted"))}  # fmt: skip


def test_the_mail_log_moves_counters_and_a_busy_login_alerts(
    monitored: Lab, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A refused message and a submitted one move the mail log's counters (Postfix's own journal lines,
    read by sams-logs counters); Prometheus has them over the tunnel; alice submitting more than
    loginMessagesPerHour messages fires SamsLoginSendingSpike at the webhook, naming her login."""
    lab = monitored
    user = "alice@sams.test"
    with world(lab, tmp_path_factory.mktemp("maillog")) as mail:
        before = _mail_log(lab)
        rspamd_before = daemon_metrics(lab, "rspamd")
        dovecot_before = daemon_metrics(lab, "dovecot").get("dovecot_mail_deliveries_total", 0)
        ghost = f"ghost-{time.time_ns()}@sams.test"
        code, _ = mail.inet(mx_attempt, mail.host, f"someone@{SENDER_DOMAIN}", ghost, message("a", ghost, "x"))
        assert code == 550
        fault = time.time()
        batch = subject("maillog")
        tags = [f"{batch}-{n:03d}" for n in range(LOGIN_MESSAGES_PER_HOUR + 1)]
        for tag in tags:
            mail.submit(587, user, ["bob@sams.test"], tag)
        arrived = mail.read("bob@sams.test", batch, want=len(tags), wait=60)
        assert sorted(str(email.message_from_bytes(m)["Subject"]) for m in arrived) == tags, len(arrived)

    submitted = f'sams_mail_submitted_total{{login="{user}"}}'
    refused = 'sams_mail_rejects_total{status="5.1.1"}'

    def counted() -> dict[str, float] | None:
        now = _mail_log(lab)
        done = now.get(submitted, 0) - before.get(submitted, 0) >= len(tags) and now.get(refused, 0) > before.get(
            refused, 0
        )
        return now if done else None

    # A series new to the counters stays at 0 for two scrapes first.
    after = wait_for("alice's messages and the refusal counted", counted, timeout=2 * SCRAPE_S + 90)

    def grew(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert grew(submitted) == len(tags), after
    assert grew(refused) == 1, after
    assert grew('sams_mail_deliveries_total{status="sent"}') >= len(tags)  # other local mail may arrive meanwhile
    # The daemons' own counters (nginx's /metrics/<daemon> over the tunnel, with Rspamd's read-only
    # password): Rspamd scanned each message, Dovecot stored each one.
    rspamd = daemon_metrics(lab, "rspamd")
    assert rspamd["rspamd_scanned_total"] - rspamd_before["rspamd_scanned_total"] >= len(tags), rspamd
    delivered = daemon_metrics(lab, "dovecot").get("dovecot_mail_deliveries_total", 0) - dovecot_before
    assert delivered >= len(tags), delivered
    scraped = wait_for(
        "Prometheus has alice's count",
        lambda: [r for r in prometheus(lab, submitted) if float(r["value"][1]) >= len(tags)],
        timeout=3 * SCRAPE_S + 30,
    )
    assert float(scraped[0]["value"][1]) == len(tags) + before.get(submitted, 0), scraped
    name = "SamsLoginSendingSpike"
    try:
        firing = firing_at_webhook(lab, name, fault)
    except AssertionError as missing:
        seen = {q: prometheus(lab, q) for q in (f"{submitted}[5m]", f"increase({submitted}[1h])", "ALERTS")}
        raise AssertionError(f"{missing}; Prometheus: {seen}; posts: {webhook.posts(lab.paths)[-3:]}") from None
    print(f"\n{len(tags)} submissions -> {name} at the webhook: {firing[0]['received'] - fault:.0f} s")
    assert user in firing[0]["body"]["attachments"][0]["text"], firing[0]["body"]


def _listed(lab: Lab, zone: str) -> float | None:
    sh(lab, f"systemctl start {METRICS_UNIT}.service")
    return node_metrics(lab).get(f'sams_dnsbl_listed{{address="{lab.spec.public_ipv4}",zone="{zone}"}}')


def _serve_dns(lab: Lab, extra: tuple[tuple[str, str], ...]) -> None:
    """The lab's DNS again with `extra` zones, and the host's Unbound emptied of what it cached."""
    dns.stop(lab.paths)
    dns.start(replace(lab.spec, dns_zones=(*lab.spec.dns_zones, *extra)), lab.paths)
    sh(lab, "systemctl restart unbound")


def test_a_blocklist_listing_the_host_alerts(monitored: Lab) -> None:
    """The lab's DNS answers for a blocklist zone that lists the host's public address (127.0.0.2):
    sams-metrics, asking through the host's own Unbound, says 1 where it said 0, SamsBlocklisted
    reaches the webhook, and once the listing is gone the metric is 0 again."""
    lab = monitored
    zone = lab.settings.config.monitoring.blocklists[0]
    assert _listed(lab, zone) == 0, node_metrics(lab)  # NXDOMAIN: not listed
    reverse = ".".join(reversed(lab.spec.public_ipv4.split(".")))
    listing = (
        f"$ORIGIN {zone}.\n$TTL 60\n@ IN SOA {dns.NAMESERVER}. hostmaster.{dns.LAB_ZONE}. 1 3600 600 86400 60\n"
        f"@ IN NS {dns.NAMESERVER}.\n{reverse} IN A 127.0.0.2\n"
    )
    fault = time.time()
    _serve_dns(lab, ((zone, listing),))
    try:
        assert _listed(lab, zone) == 1
        name = "SamsBlocklisted"
        firing = firing_at_webhook(lab, name, fault)
        print(f"\nlisted -> {name} at the webhook: {firing[0]['received'] - fault:.0f} s")
        assert zone in firing[0]["body"]["attachments"][0]["text"], firing[0]["body"]
    finally:
        _serve_dns(lab, ())
    assert _listed(lab, zone) == 0


def test_each_daemons_unit_and_the_dkim_phase_are_metrics(monitored: Lab) -> None:
    """Every watched unit reads active (1) on the running host; OpenDKIM stopped reads 0 (the state
    SamsServiceDown watches), and 1 again once started. The DKIM phase is the one the run applied."""
    lab = monitored

    def units() -> dict[str, float]:
        sh(lab, f"systemctl start {METRICS_UNIT}.service")
        return {k: v for k, v in node_metrics(lab).items() if k.startswith("sams_unit_active")}

    assert units() == {f'sams_unit_active{{unit="{u}"}}': 1 for u in WATCHED_UNITS}
    sh(lab, "systemctl stop opendkim")
    try:
        assert units()['sams_unit_active{unit="opendkim.service"}'] == 0
    finally:
        sh(lab, "systemctl start opendkim")
    assert units()['sams_unit_active{unit="opendkim.service"}'] == 1
    selector = lab.settings.config.dkim.selector
    assert node_metrics(lab)[f'sams_dkim_rotation_phase{{phase="steady",signing="{selector}"}}'] == 1


def test_the_memory_monitoring_takes(monitored: Lab) -> None:
    """PSS after the minutes the tests above took, printed (issue 22's budgets: exporters under 60 MiB,
    Prometheus + Alertmanager under 120 MiB, measured by bench.idle_memory)."""
    lab = monitored
    uptime = sh(lab, f"ps -o etimes= -p $(systemctl show -P MainPID {PROMETHEUS_UNIT}.service)").strip()
    exporter = pss_mib(lab, NODE_EXPORTER_UNIT)
    prom, alertmanager = pss_mib(lab, PROMETHEUS_UNIT), pss_mib(lab, ALERTMANAGER_UNIT)
    series = prometheus(lab, "prometheus_tsdb_head_series")[0]["value"][1]
    print(
        f"\nPSS after {int(uptime) // 60} min at a {SCRAPE_S} s scrape ({series} head series): node_exporter "
        f"{exporter:.1f} MiB; Prometheus {prom:.1f} MiB + Alertmanager {alertmanager:.1f} MiB = "
        f"{prom + alertmanager:.1f} MiB"
    )
    # Issue 22's budgets, checked here too: with Prometheus's Go memory limit the lab measured 112.0 MiB
    # 7 minutes in (119.6 without it, which is why this was only printed for a while); the hour at a
    # 15 s scrape is bench.idle_memory's to measure (113 MiB).
    assert 0 < exporter < 60
    assert prom > 0 and alertmanager > 0 and prom + alertmanager < 120


def test_external_mode_runs_node_exporter_alone(monitored: Lab) -> None:
    """mode external: the owner's Prometheus scrapes node_exporter over the tunnel; the host's own
    Prometheus and Alertmanager stop, their ports close and the webhook secret goes."""
    lab = monitored
    up_with(lab, {"sams:monitoring": {"enabled": True, "mode": "external"}})
    states = sh(lab, f"systemctl is-active {' '.join(UNITS)}", check=False).split()
    assert states == ["active", "inactive", "inactive"], states
    assert listeners(lab) == [f"{lab.spec.vpn_host}:{NODE_EXPORTER_PORT}"]
    assert "sams_metrics_written_timestamp_seconds" in admin_get(lab, NODE_EXPORTER_PORT, "/metrics")[1]
    vpn_rule = next(
        line for line in sh(lab, "nft list chain inet sams input").splitlines() if 'iifname "wg0" tcp dport' in line
    )
    assert str(NODE_EXPORTER_PORT) in vpn_rule and str(PROMETHEUS_PORT) not in vpn_rule, vpn_rule
    assert "No such" in sh(lab, f"ls {WEBHOOK_URL_FILE} 2>&1 || true")


def test_monitoring_off_leaves_nothing_running(monitored: Lab) -> None:
    lab = monitored
    up_with(lab, {})
    states = sh(lab, f"systemctl is-active {' '.join(UNITS)} {METRICS_UNIT}.timer", check=False).split()
    assert states == ["inactive"] * 4, states
    assert sh(lab, f"systemctl is-enabled {' '.join(UNITS)}", check=False).split() == ["disabled"] * 3
    assert listeners(lab) == []
    assert sh(lab, f"ls {WEBHOOK_URL_FILE} {TEXTFILE} /usr/local/sbin/sams-metrics 2>&1 || true").count("No such") == 3
    ruleset = sh(lab, "nft list chain inet sams input")
    assert not any(str(p) in ruleset for p in PORTS), ruleset
    # The packages stay, whole: each /etc/default file the step replaced holds the package's own
    # content again (dpkg --verify names a conffile that is missing or changed).
    verify = sh(lab, "dpkg --verify prometheus prometheus-alertmanager prometheus-node-exporter", check=False)
    assert "/etc/default/" not in verify, verify
    # None of monitoring's units is left failed (other modules' units are theirs to judge).
    mine = " ".join([*(f"{u}.service" for u in UNITS), f"{METRICS_UNIT}.service", f"{METRICS_UNIT}.timer"])
    assert sh(lab, f"systemctl list-units --failed --plain --no-legend {mine}", check=False).strip() == ""
