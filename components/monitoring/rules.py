"""The alert rules (pure): one list that the rules file, the external stack output, the promtool
tests and the runbook (docs/monitoring.md, a section per alert) all read.

The metrics named `sams_*` are written by the host's textfile writer (files/sams-metrics.py) from
what the program itself knows: the backup's status record, the certificate in use, Postfix's queue,
the WireGuard handshakes, fail2ban's counts and the mail log's running totals (rejects, delivery
results, messages per login: `sams-logs counters`) and the DNS blocklists' answers about the host.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import yaml

from settings import Settings

# Thresholds, each the value an alert's expression and its runbook quote.
BACKUP_MAX_AGE_HOURS = 26  # a nightly run with its randomized delay, plus a little
DISK_USED_RATIO = 0.80
CERT_DAYS_LEFT = 14  # certbot renews at 30 days left: 14 means renewal has failed for two weeks
MEMORY_AVAILABLE_RATIO = 0.10
METRICS_MAX_AGE_MINUTES = 10  # the writer runs every minute
QUEUE_MAX_AGE_HOURS = 1  # the oldest deferred message: Postfix has retried for an hour
# The host's peer sends a keepalive every 25 s and WireGuard handshakes again every 2 minutes while
# packets flow: a handshake older than this means the tunnel to the hub is down.
WIREGUARD_MAX_AGE_MINUTES = 15
FAILED_LOGINS_PER_HOUR = 100  # fail2ban's failed logins, all jails: a guessing campaign, not typos
# A spike: the last hour's rate at least this many times the hour's average over the last 7 days
# (what is usual for this host), and above a floor (a quiet host going from 1 to 5 is no spike).
SPIKE_FACTOR = 4
REJECTS_PER_HOUR_FLOOR = 100  # an internet MX refuses spam all day: only a wave is news
BOUNCES_PER_HOUR_FLOOR = 10
DKIM_PHASE_LATE_HOURS = 24  # any `pulumi up` in the day after the due time would have applied the phase
HEARTBEAT = "SamsHeartbeat"  # always firing: its absence at an outside watcher is the alert


def _spike(metric: str, floor: int) -> str:
    """The last hour's count over `floor`, and its rate over SPIKE_FACTOR times the 7-day hourly average."""
    hour = f"sum by (host) (increase({metric}[1h]))"
    usual = f"avg_over_time(sum by (host) (rate({metric}[1h]))[7d:1h])"
    return f"{hour} > {floor} and sum by (host) (rate({metric}[1h])) > {SPIKE_FACTOR} * {usual}"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str  # how long the condition must hold ("0s": at once)
    severity: str  # critical: act now; warning: act today
    summary: str
    description: str
    # The host's name as a label of its own: an expression without series (vector(1)) has none.
    host_label: bool = False

    @property
    def anchor(self) -> str:
        """The runbook's section anchor: GitHub's for a `### SamsName` heading."""
        return self.name.lower()


