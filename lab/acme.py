"""The lab's ACME CA: Pebble (Debian package ``pebble``) in ``sams-inet``, where certbot on the host
gets the host's certificates and every lab client finds the roots to verify them.

Pebble serves ACME over HTTPS only. Its listener certificate comes from a small CA the lab makes
once per state directory (``keys/acme-server-ca.pem``); the program learns that CA as the stack
setting ``sams:acme.serverCa`` (:func:`stack_overrides`), exactly as a real stack would name a
private ACME server's CA. Pebble validates HTTP-01 on the real ports (80/443, not its test
defaults 5002/5001) and resolves names through the lab DNS (``lab/dns.py``) at the internet's
address. It makes a fresh issuing root at every start: :func:`issuer_pems` fetches the root and
intermediate from its management interface for the clients.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from lab.proc import LabError, daemon_pid, netns_exec, run, stop_daemon, tail
from lab.spec import NAMES, LabSpec, StatePaths

log = logging.getLogger("lab.acme")

ACME_PORT = 14000
MANAGEMENT_PORT = 15000


def directory_url(inet_ipv4: str) -> str:
    return f"https://{inet_ipv4}:{ACME_PORT}/dir"


def management_url(inet_ipv4: str) -> str:
    return f"https://{inet_ipv4}:{MANAGEMENT_PORT}"


# --- the CA of Pebble's own HTTPS listener -------------------------------------------------------


def _ca_paths(paths: StatePaths) -> tuple[Path, Path]:
    keys = paths.root / "keys"
    return keys / "acme-server-ca.key", keys / "acme-server-ca.pem"


def server_ca(paths: StatePaths) -> str:
    """The PEM of the CA that signs Pebble's listener certificate, made once per state directory."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key_file, cert_file = _ca_paths(paths)
    if cert_file.exists() and key_file.exists():
        return cert_file.read_text()
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SAMS lab ACME server CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_file.read_text()


def issue(paths: StatePaths, name: str, directory: Path, stem: str) -> tuple[Path, Path]:
    """A server certificate for `name` (an IP address or a DNS name), signed by the lab's ACME server
    CA, which the host trusts (sams:acme.serverCa): <stem>.key and <stem>.pem in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    server_ca(paths)
    key_file, cert_file = _ca_paths(paths)
    ca_key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        san = x509.DNSName(name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_out, cert_out = directory / f"{stem}.key", directory / f"{stem}.pem"
    key_out.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_out.chmod(0o600)
    cert_out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_out, cert_out


def stack_overrides(config: dict[str, str], ca_pem: str) -> dict[str, str]:
    """`sams:acme` for the lab: the stack file's section (Pebble's directory) plus the server CA."""
    acme = json.loads(config.get("sams:acme", "{}"))
    acme["serverCa"] = ca_pem
    return {"sams:acme": json.dumps(acme)}


# --- shell: start and stop --------------------------------------------------------------------------


def directory(paths: StatePaths) -> Path:
    return paths.run / "acme"


def pebble_config(address: str, key: Path, cert: Path) -> dict[str, object]:
    return {
        "pebble": {
            "listenAddress": f"{address}:{ACME_PORT}",
            "managementListenAddress": f"{address}:{MANAGEMENT_PORT}",
            "certificate": str(cert),
            "privateKey": str(key),
            # Validate on the ports a real CA uses, not Pebble's test defaults (5002/5001).
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }


# Pebble's test knobs: answer at once (no random validation delay) and reject no valid nonce.
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}


def start(spec: LabSpec, paths: StatePaths, timeout: float = 15.0) -> int:
    """Start Pebble in sams-inet at the internet's address; wait until its directory answers."""
    d = directory(paths)
    d.mkdir(parents=True, exist_ok=True)
    key, cert = issue(paths, spec.inet_ipv4, d, "listener")
    conf = d / "pebble.json"
    conf.write_text(json.dumps(pebble_config(spec.inet_ipv4, key, cert), indent=2) + "\n")
    with open(d / "pebble.log", "wb") as out:
        proc = subprocess.Popen(
            netns_exec(NAMES.ns_inet, ["pebble", "-config", str(conf), "-dnsserver", f"{spec.inet_ipv4}:53"]),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(d),
            env={**os.environ, **PEBBLE_ENV},
        )
    (d / "pebble.run-pid").write_text(f"{proc.pid}\n")
    try:
        fetch(paths, spec.inet_ipv4, directory_url(spec.inet_ipv4), timeout=timeout)
    except LabError as exc:
        raise LabError(f"Pebble does not answer: {exc}\n--- {d}/pebble.log ---\n{tail(d / 'pebble.log')}") from None
    log.info("lab ACME (pebble pid %d) at %s", proc.pid, directory_url(spec.inet_ipv4))
    return proc.pid


# Run in sams-inet: GET a URL verified against the lab's ACME server CA, retried until `deadline`.
_FETCH = """
import ssl, sys, time, urllib.request
url, cafile, deadline = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
ctx = ssl.create_default_context(cafile=cafile)
while True:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            sys.stdout.write(r.read().decode())
            break
    except Exception as exc:
        if time.monotonic() > deadline:
            sys.exit(f"{url}: {exc}")
        time.sleep(0.2)
"""


def fetch(paths: StatePaths, inet_ipv4: str, url: str, timeout: float = 10.0) -> str:
    """The body at a Pebble URL, fetched from sams-inet over verified HTTPS."""
    _, cafile = _ca_paths(paths)
    result = run(
        netns_exec(NAMES.ns_inet, [sys.executable, "-c", _FETCH, url, str(cafile), str(timeout)]),
        check=False,
        timeout=timeout + 10,
    )
    if result.returncode != 0:
        raise LabError(result.stderr.decode(errors="replace").strip())
    return result.stdout.decode()


def issuer_pems(paths: StatePaths, inet_ipv4: str) -> str:
    """Pebble's current issuing root and intermediate (PEM): what lab clients verify against."""
    base = management_url(inet_ipv4)
    return fetch(paths, inet_ipv4, f"{base}/roots/0") + fetch(paths, inet_ipv4, f"{base}/intermediates/0")


def running(paths: StatePaths) -> int | None:
    return daemon_pid(directory(paths) / "pebble.run-pid", b"pebble\0-config\0")


def stop(paths: StatePaths) -> list[str]:
    """Stop Pebble (SIGTERM, then SIGKILL); its files go with run/."""
    return stop_daemon(running(paths), "pebble")
