"""TLS in the lab: certbot on the host got its certificate from Pebble (lab/acme.py) over HTTP-01,
every public TLS port serves it, renewal reloads Postfix, Dovecot and nginx without restarting
them, a sender's MTA-STS resolver fetches a valid policy for the lab domain, and Thunderbird's and
Outlook's autoconfiguration documents are served for every domain.

Clients run in `sams-inet` (the internet) and verify against Pebble's issuing root and
intermediate, fetched from Pebble's management interface: no self-signed certificate is trusted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from components.dns.plan import mta_sts_id, mta_sts_policy
from components.firewall.policy import public_ports
from components.tls import autoconfig, certs
from lab import acme
from lab.proc import netns_exec
from lab.session import Lab
from lab.spec import NAMES
from lab.tests import journal

pytestmark = pytest.mark.lab

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def issuers(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("acme") / "pebble-issuers.pem"
    path.write_text(acme.issuer_pems(lab.paths, lab.spec.inet_ipv4))
    yield path


def sh(lab: Lab, command: str) -> str:
    return lab.shell.run(["sudo", "-n", "sh", "-c", command]).stdout.decode()


# Runs in sams-inet: the certificate each port serves (after STARTTLS on 25/587), verified against
# Pebble's roots and the name a client would use.
_HANDSHAKES = r"""
import json, smtplib, socket, ssl, sys
address, cafile, checks = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ctx = ssl.create_default_context(cafile=cafile)
out = {}
for port, name in checks:
    if port in (25, 587):
        smtp = smtplib.SMTP(address, port, timeout=20)
        smtp._host = name
        smtp.starttls(context=ctx)
        der = smtp.sock.getpeercert(binary_form=True)
        smtp.quit()
    else:
        with ctx.wrap_socket(socket.create_connection((address, port), timeout=20), server_hostname=name) as s:
            der = s.getpeercert(binary_form=True)
    out[f"{port}/{name}"] = der.hex()