ALERTS: tuple[Alert, ...] = (
    Alert(
        "SamsTargetDown",
        "up == 0",
        "2m",
        "critical",
        "{{ $labels.job }} on {{ $labels.host }} does not answer",
        "Prometheus could not scrape {{ $labels.instance }} ({{ $labels.job }}) for 2 minutes.",
    ),
    Alert(
        "SamsMailDiskFull",
        f"(1 - node_filesystem_avail_bytes / node_filesystem_size_bytes) > {DISK_USED_RATIO}"
        " and on (instance, mountpoint) sams_mail_filesystem == 1",
        "5m",
        "critical",
        "the mail filesystem on {{ $labels.host }} is {{ $value | humanizePercentage }} full",
        f"{{{{ $labels.mountpoint }}}} holds the mailboxes and is more than {DISK_USED_RATIO:.0%} full.",
    ),
    Alert(
        "SamsCertificateExpiring",
        f"sams_tls_certificate_expiry_timestamp_seconds - time() < {CERT_DAYS_LEFT} * 86400",
        "10m",
        "critical",
        "the TLS certificate on {{ $labels.host }} expires in {{ $value | humanizeDuration }}",
        f"{{{{ $labels.path }}}} expires within {CERT_DAYS_LEFT} days: certbot has not renewed it.",
    ),
    Alert(
        "SamsBackupStale",
        "time() - (sams_backup_last_success_timestamp_seconds or sams_backup_expected_since_timestamp_seconds)"
        f" > {BACKUP_MAX_AGE_HOURS} * 3600",
        "0s",
        "critical",
        "no successful backup of {{ $labels.host }} for {{ $value | humanizeDuration }}",
        f"The last successful backup is older than {BACKUP_MAX_AGE_HOURS} hours (or there has never been one).",
    ),
    Alert(
        "SamsBackupFailed",
        "sams_backup_last_run_ok == 0",
        "0s",
        "warning",
        "the last backup run on {{ $labels.host }} failed",
        "sams-backup's last run failed; `sams-backup status` on the host says why.",
    ),
    Alert(
        "SamsBackupCheckFailed",
        "sams_backup_check_ok == 0",
        "0s",
        "critical",
        "restic check of {{ $labels.host }}'s backup repository failed",
        "The last run's `restic check` found the repository damaged or could not finish.",
    ),
    Alert(
        "SamsMemoryPressure",
        f"node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes < {MEMORY_AVAILABLE_RATIO}"
        " or increase(node_vmstat_oom_kill[15m]) > 0",
        "5m",
        "warning",
        "{{ $labels.host }} is short of memory",
        f"Less than {MEMORY_AVAILABLE_RATIO:.0%} of memory is available, or the kernel killed a process for memory.",
    ),
    Alert(
        "SamsMetricsStale",
        f"time() - sams_metrics_written_timestamp_seconds > {METRICS_MAX_AGE_MINUTES} * 60",
        "0s",
        "warning",
        "the SAMS metrics writer on {{ $labels.host }} has stopped",
        "Backup and certificate alerts are blind until sams-metrics writes again.",
    ),
    Alert(
        "SamsMailQueueHigh",
        "sum by (host, domain) (sams_postfix_queue_messages) > {queue_threshold}",
        "10m",
        "warning",
        "{{ $value }} messages queued on {{ $labels.host }} for {{ $labels.domain }}",
        "More than {queue_threshold} messages for one recipient domain have waited 10 minutes: its servers "
        "refuse or do not answer, or the host is sending far more than usual.",
    ),
    Alert(
        "SamsMailQueueStuck",
        f"time() - min by (host, domain) (sams_postfix_queue_oldest_deferred_timestamp_seconds)"
        f" > {QUEUE_MAX_AGE_HOURS} * 3600",
        "0s",
        "warning",
        "mail to {{ $labels.domain }} has waited {{ $value | humanizeDuration }} on {{ $labels.host }}",
        f"A deferred message for this domain has been retried for more than {QUEUE_MAX_AGE_HOURS} hour.",
    ),
    Alert(
        "SamsWireGuardStale",
        f"time() - sams_wireguard_latest_handshake_timestamp_seconds > {WIREGUARD_MAX_AGE_MINUTES} * 60",
        "5m",
        "warning",
        "the WireGuard tunnel of {{ $labels.host }} has had no handshake for {{ $value | humanizeDuration }}",
        "No handshake with the hub peer: `pulumi up` and the VPN-only services cannot reach the host.",
    ),
    Alert(
        "SamsLoginFailuresSpike",
        f"sum by (host) (increase(sams_fail2ban_failed_total[1h])) > {FAILED_LOGINS_PER_HOUR}",
        "0s",
        "warning",
        "{{ $value | humanize }} failed logins on {{ $labels.host }} in the last hour",
        f"More than {FAILED_LOGINS_PER_HOUR} failed IMAP, POP3 or SMTP logins within an hour: a password "
        "guessing campaign, from more addresses than the bans hold back.",
    ),
    # The mail log's counters (sams-logs counters, written by sams-metrics).
    Alert(
        "SamsMailRejectsSpike",
        _spike("sams_mail_rejects_total", REJECTS_PER_HOUR_FLOOR),
        "0s",
        "warning",
        "{{ $value | humanize }} messages refused in the last hour on {{ $labels.host }}",
        f"More than {REJECTS_PER_HOUR_FLOOR} messages were refused in the SMTP session within an hour, "
        f"over {SPIKE_FACTOR} times this host's usual rate: a spam wave, or a fault refusing good mail.",
    ),
    Alert(
        "SamsBouncesSpike",
        _spike('sams_mail_deliveries_total{status="bounced"}', BOUNCES_PER_HOUR_FLOOR),
        "0s",
        "warning",
        "{{ $value | humanize }} recipients bounced in the last hour on {{ $labels.host }}",
        f"More than {BOUNCES_PER_HOUR_FLOOR} recipients bounced within an hour, over {SPIKE_FACTOR} times this "
        "host's usual rate: receivers refuse the host's mail (a blocklist, a broken SPF/DKIM) or a sender "
        "mails stale addresses.",
    ),
    Alert(
        "SamsLoginSendingSpike",
        "sum by (host, login) (increase(sams_mail_submitted_total[1h])) > {login_messages_per_hour}",
        "0s",
        "critical",
        "{{ $labels.login }} submitted {{ $value | humanize }} messages in an hour on {{ $labels.host }}",
        "One login sent more than {login_messages_per_hour} messages within an hour: a stolen password "
        "sending spam gets the host blocklisted.",
    ),
    Alert(
        "SamsServiceDown",
        "sams_unit_active == 0",
        "2m",
        "critical",
        "{{ $labels.unit }} on {{ $labels.host }} is not running",
        "systemd says {{ $labels.unit }} has not been active for 2 minutes (stopped, failed, or restarting in a loop).",
    ),
    Alert(
        "SamsDkimRotationDue",
        f"time() - sams_dkim_rotation_next_change_timestamp_seconds > {DKIM_PHASE_LATE_HOURS} * 3600",
        "0s",
        "warning",
        "the DKIM rotation of {{ $labels.host }} waits for `pulumi up`",
        f"The next phase of the DKIM key rotation was due more than {DKIM_PHASE_LATE_HOURS} hours ago; phases "
        "advance only when the program runs.",
    ),
    Alert(
        "SamsBlocklisted",
        "sams_dnsbl_listed == 1",
        "0s",
        "critical",
        "{{ $labels.address }} of {{ $labels.host }} is on the {{ $labels.zone }} blocklist",
        "The blocklist lists the host's public address: receivers that ask it refuse or junk the host's mail.",
    ),
    Alert(
        "SamsPostgresDown",
        "sams_postgres_up == 0",
        "2m",
        "critical",
        "PostgreSQL on {{ $labels.host }} does not answer",
        "No query succeeded for 2 minutes: Postfix answers 4xx to incoming mail, logins fail.",
    ),
    Alert(
        "SamsWalArchiveFailing",
        "increase(sams_postgres_wal_archive_failed_total[15m]) > 0"
        " and sams_postgres_wal_last_failed_timestamp_seconds > sams_postgres_wal_last_archived_timestamp_seconds",
        "15m",
        "critical",
        "PostgreSQL on {{ $labels.host }} cannot archive its WAL",
        "archive_command keeps failing: a restore to a point in time after the last archived segment is not "
        "possible, and pg_wal grows until the disk is full.",
    ),
    # Health checks (components/monitoring/health.py): the blackbox exporter's protocol probes.
    Alert(
        "SamsHealthCheckFailed",
        'probe_success{job="health"} == 0',
        "2m",
        "critical",
        "the {{ $labels.check }} health check on {{ $labels.host }} fails",
        "The {{ $labels.check }} probe of {{ $labels.instance }} has failed for 2 minutes: the daemon is down or "
        "does not speak its protocol; /health/{{ $labels.check }} answers 503.",
    ),
    Alert(
        HEARTBEAT,
        "vector(1)",
        "0s",
        "none",
        "Prometheus and Alertmanager are alive",
        "Always firing: Alertmanager sends it to the dead man's switch (sams:monitoringHeartbeatUrl), "
        "which raises the alarm when it stops.",
        host_label=True,
    ),
)


