"""Health checks (pure): one list that the blackbox exporter's modules, Prometheus's probe job, nginx's
/health/<check> endpoints, the runbook and the tests all read.

Each check is a real protocol exchange, run by Debian's blackbox exporter (a prober, not hand-written
code): SMTP on port 25 (banner, EHLO, STARTTLS, EHLO again inside TLS), IMAP over TLS on 993 (the
greeting, CAPABILITY). The blackbox exporter cannot speak SQL, so the database check is an HTTP probe
of `sams-health-db` (files/sams-health-db.py), which runs one query in the mail database through the
container (`docker exec ... psql`, as sams-metrics does) and answers 200 or 503.

nginx serves `https://<wireguard address>:HEALTH_PORT/health/<check>` with the host's certificate:
its njs handler (files/sams-health.js) asks the exporter's /probe for that check's module and target
and turns `probe_success` into 200 or 503 with a one-line JSON body. Prometheus scrapes the same
probes (job `health`): SamsHealthCheckFailed is "a daemon is down".

With the webmail on, `/health/webmail` fetches its login page through nginx, as a browser does
(nginx, PHP-FPM, Roundcube and its database); with calendars on, `/health/calendars` asks Radicale
itself for the DAV root without a password and expects its demand for one.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.database.roles import SUPERUSER as DB_SUPERUSER
from components.database.schema import DB_NAME
from components.database.steps import CONTAINER as DB_CONTAINER
from components.dav import plan as dav_plan
from components.monitoring import daemons
from components.monitoring.plan import (
    BLACKBOX_EXPORTER_PORT,
    HEALTH_DATABASE_PORT,
    HEALTH_DB_TOOL,
    HEALTH_DB_UNIT,
    HEALTH_JS,
    HEALTH_PORT,
)
from components.render import render
from components.tls.certs import CLIENT_CIPHER_LIST, TLS_FULLCHAIN, TLS_KEY
from settings import Settings

FILES = Path(__file__).resolve().parent / "files"
JS_SOURCE = FILES / "sams-health.js"
DB_TOOL_SOURCE = FILES / "sams-health-db.py"

# What the database check asks: the table every Postfix lookup reads. It needs the server up, the
# mail database there and its schema migrated, not only a listening port.
DB_QUERY = "SELECT count(*) FROM domains"
# A probe that has not finished by then has failed (Prometheus's scrape_timeout is 10 s).
PROBE_TIMEOUT_S = 5
DB_PROBE_TIMEOUT_S = 8


@dataclass(frozen=True)
class Check:
    name: str  # /health/<name>, the `check` label
    module: str  # the blackbox exporter's module
    target: str  # what the module probes, on the host itself
    what: str  # one line for the docs


CHECKS: tuple[Check, ...] = (
    Check(
        "smtp",
        "sams_smtp",
        "127.0.0.1:25",
        "Postfix on port 25: the 220 banner, EHLO offering STARTTLS, the TLS handshake, EHLO again inside TLS",
    ),
    Check(
        "imap",
        "sams_imap",
        "127.0.0.1:993",
        "Dovecot on port 993: the TLS handshake, the greeting, CAPABILITY naming IMAP4rev1",
    ),
    Check(
        "database",
        "sams_database",
        f"http://127.0.0.1:{HEALTH_DATABASE_PORT}/",
        f"PostgreSQL: `{DB_QUERY}` in the mail database, through sams-health-db",
    ),
)


WEBMAIL_LOGIN_FORM = 'name="_user"'  # Roundcube's login form: PHP ran Roundcube to the end


def webmail_check(settings: Settings) -> Check:
    """The webmail's login page at nginx's webmail server on the tunnel address (where it listens with
    either exposure), by the host's name as a browser asks for it."""
    return Check(
        "webmail",
        "sams_webmail",
        f"https://{settings.config.wireguard.address}/",
        "the webmail's login page through nginx: PHP-FPM ran Roundcube, which answered its login form",
    )


CALENDARS_CHECK = Check(
    "calendars",
    "sams_calendars",
    f"http://{dav_plan.LISTEN_HOST}:{dav_plan.LISTEN_PORT}/",
    "Radicale: PROPFIND on the DAV root without a password answers 401 asking for Basic credentials",
)


def checks(settings: Settings) -> tuple[Check, ...]:
    """The mail core's checks, and the webmail's and the calendars' while they run."""
    found = list(CHECKS)
    if settings.config.webmail.enabled:
        found.append(webmail_check(settings))
    if dav_plan.calendars_on(settings.config):
        found.append(CALENDARS_CHECK)
    return tuple(found)


def blackbox_listen(settings: Settings) -> str:
    return f"{settings.config.wireguard.address}:{BLACKBOX_EXPORTER_PORT}"


def health_listen(settings: Settings) -> str:
    return f"{settings.config.wireguard.address}:{HEALTH_PORT}"


def _tls(settings: Settings) -> dict[str, object]:
    # The probe proves the handshake works; whether the certificate is valid and current is
    # SamsCertificateExpiring's and the doctor's question (and a lab's or a bootstrap certificate
    # is not from a CA in the system store), so it is not verified here.
    return {"server_name": str(settings.config.hostname), "insecure_skip_verify": True}


