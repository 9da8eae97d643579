"""The port policy: the single list that both the cloud firewall and the host's nftables are rendered from.

A port is `public` (open to the internet), or `vpn` (only on the WireGuard interface). Anything
not listed is closed everywhere. SSH, PostgreSQL and admin services are never public.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from settings.stack import StackConfig

Proto = Literal["tcp", "udp"]
Exposure = Literal["public", "vpn"]

# Monitoring's listeners (components/monitoring), on the WireGuard address when sams:monitoring is on.
NODE_EXPORTER_PORT = 9100
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
# Health checks (components/monitoring/health.py): the blackbox exporter that probes the daemons, the
# HTTPS endpoints /health/<check> nginx serves from its probes (both on the WireGuard address), and
# the PostgreSQL checker the exporter asks (loopback only).
BLACKBOX_EXPORTER_PORT = 9115
HEALTH_PORT = 8443
HEALTH_DATABASE_PORT = 9188
# Dovecot's own OpenMetrics listener (its stats service), loopback only: nginx's HTTPS on HEALTH_PORT
# passes /metrics/dovecot to it (components/monitoring/daemons.py).
DOVECOT_STATS_PORT = 9900
# The webmail's password change service (components/webmail's sams-passwd), loopback only: poppassd's
# port, which Roundcube's password plugin speaks.
PASSWD_PORT = 106

# Never on the public address, whatever the settings say (asserted by tests, the policy pack and the
# doctor's port probe): each TCP port a daemon on the host listens on, and what listens there.
NEVER_PUBLIC_SERVICES: dict[int, str] = {
    22: "ssh",
    53: "unbound (the host's resolver)",
    5432: "postgresql",
    6379: "redis",
    11332: "rspamd proxy",
    11333: "rspamd",
    11334: "rspamd web UI",
    NODE_EXPORTER_PORT: "node_exporter",
    PROMETHEUS_PORT: "prometheus",
    ALERTMANAGER_PORT: "alertmanager",
    BLACKBOX_EXPORTER_PORT: "blackbox_exporter",
    HEALTH_PORT: "nginx (health endpoints)",
    HEALTH_DATABASE_PORT: "sams-health-db (PostgreSQL check)",
    DOVECOT_STATS_PORT: "dovecot stats (OpenMetrics)",
    PASSWD_PORT: "sams-passwd (password change)",
}
NEVER_PUBLIC: frozenset[int] = frozenset(NEVER_PUBLIC_SERVICES)


@dataclass(frozen=True, order=True)
class Port:
    number: int
    proto: Proto
    exposure: Exposure
    service: str
    why: str


def port_policy(cfg: StackConfig) -> tuple[Port, ...]:
    access = cfg.client_access
    ports = [
        Port(25, "tcp", "public", "smtp", "inbound mail from other servers (MX)"),
        Port(465, "tcp", "public", "submissions", "mail clients submit over implicit TLS"),
        Port(587, "tcp", "public", "submission", "mail clients submit with STARTTLS"),
        Port(cfg.wireguard.port, "udp", "public", "wireguard", "the admin tunnel; all admin traffic rides it"),
        Port(143, "tcp", access.imap, "imap", "IMAP with STARTTLS for clients"),
        Port(993, "tcp", access.imap, "imaps", "IMAP over TLS (Gmail's fetcher, phones)"),
        Port(995, "tcp", access.pop3, "pop3s", "POP3 over TLS (Gmail's 'check mail from other accounts')"),
        Port(4190, "tcp", access.managesieve, "managesieve", "users edit their Sieve filters"),
        Port(22, "tcp", "vpn", "ssh", "administration and every pulumi-command step"),
        Port(5432, "tcp", "vpn", "postgresql", "admin access to the mail database"),
    ]
    if cfg.monitoring.enabled:
        ports.append(Port(NODE_EXPORTER_PORT, "tcp", "vpn", "node-exporter", "host metrics for Prometheus"))
        if cfg.monitoring.mode == "host":
            ports += [
                Port(PROMETHEUS_PORT, "tcp", "vpn", "prometheus", "the host's Prometheus: queries, its web UI"),
                Port(ALERTMANAGER_PORT, "tcp", "vpn", "alertmanager", "silences and alerts in Alertmanager's UI"),
            ]
        # Health checks, in either mode (components/monitoring/health.py).
        ports += [
            Port(BLACKBOX_EXPORTER_PORT, "tcp", "vpn", "blackbox-exporter", "protocol probes of each daemon"),
            Port(HEALTH_PORT, "tcp", "vpn", "health", "HTTPS /health/<check>: 200 or 503 from the probes"),
        ]
    web = cfg.webmail
    if web.enabled and web.exposure == "vpn" and not cfg.public_web:
        # With publicWeb, 443 is public and the tunnel reaches it too; without it, only the webmail's.
        ports.append(Port(443, "tcp", "vpn", "webmail", "webmail and calendars, for the VPN's peers"))
    if cfg.public_web:
        ports += [
            Port(80, "tcp", "public", "http", "ACME HTTP-01 challenges; redirects to HTTPS"),
            Port(443, "tcp", "public", "https", "MTA-STS policy host and autoconfig"),
        ]
    return tuple(sorted(ports))


def public_ports(cfg: StackConfig) -> tuple[Port, ...]:
    return tuple(p for p in port_policy(cfg) if p.exposure == "public")


def vpn_ports(cfg: StackConfig) -> tuple[Port, ...]:
    return tuple(p for p in port_policy(cfg) if p.exposure == "vpn")


def nftables_conf(cfg: StackConfig) -> str:
    """/etc/nftables.conf for the host."""
    from components.render import render

    def numbers(ports: tuple[Port, ...], proto: Proto) -> list[int]:
        return sorted({p.number for p in ports if p.proto == proto})

    pub, vpn = public_ports(cfg), vpn_ports(cfg)
    return render(
        "firewall",
        "etc/nftables.conf.j2",
        public_tcp=numbers(pub, "tcp"),
        public_udp=numbers(pub, "udp"),
        # Public ports are reachable through the tunnel too; listing them keeps the rule explicit.
        vpn_tcp=numbers(vpn + pub, "tcp"),
        vpn_udp=numbers(vpn, "udp"),
        ports=port_policy(cfg),
        wg_interface="wg0",
    )
