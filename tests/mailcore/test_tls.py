"""TLS with the real daemons in a Debian 13 tree: nginx serving the MTA-STS policy, the mail clients'
autoconfiguration and the ACME webroot, certbot reading its configuration, and the deploy hook
switching every daemon from the bootstrap certificate to certbot's lineage.

The mail steps are installed first (conftest `mail_root`: mail-base makes the bootstrap pair), then
the TLS steps' files; the tls-web script runs (systemctl is the recording stub). nginx runs in a
private network namespace inside the tree, so nothing listens on this machine.

    sudo .venv/bin/python -m pytest -m chroot tests/mailcore/test_tls.py
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import settings
from components.dns.plan import mta_sts_policy
from components.tls import autoconfig, certs
from lab.trixie_chroot import run_in
from tests.mailcore.conftest import DUMMY_LATE, SYSTEMCTL_LOG, install_step, run_step_script

pytestmark = pytest.mark.chroot


def _ok(root: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    result = run_in(root, list(argv), env=env)
    assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _target(root: Path, path: str) -> str:
    """Where the link at `path` points, as an absolute path inside the tree."""
    return os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(root / path.lstrip("/"))))


def _systemctl_calls(root: Path) -> list[str]:
    log = root / SYSTEMCTL_LOG.lstrip("/")
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def tls_root(mail_root: Path, lab_settings: settings.Settings) -> Iterator[Path]:
    """The mail tree plus the TLS steps' files; the tls-web script has run once."""
    web, certbot = certs.tls_steps(lab_settings)
    assert (web.name, certbot.name) == ("tls-web", "tls-certbot")
    changed = install_step(mail_root, web, DUMMY_LATE)
    run_step_script(mail_root, web, DUMMY_LATE, changed)
    install_step(mail_root, certbot, DUMMY_LATE)  # its script asks the ACME server: the lab does that
    yield mail_root


# --- the bootstrap certificate --------------------------------------------------------------------


def test_daemons_start_on_a_bootstrap_pair_behind_the_stable_paths(tls_root: Path, lab_settings) -> None:
    for path, name in ((certs.TLS_FULLCHAIN, "fullchain.pem"), (certs.TLS_KEY, "privkey.pem")):
        assert _target(tls_root, path) == f"{certs.BOOTSTRAP_DIR}/{name}"
    assert (tls_root / certs.TLS_KEY.lstrip("/")).stat().st_mode & 0o077 == 0
    text = _ok(tls_root, "openssl", "x509", "-in", certs.TLS_FULLCHAIN, "-noout", "-ext", "subjectAltName")
    sans = [s.strip().removeprefix("DNS:") for s in text.splitlines()[1].split(",")]
    assert sans == certs.certificate_names(lab_settings)


# --- nginx -----------------------------------------------------------------------------------------


def test_nginx_accepts_the_site_and_debian_default_is_gone(tls_root: Path) -> None:
    out = _ok(tls_root, "nginx", "-t")
    assert "syntax is ok" in out and "test is successful" in out
    enabled = tls_root / "etc/nginx/sites-enabled"
    assert sorted(os.listdir(enabled)) == ["sams"]
    assert os.readlink(enabled / "sams") == certs.NGINX_SITE
    assert "reload-or-restart nginx" in _systemctl_calls(tls_root)


def test_web_step_rerun_without_changes_reloads_nothing(tls_root: Path, lab_settings) -> None:
    web = certs.web_step(lab_settings)
    before = _systemctl_calls(tls_root)
    run_step_script(tls_root, web, DUMMY_LATE, [])
    new = _systemctl_calls(tls_root)[len(before) :]
    assert [c for c in new if "reload" in c or "restart" in c] == []


# Runs inside the tree, in a fresh network namespace where nginx listens: the answers a sender's
# MTA-STS fetch and an ACME validation get, verified against the bootstrap certificate.
_PROBE = r"""
import json, socket, ssl, sys, time
names, cafile, token = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]

def ask(port, host, path, tls):
    for _ in range(50):
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    if tls:
        ctx = ssl.create_default_context(cafile=cafile)
        raw = ctx.wrap_socket(raw, server_hostname=host)
    raw.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := raw.recv(65536):
        data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return {"status": int(lines[0].split()[1]), "type": headers.get("content-type", ""),
            "location": headers.get("location", ""), "body": body}

out = {n: ask(443, n, "/.well-known/mta-sts.txt", True) for n in names}
out["other-path"] = ask(443, names[0], "/", True)
out["acme"] = ask(80, names[0], "/.well-known/acme-challenge/" + token, False)
out["redirect"] = ask(80, names[0], "/.well-known/mta-sts.txt", False)
print(json.dumps(out))
"""


