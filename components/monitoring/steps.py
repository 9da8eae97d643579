"""The monitoring step (pure): node_exporter with SAMS's own textfile metrics, and on `mode: host`
Prometheus and Alertmanager, every listener on the WireGuard address (components/firewall opens
their ports on wg0 only).

With `mode: external` the host runs node_exporter alone and `external_config()` is what the
owner's Prometheus needs (the stack output `monitoring`). With monitoring off the step stops the
units, and removes the secrets, the metrics writer and the drop-ins it put there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import yaml

from components.backup.plan import CONFIG_FILE as BACKUP_CONFIG
from components.backup.plan import STATUS_FILE as BACKUP_STATUS
from components.database.roles import SUPERUSER as DB_SUPERUSER
from components.database.steps import CONTAINER as DB_CONTAINER
from components.keys.rotation import DkimPhase
from components.mail.services import LOGS_TOOL, RESOLVER, VMAIL_ROOT
from components.monitoring import daemons, health
from components.monitoring.plan import (
    ALERTMANAGER_CONFIG,
    ALERTMANAGER_PORT,
    ALERTMANAGER_UNIT,
    BLACKBOX_CONFIG,
    BLACKBOX_UNIT,
    DEFAULTS,
    DROPINS,
    EXPORTER_PACKAGES,
    EXPORTER_UNITS,
    HEALTH_DB_TOOL,
    HEALTH_DB_UNIT,
    HEALTH_DB_UNIT_FILES,
    HEALTH_JS,
    HEALTH_PACKAGES,
    HEALTH_SITE,
    HEALTH_SITE_ENABLED,
    HEALTH_UNITS,
    HEARTBEAT_URL,
    HEARTBEAT_URL_FILE,
    LOG_COUNTERS,
    METRICS_CONFIG,
    METRICS_TOOL,
    METRICS_UNIT,
    NGINX_DROPIN,
    NODE_EXPORTER_PORT,
    NODE_EXPORTER_UNIT,
    PACKAGES,
    PROMETHEUS_CONFIG,
    PROMETHEUS_PORT,
    PROMETHEUS_UNIT,
    PUBLIC_IPV4,
    RULES_FILE,
    SERVER_UNITS,
    SMTP_PASSWORD,
    SMTP_PASSWORD_FILE,
    TEXTFILE,
    TEXTFILE_DIR,
    WATCHED_UNITS,
    WEBHOOK_URL,
    WEBHOOK_URL_FILE,
)
from components.monitoring.rules import HEARTBEAT, rules_yaml
from components.remote.packages import install_missing
from components.remote.steps import File, StepSpec, late, stop_units
from components.render import render
from components.tls.certs import NGINX_DEFAULT_SITE, TLS_FULLCHAIN
from settings import Settings
from settings.times import format_duration

TOOL_SOURCE = Path(__file__).resolve().parent / "files" / "sams-metrics.py"
# Each secret's file on the host and its late value's name.
SECRET_FILES = (
    (WEBHOOK_URL_FILE, WEBHOOK_URL),
    (HEARTBEAT_URL_FILE, HEARTBEAT_URL),
    (SMTP_PASSWORD_FILE, SMTP_PASSWORD),
)


# Go's soft memory limit for Prometheus (GOMEMLIMIT, /etc/default/prometheus): near it the garbage
# collector runs sooner instead of letting the heap grow to twice what is live. Without it the lab
# measured Prometheus + Alertmanager at 124 MiB PSS after 32 minutes at a 15 s scrape, over issue
# 22's 120 MiB; at 28 MiB Prometheus's own (anonymous) memory stayed at 23-25 MiB for an hour
# (113 MiB with Alertmanager), for 118 ms of CPU per 15 s scrape instead of 19 (docs/monitoring.md).
# 20 MiB cost nine times the CPU in minutes: too close to what is live.
PROMETHEUS_GO_MEMORY_LIMIT_MIB = 28


def _render(template: str, **context: object) -> str:
    return render("monitoring", template, **context)


def listen(settings: Settings, port: int) -> str:
    """Every listener: the host's WireGuard address, never the public one."""
    return f"{settings.config.wireguard.address}:{port}"


