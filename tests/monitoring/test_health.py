"""The health checks as the program renders them (components/monitoring/health.py): the ports (tunnel
only), the blackbox exporter's modules through its own `--config.check`, nginx's site through
`nginx -t`, and then nginx with its njs handler really serving /health/<check> on loopback here,
in front of a stand-in exporter (200 / 503 and the JSON body), and the PostgreSQL checker's answers.

The blackbox exporter, nginx and its njs module are this machine's (lab/requirements-apt.txt:
Debian's prometheus-blackbox-exporter, nginx, libnginx-mod-http-js); the lab test runs Debian 13's
own against the real daemons (lab/tests/test_alerts_lab.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.firewall.policy import NEVER_PUBLIC, nftables_conf, port_policy
from components.monitoring.daemons import RSPAMD_HEADERS_FILE
from components.monitoring.health import (
    CHECKS,
    DB_QUERY,
    DB_TOOL_SOURCE,
    JS_SOURCE,
    WEBMAIL_LOGIN_FORM,
    blackbox_yml,
    checks,
    nginx_site,
)
from components.monitoring.plan import (
    BLACKBOX_CONFIG,
    BLACKBOX_EXPORTER_PORT,
    HEALTH_DATABASE_PORT,
    HEALTH_DB_UNIT_FILES,
    HEALTH_JS,
    HEALTH_PACKAGES,
    HEALTH_PORT,
    HEALTH_SITE,
    HEALTH_SITE_ENABLED,
    NGINX_DROPIN,
)
from components.monitoring.steps import disabled_step, monitoring_step, packages_step, prometheus_yml
from components.tls.certs import TLS_FULLCHAIN, TLS_KEY
from tests.monitoring.test_monitoring import settings_with

BLACKBOX = shutil.which("prometheus-blackbox-exporter")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
NJS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")
MISSING = "apt-get install $(cat lab/requirements-apt.txt)"


def _files(settings: Any) -> dict[str, str]:
    return {f.path: f.content for f in monitoring_step(settings, webhook=True).files}


# --- the ports: the firewall's one list, tunnel only -----------------------------------------------


@pytest.mark.parametrize("mode", ["host", "external"])
def test_the_health_ports_are_on_the_tunnel_only(mode: str) -> None:
    cfg = settings_with("prod", {"enabled": True, "mode": mode}).config
    listed = {p.number: p for p in port_policy(cfg)}
    assert listed[BLACKBOX_EXPORTER_PORT].exposure == listed[HEALTH_PORT].exposure == "vpn"
    # The PostgreSQL checker is on loopback: no rule opens it anywhere.
    assert HEALTH_DATABASE_PORT not in listed
    assert {BLACKBOX_EXPORTER_PORT, HEALTH_PORT, HEALTH_DATABASE_PORT} <= NEVER_PUBLIC
    conf = nftables_conf(cfg)
    public_line = next(line for line in conf.splitlines() if line.strip().startswith("tcp dport"))
    vpn_line = next(line for line in conf.splitlines() if 'iifname "wg0" tcp dport' in line)
    for port in (BLACKBOX_EXPORTER_PORT, HEALTH_PORT):
        assert re.search(rf"\b{port}\b", vpn_line) and not re.search(rf"\b{port}\b", public_line)


def test_monitoring_off_opens_no_health_port() -> None:
    cfg = settings_with("prod", {"enabled": False}).config
    assert not {BLACKBOX_EXPORTER_PORT, HEALTH_PORT} & {p.number for p in port_policy(cfg)}


# --- one list of checks: modules, nginx locations, Prometheus's probe job ------------------------------


def test_every_check_is_a_module_an_endpoint_and_a_probe_target() -> None:
    settings = settings_with("lab", {"enabled": True})
    names = [c.name for c in checks(settings)]
    assert names == ["smtp", "imap", "database", "webmail", "calendars"]  # the lab's webmail has calendars
    modules = yaml.safe_load(blackbox_yml(settings))["modules"]
    assert set(modules) == {c.module for c in checks(settings)}
    site = nginx_site(settings)
    assert re.findall(r"location = /health/(\w+) ", site) == names
    wg = str(settings.config.wireguard.address)
    assert re.findall(r"^\s*listen (\S+) ssl;", site, re.M) == [f"{wg}:{HEALTH_PORT}"]
    assert f"proxy_pass http://{wg}:{BLACKBOX_EXPORTER_PORT};" in site
    for check in checks(settings):
        query = urllib.parse.urlencode({"module": check.module, "target": check.target})
        assert f"rewrite ^ /probe?{query} break;" in site
    job = next(j for j in yaml.safe_load(prometheus_yml(settings))["scrape_configs"] if j["job_name"] == "health")
    assert job["metrics_path"] == "/probe"
    assert [(sc["targets"], sc["labels"]["check"], sc["labels"]["__param_module"]) for sc in job["static_configs"]] == [
        ([c.target], c.name, c.module) for c in checks(settings)
    ]
    assert {"target_label": "__address__", "replacement": f"{wg}:{BLACKBOX_EXPORTER_PORT}"} in job["relabel_configs"]


@pytest.mark.parametrize(
    ("webmail", "names"),
    [
        ({"enabled": False}, ["smtp", "imap", "database"]),
        ({"calendars": False}, ["smtp", "imap", "database", "webmail"]),
    ],
)
def test_the_webmail_and_calendar_checks_come_and_go_with_them(webmail: dict[str, Any], names: list[str]) -> None:
    settings = settings_with("lab", {"enabled": True}, **{"sams:webmail": webmail})
    assert [c.name for c in checks(settings)] == names
    assert set(yaml.safe_load(blackbox_yml(settings))["modules"]) == {c.module for c in checks(settings)}
    assert re.findall(r"location = /health/(\w+) ", nginx_site(settings)) == names


def test_the_webmail_probe_asks_for_the_login_page_by_name_and_radicale_for_a_password() -> None:
    settings = settings_with("lab", {"enabled": True})
    modules = yaml.safe_load(blackbox_yml(settings))["modules"]
    web = modules["sams_webmail"]["http"]
    # nginx's webmail server listens on the tunnel's address with either exposure, and picks it by name.
    target = next(c.target for c in checks(settings) if c.name == "webmail")
    assert target == f"https://{settings.config.wireguard.address}/"
    assert web["headers"] == {"Host": str(settings.config.hostname)}
    assert web["tls_config"]["server_name"] == str(settings.config.hostname)
    assert web["valid_status_codes"] == [200] and web["fail_if_body_not_matches_regexp"] == [WEBMAIL_LOGIN_FORM]
    assert web["no_follow_redirects"] is True
    dav = modules["sams_calendars"]["http"]
    assert dav["method"] == "PROPFIND" and dav["valid_status_codes"] == [401]
    assert dav["fail_if_header_not_matches"][0]["header"] == "WWW-Authenticate"


def test_the_smtp_probe_speaks_starttls_and_the_imap_probe_tls() -> None:
    modules = yaml.safe_load(blackbox_yml(settings_with("lab", {"enabled": True})))["modules"]
    steps = modules["sams_smtp"]["tcp"]["query_response"]
    assert steps[0] == {"expect": "^220 "} and {"starttls": True} in steps
    sent = [s["send"] for s in steps if "send" in s]
    assert sent == ["EHLO mail.sams.test\r", "STARTTLS\r", "EHLO mail.sams.test\r", "QUIT\r"]
    assert steps.index({"send": "STARTTLS\r"}) < steps.index({"starttls": True})
    imap = modules["sams_imap"]["tcp"]
    assert imap["tls"] is True and {"expect": "^\\* CAPABILITY .*IMAP4rev1"} in imap["query_response"]
    assert modules["sams_database"]["http"]["valid_status_codes"] == [200]


def test_the_step_installs_checks_and_loads_the_health_site() -> None:
    for mode in ("host", "external"):
        settings = settings_with("dev", {"enabled": True, "mode": mode})
        spec = monitoring_step(settings, webhook=True)
        paths = {f.path for f in spec.files}
        assert {BLACKBOX_CONFIG, HEALTH_SITE, HEALTH_JS, NGINX_DROPIN, *HEALTH_DB_UNIT_FILES} <= paths
        # The packages come first, in their own step (nothing of them starts before the files).
        packages = packages_step(settings)
        assert packages is not None and all(f"installed {p} " in packages.script for p in HEALTH_PACKAGES)
        assert "apt-get install" not in spec.script
        script = spec.script
        # The exporter's own checker before any restart; nginx's link, check and reload.
        assert script.index(f"--config.check --config.file={BLACKBOX_CONFIG}") < script.index("start_unit ")
        assert script.index(f"ln -sfn {HEALTH_SITE}") < script.index("nginx -t -q") < script.index("reload-or-restart")


def test_monitoring_off_removes_the_health_endpoints() -> None:
    script = disabled_step().script
    removed = script.split("rm -f ", 1)[1].split("\n", 1)[0].split()
    assert {HEALTH_SITE_ENABLED, HEALTH_SITE, HEALTH_JS, NGINX_DROPIN} <= set(removed)
    assert "systemctl disable -q --now prometheus-blackbox-exporter.service" in script
    assert "systemctl disable -q --now sams-health-db.socket" in script
    assert script.index("rm -f ") < script.index("systemctl reload nginx")


# --- the daemons' own checkers ---------------------------------------------------------------------------


def test_the_blackbox_config_passes_the_exporters_own_check(tmp_path: Path) -> None:
    assert BLACKBOX, f"prometheus-blackbox-exporter missing: {MISSING}"
    good = tmp_path / "blackbox.yml"
    good.write_text(blackbox_yml(settings_with("prod", {"enabled": True})))
    out = subprocess.run([BLACKBOX, "--config.check", f"--config.file={good}"], capture_output=True, text=True)
    assert out.returncode == 0 and "Config file is ok" in out.stderr, out.stderr
    # The check can fail: a module with an unknown key.
    bad = tmp_path / "bad.yml"
    bad.write_text(good.read_text().replace("ip_protocol_fallback:", "ip_protocol_fallbak:", 1))
    out = subprocess.run([BLACKBOX, "--config.check", f"--config.file={bad}"], capture_output=True, text=True)
    assert out.returncode != 0, out.stderr


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=mail.sams.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nginx_tree(tmp_path: Path, site: str) -> Path:
    """An nginx prefix under tmp_path whose nginx.conf loads njs and includes the site, as Debian's does."""
    assert NGINX and NJS_MODULE.exists(), f"nginx or its njs module missing: {MISSING}"
    cert, key = _self_signed(tmp_path)
    site = site.replace(TLS_FULLCHAIN, str(cert)).replace(TLS_KEY, str(key)).replace(HEALTH_JS, str(tmp_path / "h.js"))
    site = site.replace(RSPAMD_HEADERS_FILE, str(tmp_path / "rspamd-headers.conf"))
    (tmp_path / "rspamd-headers.conf").write_text('proxy_set_header Password "read-only";\n')
    (tmp_path / "h.js").write_text(JS_SOURCE.read_text())
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "logs").mkdir(exist_ok=True)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"load_module {NJS_MODULE};\n"
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/logs/error.log info;\ndaemon off;\nmaster_process off;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n  access_log {tmp_path}/logs/access.log;\n  client_body_temp_path {tmp_path}/body;\n"
        f"  proxy_temp_path {tmp_path}/proxy;\n  include {tmp_path}/site.conf;\n}}\n"
    )
    return conf