def test_nginx_serves_the_policy_and_the_acme_webroot(tls_root: Path, lab_settings) -> None:
    import json

    token = "sams-chroot-token"
    webroot = tls_root / certs.ACME_WEBROOT.lstrip("/") / ".well-known/acme-challenge"
    webroot.mkdir(parents=True, exist_ok=True)
    (webroot / token).write_text("token.keyauth")
    (tls_root / "tmp/probe.py").write_text(_PROBE)
    hosts = certs.mta_sts_hosts(lab_settings)
    script = textwrap.dedent(f"""\
        ip link set lo up
        nginx -g 'daemon off;' &
        pid=$!
        rc=0
        python3 /tmp/probe.py '{json.dumps(hosts)}' {certs.TLS_FULLCHAIN} {token} || rc=$?
        kill "$pid"
        wait "$pid" || true
        exit "$rc"
        """)
    result = run_in(tls_root, ["unshare", "--net", "/bin/sh", "-eu", "-c", script])
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    for host in hosts:
        assert got[host]["status"] == 200
        assert got[host]["type"] == "text/plain"
        assert got[host]["body"] == mta_sts_policy(lab_settings)
    assert got["other-path"]["status"] == 404
    assert got["acme"]["status"] == 200 and got["acme"]["body"] == "token.keyauth"
    assert got["redirect"]["status"] == 301
    assert got["redirect"]["location"] == f"https://{hosts[0]}/.well-known/mta-sts.txt"


# Thunderbird GETs its document (with the address as a query), Outlook POSTs its request (either
# spelling of the path); every answer verified against the bootstrap certificate for the name asked.
_CLIENT_PROBE = r"""
import http.client, json, socket, ssl, sys, time
domains, cafile = json.loads(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)

def request(address):
    return (
        '<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/'
        'autodiscover/outlook/requestschema/2006"><Request><EMailAddress>' + address + '</EMailAddress>'
        '<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/'
        '2006a</AcceptableResponseSchema></Request></Autodiscover>'
    ).encode()

def ask(method, host, path, body=b""):
    try:
        return _ask(method, host, path, body)
    except OSError as e:  # one failing request names itself instead of hiding the others
        return {"status": 0, "type": "", "body": repr(e)}

def _ask(method, host, path, body):
    for _ in range(50):
        try:
            raw = socket.create_connection(("127.0.0.1", 443), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    conn = http.client.HTTPConnection(host)
    conn.sock = ctx.wrap_socket(raw, server_hostname=host)  # SNI and verification for the name asked
    headers = {"Content-Type": "text/xml"} if method == "POST" else {}
    conn.request(method, path, body=body or None, headers=headers)
    answer = conn.getresponse()
    return {"status": answer.status, "type": answer.getheader("content-type", ""), "body": answer.read().decode()}

out = {}
for d in domains:
    out[d] = {
        "thunderbird": ask("GET", f"autoconfig.{d}", f"/mail/config-v1.1.xml?emailaddress=alice%40{d}"),
        "outlook-post": ask("POST", f"autodiscover.{d}", "/autodiscover/autodiscover.xml", request(f"alice@{d}")),
        "outlook-post-caps": ask(
            "POST", f"autodiscover.{d}", "/Autodiscover/Autodiscover.xml", request(f"bob.x+y@{d}")
        ),
        "outlook-post-markup": ask(
            "POST", f"autodiscover.{d}", "/autodiscover/autodiscover.xml", request(f"a</LoginName><x>@{d}")
        ),
        "outlook-get": ask("GET", f"autodiscover.{d}", "/autodiscover/autodiscover.xml"),
        "other-path": ask("GET", f"autoconfig.{d}", "/"),
    }
print(json.dumps(out))
"""


def test_nginx_serves_the_client_autoconfiguration(tls_root: Path, lab_settings) -> None:
    import json

    (tls_root / "tmp/client_probe.py").write_text(_CLIENT_PROBE)
    domains = [d.name for d in lab_settings.mail.domains]
    script = textwrap.dedent(f"""\
        ip link set lo up
        nginx -g 'daemon off;' &
        pid=$!
        rc=0
        python3 /tmp/client_probe.py '{json.dumps(domains)}' {certs.TLS_FULLCHAIN} || rc=$?
        kill "$pid"
        wait "$pid" || true
        cat /var/log/nginx/error.log >&2
        exit "$rc"
        """)
    result = run_in(tls_root, ["unshare", "--net", "/bin/sh", "-eu", "-c", script])
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    files = {f.path: f.content for f in autoconfig.client_files(lab_settings)}
    for d in domains:
        root = f"{autoconfig.CLIENTS_ROOT}/{d}"
        thunderbird, outlook = files[f"{root}/mail/config-v1.1.xml"], files[f"{root}/autodiscover/autodiscover.xml"]
        answers = got[d]
        assert answers["thunderbird"]["status"] == 200
        assert answers["thunderbird"]["body"] == thunderbird
        # Outlook's answer names the address it asked about as the login name; nothing else changes.
        logins = {
            "outlook-post": f"alice@{d}",
            "outlook-post-caps": f"bob.x+y@{d}",
            "outlook-post-markup": "",  # not plainly an address: nothing of it is echoed
            "outlook-get": "",  # no request body, no address
        }
        for name, login in logins.items():
            assert answers[name]["status"] == 200, (name, answers[name])
            assert answers[name]["body"] == outlook.replace(autoconfig.ADDRESS, login), name
        for name in ("thunderbird", "outlook-post", "outlook-get"):
            assert answers[name]["type"] == "text/xml", (name, answers[name]["type"])
        assert answers["other-path"]["status"] == 404


