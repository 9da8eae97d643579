"""What monitoring installs and where (pure): one list that the step, the firewall, the lab and the tests read."""

from __future__ import annotations

# The ports are the port policy's (opened on wg0 only); each daemon binds the WireGuard address.
from components.firewall.policy import ALERTMANAGER_PORT as ALERTMANAGER_PORT
from components.firewall.policy import BLACKBOX_EXPORTER_PORT as BLACKBOX_EXPORTER_PORT
from components.firewall.policy import HEALTH_DATABASE_PORT as HEALTH_DATABASE_PORT
from components.firewall.policy import HEALTH_PORT as HEALTH_PORT
from components.firewall.policy import NODE_EXPORTER_PORT as NODE_EXPORTER_PORT
from components.firewall.policy import PROMETHEUS_PORT as PROMETHEUS_PORT

# Debian 13's packages: node_exporter 1.9, Prometheus 2.53, Alertmanager 0.28.
EXPORTER_PACKAGES: tuple[str, ...] = ("prometheus-node-exporter",)
SERVER_PACKAGES: tuple[str, ...] = ("prometheus", "prometheus-alertmanager")
# Health checks (components/monitoring/health.py), in either mode: Debian 13's blackbox exporter 0.26
# probes the daemons; nginx's njs module (0.8) turns a probe into /health/<check>'s 200 or 503.
HEALTH_PACKAGES: tuple[str, ...] = ("prometheus-blackbox-exporter", "libnginx-mod-http-js")
PACKAGES: tuple[str, ...] = (*EXPORTER_PACKAGES, *SERVER_PACKAGES, *HEALTH_PACKAGES)

NODE_EXPORTER_UNIT = "prometheus-node-exporter"
PROMETHEUS_UNIT = "prometheus"
ALERTMANAGER_UNIT = "prometheus-alertmanager"
EXPORTER_UNITS: tuple[str, ...] = (NODE_EXPORTER_UNIT,)
BLACKBOX_UNIT = "prometheus-blackbox-exporter"
HEALTH_UNITS: tuple[str, ...] = (BLACKBOX_UNIT,)
SERVER_UNITS: tuple[str, ...] = (PROMETHEUS_UNIT, ALERTMANAGER_UNIT)

PROMETHEUS_DIR = "/etc/prometheus"
PROMETHEUS_CONFIG = f"{PROMETHEUS_DIR}/prometheus.yml"
RULES_FILE = f"{PROMETHEUS_DIR}/rules/sams.yml"
ALERTMANAGER_CONFIG = f"{PROMETHEUS_DIR}/alertmanager.yml"
# Debian's path for the blackbox exporter's modules (its unit's --config.file).
BLACKBOX_CONFIG = f"{PROMETHEUS_DIR}/blackbox.yml"
# The Slack-compatible webhook URL (a secret): its own file, readable by Alertmanager's user only.
WEBHOOK_URL_FILE = f"{PROMETHEUS_DIR}/sams-webhook-url"
# The dead man's switch URL Alertmanager pings (a secret), the same way.
HEARTBEAT_URL_FILE = f"{PROMETHEUS_DIR}/sams-heartbeat-url"
# The relay's password for Alertmanager's e-mail (a secret), the same way.
SMTP_PASSWORD_FILE = f"{PROMETHEUS_DIR}/sams-smtp-password"
DEFAULTS = {unit: f"/etc/default/{unit}" for unit in (*EXPORTER_UNITS, *SERVER_UNITS, *HEALTH_UNITS)}
# Started after wg0 exists: every listener binds the WireGuard address.
DROPINS = {
    unit: f"/etc/systemd/system/{unit}.service.d/10-sams.conf"
    for unit in (*EXPORTER_UNITS, *SERVER_UNITS, *HEALTH_UNITS)
}

# node_exporter's textfile collector reads *.prom here (Debian's own default directory).
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
TEXTFILE = f"{TEXTFILE_DIR}/sams.prom"
# What SAMS itself knows, written as metrics every minute (files/sams-metrics.py).
METRICS_TOOL = "/usr/local/sbin/sams-metrics"
METRICS_CONFIG = "/etc/sams/metrics.json"
METRICS_UNIT = "sams-metrics"
# The mail log's running totals and the journal cursor they reach (sams-logs counters).
LOG_COUNTERS = "/var/lib/sams/metrics/log-counters.json"

# The daemons whose unit state sams-metrics reports (sams_unit_active; SamsServiceDown): what mail
# needs, each by its systemd unit. Debian 13's Postfix runs in postfix.service itself (postfix@-
# stays inactive there: a lab run with it here alerted all the time).
WATCHED_UNITS: tuple[str, ...] = (
    "postfix.service",
    "dovecot.service",
    "opendkim.service",
    "rspamd.service",
    "redis-server.service",
    "unbound.service",
    "sams-postgres.service",
    "docker.service",
    "fail2ban.service",
    "nginx.service",
    "wg-quick@wg0.service",
)

# Late values (stdin): the webhook URL, the heartbeat URL and the relay password.
WEBHOOK_URL = "monitoring_webhook_url"
HEARTBEAT_URL = "monitoring_heartbeat_url"
SMTP_PASSWORD = "monitoring_smtp_password"
# The host's public IPv4 (known once the host exists): what the blocklists are asked about.
PUBLIC_IPV4 = "monitoring_public_ipv4"

# --- health checks (components/monitoring/health.py) ----------------------------------------------------
# nginx's site for /health/<check> on the WireGuard address, and the njs module it imports.
HEALTH_SITE = "/etc/nginx/sites-available/sams-health"
HEALTH_SITE_ENABLED = "/etc/nginx/sites-enabled/sams-health"
HEALTH_JS = "/etc/nginx/sams-health.js"
# nginx binds the WireGuard address too: it starts after wg0 (and retries, like the exporters).
NGINX_DROPIN = "/etc/systemd/system/nginx.service.d/10-sams-health.conf"
# The PostgreSQL check: a socket-activated query, one process per request, on loopback.
HEALTH_DB_TOOL = "/usr/local/sbin/sams-health-db"
HEALTH_DB_UNIT = "sams-health-db"
HEALTH_DB_UNIT_FILES = (
    f"/etc/systemd/system/{HEALTH_DB_UNIT}.socket",
    f"/etc/systemd/system/{HEALTH_DB_UNIT}@.service",
)
