"""What the mail daemons count themselves (pure): one list that Dovecot's config, nginx's proxy,
Prometheus's scrape jobs, the firewall and the tests read.

Dovecot 2.4 counts events (logins, failed logins, deliveries: components/mail/services.py's
DOVECOT_METRICS) in its stats service and serves them as OpenMetrics on loopback
(DOVECOT_STATS_PORT, never the tunnel: Dovecot binds at its start, before wg0 may exist, and a failed
bind would stop IMAP). nginx's HTTPS server on the WireGuard address
(HEALTH_PORT, the health endpoints' server, started after wg0) passes `/metrics/<source>` to it, so a
Prometheus on the host and the owner's own (mode external) scrape the same URL over the tunnel.

Rspamd's controller serves /metrics on loopback and asks for a password even there: nginx sends its
read-only one (`password`; the admin's controller password is `enable_password`), from a root-only file.

Postfix's counters come from its journal through `sams-logs counters` (files/sams-metrics.py), not
from Debian's prometheus-postfix-exporter 0.3.0: that exporter reads a log file Debian 13's Postfix
does not write (the journal only), its pattern `postfix/<service>[pid]` skips the submission
services' `postfix/submission/smtpd` lines, and it has no bounce counter; it would also be one more
resident process plus a journal-to-file copier.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.firewall.policy import DOVECOT_STATS_PORT, HEALTH_PORT
from components.mail.services import RSPAMD_CONTROLLER, RSPAMD_METRICS_PASSWORD
from components.remote.steps import File, late
from settings import Settings


@dataclass(frozen=True)
class Source:
    job: str  # Prometheus's job, and the path /metrics/<job> on HEALTH_PORT
    upstream: str  # where nginx fetches it, on loopback
    headers_file: str | None = None  # an nginx file of proxy_set_header lines (a secret), if it needs one


# nginx's Password header for Rspamd's controller (the read-only password, RSPAMD_METRICS_PASSWORD):
# root's only; nginx's master process reads it as root.
RSPAMD_HEADERS_FILE = "/etc/nginx/sams-rspamd-metrics.conf"

SOURCES: tuple[Source, ...] = (
    Source("dovecot", f"http://127.0.0.1:{DOVECOT_STATS_PORT}/metrics"),
    # Rspamd's controller (loopback only) asks every request for a password, even from loopback.
    Source("rspamd", f"http://{RSPAMD_CONTROLLER}/metrics", RSPAMD_HEADERS_FILE),
)


def path(source: Source) -> str:
    return f"/metrics/{source.job}"


def scrape_configs(settings: Settings) -> list[dict[str, object]]:
    """One job per source: nginx on the WireGuard address. Its certificate is the host's own (a
    bootstrap one is self-signed), so it is not verified, as for the health probes: the tunnel
    already authenticates both ends."""
    mon = settings.config.monitoring
    return [
        {
            "job_name": s.job,
            "scrape_interval": f"{mon.scrape_interval_seconds}s",
            "scheme": "https",
            "metrics_path": path(s),
            "tls_config": {"insecure_skip_verify": True},
            "static_configs": [
                {
                    "targets": [f"{settings.config.wireguard.address}:{HEALTH_PORT}"],
                    "labels": {"host": str(settings.config.hostname)},
                }
            ],
        }
        for s in SOURCES
    ]


def nginx_locations() -> list[tuple[str, str, str | None]]:
    """(path, upstream, headers file) for nginx's proxy locations."""
    return [(path(s), s.upstream, s.headers_file) for s in SOURCES]


def secret_files() -> list[File]:
    """The sources' header files, each a late value (stdin) the step writes root-only."""
    return [File(RSPAMD_HEADERS_FILE, f'proxy_set_header Password "{late(RSPAMD_METRICS_PASSWORD)}";\n', mode="0600")]


LATE_VALUES: tuple[str, ...] = (RSPAMD_METRICS_PASSWORD,)

__all__ = ["LATE_VALUES", "SOURCES", "Source", "nginx_locations", "scrape_configs", "secret_files"]