# --- certbot ---------------------------------------------------------------------------------------


def test_certbot_reads_its_configuration(tls_root: Path) -> None:
    out = _ok(tls_root, "certbot", "certificates")
    assert "No certificates found." in out


def test_certbot_knows_the_cloudflare_plugin_options(tls_root: Path, lab_settings) -> None:
    """The DNS-01 variant's cli.ini (stack prod-bastion's choice) parses with the installed plugin."""
    dns01 = settings.load(
        "lab",
        {
            **_lab_config(),
            "sams:acme": '{"challenge": "dns-01-cloudflare"}',
            "sams:acmeCloudflareToken": "x",
        },
        Path(__file__).resolve().parents[2],
    )
    (tls_root / "tmp/dns01.ini").write_text(certs.cli_ini(dns01))
    (tls_root / certs.CLOUDFLARE_INI.lstrip("/")).write_text("dns_cloudflare_api_token = dummy\n")
    os.chmod(tls_root / certs.CLOUDFLARE_INI.lstrip("/"), 0o600)
    out = _ok(tls_root, "certbot", "--config", "/tmp/dns01.ini", "certificates")
    assert "No certificates found." in out
    assert "dns-cloudflare" in _ok(tls_root, "certbot", "plugins")


def _lab_config() -> dict[str, str]:
    import mockrun

    return mockrun.stack_config("lab")


# --- the deploy hook (last: it switches the tree to the lineage) ---------------------------------------


def test_deploy_hook_switches_every_daemon_to_the_lineage(tls_root: Path, lab_settings) -> None:
    live = certs.LIVE_DIR
    names = certs.certificate_names(lab_settings)
    (tls_root / live.lstrip("/")).mkdir(parents=True, exist_ok=True)
    _ok(
        tls_root,
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-batch",
        "-days", "1", "-subj", f"/CN={names[0]}", "-addext", "subjectAltName=" + ",".join(f"DNS:{n}" for n in names),
        "-keyout", f"{live}/privkey.pem", "-out", f"{live}/fullchain.pem",
    )  # fmt: skip
    before = len(_systemctl_calls(tls_root))
    _ok(tls_root, certs.DEPLOY_HOOK, env={"RENEWED_LINEAGE": live})
    assert _target(tls_root, certs.TLS_FULLCHAIN) == f"{live}/fullchain.pem"
    assert _target(tls_root, certs.TLS_KEY) == f"{live}/privkey.pem"
    assert not (tls_root / certs.BOOTSTRAP_DIR.lstrip("/")).exists()
    calls = [c for c in _systemctl_calls(tls_root)[before:] if not c.startswith("is-active")]
    assert calls == ["reload postfix", "reload dovecot", "reload nginx"]
    # Every daemon loads the new pair.
    assert "test is successful" in _ok(tls_root, "nginx", "-t")
    _ok(tls_root, "postfix", "check")
    _ok(tls_root, "doveconf", "-n")
    key = _ok(tls_root, "openssl", "pkey", "-in", certs.TLS_KEY, "-pubout")
    cert = _ok(tls_root, "openssl", "x509", "-in", certs.TLS_FULLCHAIN, "-noout", "-pubkey")
    assert key == cert


def test_bootstrap_is_not_remade_once_the_lineage_is_linked(tls_root: Path, lab_settings) -> None:
    from components.mail.services import mail_base_step

    run_step_script(tls_root, mail_base_step(lab_settings), DUMMY_LATE, [])
    assert not (tls_root / certs.BOOTSTRAP_DIR.lstrip("/")).exists()
    assert _target(tls_root, certs.TLS_FULLCHAIN) == f"{certs.LIVE_DIR}/fullchain.pem"


def test_no_daemon_was_restarted(tls_root: Path) -> None:
    calls = _systemctl_calls(tls_root)
    assert "reload nginx" in calls
    assert not [c for c in calls if c.split()[0] == "restart" and c.split()[-1] in certs.RELOADED_UNITS]