def alerts(settings: Settings) -> tuple[Alert, ...]:
    """The alerts with this stack's thresholds filled in; the heartbeat only where the host runs Prometheus
    (the owner's own Prometheus, mode external, has its own)."""
    mon = settings.config.monitoring
    values = {
        "{queue_threshold}": str(mon.queue_threshold),
        "{login_messages_per_hour}": str(mon.login_messages_per_hour),
    }

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    return tuple(
        replace(a, expr=fill(a.expr), description=fill(a.description))
        for a in ALERTS
        if a.name != HEARTBEAT or mon.mode == "host"
    )


def rules(settings: Settings) -> dict[str, object]:
    """The rules file (Prometheus rule_files format)."""
    base = settings.config.monitoring.runbook_url
    return {
        "groups": [
            {
                "name": "sams",
                "rules": [
                    {
                        "alert": a.name,
                        "expr": a.expr,
                        "for": a.for_,
                        "labels": {"severity": a.severity}
                        | ({"host": str(settings.config.hostname)} if a.host_label else {}),
                        "annotations": {
                            "summary": a.summary,
                            "description": a.description,
                            "runbook_url": f"{base}#{a.anchor}",
                        },
                    }
                    for a in alerts(settings)
                ],
            }
        ]
    }


def rules_yaml(settings: Settings) -> str:
    header = "# Managed by SAMS (components/monitoring/rules.py); each alert's runbook: docs/monitoring.md\n"
    return header + yaml.safe_dump(rules(settings), sort_keys=False, width=120)


__all__ = ["ALERTS", "HEARTBEAT", "Alert", "alerts", "rules", "rules_yaml"]
