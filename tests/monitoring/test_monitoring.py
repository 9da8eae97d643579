"""Monitoring as the program renders it: the setting, the ports (tunnel only), every rendered file
through the daemons' own checkers (promtool, amtool), every alert rule through `promtool test rules`
(a case that fires and one that does not), secrets only on stdin, and monitoring off cleaning up.

promtool and amtool are this machine's (lab/requirements-apt.txt: Debian's prometheus and
prometheus-alertmanager); the lab test runs Debian 13's own on the host (the step checks its files).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import mockrun
from components.firewall.policy import NEVER_PUBLIC, nftables_conf, port_policy
from components.firewall.steps import firewall_step
from components.mail.services import logs_tool
from components.monitoring.plan import (
    ALERTMANAGER_CONFIG,
    ALERTMANAGER_PORT,
    BLACKBOX_EXPORTER_PORT,
    HEALTH_PORT,
    NODE_EXPORTER_PORT,
    PROMETHEUS_CONFIG,
    PROMETHEUS_PORT,
    RULES_FILE,
    SMTP_PASSWORD_FILE,
    TEXTFILE,
    WEBHOOK_URL_FILE,
)
from components.monitoring.rules import ALERTS, HEARTBEAT, alerts, rules_yaml
from components.monitoring.steps import PROMETHEUS_GO_MEMORY_LIMIT_MIB, disabled_step, external_config, monitoring_step
from settings import SettingsError, load
from tests.conftest import PROJECT

PROMTOOL, AMTOOL = shutil.which("promtool"), shutil.which("amtool")


def _require_tools(fn: Any) -> Any:
    """promtool and amtool are test tools ./run installs (lab/requirements-apt.txt): missing is a failure."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        assert PROMTOOL and AMTOOL, "promtool/amtool missing: apt-get install $(cat lab/requirements-apt.txt)"
        return fn(*args, **kwargs)

    return functools.wraps(fn)(wrapped)


needs_tools = _require_tools
DOCS = PROJECT / "docs" / "monitoring.md"


def settings_with(stack: str, monitoring: dict[str, Any], **extra: Any) -> Any:
    cfg = {**mockrun.stack_config(stack), **mockrun.TEST_SECRETS, "sams:monitoring": json.dumps(monitoring)}
    cfg.update({k: json.dumps(v) for k, v in extra.items()})
    return load(stack, cfg, PROJECT)


# --- the setting ---------------------------------------------------------------------------------


def test_monitoring_is_off_by_default() -> None:
    settings = load("lab", {**mockrun.stack_config("lab"), **mockrun.TEST_SECRETS}, PROJECT)
    assert not settings.config.monitoring.enabled
    assert monitoring_step(settings).files == ()
    assert {p.number for p in port_policy(settings.config)}.isdisjoint(
        {NODE_EXPORTER_PORT, PROMETHEUS_PORT, ALERTMANAGER_PORT}
    )