# Of Prometheus's and Alertmanager's own metrics (~1,000 series together, most of the head on a
# small host), only these are kept: their `up` (always recorded) is what SamsTargetDown needs, and
# these say how full the head is and whether rules or notifications fail. The lab measured
# Prometheus + Alertmanager at 121.3 MiB PSS after 7 minutes with all of them, over the 120 budget.
SELF_METRICS: tuple[str, ...] = (
    "prometheus_tsdb_head_series",
    "prometheus_rule_evaluation_failures_total",
    "prometheus_notifications_dropped_total",
    "alertmanager_notifications_total",
    "alertmanager_notifications_failed_total",
)


def scrape_configs(settings: Settings, *, server: bool) -> list[dict[str, object]]:
    """Prometheus scrape jobs: node_exporter, and on a host-run Prometheus itself and Alertmanager;
    then the health checks' probes (job `health`, components/monitoring/health.py).

    Every target carries `host` (the mail host's name): Alertmanager groups an outage's alerts by it."""
    mon = settings.config.monitoring
    jobs: list[tuple[str, int, tuple[str, ...]]] = [("node", NODE_EXPORTER_PORT, ())]
    if server:
        jobs += [("prometheus", PROMETHEUS_PORT, SELF_METRICS), ("alertmanager", ALERTMANAGER_PORT, SELF_METRICS)]
    configs: list[dict[str, object]] = [
        {
            "job_name": job,
            "scrape_interval": f"{mon.scrape_interval_seconds}s",
            "static_configs": [
                {"targets": [listen(settings, port)], "labels": {"host": str(settings.config.hostname)}}
            ],
            **(
                {"metric_relabel_configs": [{"source_labels": ["__name__"], "regex": "|".join(keep), "action": "keep"}]}
                if keep
                else {}
            ),
        }
        for job, port, keep in jobs
    ]
    return [*configs, health.scrape_config(settings), *daemons.scrape_configs(settings)]


def prometheus_yml(settings: Settings) -> str:
    jobs = yaml.safe_dump(scrape_configs(settings, server=True), sort_keys=False, width=120)
    return _render(
        "etc/prometheus/prometheus.yml.j2",
        scrape_interval=f"{settings.config.monitoring.scrape_interval_seconds}s",
        rules_file=RULES_FILE,
        alertmanager=listen(settings, ALERTMANAGER_PORT),
        scrape_configs="".join(f"  {line}\n" for line in jobs.splitlines()).rstrip("\n"),
    )


def smtp(settings: Settings) -> dict[str, object]:
    """Where Alertmanager's e-mail goes: the relay when one is set (its login), else the host's Postfix."""
    relay = settings.config.relay
    if relay is not None:
        return {"smarthost": f"{relay.host}:{relay.port}", "smtp_username": relay.username, "smtp_loopback": False}
    return {"smarthost": "127.0.0.1:25", "smtp_username": None, "smtp_loopback": True}


def alertmanager_yml(settings: Settings, *, webhook: bool, heartbeat: bool = False) -> str:
    mon = settings.config.monitoring
    return _render(
        "etc/prometheus/alertmanager.yml.j2",
        webhook=webhook,
        webhook_url_file=WEBHOOK_URL_FILE,
        heartbeat=heartbeat,
        heartbeat_alert=HEARTBEAT,
        heartbeat_url_file=HEARTBEAT_URL_FILE,
        email_to=mon.email_to,
        group_interval_minutes=mon.notify_interval_minutes,
        email_from=f"alertmanager@{settings.config.hostname}",
        hostname=str(settings.config.hostname),
        smtp_password_file=SMTP_PASSWORD_FILE,
        **smtp(settings),
    )


