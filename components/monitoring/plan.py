"""What monitoring installs and where (pure): one list that the step, the firewall, the lab and the tests read."""

from __future__ import annotations

# The ports are the port policy's (opened on wg0 only); each daemon binds the WireGuard address.
from components.firewall.policy import ALERTMANAGER_PORT as ALERTMANAGER_PORT
from components.firewall.policy import NODE_EXPORTER_PORT as NODE_EXPORTER_PORT
from components.firewall.policy import PROMETHEUS_PORT as PROMETHEUS_PORT

# Debian 13's packages: node_exporter 1.9, Prometheus 2.53, Alertmanager 0.28.
EXPORTER_PACKAGES: tuple[str, ...] = ("prometheus-node-exporter",)
SERVER_PACKAGES: tuple[str, ...] = ("prometheus", "prometheus-alertmanager")
PACKAGES: tuple[str, ...] = (*EXPORTER_PACKAGES, *SERVER_PACKAGES)

NODE_EXPORTER_UNIT = "prometheus-node-exporter"
PROMETHEUS_UNIT = "prometheus"
ALERTMANAGER_UNIT = "prometheus-alertmanager"
EXPORTER_UNITS: tuple[str, ...] = (NODE_EXPORTER_UNIT,)
SERVER_UNITS: tuple[str, ...] = (PROMETHEUS_UNIT, ALERTMANAGER_UNIT)

PROMETHEUS_DIR = "/etc/prometheus"
PROMETHEUS_CONFIG = f"{PROMETHEUS_DIR}/prometheus.yml"
RULES_FILE = f"{PROMETHEUS_DIR}/rules/sams.yml"
ALERTMANAGER_CONFIG = f"{PROMETHEUS_DIR}/alertmanager.yml"
# The Slack-compatible webhook URL (a secret): its own file, readable by Alertmanager's user only.
WEBHOOK_URL_FILE = f"{PROMETHEUS_DIR}/sams-webhook-url"
# The dead man's switch URL Alertmanager pings (a secret), the same way.
HEARTBEAT_URL_FILE = f"{PROMETHEUS_DIR}/sams-heartbeat-url"
# The relay's password for Alertmanager's e-mail (a secret), the same way.
SMTP_PASSWORD_FILE = f"{PROMETHEUS_DIR}/sams-smtp-password"
DEFAULTS = {unit: f"/etc/default/{unit}" for unit in (*EXPORTER_UNITS, *SERVER_UNITS)}
# Started after wg0 exists: every listener binds the WireGuard address.
DROPINS = {unit: f"/etc/systemd/system/{unit}.service.d/10-sams.conf" for unit in (*EXPORTER_UNITS, *SERVER_UNITS)}

# node_exporter's textfile collector reads *.prom here (Debian's own default directory).
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
TEXTFILE = f"{TEXTFILE_DIR}/sams.prom"
# What SAMS itself knows, written as metrics every minute (files/sams-metrics.py).
METRICS_TOOL = "/usr/local/sbin/sams-metrics"
METRICS_CONFIG = "/etc/sams/metrics.json"
METRICS_UNIT = "sams-metrics"

# Late values (stdin): the webhook URL, the heartbeat URL and the relay password.
WEBHOOK_URL = "monitoring_webhook_url"
HEARTBEAT_URL = "monitoring_heartbeat_url"
SMTP_PASSWORD = "monitoring_smtp_password"