@pytest.mark.parametrize(
    ("monitoring", "key", "value"),
    [
        ({"enabled": True, "mode": "cloud"}, "monitoring.mode", "cloud"),
        ({"enabled": True, "scrapeIntervalSeconds": 5}, "monitoring.scrapeIntervalSeconds", "5"),
        ({"enabled": True, "retentionTime": "15"}, "monitoring.retentionTime", "15"),
        ({"enabled": True, "emailTo": ["not-an-address"]}, "monitoring.emailTo[0]", "not-an-address"),
        ({"enabled": True, "mode": "external", "emailTo": ["a@b.example"]}, "monitoring.emailTo", "a@b.example"),
        ({"enabled": True, "scrapeEvery": 60}, "monitoring.scrapeEvery", "60"),
        ({"enabled": True, "notifyIntervalMinutes": 0}, "monitoring.notifyIntervalMinutes", "0"),
    ],
)
def test_bad_settings_name_the_key_and_value(monitoring: dict[str, Any], key: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_with("lab", monitoring)
    text = str(caught.value)
    assert "Pulumi.lab.yaml" in text and key in text and value in text, text


# --- the ports: the firewall's one list, tunnel only -----------------------------------------------


@pytest.mark.parametrize(
    ("mode", "ports"),
    [("host", {NODE_EXPORTER_PORT, PROMETHEUS_PORT, ALERTMANAGER_PORT}), ("external", {NODE_EXPORTER_PORT})],
)
def test_monitoring_ports_are_on_the_tunnel_only(mode: str, ports: set[int]) -> None:
    cfg = settings_with("prod", {"enabled": True, "mode": mode}).config
    listed = {p.number: p for p in port_policy(cfg) if p.number in {NODE_EXPORTER_PORT, PROMETHEUS_PORT, 9093}}
    assert set(listed) == ports
    assert all(p.exposure == "vpn" for p in listed.values())
    assert ports <= NEVER_PUBLIC
    conf = nftables_conf(cfg)
    public_line = next(line for line in conf.splitlines() if line.strip().startswith("tcp dport"))
    vpn_line = next(line for line in conf.splitlines() if 'iifname "wg0" tcp dport' in line)
    for port in ports:
        assert re.search(rf"\b{port}\b", vpn_line) and not re.search(rf"\b{port}\b", public_line)


def test_the_firewall_step_carries_the_policy_to_a_running_host() -> None:
    settings = settings_with("lab", {"enabled": True})
    spec = firewall_step(settings)
    assert spec.files[0].path == "/etc/nftables.conf" and spec.files[0].content == nftables_conf(settings.config)
    assert spec.services[0].unit == "nftables.service"


def test_every_listener_is_the_wireguard_address() -> None:
    settings = settings_with("prod", {"enabled": True})
    files = {f.path: f.content for f in monitoring_step(settings, webhook=True).files}
    wg = str(settings.config.wireguard.address)
    listens = re.findall(r"--web\.listen-address=(\S+?)[\s\"]", "".join(files[p] for p in files if "default" in p))
    ports = (NODE_EXPORTER_PORT, PROMETHEUS_PORT, ALERTMANAGER_PORT, BLACKBOX_EXPORTER_PORT)
    assert sorted(listens) == sorted(f"{wg}:{p}" for p in ports)
    # Alertmanager's cluster port would listen on every address: it is off.
    assert "--cluster.listen-address=" + '"' in files["/etc/default/prometheus-alertmanager"]
    prom = files["/etc/default/prometheus"]
    assert "--storage.tsdb.retention.size=256MB" in prom and "--storage.tsdb.retention.time=15d" in prom
    # Debian's unit reads the file as its EnvironmentFile: Go's soft memory limit, in Go's own units.
    assert re.findall(r"^GOMEMLIMIT=(\d+)MiB$", prom, re.M) == [str(PROMETHEUS_GO_MEMORY_LIMIT_MIB)]


# --- the daemons' own checkers on every rendered file ---------------------------------------------


def _check_tree(tmp_path: Path, files: dict[str, str]) -> None:
    """Write the files under tmp_path (their /etc/prometheus paths moved there) and run the checkers."""
    root = tmp_path / "etc-prometheus"
    for path, content in files.items():
        if path.startswith("/etc/prometheus/"):
            target = root / path.removeprefix("/etc/prometheus/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content.replace("/etc/prometheus/", f"{root}/"))
    out = subprocess.run(
        [str(PROMTOOL), "check", "config", str(root / "prometheus.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0 and "1 rule files found" in out.stdout, out.stdout + out.stderr
    out = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(root / "rules/sams.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0 and f"{len(ALERTS)} rules found" in out.stdout, out.stdout + out.stderr
    out = subprocess.run([str(AMTOOL), "check-config", str(root / "alertmanager.yml")], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


@needs_tools
@pytest.mark.parametrize(
    ("stack", "monitoring", "webhook", "receivers"),
    [
        ("lab", {"enabled": True}, False, []),  # no receiver: alerts in Alertmanager's UI only
        ("lab", {"enabled": True, "emailTo": ["ops@receiver.example"]}, True, ["slack_configs", "email_configs"]),
        (
            "dev",
            {"enabled": True, "emailTo": ["ops@example.org"], "scrapeIntervalSeconds": 30},
            True,
            ["slack", "email"],
        ),
        ("prod", {"enabled": True, "emailTo": ["a@example.org", "b@example.org"]}, False, ["email_configs"]),
    ],
)
def test_rendered_files_pass_promtool_and_amtool(
    tmp_path: Path, stack: str, monitoring: dict[str, Any], webhook: bool, receivers: list[str]
) -> None:
    settings = settings_with(stack, monitoring)
    files = {f.path: f.content for f in monitoring_step(settings, webhook=webhook).files}
    assert {PROMETHEUS_CONFIG, RULES_FILE, ALERTMANAGER_CONFIG} <= set(files)
    _check_tree(tmp_path, files)
    receiver = yaml.safe_load(files[ALERTMANAGER_CONFIG])["receivers"][0]
    for kind in receivers:
        assert any(key.startswith(kind) for key in receiver), receiver
    email = receiver.get("email_configs", [{}])[0]
    if settings.config.relay is not None and email:
        # Through the relay, its certificate verified, the password from a file of its own.
        assert email["smarthost"] == f"{settings.config.relay.host}:{settings.config.relay.port}"
        assert email["require_tls"] is True and email["auth_password_file"] == SMTP_PASSWORD_FILE
    elif email:
        assert email["smarthost"] == "127.0.0.1:25"


@needs_tools
def test_external_mode_exports_a_scrape_config_and_rules(tmp_path: Path, runner: Any) -> None:
    settings = settings_with("prod", {"enabled": True, "mode": "external"})
    spec = monitoring_step(settings, webhook=True)
    paths = {f.path for f in spec.files}
    assert PROMETHEUS_CONFIG not in paths and ALERTMANAGER_CONFIG not in paths and WEBHOOK_URL_FILE not in paths
    # Rspamd's read-only password (nginx's /metrics/rspamd) and the address the blocklists are asked
    # about: no Alertmanager, no secret of its.
    assert spec.late_values == ("rspamd_metrics_password", "monitoring_public_ipv4")
    # The owner's Prometheus: their global section, our jobs and rules.
    out = external_config(settings)
    (tmp_path / "sams.yml").write_text(out["rules"])
    config = {"rule_files": [str(tmp_path / "sams.yml")], "scrape_configs": yaml.safe_load(out["scrapeConfigs"])}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run([str(PROMTOOL), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True)
    assert check.returncode == 0, check
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in config["scrape_configs"]
    }
    assert targets["node"] == [f"{settings.config.wireguard.address}:{NODE_EXPORTER_PORT}"]
    # The health probes go through the exporter on the tunnel (components/monitoring/health.py), the
    # daemons' own metrics through nginx's HTTPS there (components/monitoring/daemons.py).
    assert set(targets) == {"node", "health", "dovecot", "rspamd"}
    assert targets["dovecot"] == targets["rspamd"] == [f"{settings.config.wireguard.address}:{HEALTH_PORT}"]


def test_the_stack_output_says_where_monitoring_listens(runner: Any) -> None:
    out = runner("prod").outputs["monitoring"]
    assert out["enabled"] is False and out["prometheus"] is None
    run = mockrun.run(
        "prod", overrides={"sams:monitoring": {"enabled": True, "mode": "external"}}, secret_config=mockrun.TEST_SECRETS
    )
    out = run.outputs["monitoring"]
    assert out["nodeExporter"] == "10.100.0.2:9100" and out["prometheus"] is None
    assert "SamsBackupStale" in out["external"]["rules"]


# --- secrets, order, and off -------------------------------------------------------------------------


def test_the_webhook_url_reaches_the_host_only_on_stdin() -> None:
    run = mockrun.run(
        "lab",
        overrides={"sams:monitoring": {"enabled": True}},
        secret_config={**mockrun.TEST_SECRETS, "sams:monitoringWebhookUrl": "https://hooks.example/T0/B0/secret-x"},
    )
    command = next(c for c in run.of_type("command:remote:Command") if c.name == "monitoring-monitoring-apply")
    assert command.is_secret("stdin") and "secret-x" in command.inputs["stdin"]
    names = [c.name for c in run.of_type("command:remote:Command")]
    # After the backup and TLS steps whose files it reads; the firewall first of all.
    assert names.index("firewall-apply") < names.index("backup-backup-apply")
    assert names.index("monitoring-monitoring-apply") > names.index("tls-tls-certbot-apply")
    spec = monitoring_step(settings_with("lab", {"enabled": True}), webhook=True)
    files = {f.path: f for f in spec.files}
    assert files[WEBHOOK_URL_FILE].content == "@@SAMS_LATE:monitoring_webhook_url@@\n"
    assert files[WEBHOOK_URL_FILE].mode == "0640"
    assert "secret-x" not in json.dumps([f.content for f in spec.files])
    assert f"chgrp prometheus {WEBHOOK_URL_FILE}" in spec.script


def test_the_relay_password_for_alert_mail_is_a_late_value() -> None:
    spec = monitoring_step(settings_with("dev", {"enabled": True, "emailTo": ["ops@example.org"]}), webhook=False)
    assert spec.late_values == ("rspamd_metrics_password", "monitoring_public_ipv4", "monitoring_smtp_password")
    files = {f.path: f for f in spec.files}
    assert files[SMTP_PASSWORD_FILE].content == "@@SAMS_LATE:monitoring_smtp_password@@\n"
    assert "relay-password-for-tests" not in files[ALERTMANAGER_CONFIG].content


@pytest.mark.parametrize("mode", ["host", "external"])
def test_the_step_script_is_shellcheck_clean(tmp_path: Path, mode: str) -> None:
    assert shutil.which("shellcheck"), "shellcheck is part of the test tools (see ./run)"
    for spec in (monitoring_step(settings_with("dev", {"enabled": True, "mode": mode}), webhook=True), disabled_step()):
        script = tmp_path / "script.sh"
        script.write_text(spec.script)
        out = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout


def test_monitoring_off_stops_the_units_and_removes_what_it_wrote() -> None:
    spec = disabled_step()
    assert spec.files == () and spec.late_values == ()
    for unit in ("prometheus", "prometheus-alertmanager", "prometheus-node-exporter"):
        assert f"systemctl disable -q --now {unit}.service" in spec.script
    removed = spec.script.split("rm -f ", 1)[1].split("\n", 1)[0].split()
    assert {WEBHOOK_URL_FILE, SMTP_PASSWORD_FILE, TEXTFILE, "/usr/local/sbin/sams-metrics"} <= set(removed)


# --- every alert: a case that fires and one that does not (promtool test rules) ---------------------

HOST = {"host": "mail.example.org", "instance": "10.100.0.2:9100", "job": "node"}


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in sorted({**HOST, **labels}.items()))
    return {"series": f"{name}{{{text}}}", "values": values}


# (alert, input series, eval time, the alert's labels beyond the host's, its summary, its description
# or None for the rule's own): each must fire exactly so.
# An aggregating rule (sum by, min by) keeps only the labels it names: None drops one of HOST's.
AGGREGATED: dict[str, str | None] = {"instance": None, "job": None}
FIRING: list[tuple[str, list[dict[str, str]], str, dict[str, str | None], str, str | None]] = [
    (
        "SamsTargetDown",
        [_series("up", "0x10")],
        "5m",
        {},
        "node on mail.example.org does not answer",
        "Prometheus could not scrape 10.100.0.2:9100 (node) for 2 minutes.",
    ),
    (
        "SamsMailDiskFull",
        [
            _series("node_filesystem_avail_bytes", "10x10", mountpoint="/var/mail", device="vdb", fstype="ext4"),
            _series("node_filesystem_size_bytes", "100x10", mountpoint="/var/mail", device="vdb", fstype="ext4"),
            _series("sams_mail_filesystem", "1x10", mountpoint="/var/mail"),
        ],
        "8m",
        {"mountpoint": "/var/mail", "device": "vdb", "fstype": "ext4"},
        "the mail filesystem on mail.example.org is 90% full",
        "/var/mail holds the mailboxes and is more than 80% full.",
    ),
    (
        "SamsCertificateExpiring",
        [_series("sams_tls_certificate_expiry_timestamp_seconds", "864000x20", path="/etc/ssl/sams/fullchain.pem")],
        "15m",
        {"path": "/etc/ssl/sams/fullchain.pem"},
        "the TLS certificate on mail.example.org expires in 9d 23h 45m 0s",
        "/etc/ssl/sams/fullchain.pem expires within 14 days: certbot has not renewed it.",
    ),
    (
        "SamsBackupStale",
        [_series("sams_backup_last_success_timestamp_seconds", "0x1700")],
        "27h",
        {},
        "no successful backup of mail.example.org for 1d 3h 0m 0s",
        None,
    ),
    (  # never a success: late from when backups were set up
        "SamsBackupStale",
        [_series("sams_backup_expected_since_timestamp_seconds", "0x1700")],
        "27h",
        {},
        "no successful backup of mail.example.org for 1d 3h 0m 0s",
        None,
    ),
    (
        "SamsBackupFailed",
        [_series("sams_backup_last_run_ok", "0x5")],
        "2m",
        {},
        "the last backup run on mail.example.org failed",
        None,
    ),
    (
        "SamsBackupCheckFailed",
        [_series("sams_backup_check_ok", "0x5")],
        "2m",
        {},
        "restic check of mail.example.org's backup repository failed",
        None,
    ),
    (
        "SamsMemoryPressure",
        [_series("node_memory_MemAvailable_bytes", "5x10"), _series("node_memory_MemTotal_bytes", "100x10")],
        "8m",
        {},
        "mail.example.org is short of memory",
        None,
    ),
    (  # plenty available, but the kernel killed a process for memory
        "SamsMemoryPressure",
        [
            _series("node_memory_MemAvailable_bytes", "50x10"),
            _series("node_memory_MemTotal_bytes", "100x10"),
            _series("node_vmstat_oom_kill", "0 0 1 1 1 1 1 1 1 1 1"),
        ],
        "8m",
        {},
        "mail.example.org is short of memory",
        None,
    ),
    (
        "SamsMetricsStale",
        [_series("sams_metrics_written_timestamp_seconds", "0x15")],
        "12m",
        {},
        "the SAMS metrics writer on mail.example.org has stopped",
        None,
    ),
]
FIRING += [
    (
        "SamsMailQueueHigh",
        [
            _series("sams_postfix_queue_messages", "40x15", queue="deferred", domain="gmail.com"),
            _series("sams_postfix_queue_messages", "20x15", queue="active", domain="gmail.com"),
        ],
        "12m",
        {**AGGREGATED, "domain": "gmail.com"},
        "60 messages queued on mail.example.org for gmail.com",
        None,
    ),
    (
        "SamsMailQueueStuck",
        [_series("sams_postfix_queue_oldest_deferred_timestamp_seconds", "0x100", domain="gmail.com")],
        "70m",
        {**AGGREGATED, "domain": "gmail.com"},
        "mail to gmail.com has waited 1h 10m 0s on mail.example.org",
        None,
    ),
    (
        "SamsWireGuardStale",
        [_series("sams_wireguard_latest_handshake_timestamp_seconds", "0x40", interface="wg0", peer="K=")],
        "30m",
        {"interface": "wg0", "peer": "K="},
        "the WireGuard tunnel of mail.example.org has had no handshake for 30m 0s",
        None,
    ),
    (  # 5 failed logins a minute for an hour
        "SamsLoginFailuresSpike",
        [_series("sams_fail2ban_failed_total", "0+5x70", jail="dovecot")],
        "60m",
        AGGREGATED,
        "300 failed logins on mail.example.org in the last hour",
        None,
    ),
]
FIRING += [
    ("SamsPostgresDown", [_series("sams_postgres_up", "0x5")], "4m", {},
     "PostgreSQL on mail.example.org does not answer", None),
    (  # a failure every minute since, nothing archived
        "SamsWalArchiveFailing",
        [
            _series("sams_postgres_wal_archive_failed_total", "0+1x30"),
            _series("sams_postgres_wal_last_failed_timestamp_seconds", "0+60x30"),
            _series("sams_postgres_wal_last_archived_timestamp_seconds", "0x30"),
        ],
        "20m",
        {},
        "PostgreSQL on mail.example.org cannot archive its WAL",
        None,
    ),
]  # fmt: skip
# Health checks (components/monitoring/health.py): a probe that fails for 2 minutes.
PROBE: dict[str, str] = {"job": "health", "instance": "127.0.0.1:993", "check": "imap"}
FIRING += [
    ("SamsHealthCheckFailed", [_series("probe_success", "1 1 0 0 0 0", **PROBE)], "5m", {**PROBE},
     "the imap health check on mail.example.org fails",
     "The imap probe of 127.0.0.1:993 has failed for 2 minutes: the daemon is down or does not speak its "
     "protocol; /health/imap answers 503."),
]  # fmt: skip
# (alert, input series, eval time): each must stay quiet.
QUIET: list[tuple[str, list[dict[str, str]], str]] = [
    ("SamsTargetDown", [_series("up", "1x10")], "5m"),
    (  # /boot is 90 % full, the mail filesystem 50 %
        "SamsMailDiskFull",
        [
            _series("node_filesystem_avail_bytes", "10x10", mountpoint="/boot", device="vda1", fstype="ext4"),
            _series("node_filesystem_size_bytes", "100x10", mountpoint="/boot", device="vda1", fstype="ext4"),
            _series("node_filesystem_avail_bytes", "50x10", mountpoint="/var/mail", device="vdb", fstype="ext4"),
            _series("node_filesystem_size_bytes", "100x10", mountpoint="/var/mail", device="vdb", fstype="ext4"),
            _series("sams_mail_filesystem", "1x10", mountpoint="/var/mail"),
        ],
        "8m",
    ),
    (
        "SamsCertificateExpiring",
        [_series("sams_tls_certificate_expiry_timestamp_seconds", "2592000x20", path="/p")],
        "15m",
    ),
    (  # the last success 7 h ago, though backups were set up long before
        "SamsBackupStale",
        [
            _series("sams_backup_last_success_timestamp_seconds", "72000x1700"),
            _series("sams_backup_expected_since_timestamp_seconds", "0x1700"),
        ],
        "27h",
    ),
    ("SamsBackupFailed", [_series("sams_backup_last_run_ok", "1x5")], "2m"),
    ("SamsBackupCheckFailed", [_series("sams_backup_check_ok", "1x5")], "2m"),
    (  # half the memory free, and the OOM killer's count flat (it fired long ago)
        "SamsMemoryPressure",
        [
            _series("node_memory_MemAvailable_bytes", "50x30"),
            _series("node_memory_MemTotal_bytes", "100x30"),
            _series("node_vmstat_oom_kill", "3x30"),
        ],
        "25m",
    ),
    ("SamsMetricsStale", [_series("sams_metrics_written_timestamp_seconds", "0+60x15")], "12m"),
    (  # 40 for one domain and 30 for another: neither over 50
        "SamsMailQueueHigh",
        [
            _series("sams_postfix_queue_messages", "40x15", queue="deferred", domain="gmail.com"),
            _series("sams_postfix_queue_messages", "30x15", queue="deferred", domain="example.net"),
        ],
        "12m",
    ),
    (  # deferred for 20 minutes
        "SamsMailQueueStuck",
        [_series("sams_postfix_queue_oldest_deferred_timestamp_seconds", "3000x100", domain="gmail.com")],
        "70m",
    ),
    (  # a handshake every minute
        "SamsWireGuardStale",
        [_series("sams_wireguard_latest_handshake_timestamp_seconds", "0+60x40", interface="wg0", peer="K=")],
        "30m",
    ),
    ("SamsLoginFailuresSpike", [_series("sams_fail2ban_failed_total", "0+1x70", jail="dovecot")], "60m"),
]
FIRING += [
    (  # 12 refusals an hour for 10 hours, then 300 in the last hour
        "SamsMailRejectsSpike",
        [_series("sams_mail_rejects_total", "0+0.2x600 125+5x59", status="5.7.1")],
        "659m",
        AGGREGATED | {"status": None},
        "295.2 messages refused in the last hour on mail.example.org",
        None,
    ),
    (  # 1 bounce an hour for 10 hours, then 30 in the last hour
        "SamsBouncesSpike",
        [_series("sams_mail_deliveries_total", "0+0.0167x600 11+0.5x59", status="bounced")],
        "659m",
        AGGREGATED | {"status": None},
        "30 recipients bounced in the last hour on mail.example.org",
        None,
    ),
    (  # a message a minute from one login
        "SamsLoginSendingSpike",
        [
            _series("sams_mail_submitted_total", "0+1x70", login="alice@example.org"),
            _series("sams_mail_submitted_total", "0+0.1x70", login="bob@example.org"),
        ],
        "65m",
        AGGREGATED | {"login": "alice@example.org"},
        "alice@example.org submitted 60 messages in an hour on mail.example.org",
        "One login sent more than 50 messages within an hour: a stolen password sending spam gets the host "
        "blocklisted.",
    ),
]
FIRING += [
    (
        "SamsBlocklisted",
        [
            _series("sams_dnsbl_listed", "1x5", zone="zen.spamhaus.org", address="198.51.100.25"),
            _series("sams_dnsbl_listed", "0x5", zone="bl.spamcop.net", address="198.51.100.25"),
        ],
        "3m",
        {"zone": "zen.spamhaus.org", "address": "198.51.100.25"},
        "198.51.100.25 of mail.example.org is on the zen.spamhaus.org blocklist",
        None,
    ),
]
QUIET += [("SamsBlocklisted", [_series("sams_dnsbl_listed", "0x5", zone="zen.spamhaus.org", address="a")], "3m")]
FIRING += [
    (
        "SamsServiceDown",
        [
            _series("sams_unit_active", "0x5", unit="opendkim.service"),
            _series("sams_unit_active", "1x5", unit="postfix.service"),
        ],
        "3m",
        {"unit": "opendkim.service"},
        "opendkim.service on mail.example.org is not running",
        "systemd says opendkim.service has not been active for 2 minutes (stopped, failed, or restarting in a loop).",
    ),
    (  # due 25 hours before the evaluation
        "SamsDkimRotationDue",
        [_series("sams_dkim_rotation_next_change_timestamp_seconds", "-89700x5")],
        "5m",
        {},
        "the DKIM rotation of mail.example.org waits for `pulumi up`",
        None,
    ),
]
QUIET += [
    # restarted within the 2 minutes
    ("SamsServiceDown", [_series("sams_unit_active", "1 0 1 1 0 1", unit="opendkim.service")], "5m"),
    # due an hour ago: a `pulumi up` has a day
    ("SamsDkimRotationDue", [_series("sams_dkim_rotation_next_change_timestamp_seconds", "-3300x5")], "5m"),
]
QUIET += [
    # 300 refusals an hour, every hour: this host's usual, no spike
    ("SamsMailRejectsSpike", [_series("sams_mail_rejects_total", "0+5x660", status="5.7.1")], "659m"),
    # bounces, but only in their usual numbers (and a deferral wave, which is not a bounce)
    (
        "SamsBouncesSpike",
        [
            _series("sams_mail_deliveries_total", "0+0.5x660", status="bounced"),
            _series("sams_mail_deliveries_total", "0+0x600 0+10x59", status="deferred"),
        ],
        "659m",
    ),
    # 30 an hour from one login, 6 from another
    (
        "SamsLoginSendingSpike",
        [
            _series("sams_mail_submitted_total", "0+0.5x70", login="alice@example.org"),
            _series("sams_mail_submitted_total", "0+0.1x70", login="bob@example.org"),
        ],
        "65m",
    ),
]
QUIET += [
    ("SamsPostgresDown", [_series("sams_postgres_up", "1x5")], "4m"),
    (  # failures long ago, archiving since
        "SamsWalArchiveFailing",
        [
            _series("sams_postgres_wal_archive_failed_total", "5x30"),
            _series("sams_postgres_wal_last_failed_timestamp_seconds", "100x30"),
            _series("sams_postgres_wal_last_archived_timestamp_seconds", "0+60x30"),
        ],
        "20m",
    ),
]
QUIET += [
    # a failed probe now and then (a restart), never 2 minutes long
    ("SamsHealthCheckFailed", [_series("probe_success", "1 0 1 0 1 1 0 1", **PROBE)], "7m"),
]
# Firing is its job: no quiet case.
ALWAYS_FIRING = {HEARTBEAT}


def promtool_tests() -> dict[str, Any]:
    settings = settings_with("lab", {"enabled": True})
    by_name = {a.name: a for a in alerts(settings)}
    heartbeat = by_name[HEARTBEAT]
    tests: list[dict[str, Any]] = [
        {
            "interval": "1m",
            "input_series": [],
            "alert_rule_test": [
                {
                    "eval_time": "1m",
                    "alertname": HEARTBEAT,
                    "exp_alerts": [
                        {
                            "exp_labels": {"host": str(settings.config.hostname), "severity": heartbeat.severity},
                            "exp_annotations": {
                                "summary": "Prometheus and Alertmanager are alive",
                                "description": heartbeat.description,
                                "runbook_url": f"docs/monitoring.md#{heartbeat.anchor}",
                            },
                        }
                    ],
                }
            ],
        }
    ]
    for name, series, at, labels, summary, description in FIRING:
        alert = by_name[name]
        expected = {
            "exp_labels": {k: v for k, v in {**HOST, **labels}.items() if v is not None} | {"severity": alert.severity},
            "exp_annotations": {
                "summary": summary,
                "description": description or alert.description,
                "runbook_url": f"docs/monitoring.md#{alert.anchor}",
            },
        }
        tests.append(
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": [expected]}],
            }
        )
    for name, series, at in QUIET:
        tests.append(
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": []}],
            }
        )
    return {"rule_files": ["sams.yml"], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    names = {a.name for a in ALERTS}
    assert {case[0] for case in FIRING} | ALWAYS_FIRING == names
    assert {case[0] for case in QUIET} == names - ALWAYS_FIRING


@needs_tools
def test_alert_rules_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    settings = settings_with("lab", {"enabled": True})
    (tmp_path / "sams.yml").write_text(rules_yaml(settings))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(promtool_tests(), sort_keys=False))
    out = subprocess.run([str(PROMTOOL), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


@needs_tools
def test_a_quiet_case_would_catch_a_rule_that_always_fires(tmp_path: Path) -> None:
    """The quiet cases can fail: the same tests against rules whose thresholds are all crossed."""
    settings = settings_with("lab", {"enabled": True})
    broken = rules_yaml(settings).replace("> 26 * 3600", "> 0").replace("== 0", ">= 0")
    (tmp_path / "sams.yml").write_text(broken)
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(promtool_tests(), sort_keys=False))
    out = subprocess.run([str(PROMTOOL), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 1
    for name in ("SamsBackupStale", "SamsBackupFailed", "SamsBackupCheckFailed", "SamsTargetDown"):
        assert f"alertname: {name}" in out.stdout + out.stderr, out.stdout + out.stderr


def test_every_alert_links_a_runbook_section() -> None:
    text = DOCS.read_text()
    for alert in ALERTS:
        assert f"\n### {alert.name}\n" in text, alert.name


# --- the textfile writer (files/sams-metrics.py), on this machine ----------------------------------------


# journalctl's stand-in: the entries of journal.jsonl beside it, those after --after-cursor only.
JOURNALCTL = """\
#!/usr/bin/python3
import json, pathlib, sys
entries = [json.loads(l) for l in (pathlib.Path(sys.argv[0]).parent / "journal.jsonl").read_text().splitlines()]
if "--after-cursor" in sys.argv:
    cursor = sys.argv[sys.argv.index("--after-cursor") + 1]
    seen = [e["__CURSOR"] for e in entries]
    if cursor not in seen:
        sys.exit("Failed to seek to cursor: Invalid argument")
    entries = entries[seen.index(cursor) + 1:]
for entry in entries:
    print(json.dumps(entry))
"""


def _write_metrics(
    tmp_path: Path,
    status: dict[str, Any] | None,
    backups: bool = True,
    tools: dict[str, str | None] | None = None,
    journal: list[tuple[str, str]] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Run the writer on this machine. `tools`: stand-ins for postqueue, wg and fail2ban-client (name ->
    what it prints; None: it fails), first on PATH; the daemons behind them cannot run here (the lab
    test asks the real ones). `journal`: the (identifier, message) entries journalctl has (it honours
    --after-cursor), read by the real sams-logs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("postqueue", "wg", "fail2ban-client", "docker", "journalctl", "systemctl"):
        output = (tools or {}).get(name)
        (bin_dir / f"{name}.out").write_text(output or "")
        body = f'cat "{bin_dir}/{name}.out"' if output is not None else "exit 1"
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    cert, config = tmp_path / "fullchain.pem", tmp_path / "backup.json"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "10",
         "-subj", "/CN=mail.example.org", "-keyout", str(tmp_path / "key.pem"), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    if backups:
        config.write_text("{}")
    if status is not None:
        (tmp_path / "status.json").write_text(json.dumps(status))
    cfg = {
        "backup_config": str(config),
        "backup_status": str(tmp_path / "status.json"),
        "certificates": [str(cert)],
        "mail_root": str(tmp_path / "vmail" / "not-yet"),
        "textfile": str(tmp_path / "node" / "sams.prom"),
        "wireguard_interface": "wg0",
        "postgres": {"container": "sams-postgres", "superuser": "postgres"},
        # The real sams-logs as the mail step installs it, over the stand-in journalctl.
        "logs_tool": str(bin_dir / "sams-logs"),
        "log_counters": str(tmp_path / "state" / "log-counters.json"),
        "log_counters_hold_s": 0,  # a new key's count shows on the run after it was first met
        **(extra_config or {}),
    }
    (bin_dir / "sams-logs").write_text(logs_tool())
    (bin_dir / "sams-logs").chmod(0o755)
    if journal is not None:
        (bin_dir / "journal.jsonl").write_text(
            "".join(
                json.dumps({"__CURSOR": f"s=1;i={i}", "SYSLOG_IDENTIFIER": ident, "MESSAGE": msg}) + "\n"
                for i, (ident, msg) in enumerate(journal)
            )
        )
        (bin_dir / "journalctl").write_text(JOURNALCTL)
        (bin_dir / "journalctl").chmod(0o755)
    (tmp_path / "metrics.json").write_text(json.dumps(cfg))
    tool = PROJECT / "components" / "monitoring" / "files" / "sams-metrics.py"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["python3", str(tool), str(tmp_path / "metrics.json")], check=True, env=env)
    text = (tmp_path / "node" / "sams.prom").read_text()
    assert not list((tmp_path / "node").glob(".*")), "the temporary file is left behind"
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[0] != "#"}


def test_the_writer_turns_a_status_record_into_metrics(tmp_path: Path) -> None:
    status = {
        "result": "failed",
        "finished": "2026-12-06T02:31:07Z",
        "last_success": "2026-12-05T02:40:00Z",
        "check": {"result": "failed", "args": []},
        "cpu_s": 12.5,
        "peak_rss_mib": 98.5,
    }
    metrics = _write_metrics(tmp_path, status)
    assert metrics["sams_backup_last_run_ok"] == 0 and metrics["sams_backup_check_ok"] == 0
    assert metrics["sams_backup_last_success_timestamp_seconds"] == 1796438400.0
    assert metrics["sams_backup_last_run_timestamp_seconds"] == 1796524267.0
    assert metrics["sams_backup_last_run_peak_rss_bytes"] == 98.5 * 1024 * 1024
    assert "sams_backup_last_run_added_bytes" not in metrics  # a failed run added nothing it could report
    expiry = metrics[f'sams_tls_certificate_expiry_timestamp_seconds{{path="{tmp_path}/fullchain.pem"}}']
    assert 9 * 86400 < expiry - time.time() <= 10 * 86400
    assert (
        metrics[
            'sams_mail_filesystem{mountpoint="/tmp"}'
            if Path("/tmp").is_mount()
            else 'sams_mail_filesystem{mountpoint="/"}'
        ]
        == 1
    )


def test_the_writer_says_nothing_of_backups_that_are_off(tmp_path: Path) -> None:
    metrics = _write_metrics(tmp_path, None, backups=False)
    assert not [k for k in metrics if k.startswith("sams_backup_")]
    # Backups on but never run: only when they were set up, which the stale alert measures from.
    metrics = _write_metrics(tmp_path, None)
    assert [k for k in metrics if k.startswith("sams_backup_")] == ["sams_backup_expected_since_timestamp_seconds"]


QUEUE = "\n".join(
    json.dumps(m)
    for m in (
        {"queue_name": "deferred", "arrival_time": 1796500000, "recipients": [
            {"address": "a@Gmail.com"}, {"address": "b@gmail.com"}, {"address": "c@example.net"}]},
        {"queue_name": "deferred", "arrival_time": 1796400000, "recipients": [{"address": "d@gmail.com"}]},
        {"queue_name": "active", "arrival_time": 1796600000, "recipients": [{"address": "e@gmail.com"}]},
    )
)  # fmt: skip
HUB, NEVER = "hubKEY" + "0" * 37 + "=", "neverKEY" + "0" * 35 + "="
HANDSHAKES = f"{HUB}\t1796520000\n{NEVER}\t0\n"
F2B_STATUS = "Status\n|- Number of jail:\t2\n`- Jail list:\tdovecot, postfix-sasl\n"
F2B_JAIL = (
    "Status for the jail: dovecot\n|- Filter\n|  |- Currently failed:\t1\n|  |- Total failed:\t7\n"
    "|  `- Journal matches:\t_SYSTEMD_UNIT=dovecot.service\n`- Actions\n   |- Currently banned:\t2\n"
    "   |- Total banned:\t3\n   `- Banned IP list:\t198.51.100.1 198.51.100.2\n"
)


def test_the_writer_reports_the_queue_by_domain_the_tunnel_and_the_bans(tmp_path: Path) -> None:
    """Postfix's queue by recipient domain (a message counts once per domain; the oldest deferred
    arrival), each WireGuard peer's handshake, each jail's failures and bans, from what the tools print."""
    metrics = _write_metrics(
        tmp_path,
        None,
        tools={
            "postqueue": QUEUE,
            "wg": HANDSHAKES,
            "fail2ban-client": F2B_STATUS + F2B_JAIL,
            "docker": "120 2 1796500000 1796400000\n",  # psql -At -F ' ' of pg_stat_archiver
        },
    )
    queue = {k: v for k, v in metrics.items() if k.startswith("sams_postfix_queue_messages")}
    assert queue == {
        'sams_postfix_queue_messages{domain="example.net",queue="deferred"}': 1,
        'sams_postfix_queue_messages{domain="gmail.com",queue="active"}': 1,
        'sams_postfix_queue_messages{domain="gmail.com",queue="deferred"}': 2,
    }
    assert metrics['sams_postfix_queue_oldest_deferred_timestamp_seconds{domain="gmail.com"}'] == 1796400000
    assert metrics['sams_postfix_queue_oldest_deferred_timestamp_seconds{domain="example.net"}'] == 1796500000
    assert metrics[f'sams_wireguard_latest_handshake_timestamp_seconds{{interface="wg0",peer="{HUB}"}}'] == 1796520000
    assert metrics[f'sams_wireguard_latest_handshake_timestamp_seconds{{interface="wg0",peer="{NEVER}"}}'] == 0
    # The stand-in prints the same status for each jail: both jails appear with its counts.
    assert metrics['sams_fail2ban_failed_total{jail="dovecot"}'] == 7
    assert metrics['sams_fail2ban_banned{jail="postfix-sasl"}'] == 2
    assert metrics["sams_postgres_up"] == 1 and metrics["sams_postgres_wal_archived_total"] == 120
    assert metrics["sams_postgres_wal_archive_failed_total"] == 2
    assert metrics["sams_postgres_wal_last_failed_timestamp_seconds"] == 1796400000


class FakeResolver:
    """A DNS resolver on loopback (dnspython builds the answers): name -> the A records it answers,
    NXDOMAIN for names it does not know, silence for names mapped to None."""

    def __init__(self, answers: dict[str, list[str] | None]) -> None:
        import dns.message
        import dns.rcode
        import dns.rrset

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

        def serve() -> None:
            while True:
                try:
                    data, peer = self.sock.recvfrom(512)
                except OSError:
                    return
                query = dns.message.from_wire(data)
                name = query.question[0].name.to_text().rstrip(".")
                if name in answers and answers[name] is None:
                    continue
                reply = dns.message.make_response(query)
                if name in answers:
                    reply.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", *(answers[name] or [])))
                else:
                    reply.set_rcode(dns.rcode.NXDOMAIN)
                self.sock.sendto(reply.to_wire(), peer)

        threading.Thread(target=serve, daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def test_the_writer_asks_each_blocklist_through_the_given_resolver(tmp_path: Path) -> None:
    """Listed (127.0.0.2): 1; not listed (NXDOMAIN): 0; a refused query (Spamhaus's 127.255.255.254) or a
    resolver that does not answer: left out, never read as "not listed"."""
    resolver = FakeResolver(
        {
            "25.100.51.198.zen.spamhaus.org": ["127.0.0.2", "127.0.0.4"],
            "25.100.51.198.refusing.example": ["127.255.255.254"],
            "25.100.51.198.silent.example": None,
        }
    )
    try:
        zones = ["zen.spamhaus.org", "bl.spamcop.net", "refusing.example", "silent.example"]
        metrics = _write_metrics(
            tmp_path,
            None,
            extra_config={"resolver": resolver.address, "blocklists": zones, "public_addresses": ["198.51.100.25"]},
        )
    finally:
        resolver.close()
    assert {k: v for k, v in metrics.items() if k.startswith("sams_dnsbl_")} == {
        'sams_dnsbl_listed{address="198.51.100.25",zone="zen.spamhaus.org"}': 1,
        'sams_dnsbl_listed{address="198.51.100.25",zone="bl.spamcop.net"}': 0,
    }


def test_the_writer_reports_each_watched_unit_and_the_dkim_phase(tmp_path: Path) -> None:
    """systemctl is-active per watched unit (anything but "active" is 0); systemctl failing: no metric.
    The DKIM rotation phase the run applied, and when the next phase is due."""
    units: dict[str, Any] = {"units": ["postfix.service", "opendkim.service", "rspamd.service"]}
    metrics = _write_metrics(tmp_path, None, tools={"systemctl": "active\nfailed\nactivating\n"}, extra_config=units)
    assert {k: v for k, v in metrics.items() if k.startswith("sams_unit_")} == {
        'sams_unit_active{unit="postfix.service"}': 1,
        'sams_unit_active{unit="opendkim.service"}': 0,
        'sams_unit_active{unit="rspamd.service"}': 0,
    }
    assert not [k for k in _write_metrics(tmp_path, None, extra_config=units) if k.startswith("sams_unit_")]
    dkim = {"phase": "publish", "signing": "s2026", "next_change": 1796600000.0}
    metrics = _write_metrics(tmp_path, None, extra_config={"dkim": dkim})
    assert metrics['sams_dkim_rotation_phase{phase="publish",signing="s2026"}'] == 1
    assert metrics["sams_dkim_rotation_next_change_timestamp_seconds"] == 1796600000


def test_the_step_gives_the_writer_the_watched_units_and_the_phase() -> None:
    from components.keys.rotation import DkimPhase
    from components.monitoring.plan import METRICS_CONFIG, WATCHED_UNITS

    settings = settings_with("lab", {"enabled": True})
    phase = DkimPhase("steady", ("s1",), "s1")
    files = {f.path: f.content for f in monitoring_step(settings, dkim=phase).files}
    config = json.loads(files[METRICS_CONFIG])
    assert config["units"] == list(WATCHED_UNITS)
    assert config["dkim"] == {"phase": "steady", "signing": "s1", "next_change": None}


MAIL_LOG_METRICS = (
    "sams_mail_rejects",
    "sams_mail_deliveries",
    "sams_mail_submitted",
    "sams_mail_auth",
    "sams_mail_log",
)


def test_the_writer_counts_the_mail_log_once(tmp_path: Path) -> None:
    """The mail log's running totals (sams-logs counters, the saved queries' own patterns): refusals by
    enhanced status code, delivery results, messages per login, failed logins. Counting starts at the
    journal's end (what came before is nobody's last hour); a new key starts at 0; a later run adds only
    the entries after the saved cursor; a cursor the journal lost starts again at its end, totals kept."""
    from tests.test_sams_logs import LINES

    def submitted(login: str, n: int) -> tuple[str, str]:
        return ("postfix/submission/smtpd", f"4F2B{n}: client=unknown[198.18.0.5], sasl_username={login}")

    earlier = [submitted("alice@sams.test", 0)] * 60  # a busy day before counting began
    first = _write_metrics(tmp_path, None, journal=earlier)
    assert {k: v for k, v in first.items() if k.startswith(MAIL_LOG_METRICS)} == {"sams_mail_log_readable": 1}
    # Each new key starts at 0 (Prometheus sees a rise only from a first sample), counted a run later.
    second = _write_metrics(tmp_path, None, journal=[*earlier, *LINES])
    counted = {k: v for k, v in second.items() if k.startswith(MAIL_LOG_METRICS)}
    assert {k for k, v in counted.items() if v} == {"sams_mail_log_readable"}, counted
    third = _write_metrics(tmp_path, None, journal=[*earlier, *LINES])
    counted = {k: v for k, v in third.items() if k.startswith(MAIL_LOG_METRICS)}
    assert counted == {
        'sams_mail_rejects_total{status="5.1.1"}': 2,
        'sams_mail_rejects_total{status="5.7.1"}': 1,
        'sams_mail_deliveries_total{status="deferred"}': 1,
        'sams_mail_deliveries_total{status="sent"}': 2,
        'sams_mail_submitted_total{login="alice@sams.test"}': 2,
        'sams_mail_submitted_total{login="bob@sams.test"}': 1,
        'sams_mail_auth_failures_total{service="imap"}': 2,
        'sams_mail_auth_failures_total{service="pop3"}': 1,
        'sams_mail_auth_failures_total{service="smtp-auth"}': 1,
        "sams_mail_log_readable": 1,
    }
    fourth = _write_metrics(tmp_path, None, journal=[*earlier, *LINES, submitted("bob@sams.test", 1)])
    assert fourth['sams_mail_submitted_total{login="bob@sams.test"}'] == 2
    assert fourth['sams_mail_rejects_total{status="5.1.1"}'] == 2, "an entry was counted twice"
    # The journal was vacuumed: the saved cursor is gone. Counting starts again at its end; the totals stay.
    vacuumed = [submitted("eve@sams.test", 2)]
    fifth = _write_metrics(tmp_path, None, journal=vacuumed)
    assert 'sams_mail_submitted_total{login="eve@sams.test"}' not in fifth
    assert fifth['sams_mail_submitted_total{login="bob@sams.test"}'] == 2
    later = [*vacuumed, submitted("eve@sams.test", 3)]
    assert _write_metrics(tmp_path, None, journal=later)['sams_mail_submitted_total{login="eve@sams.test"}'] == 0
    assert _write_metrics(tmp_path, None, journal=later)['sams_mail_submitted_total{login="eve@sams.test"}'] == 1


def test_a_source_that_cannot_be_asked_is_left_out(tmp_path: Path) -> None:
    """postqueue, wg and fail2ban-client failing: no queue, tunnel or ban metric (an empty queue would
    read as "all is well"); an empty queue that postqueue reported says so. PostgreSQL not answering
    is what its metric reports: 0."""
    metrics = _write_metrics(tmp_path, None, backups=False)
    assert not [
        k for k in metrics if k.startswith(("sams_postfix_", "sams_wireguard_", "sams_fail2ban_", *MAIL_LOG_METRICS))
    ]
    assert [(k, v) for k, v in metrics.items() if k.startswith("sams_postgres_")] == [("sams_postgres_up", 0)]
    metrics = _write_metrics(tmp_path, None, backups=False, tools={"postqueue": ""})
    assert [k for k in metrics if k.startswith("sams_postfix_")] == ["sams_postfix_queue_readable"]


@pytest.mark.parametrize(("given", "expected"), [({}, "5m"), ({"notifyIntervalMinutes": 1}, "1m")])
def test_the_notify_interval_is_alertmanagers_group_interval(given: dict[str, Any], expected: str) -> None:
    settings = settings_with("lab", {"enabled": True, **given})
    files = {f.path: f.content for f in monitoring_step(settings).files}
    route = yaml.safe_load(files[ALERTMANAGER_CONFIG])["route"]
    assert route["group_interval"] == expected
    # The heartbeat's own route keeps its fixed rhythm.
    assert route["routes"][0]["group_interval"] == "1m" and route["routes"][0]["repeat_interval"] == "5m"