def metrics_config(settings: Settings, wg_interface: str, dkim: DkimPhase | None = None) -> dict[str, object]:
    mon = settings.config.monitoring
    return {
        "wireguard_interface": wg_interface,
        "postgres": {"container": DB_CONTAINER, "superuser": DB_SUPERUSER},
        "backup_config": BACKUP_CONFIG,
        "backup_status": BACKUP_STATUS,
        "certificates": [TLS_FULLCHAIN],
        "mail_root": VMAIL_ROOT,
        "logs_tool": LOGS_TOOL,
        "log_counters": LOG_COUNTERS,
        # A new counter series stays at 0 for two scrapes: Prometheus must see it before its first rise.
        "log_counters_hold_s": 2 * mon.scrape_interval_seconds,
        # The blocklists are asked through the host's own resolver (a shared one is refused by them)
        # about the host's public address, known once the host exists (a late value).
        "resolver": RESOLVER,
        "blocklists": mon.blocklists,
        "public_addresses": [late(PUBLIC_IPV4)] if mon.blocklists else [],
        # ClamAV's daemon only where antivirus is on.
        "units": [*WATCHED_UNITS, *(["clamav-daemon.service"] if settings.config.antivirus.clamav else [])],
        "dkim": None
        if dkim is None
        else {
            "phase": dkim.phase,
            "signing": dkim.signing,
            "next_change": dkim.next_change.timestamp() if dkim.next_change else None,
        },
        "textfile": TEXTFILE,
    }


def health_files(settings: Settings, ctx: Mapping[str, object]) -> list[File]:
    """The health checks' files (components/monitoring/health.py): the blackbox exporter's modules,
    nginx's /health site and its njs handler, the PostgreSQL checker and its socket."""
    socket_unit, service_unit = HEALTH_DB_UNIT_FILES
    return [
        File(BLACKBOX_CONFIG, health.blackbox_yml(settings)),
        File(HEALTH_SITE, health.nginx_site(settings)),
        File(HEALTH_JS, health.JS_SOURCE.read_text()),
        File(NGINX_DROPIN, _render("etc/systemd/system/_unit_.service.d/10-sams.conf.j2", **ctx)),
        File(HEALTH_DB_TOOL, health.DB_TOOL_SOURCE.read_text(), mode="0755"),
        File(socket_unit, health.db_socket()),
        File(service_unit, health.db_service()),
        *daemons.secret_files(),
    ]


# After the packages (nginx loads the njs module only once libnginx-mod-http-js is installed): the
# PostgreSQL checker's socket, then nginx's /health site linked, checked and loaded.
HEALTH_SCRIPT = f"""\
systemctl enable -q {HEALTH_DB_UNIT}.socket
if changed {HEALTH_DB_UNIT_FILES[0]}; then
    systemctl restart {HEALTH_DB_UNIT}.socket
else
    systemctl start {HEALTH_DB_UNIT}.socket
fi
reload_nginx=0
if [ "$(readlink {HEALTH_SITE_ENABLED} || true)" != "{HEALTH_SITE}" ]; then
    ln -sfn {HEALTH_SITE} {HEALTH_SITE_ENABLED}
    reload_nginx=1
fi
# Without sams:publicWeb nothing else starts nginx: Debian's default site must not come with it.
if [ -e {NGINX_DEFAULT_SITE} ] || [ -L {NGINX_DEFAULT_SITE} ]; then
    rm -f {NGINX_DEFAULT_SITE}
    reload_nginx=1
fi
for file in {HEALTH_SITE} {HEALTH_JS} {NGINX_DROPIN} {daemons.RSPAMD_HEADERS_FILE}; do
    if changed "$file"; then reload_nginx=1; fi
done
nginx -t -q
systemctl enable -q nginx
if [ "$reload_nginx" = 1 ] || ! systemctl is-active -q nginx; then
    systemctl reload-or-restart nginx
fi
"""


def late_values(settings: Settings, *, webhook: bool, heartbeat: bool = False) -> tuple[str, ...]:
    """The secrets the step takes on stdin: Rspamd's read-only password for nginx's /metrics/rspamd (either
    mode), and with a host-run Alertmanager the webhook and heartbeat URLs, the relay password for e-mail."""
    mon = settings.config.monitoring
    if not mon.enabled:
        return ()
    always = (*daemons.LATE_VALUES, *((PUBLIC_IPV4,) if mon.blocklists else ()))
    if mon.mode != "host":
        return always
    names = [*always, WEBHOOK_URL] if webhook else [*always]
    if heartbeat:
        names.append(HEARTBEAT_URL)
    if mon.email_to and smtp(settings)["smtp_username"]:
        names.append(SMTP_PASSWORD)
    return tuple(names)


