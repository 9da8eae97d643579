"""The alert rules (pure): one list that the rules file, the external stack output, the promtool
tests and the runbook (docs/monitoring.md, a section per alert) all read.

The metrics named `sams_*` are written by the host's textfile writer (files/sams-metrics.py) from
what the program itself knows: the backup's status record and the certificate in use.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from settings import Settings

# Thresholds, each the value an alert's expression and its runbook quote.
BACKUP_MAX_AGE_HOURS = 26  # a nightly run with its randomized delay, plus a little
DISK_USED_RATIO = 0.80
CERT_DAYS_LEFT = 14  # certbot renews at 30 days left: 14 means renewal has failed for two weeks
MEMORY_AVAILABLE_RATIO = 0.10
METRICS_MAX_AGE_MINUTES = 10  # the writer runs every minute


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str  # how long the condition must hold ("0s": at once)
    severity: str  # critical: act now; warning: act today
    summary: str
    description: str

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
                        "labels": {"severity": a.severity},
                        "annotations": {
                            "summary": a.summary,
                            "description": a.description,
                            "runbook_url": f"{base}#{a.anchor}",
                        },
                    }
                    for a in ALERTS
                ],
            }
        ]
    }


def rules_yaml(settings: Settings) -> str:
    header = "# Managed by SAMS (components/monitoring/rules.py); each alert's runbook: docs/monitoring.md\n"
    return header + yaml.safe_dump(rules(settings), sort_keys=False, width=120)


__all__ = ["ALERTS", "Alert", "rules", "rules_yaml"]
