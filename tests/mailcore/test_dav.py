"""CalDAV and CardDAV with the real daemons in a Debian 13 tree: the dav step's files and script
installed as sams-apply would, then Debian's Radicale on the rendered /etc/radicale/config, behind
nginx with the rendered /dav/ locations, checking each password with an IMAP LOGIN at a real
Dovecot 2.4 over TLS with the certificate verified; PyPI's caldav client does what a phone does.

The tree is bench.webmail_tree's (the mail tree plus Radicale). Dovecot here is a stand-in
configuration (two users in a passwd-file, IMAPS with a test CA's certificate for the host's name,
trusted through the tree's ca-certificates like the host trusts Let's Encrypt); nginx's server
block stands in for the webmail component's. Every daemon runs in a network namespace of this
test's own, so nothing listens on this machine.

    sudo .venv/bin/python -m pytest -p no:cacheprovider -m chroot tests/mailcore/test_dav.py
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import pytest

import settings
from components.dav import plan
from components.dav.steps import dav_step
from components.hostpaths import WEBMAIL_NGINX_INCLUDES
from lab.netclient import in_netns
from lab.trixie_chroot import mounted, run_in
from tests.mailcore.conftest import SYSTEMCTL_LOG, install_step, run_step_script, stub_systemctl

pytestmark = pytest.mark.chroot

NETNS = "sams-davtest"
USERS = {"alice@sams.test": "Alice-dav-pw-1", "bob@sams.test": "Bob-dav-pw-2"}
CA_IN_TREE = "/usr/local/share/ca-certificates/sams-dav-test.crt"


@dataclass
class Site:
    root: Path
    host: str
    cafile: str  # the test CA, on this machine's filesystem (the client's trust)
    logs: Path  # each daemon's output, <name>.log

    @property
    def base(self) -> str:
        return f"https://{self.host}{plan.URL_PATH}"


def _ok(root: Path, *argv: str) -> str:
    result = run_in(root, list(argv))
    assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


@contextlib.contextmanager
def _overlay(lower: Path, workdir: Path) -> Iterator[Path]:
    """A throw-away writable tree over `lower` (the cached webmail tree stays untouched)."""
    upper, work, merged = workdir / "upper", workdir / "work", workdir / "root"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(workdir)], check=False)


@contextlib.contextmanager
def _netns() -> Iterator[str]:
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
        yield NETNS
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


def _certificates(host: str) -> tuple[bytes, bytes, bytes]:
    """A test CA, and a certificate it signed for `host` with its key (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SAMS DAV test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


def _dovecot_conf() -> str:
    return """\
# Stand-in for the host's Dovecot (components/mail reads PostgreSQL): IMAPS with the host's name.
dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_server_cert_file = /etc/dovecot/test-fullchain.pem
ssl_server_key_file = /etc/dovecot/test-key.pem
auth_username_format = %{user | lower}
mail_driver = maildir
mail_path = ~/Maildir
log_path = /dev/stderr
passdb passwd-file {
  passwd_file_path = /etc/dovecot/test-users
}
userdb passwd-file {
  passwd_file_path = /etc/dovecot/test-users
}
service imap-login {
  inet_listener imap {
    port = 0
  }
}
"""


def _nginx_conf(host: str) -> str:
    return f"""\
# Stand-in for the webmail component's server for https://{host}/ (it includes the same folder).
user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log;
events {{ worker_connections 64; }}
http {{
    access_log /var/log/nginx/access.log;
    server {{
        listen 127.0.0.1:443 ssl;
        server_name {host};
        ssl_certificate /etc/dovecot/test-fullchain.pem;
        ssl_certificate_key /etc/dovecot/test-key.pem;
        # As the webmail's server refuses them: a DAV path must not meet these.
        location ~ /\\. {{ return 404; }}
        location ~ \\.php$ {{ return 404; }}
        include {WEBMAIL_NGINX_INCLUDES}/*.conf;
    }}
}}
"""


def _wait_port(port: int, what: str) -> None:
    def probe() -> bool:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
            time.sleep(0.1)
        return False

    assert in_netns(NETNS, {}, probe), f"{what} did not listen on 127.0.0.1:{port}"


@pytest.fixture(scope="module")
def lab_settings_dav(lab_settings: settings.Settings) -> settings.Settings:
    assert plan.calendars_on(lab_settings.config), "the lab stack has calendars on (webmail's default)"
    return lab_settings


@pytest.fixture(scope="module")
def site(lab_settings_dav: settings.Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.fail("the chroot tests need root (mount, chroot, netns): run them through ./run test")
    from bench.webmail_tree import ensure_webmail_tree

    host = str(lab_settings_dav.config.hostname)
    work = tmp_path_factory.mktemp("dav")
    procs: list[subprocess.Popen[bytes]] = []
    with _overlay(ensure_webmail_tree(), work / "tree") as root, mounted(root), _netns():
        logs = work / "logs"
        logs.mkdir()

        def start(name: str, argv: list[str], user: str | None = None) -> None:
            spec = [f"--userspec={user}:{user}"] if user else []
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
            if user == plan.USER:
                env["HOME"] = "/var/lib/radicale"
            out = (logs / f"{name}.log").open("ab")
            cmd = ["ip", "netns", "exec", NETNS, "chroot", *spec, str(root), *argv]
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))

        try:
            ca, leaf, key = _certificates(host)
            (root / CA_IN_TREE.lstrip("/")).write_bytes(ca)
            _ok(root, "update-ca-certificates")
            cafile = work / "ca.pem"
            cafile.write_bytes(ca)
            (root / "etc/dovecot/test-fullchain.pem").write_bytes(leaf)
            (root / "etc/dovecot/test-key.pem").write_bytes(key)
            (root / "etc/dovecot/test-key.pem").chmod(0o600)
            with (root / "etc/hosts").open("a") as hosts:
                hosts.write(f"127.0.0.1 {host}\n")
            # Dovecot: two users with {SHA512-CRYPT} hashes, their homes under vmail.
            _ok(root, "groupadd", "-g", "5000", "vmail")
            _ok(root, "useradd", "-u", "5000", "-g", "vmail", "-d", "/var/mail", "-M", "vmail")
            lines = []
            for user, password in USERS.items():
                hashed = _ok(root, "doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password).strip()
                home = f"/var/mail/vhosts/{user.replace('@', '/')}"
                (root / home.lstrip("/") / "Maildir").mkdir(parents=True)
                lines.append(f"{user}:{hashed}:5000:5000::{home}::")
            (root / "etc/dovecot/test-users").write_text("\n".join(lines) + "\n")
            _ok(root, "chown", "-R", "vmail:vmail", "/var/mail/vhosts")
            (root / "etc/dovecot/dovecot.conf").write_text(_dovecot_conf())
            (root / "etc/nginx/nginx.conf").write_text(_nginx_conf(host))

            # The dav step as sams-apply runs it (systemctl is the recording stub: no systemd here).
            stub_systemctl(root)
            # As a restore on a new host leaves them: another (numeric) owner than this tree's radicale.
            restored = root / plan.DAV_COLLECTIONS.lstrip("/") / "restored@sams.test" / "calendar"
            restored.mkdir(parents=True)
            (restored / "event.ics").write_text("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n")
            for path in (restored.parent, restored, restored / "event.ics"):
                os.chown(path, 4242, 4242)
            spec = dav_step(lab_settings_dav)
            changed = install_step(root, spec, {})
            run_step_script(root, spec, {}, changed)

            start("dovecot", ["/usr/sbin/dovecot", "-F"])
            _wait_port(993, "Dovecot")
            start("nginx", ["/usr/sbin/nginx", "-g", "daemon off;"])
            _wait_port(443, "nginx")
            # Debian's unit's ExecStart, as its User=.
            start("radicale", ["/usr/bin/radicale"], user=plan.USER)
            _wait_port(plan.LISTEN_PORT, "Radicale")
            yield Site(root, host, str(cafile), logs)
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            for log in sorted(logs.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}")


# --- what the clients do (run inside the namespace by in_netns) ------------------------------------


def _event(uid: str) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//SAMS//dav test//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:20261207T120000Z\r\nDTSTART:20261208T090000Z\r\nDTEND:20261208T100000Z\r\n"
        "SUMMARY:SAMS DAV test meeting\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def _vcard(uid: str) -> str:
    return (
        f"BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:Carol Contact\r\nN:Contact;Carol;;;\r\n"
        "EMAIL:carol@example.net\r\nEND:VCARD\r\n"
    )


MKCOL_ADDRESSBOOK = """<?xml version="1.0" encoding="utf-8"?>
<D:mkcol xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:carddav">
  <D:set><D:prop>
    <D:resourcetype><D:collection/><C:addressbook/></D:resourcetype>
    <D:displayname>Contacts</D:displayname>
  </D:prop></D:set>
</D:mkcol>"""


def write_event_and_contact(base: str, cafile: str, user: str, password: str, uid: str) -> dict[str, Any]:
    """Session 1: a calendar with one event, an address book with one vCard (caldav 1.x)."""
    import caldav

    with caldav.DAVClient(url=base, username=user, password=password, ssl_verify_cert=cafile) as client:
        principal = client.principal()
        calendar = principal.make_calendar(name="Work", cal_id=f"work-{uid}")
        calendar.save_event(_event(uid))
        book = f"{principal.url}contacts-{uid}/"
        made = client.mkcol(book, MKCOL_ADDRESSBOOK)
        put = client.put(f"{book}{uid}.vcf", _vcard(uid), {"Content-Type": "text/vcard; charset=utf-8"})
        return {
            "principal": str(principal.url),
            "calendar": str(calendar.url),
            "book": book,
            "mkcol": made.status,
            "put": put.status,
        }


def read_back(base: str, cafile: str, user: str, password: str, uid: str, book: str) -> dict[str, Any]:
    """Session 2 (a new client, a new login): the calendars found from the principal, the event by
    its UID, the vCard by GET."""
    import caldav

    with caldav.DAVClient(url=base, username=user, password=password, ssl_verify_cert=cafile) as client:
        calendars = client.principal().calendars()
        events = [e.data for c in calendars for e in c.events()]
        card = client.request(f"{book}{uid}.vcf")
        return {"events": events, "card_status": card.status, "card": card.raw}


def other_user(cafile: str, host: str, user: str, password: str, paths: list[str]) -> list[int]:
    """Another user's requests for the first user's collections: the status of each."""
    import base64

    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    out = []
    for method, path in [("PROPFIND", p) for p in paths] + [("GET", paths[-1])]:
        out.append(_request(cafile, host, method, path, {"Authorization": f"Basic {auth}", "Depth": "1"})[0])
    return out


def listing(cafile: str, host: str, user: str, password: str, path: str) -> tuple[int, str]:
    """PROPFIND with Depth 1: the status and the hrefs' text."""
    import base64

    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection(host, 443, context=ctx, timeout=30)
    try:
        conn.request("PROPFIND", path, headers={"Authorization": f"Basic {auth}", "Depth": "1"})
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


def _request(cafile: str, host: str, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection(host, 443, context=ctx, timeout=30)
    try:
        conn.request(method, path, headers=headers)
        answer = conn.getresponse()
        answer.read()
        return answer.status, answer.getheader("Location", "")
    finally:
        conn.close()


def plain(cafile: str, host: str, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
    return _request(cafile, host, method, path, headers)


# --- the tests ------------------------------------------------------------------------------------


def test_the_step_made_the_collections_radicales_and_started_it(site: Site) -> None:
    owner = _ok(site.root, "stat", "-c", "%U:%G %a", plan.DAV_COLLECTIONS).strip()
    assert owner == f"{plan.USER}:{plan.USER} 750", owner
    # What a restore brought back under another id is Radicale's again.
    owners = _ok(site.root, "find", plan.DAV_COLLECTIONS, "-printf", "%u:%g\n").split()
    assert len(owners) >= 4 and set(owners) == {f"{plan.USER}:{plan.USER}"}, owners
    calls = (site.root / SYSTEMCTL_LOG.lstrip("/")).read_text().splitlines()
    assert f"enable -q {plan.UNIT}.service" in calls
    assert f"restart {plan.UNIT}.service" in calls  # its config was new


def test_caldav_and_carddav_round_trip_and_owner_only(site: Site) -> None:
    (alice, alice_pw), (bob, bob_pw) = USERS.items()
    hosts = {site.host: "127.0.0.1"}
    uid = uuid.uuid4().hex
    made = in_netns(NETNS, hosts, write_event_and_contact, site.base, site.cafile, alice, alice_pw, uid)
    # Radicale answers under /dav/ (X-Script-Name): the principal is the user's own collection.
    assert made["principal"] == f"{site.base}{quote(alice)}/", made
    assert made["mkcol"] == 201 and made["put"] == 201, made
    # A second session, a new login (Radicale asks Dovecot again: its login cache is off).
    back = in_netns(NETNS, hosts, read_back, site.base, site.cafile, alice, alice_pw, uid, made["book"])
    assert any(f"UID:{uid}" in e and "SAMS DAV test meeting" in e for e in back["events"]), back["events"]
    assert back["card_status"] == 200 and "FN:Carol Contact" in str(back["card"]), back
    # Bob, with his own good password, may not see or read Alice's collections.
    paths = [f"{plan.URL_PATH}{alice}/", str(made["calendar"]).removeprefix(f"https://{site.host}")]
    paths.append(f"{made['book']}{uid}.vcf".removeprefix(f"https://{site.host}"))
    statuses = in_netns(NETNS, hosts, other_user, site.cafile, site.host, bob, bob_pw, paths)
    assert statuses == [403, 403, 403, 403], statuses
    # Bob's own principal works: the refusal is owner_only, not a failed login.
    own = in_netns(NETNS, hosts, other_user, site.cafile, site.host, bob, bob_pw, [f"{plan.URL_PATH}{bob}/"])
    assert own[0] == 207, own


def test_a_new_user_finds_a_calendar_and_an_address_book(site: Site) -> None:
    """Made at the first login (predefined_collections): Bob has not logged in before this test
    module's round trip, or has, and either way finds both, with their types."""
    bob, bob_pw = list(USERS.items())[1]
    status, body = in_netns(
        NETNS, {site.host: "127.0.0.1"}, listing, site.cafile, site.host, bob, bob_pw, f"{plan.URL_PATH}{bob}/"
    )
    assert status == 207, body
    types = {}
    for response in ElementTree.fromstring(body).iter("{DAV:}response"):
        href = response.findtext("{DAV:}href", "")
        kinds = response.find(".//{DAV:}resourcetype")
        types[href] = {child.tag.split("}")[1] for child in (kinds if kinds is not None else [])}
    prefix = f"{plan.URL_PATH}{quote(bob)}/"
    assert types[f"{prefix}calendar/"] == {"collection", "calendar"}, types
    assert types[f"{prefix}contacts/"] == {"collection", "addressbook"}, types
    assert set(plan.PREDEFINED_COLLECTIONS) == {"calendar", "contacts"}


def test_a_wrong_password_is_refused(site: Site) -> None:
    import base64

    alice = next(iter(USERS))
    auth = base64.b64encode(f"{alice}:not-her-password".encode()).decode()
    # A client's own X-Forwarded-For does not reach Radicale's log: nginx sends the address it saw.
    status, _ = in_netns(
        NETNS,
        {site.host: "127.0.0.1"},
        plain,
        site.cafile,
        site.host,
        "PROPFIND",
        f"{plan.URL_PATH}{alice}/",
        {"Authorization": f"Basic {auth}", "Depth": "0", "X-Forwarded-For": "203.0.113.9"},
    )
    assert status == 401
    log = (site.logs / "radicale.log").read_text()
    assert f"Failed login attempt from 127.0.0.1 (forwarded for '127.0.0.1'): '{alice}'" in log, log[-2000:]
    assert "203.0.113.9" not in log


def test_well_known_redirects_to_the_dav_root(site: Site) -> None:
    for path in plan.WELL_KNOWN:
        status, location = in_netns(NETNS, {site.host: "127.0.0.1"}, plain, site.cafile, site.host, "GET", path, {})
        assert (status, location) == (301, f"https://{site.host}{plan.URL_PATH}"), path