def packages_step(settings: Settings) -> StepSpec | None:
    """The monitoring packages, installed before the monitoring step writes over their conffiles (so
    sams-apply keeps the packages' own versions to put back when monitoring goes off); None when off."""
    mon = settings.config.monitoring
    if not mon.enabled:
        return None
    packages = PACKAGES if mon.mode == "host" else (*EXPORTER_PACKAGES, *HEALTH_PACKAGES)
    return StepSpec(
        name="monitoring-packages", script=install_missing(packages), description="monitoring's Debian packages"
    )


def monitoring_step(
    settings: Settings, *, webhook: bool = False, heartbeat: bool = False, dkim: DkimPhase | None = None
) -> StepSpec:
    """`webhook`, `heartbeat`: whether the secrets sams:monitoringWebhookUrl and
    sams:monitoringHeartbeatUrl are set; `dkim`: the DKIM rotation phase this run applies."""
    from cloudinit import WG_INTERFACE  # here: cloudinit imports the firewall, which imports monitoring's plan

    mon = settings.config.monitoring
    if not mon.enabled:
        return disabled_step()
    server = mon.mode == "host"
    units = (*EXPORTER_UNITS, *SERVER_UNITS, *HEALTH_UNITS) if server else (*EXPORTER_UNITS, *HEALTH_UNITS)
    listens = {
        NODE_EXPORTER_UNIT: listen(settings, NODE_EXPORTER_PORT),
        PROMETHEUS_UNIT: listen(settings, PROMETHEUS_PORT),
        ALERTMANAGER_UNIT: listen(settings, ALERTMANAGER_PORT),
        BLACKBOX_UNIT: health.blackbox_listen(settings),
    }
    ctx = {
        "retention_time": format_duration(mon.retention_time),
        "retention_size": f"{mon.retention_size_mib}MB",
        "go_memory_limit_mib": PROMETHEUS_GO_MEMORY_LIMIT_MIB,
        "textfile_dir": TEXTFILE_DIR,
        "wg_interface": WG_INTERFACE,
        "tool": METRICS_TOOL,
        "blackbox_config": BLACKBOX_CONFIG,
    }
    files = [
        File(METRICS_TOOL, TOOL_SOURCE.read_text(), mode="0755"),
        File(
            METRICS_CONFIG,
            json.dumps(metrics_config(settings, WG_INTERFACE, dkim), indent=1, sort_keys=True) + "\n",
            mode="0600",  # it carries a late value (the public address): root's, as sams-metrics runs
        ),
        *(
            File(path, _render(f"{path.lstrip('/')}.j2", **ctx))
            for path in (f"/etc/systemd/system/{METRICS_UNIT}.{kind}" for kind in ("service", "timer"))
        ),
    ]
    for unit in units:
        files += [
            File(DEFAULTS[unit], _render(f"etc/default/{unit}.j2", listen=listens[unit], **ctx)),
            File(DROPINS[unit], _render("etc/systemd/system/_unit_.service.d/10-sams.conf.j2", **ctx)),
        ]
    files += health_files(settings, ctx)
    secrets = late_values(settings, webhook=webhook, heartbeat=heartbeat)
    if server:
        files += [
            File(PROMETHEUS_CONFIG, prometheus_yml(settings)),
            File(RULES_FILE, rules_yaml(settings)),
            File(ALERTMANAGER_CONFIG, alertmanager_yml(settings, webhook=webhook, heartbeat=heartbeat)),
        ]
        # Root's and Alertmanager's group's only (the group is set once the package made it).
        files += [File(path, late(name) + "\n", mode="0640") for path, name in SECRET_FILES if name in secrets]
    secret_files = " ".join(f.path for f in files if f.mode == "0640")
    restarts = "\n".join(
        f"start_unit {unit} {DEFAULTS[unit]} {DROPINS[unit]}"
        + (f" {PROMETHEUS_CONFIG} {RULES_FILE}" if unit == PROMETHEUS_UNIT else "")
        + (f" {ALERTMANAGER_CONFIG} {secret_files}" if unit == ALERTMANAGER_UNIT else "")
        + (f" {BLACKBOX_CONFIG}" if unit == BLACKBOX_UNIT else "")
        for unit in units
    )
    server_off = "" if server else stop_units(*SERVER_UNITS) + f"rm -f {' '.join(DROPINS[u] for u in SERVER_UNITS)}\n"
    verify = (
        f"""\
# The daemons' own checkers on the rendered files: a bad file stops the step before any restart.
promtool check config {PROMETHEUS_CONFIG} >/dev/null
amtool check-config {ALERTMANAGER_CONFIG} >/dev/null
"""
        if server
        else ""
    ) + (
        # It logs to stderr even when the file is fine: shown only when it is not.
        f"out=$(prometheus-blackbox-exporter --config.check --config.file={BLACKBOX_CONFIG} 2>&1)"
        " || { printf '%s\\n' \"$out\" >&2; exit 1; }\n"
    )
    script = f"""\
changed() {{ printf '%s\\n' "$SAMS_CHANGED" | grep -qxF "$1"; }}
start_unit() {{
    unit=$1; shift
    systemctl enable -q "$unit.service"
    for file in "$@"; do
        if changed "$file"; then
            systemctl restart "$unit.service"
            return 0
        fi
    done
    systemctl start "$unit.service"
}}
{f"chgrp prometheus {secret_files}" if secret_files else ""}
{_remove_absent_secrets(secrets)}{server_off}{verify}systemctl daemon-reload
{restarts}
{HEALTH_SCRIPT}install -d -m 0755 {TEXTFILE_DIR}
/usr/bin/python3 {METRICS_TOOL}
systemctl enable -q --now {METRICS_UNIT}.timer
"""
    return StepSpec(
        name="monitoring",
        files=tuple(files),
        script=script,
        late_values=secrets,
        description=f"monitoring ({mon.mode}): node_exporter" + (", Prometheus, Alertmanager" if server else ""),
    )