print(json.dumps(out))
"""


def served(lab: Lab, issuers: Path, checks: list[tuple[int, str]]) -> dict[str, str]:
    """port/name -> the DER (hex) of the certificate served there, each handshake verified."""
    result = subprocess.run(
        netns_exec(
            NAMES.ns_inet, [sys.executable, "-c", _HANDSHAKES, lab.spec.public_ipv4, str(issuers), json.dumps(checks)]
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def checks_for(lab: Lab) -> list[tuple[int, str]]:
    host = lab.settings.config.hostname
    mail = [(port, host) for port in (25, 465, 587, 993, 995)]
    return [*mail, *((443, name) for name in certs.web_hosts(lab.settings))]


def test_every_tls_port_serves_the_pebble_certificate(lab: Lab, issuers: Path) -> None:
    got = served(lab, issuers, checks_for(lab))
    assert len(set(got.values())) == 1, "every port serves the one certificate"
    # The stable paths lead to certbot's lineage; the bootstrap pair is gone.
    assert sh(lab, f"readlink -f {certs.TLS_FULLCHAIN}").startswith("/etc/letsencrypt/archive/sams/")
    assert sh(lab, f"readlink -f {certs.TLS_KEY}").startswith("/etc/letsencrypt/archive/sams/")
    assert sh(lab, f"test -e {certs.BOOTSTRAP_DIR} && echo present || echo gone").strip() == "gone"
    text = sh(lab, f"openssl x509 -in {certs.TLS_FULLCHAIN} -noout -issuer -subject -ext subjectAltName")
    issuer = re.search(r"^issuer=(.*)$", text, re.M)
    assert issuer is not None and "Pebble Intermediate" in issuer.group(1)
    sans = re.findall(r"DNS:([^,\s]+)", text)
    assert sorted(sans) == sorted(certs.certificate_names(lab.settings))
    for d in lab.settings.mail.domains:
        assert {f"autoconfig.{d.name}", f"autodiscover.{d.name}"} <= set(sans)


def test_no_self_signed_certificate_remains(lab: Lab) -> None:
    # Every certificate file SAMS or certbot keeps: none is its own issuer.
    files = sh(lab, "find /etc/ssl/sams /etc/letsencrypt/archive -name '*.pem' ! -name 'privkey*'").split()
    assert files
    for path in files:
        text = sh(lab, f"openssl x509 -in {path} -noout -issuer -subject")
        issuer, subject = (ln.split("=", 1)[1].strip() for ln in text.splitlines()[:2])
        assert issuer != subject, f"{path} is self-signed"


def _pids(lab: Lab) -> dict[str, str]:
    master = sh(lab, "cat /var/spool/postfix/pid/master.pid").strip()
    dovecot = sh(lab, "systemctl show -p MainPID --value dovecot").strip()
    nginx = sh(lab, "systemctl show -p MainPID --value nginx").strip()
    return {"postfix": master, "dovecot": dovecot, "nginx": nginx}


def test_renewal_reloads_without_restarting(lab: Lab, issuers: Path) -> None:
    before_pids = _pids(lab)
    assert all(p.isdigit() and p != "0" for p in before_pids.values()), before_pids
    before = served(lab, issuers, checks_for(lab))
    mark = journal.cursor(lab.shell)
    out = sh(lab, "certbot renew --force-renewal --no-random-sleep-on-renew 2>&1")
    assert "Congratulations, all renewals succeeded" in out, out
    after = served(lab, issuers, checks_for(lab))
    assert len(set(after.values())) == 1
    assert set(after.values()).isdisjoint(before.values()), "a port still serves the old certificate"
    assert _pids(lab) == before_pids, "a daemon was restarted"
    log = journal.since(lab.shell, mark, "postfix", "postfix@-", "dovecot", "nginx")
    for unit in ("postfix", "dovecot", "nginx"):
        assert re.search(rf"Reload(ing|ed) .*{unit}", log, re.I), f"no reload of {unit}:\n{log}"
    assert not re.search(r"Start(ing|ed) ", log), log


def in_inet_with_lab_dns(
    lab: Lab, tmp_path: Path, command: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`command` (shell) in sams-inet, its resolver the lab DNS: a private mount namespace binds a
    resolv.conf over /etc/resolv.conf there, and this machine's own resolver stays as it is."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {lab.spec.inet_ipv4}\n")
    script = f"mount --bind {resolv} /etc/resolv.conf && exec {command}"
    return subprocess.run(
        netns_exec(NAMES.ns_inet, ["unshare", "--mount", "sh", "-c", script]),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_mta_sts_query_fetches_a_valid_policy(lab: Lab, issuers: Path, tmp_path: Path) -> None:
    domain = lab.settings.mail.domains[0].name
    result = in_inet_with_lab_dns(
        lab,
        tmp_path,
        f"{VENV_BIN}/mta-sts-query {domain}",
        env={"SSL_CERT_FILE": str(issuers), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "STSFetchResult.VALID" in out, out + result.stderr
    assert f"'{mta_sts_id(lab.settings)}'" in out
    policy = dict(line.split(": ", 1) for line in mta_sts_policy(lab.settings).splitlines())
    assert f"'mode': '{policy['mode']}'" in out
    assert f"'mx': ['{lab.settings.config.hostname}']" in out


# Runs in sams-inet with the lab DNS as resolver: what Thunderbird (GET) and Outlook (POST) fetch
# for an address, over HTTPS verified against Pebble's roots and the name asked.
_CLIENT_FETCH = r"""
import json, ssl, sys, urllib.request
cafile, domains = sys.argv[1], json.loads(sys.argv[2])
ctx = ssl.create_default_context(cafile=cafile)
out = {}
for d in domains:
    address = "alice@" + d
    thunderbird = urllib.request.urlopen(
        f"https://autoconfig.{d}/mail/config-v1.1.xml?emailaddress=alice%40{d}", context=ctx, timeout=20
    )
    request = (
        '<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/'
        'autodiscover/outlook/requestschema/2006"><Request><EMailAddress>' + address + '</EMailAddress>'
        '<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/'
        '2006a</AcceptableResponseSchema></Request></Autodiscover>'
    ).encode()
    url = f"https://autodiscover.{d}/autodiscover/autodiscover.xml"
    post = urllib.request.Request(url, data=request, headers={"Content-Type": "text/xml"})
    outlook = urllib.request.urlopen(post, context=ctx, timeout=20)
    out[d] = {"thunderbird": thunderbird.read().decode(), "outlook": outlook.read().decode()}