def blackbox_config(settings: Settings) -> dict[str, object]:
    """The blackbox exporter's modules, one per check."""
    ehlo = f"EHLO {settings.config.hostname}\r"  # the exporter adds "\n": CRLF, as SMTP wants
    smtp = {
        "prober": "tcp",
        "timeout": f"{PROBE_TIMEOUT_S}s",
        "tcp": {
            "preferred_ip_protocol": "ip4",
            "ip_protocol_fallback": False,
            "tls_config": _tls(settings),
            "query_response": [
                # Lines that do not match are skipped: "220-" continuation lines, EHLO's other keywords.
                {"expect": "^220 "},
                {"send": ehlo},
                {"expect": "^250[ -]STARTTLS"},
                {"send": "STARTTLS\r"},
                {"expect": "^220 "},
                {"starttls": True},
                {"send": ehlo},
                {"expect": "^250 "},
                {"send": "QUIT\r"},
                {"expect": "^221 "},
            ],
        },
    }
    imap = {
        "prober": "tcp",
        "timeout": f"{PROBE_TIMEOUT_S}s",
        "tcp": {
            "preferred_ip_protocol": "ip4",
            "ip_protocol_fallback": False,
            "tls": True,
            "tls_config": _tls(settings),
            "query_response": [
                {"expect": "^\\* OK"},
                {"send": "a1 CAPABILITY\r"},
                {"expect": "^\\* CAPABILITY .*IMAP4rev1"},
                {"expect": "^a1 OK"},
                {"send": "a2 LOGOUT\r"},
            ],
        },
    }
    database = {
        "prober": "http",
        "timeout": f"{DB_PROBE_TIMEOUT_S}s",
        "http": {
            "preferred_ip_protocol": "ip4",
            "ip_protocol_fallback": False,
            "valid_status_codes": [200],
            "fail_if_body_not_matches_regexp": ["^ok "],
        },
    }
    modules: dict[str, object] = {"sams_smtp": smtp, "sams_imap": imap, "sams_database": database}
    if settings.config.webmail.enabled:
        modules["sams_webmail"] = {
            "prober": "http",
            "timeout": f"{PROBE_TIMEOUT_S}s",
            "http": {
                "preferred_ip_protocol": "ip4",
                "ip_protocol_fallback": False,
                # nginx chooses the webmail's server by the name, as for a browser.
                "headers": {"Host": str(settings.config.hostname)},
                "tls_config": _tls(settings),
                "no_follow_redirects": True,
                "valid_status_codes": [200],
                "fail_if_body_not_matches_regexp": [WEBMAIL_LOGIN_FORM],
            },
        }
    if dav_plan.calendars_on(settings.config):
        modules["sams_calendars"] = {
            "prober": "http",
            "timeout": f"{PROBE_TIMEOUT_S}s",
            "http": {
                "preferred_ip_protocol": "ip4",
                "ip_protocol_fallback": False,
                # No password: Radicale answers without asking Dovecot anything.
                "method": "PROPFIND",
                "headers": {"Depth": "0"},
                "valid_status_codes": [401],
                "fail_if_header_not_matches": [
                    {"header": "WWW-Authenticate", "regexp": "^Basic ", "allow_missing": False}
                ],
            },
        }
    assert set(modules) == {c.module for c in checks(settings)}
    return {"modules": modules}


def blackbox_yml(settings: Settings) -> str:
    header = "# Managed by SAMS (components/monitoring/health.py): one module per health check.\n"
    return header + yaml.safe_dump(blackbox_config(settings), sort_keys=False, width=120)


def scrape_config(settings: Settings) -> dict[str, object]:
    """Prometheus's job `health`: each check's probe through the exporter (probe_success per `check`)."""
    mon = settings.config.monitoring
    return {
        "job_name": "health",
        "scrape_interval": f"{mon.scrape_interval_seconds}s",
        "metrics_path": "/probe",
        "static_configs": [
            {
                "targets": [c.target],
                # __param_module: the exporter's ?module= for this target.
                "labels": {"host": str(settings.config.hostname), "check": c.name, "__param_module": c.module},
            }
            for c in checks(settings)
        ],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": blackbox_listen(settings)},
        ],
    }


def probe_query(check: Check) -> str:
    """The exporter's /probe URL path and query for one check."""
    return "/probe?" + urllib.parse.urlencode({"module": check.module, "target": check.target})


def nginx_site(settings: Settings) -> str:
    return render(
        "monitoring",
        "etc/nginx/sites-available/sams-health.j2",
        listen=health_listen(settings),
        blackbox=blackbox_listen(settings),
        checks=[(c.name, probe_query(c)) for c in checks(settings)],
        metrics=daemons.nginx_locations(),
        health_js=HEALTH_JS,
        tls_fullchain=TLS_FULLCHAIN,
        tls_key=TLS_KEY,
        client_ciphers=CLIENT_CIPHER_LIST,
    )


def db_socket() -> str:
    return render("monitoring", "etc/systemd/system/sams-health-db.socket.j2", port=HEALTH_DATABASE_PORT)


def db_service() -> str:
    return render(
        "monitoring",
        "etc/systemd/system/sams-health-db@.service.j2",
        tool=HEALTH_DB_TOOL,
        container=DB_CONTAINER,
        superuser=DB_SUPERUSER,
        database=DB_NAME,
        query=DB_QUERY,
        timeout=DB_PROBE_TIMEOUT_S - 2,
        unit=HEALTH_DB_UNIT,
    )


__all__ = ["CHECKS", "Check", "blackbox_yml", "checks", "nginx_site", "scrape_config"]