def test_the_health_site_passes_nginx_t(tmp_path: Path) -> None:
    settings = settings_with("prod", {"enabled": True})
    # nginx -t binds the listen address: a loopback port here stands in for the tunnel's.
    wg = settings.config.wireguard.address
    site = nginx_site(settings).replace(f"{wg}:{HEALTH_PORT}", f"127.0.0.1:{_free_port()}")
    conf = _nginx_tree(tmp_path, site)
    out = subprocess.run([str(NGINX), "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert out.returncode == 0 and "test is successful" in out.stderr, out.stderr
    # nginx -t compiles the handler: a syntax error in it fails the check.
    (tmp_path / "h.js").write_text(JS_SOURCE.read_text().replace("function check(r) {", "function check(r) {{", 1))
    out = subprocess.run([str(NGINX), "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert out.returncode != 0, out.stderr


# --- nginx + njs really serving /health/<check>, a stand-in exporter behind it -------------------------


class FakeExporter:
    """Answers /probe?module=&target= like the blackbox exporter: probe_success per module as set."""

    def __init__(self) -> None:
        self.success: dict[str, int] = {}
        self.asked: list[dict[str, list[str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(url.query)
                outer.asked.append(query)
                ok = outer.success.get(query.get("module", [""])[0], 0)
                body = (
                    "# HELP probe_dns_lookup_time_seconds x\nprobe_dns_lookup_time_seconds 1e-05\n"
                    + "".join(f'filler_metric{{n="{n}"}} 1\n' for n in range(300))  # past one buffer page
                    + f"probe_duration_seconds 0.0123456\nprobe_success {ok}\n"
                ).encode()
                self.send_response(200 if url.path == "/probe" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, FakeExporter]]:
    """nginx in the foreground on a loopback port with the rendered site, the exporter a stand-in."""
    exporter = FakeExporter()
    port = _free_port()
    settings = settings_with("lab", {"enabled": True})
    wg = str(settings.config.wireguard.address)
    site = nginx_site(settings)
    site = site.replace(f"{wg}:{HEALTH_PORT}", f"127.0.0.1:{port}")
    site = site.replace(f"{wg}:{BLACKBOX_EXPORTER_PORT}", f"127.0.0.1:{exporter.port}")
    conf = _nginx_tree(tmp_path, site)
    proc = subprocess.Popen([str(NGINX), "-p", str(tmp_path), "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                assert time.monotonic() < deadline, "nginx did not listen within 10 s"
                time.sleep(0.1)
        yield port, exporter
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        exporter.close()


def _get(port: int, path: str) -> tuple[int, str, str]:
    import http.client

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.getheader("Content-Type") or "", reply.read().decode()
    finally:
        conn.close()


def test_health_answers_200_or_503_from_probe_success(served: tuple[int, FakeExporter]) -> None:
    port, exporter = served
    exporter.success = {"sams_smtp": 1, "sams_imap": 0, "sams_database": 1, "sams_webmail": 1}
    status, kind, body = _get(port, "/health/smtp")
    assert (status, kind) == (200, "application/json"), body
    assert json.loads(body) == {"check": "smtp", "status": "ok", "seconds": 0.012}
    status, _, body = _get(port, "/health/imap")
    assert status == 503 and json.loads(body)["status"] == "fail", body
    assert _get(port, "/health/database")[0] == 200
    assert _get(port, "/health/webmail")[0] == 200
    # Each endpoint asked the exporter for its own module and target.
    asked = [(q["module"][0], q["target"][0]) for q in exporter.asked]
    webmail = next(c for c in checks(settings_with("lab", {"enabled": True})) if c.name == "webmail")
    assert asked == [(c.module, c.target) for c in (*CHECKS, webmail)]
    # A check that does not exist, and the internal probe paths, are not reachable from outside.
    assert _get(port, "/health/nothing")[0] == 404
    assert _get(port, "/_probe/smtp")[0] == 404


def test_health_is_503_when_the_exporter_does_not_answer(served: tuple[int, FakeExporter]) -> None:
    port, exporter = served
    exporter.close()
    status, _, body = _get(port, "/health/smtp")
    assert status == 503 and json.loads(body) == {"check": "smtp", "status": "fail", "seconds": None}, body


# --- the PostgreSQL checker (files/sams-health-db.py), with a stand-in docker ----------------------------


def _db_check(tmp_path: Path, docker: str) -> tuple[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/argv\n{docker}\n')
    (bin_dir / "docker").chmod(0o755)
    out = subprocess.run(
        ["python3", str(DB_TOOL_SOURCE), "--container", "sams-postgres", "--user", "postgres", "--database", "sams",
         "--timeout", "3", DB_QUERY],
        input=b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", capture_output=True, timeout=20,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.decode().partition("\r\n\r\n")
    return head.splitlines()[0], body


def test_the_database_checker_runs_the_query_and_answers(tmp_path: Path) -> None:
    status, body = _db_check(tmp_path, "echo 2")
    assert (status, body) == ("HTTP/1.0 200 OK", "ok 2\n")
    argv = (tmp_path / "argv").read_text()
    assert argv.startswith("exec sams-postgres psql -U postgres -d sams -XAt -c ") and DB_QUERY in argv
    status, body = _db_check(tmp_path, 'echo "psql: error: connection to server failed" >&2; exit 2')
    assert (status, body) == ("HTTP/1.0 503 Service Unavailable", "fail psql: error: connection to server failed\n")
    status, body = _db_check(tmp_path, "sleep 10")
    assert status.endswith("503 Service Unavailable") and "no answer within 3" in body
    # The runtime failing to start psql (docker exec's 126) is tried once more; twice is a failure.
    once = tmp_path / "once"
    flaky = f'if [ -e {once} ]; then echo 3; else touch {once}; echo "OCI runtime exec failed" >&2; exit 126; fi'
    assert _db_check(tmp_path, flaky) == ("HTTP/1.0 200 OK", "ok 3\n")
    status, body = _db_check(tmp_path, 'echo "OCI runtime exec failed" >&2; exit 126')
    assert (status, body) == ("HTTP/1.0 503 Service Unavailable", "fail OCI runtime exec failed\n")
    # What the exporter's module wants from it.
    pattern = yaml.safe_load(blackbox_yml(settings_with("lab", {"enabled": True})))["modules"]["sams_database"]
    assert re.match(pattern["http"]["fail_if_body_not_matches_regexp"][0], "ok 2\n")
    assert not re.match(pattern["http"]["fail_if_body_not_matches_regexp"][0], "fail x\n")


# --- the exporter's modules against stand-in servers: the exchanges it expects -----------------------------


def _imap_over_tls(context: ssl.SSLContext, capability: bytes) -> tuple[socket.socket, int]:
    """A one-session-at-a-time IMAP server over TLS on loopback answering CAPABILITY with `capability`."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls, tls.makefile("rwb") as f:
                    f.write(b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n")
                    f.flush()
                    tag = f.readline().split()[0]
                    f.write(b"* CAPABILITY " + capability + b"\r\n" + tag + b" OK Capabilities listed.\r\n")
                    f.flush()
                    f.readline()
            except (OSError, IndexError):
                continue

    threading.Thread(target=serve, daemon=True).start()
    return server, int(server.getsockname()[1])


def test_the_modules_speak_smtp_starttls_and_imap_tls(tmp_path: Path) -> None:
    """This machine's blackbox exporter with the rendered modules, against an SMTP server offering
    STARTTLS (aiosmtpd, as the lab's receiver), a TLS IMAP server, and the same without what they check."""
    from aiosmtpd.controller import Controller

    assert BLACKBOX, f"prometheus-blackbox-exporter missing: {MISSING}"
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    smtp_tls = Controller(object(), hostname="127.0.0.1", port=_free_port(), tls_context=context)
    smtp_plain = Controller(object(), hostname="127.0.0.1", port=_free_port())  # no STARTTLS offered
    imap_ok, imap_port = _imap_over_tls(context, b"IMAP4rev1 SASL-IR ID ENABLE IDLE LITERAL+ AUTH=PLAIN")
    imap_bad, bad_port = _imap_over_tls(context, b"IMAP2")
    config = tmp_path / "blackbox.yml"
    config.write_text(blackbox_yml(settings_with("lab", {"enabled": True})))
    port = _free_port()
    exporter = subprocess.Popen(
        [BLACKBOX, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"], stderr=subprocess.DEVNULL
    )
    smtp_tls.start()
    smtp_plain.start()
    try:

        def probe(module: str, target: str) -> int:
            query = urllib.parse.urlencode({"module": module, "target": target})
            deadline = time.monotonic() + 10
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/probe?{query}", timeout=15) as reply:
                        found = re.search(r"^probe_success (\d)$", reply.read().decode(), re.M)
                        assert found
                        return int(found[1])
                except OSError:
                    assert time.monotonic() < deadline, "the exporter did not answer within 10 s"
                    time.sleep(0.2)

        assert probe("sams_smtp", f"127.0.0.1:{smtp_tls.port}") == 1
        assert probe("sams_smtp", f"127.0.0.1:{smtp_plain.port}") == 0
        assert probe("sams_smtp", f"127.0.0.1:{_free_port()}") == 0  # nothing listening
        assert probe("sams_imap", f"127.0.0.1:{imap_port}") == 1
        assert probe("sams_imap", f"127.0.0.1:{bad_port}") == 0
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
        smtp_tls.stop()
        smtp_plain.stop()
        imap_ok.close()
        imap_bad.close()