print(json.dumps(out))
"""


def test_mail_clients_fetch_their_autoconfiguration(lab: Lab, issuers: Path, tmp_path: Path) -> None:
    fetch = tmp_path / "fetch.py"
    fetch.write_text(_CLIENT_FETCH)
    domains = [d.name for d in lab.settings.mail.domains]
    result = in_inet_with_lab_dns(lab, tmp_path, f"{sys.executable} {fetch} {issuers} '{json.dumps(domains)}'")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    files = {f.path: f.content for f in autoconfig.client_files(lab.settings)}
    for d in domains:
        root = f"{autoconfig.CLIENTS_ROOT}/{d}"
        # What the program rendered from clientSettings, the address Outlook asked about as its login.
        assert got[d]["thunderbird"] == files[f"{root}{autoconfig.THUNDERBIRD_PATH}"]
        assert got[d]["outlook"] == files[f"{root}{autoconfig.OUTLOOK_PATH}"].replace(autoconfig.ADDRESS, f"alice@{d}")
        assert f"<LoginName>alice@{d}</LoginName>" in got[d]["outlook"]
        assert f"<hostname>{lab.settings.config.hostname}</hostname>" in got[d]["thunderbird"]


# --- what an outside TLS scanner finds (issue 21, item 9) -----------------------------------------

# How testssl.sh opens each public TLS service: "" = TLS from the first byte, else its -t protocol.
TESTSSL_MODES = {
    "smtp": "smtp",
    "submission": "smtp",
    "submissions": "",
    "imap": "imap",
    "imaps": "",
    "pop3s": "",
    "managesieve": "sieve",
    "https": "",
}
# Public services that speak no TLS at all.
NOT_TLS = frozenset({"wireguard", "http"})
# Findings the lab's CA causes, not the host: Pebble's certificates name neither an OCSP responder
# nor a CRL, which testssl rates HIGH ("Neither CRL nor OCSP URI provided").
CA_FINDINGS = ("cert_revocation", "cert_ocsp", "cert_crl", "OCSP_")
# Port 25 only: other MTAs that know no AEAD suite must still get TLS, not plaintext (main.cf).
MX_SERVICE = "smtp"


def tls_services(lab: Lab) -> dict[str, int]:
    """service -> port of every public TCP port; each must be TLS, or named plainly not TLS."""
    ports = {p.service: p.number for p in public_ports(lab.settings.config) if p.service not in NOT_TLS}
    unknown = set(ports) - set(TESTSSL_MODES)
    assert not unknown, f"public ports with no testssl mode: {unknown}"
    return ports


def run_testssl(lab: Lab, issuers: Path, out: Path, service: str, port: int) -> list[dict[str, str]]:
    """testssl.sh from sams-inet against one port: protocols, cipher categories, server defaults
    (the certificate, checked against Pebble's roots), server preference and the vulnerabilities;
    its flat JSON findings."""
    report = out / f"{service}.json"
    mode = TESTSSL_MODES[service]
    argv = [
        "testssl", "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none",
        "--ip", lab.spec.public_ipv4, "--add-ca", str(issuers), "--openssl-timeout", "10",
        "--jsonfile", str(report), "-p", "-s", "-S", "-P", "-U",
        *(["-t", mode] if mode else []), f"{lab.settings.config.hostname}:{port}",
    ]  # fmt: skip
    result = subprocess.run(netns_exec(NAMES.ns_inet, argv), capture_output=True, text=True, timeout=900)
    assert report.exists(), f"testssl wrote no report for {service}:\n{result.stdout[-3000:]}\n{result.stderr}"
    findings: list[dict[str, str]] = json.loads(report.read_text())
    (out / f"{service}.txt").write_text(result.stdout)
    return findings


def test_testssl_finds_nothing_high(lab: Lab, issuers: Path, tmp_path: Path) -> None:
    services = tls_services(lab)
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = {s: pool.submit(run_testssl, lab, issuers, tmp_path, s, p) for s, p in services.items()}
        results = {s: run.result() for s, run in runs.items()}
    problems = []
    for service, findings in results.items():
        by_id = {f["id"]: f for f in findings}
        for f in findings:
            if f["severity"] in ("HIGH", "CRITICAL") and not f["id"].startswith(CA_FINDINGS):
                problems.append(f"{service}/{services[service]}: {f['severity']} {f['id']}: {f['finding']}")
            if f["id"] == "scanProblem" or f["severity"] == "FATAL":
                problems.append(f"{service}/{services[service]}: testssl could not scan: {f['finding']}")
        # Every port: the server picks the suite, from TLS 1.2 and 1.3 only.
        order = by_id.get("cipher_order", {}).get("finding", "(not tested)")
        if not order.startswith("server"):
            problems.append(f"{service}/{services[service]}: cipher order {order!r}")
        for proto in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
            if by_id.get(proto, {}).get("finding", "").startswith("offered"):
                problems.append(f"{service}/{services[service]}: {proto} offered")
        # Clients (everything but the MX) get AEAD suites only: no CBC ("obsolete", testssl's AVERAGE).
        cbc = by_id.get("cipherlist_AVERAGE", {}).get("finding", "(not tested)")
        if service != MX_SERVICE and cbc != "not offered":
            problems.append(f"{service}/{services[service]}: CBC suites {cbc!r}")
    assert not problems, "\n".join(problems)