def _remove_absent_secrets(secrets: tuple[str, ...]) -> str:
    """A secret unset since the last apply leaves no file behind."""
    gone = [path for path, name in SECRET_FILES if name not in secrets]
    return f"rm -f {' '.join(gone)}\n" if gone else ""


def disabled_step() -> StepSpec:
    """Monitoring off: its units stopped and disabled, its secrets, writer, metrics, drop-ins and
    health endpoints gone (the packages and Prometheus's stored samples stay)."""
    leftovers = " ".join(
        [
            HEALTH_SITE_ENABLED,
            HEALTH_SITE,
            HEALTH_JS,
            HEALTH_DB_TOOL,
            NGINX_DROPIN,
            daemons.RSPAMD_HEADERS_FILE,
            *(path for path, _ in SECRET_FILES),
            METRICS_TOOL,
            METRICS_CONFIG,
            TEXTFILE,
            LOG_COUNTERS,
            f"{LOG_COUNTERS}.lock",
            *(f"/etc/systemd/system/{METRICS_UNIT}.{kind}" for kind in ("service", "timer")),
            *DROPINS.values(),
        ]
    )
    script = (
        f"""\
if [ -e /etc/systemd/system/{METRICS_UNIT}.timer ]; then
    systemctl disable -q --now {METRICS_UNIT}.timer
fi
# A run that failed leaves no failed unit behind once its file is gone.
systemctl reset-failed {METRICS_UNIT}.service 2>/dev/null || true
"""
        + stop_units(*EXPORTER_UNITS, *SERVER_UNITS, *HEALTH_UNITS)
        + f"""\
if [ -e {HEALTH_DB_UNIT_FILES[0]} ]; then
    systemctl disable -q --now {HEALTH_DB_UNIT}.socket
fi
"""
        + f"rm -f {leftovers}\nsystemctl daemon-reload\n"
        + """\
# The /health site is gone (sams-apply removed its files, this its link): nginx forgets it.
if systemctl is-active -q nginx; then
    nginx -t -q
    systemctl reload nginx
fi
"""
    )
    return StepSpec(name="monitoring", script=script, description="monitoring off")


def external_config(settings: Settings) -> dict[str, str]:
    """For the owner's own Prometheus (mode external): its scrape jobs and the rules file, as YAML."""
    return {
        "scrapeConfigs": yaml.safe_dump(scrape_configs(settings, server=False), sort_keys=False, width=120),
        "rules": rules_yaml(settings),
    }


__all__ = ["alertmanager_yml", "disabled_step", "external_config", "monitoring_step", "prometheus_yml"]
