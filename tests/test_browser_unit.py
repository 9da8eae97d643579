"""lab/browser.py's pure parts: Chromium's command line, chromedriver's, the trust store's
certutil calls and where screenshots go. The browser itself runs in lab/tests/test_browser_lab.py."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab import browser

HOSTS = {"mta-sts.sams.test": "198.18.0.10", "mail.sams.test": "198.18.0.10"}


def test_resolver_rules_map_each_name_and_nothing_else() -> None:
    assert browser.resolver_rules(HOSTS) == (
        "MAP mta-sts.sams.test 198.18.0.10, MAP mail.sams.test 198.18.0.10, MAP * ~NOTFOUND"
    )
    assert browser.resolver_rules({}) == "MAP * ~NOTFOUND"


@pytest.mark.parametrize("name,address", [("a b", "198.18.0.10"), ("x.test,MAP *", "1.2.3.4"), ("x.test", "host")])
def test_resolver_rules_refuse_what_would_change_the_rules(name: str, address: str) -> None:
    with pytest.raises(ValueError):
        browser.resolver_rules({name: address})


def test_chromium_flags() -> None:
    flags = browser.chromium_flags(HOSTS, Path("/tmp/p"), (800, 600))
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-gpu",
        "--disable-quic",
        "--user-data-dir=/tmp/p",
        "--window-size=800,600",
        f"--host-resolver-rules={browser.resolver_rules(HOSTS)}",
    ):
        assert flag in flags
    assert len(flags) == len(set(flags))
    # Certificates are verified: nothing turns the check off or pins around it.
    assert not [f for f in flags if f.startswith("--ignore-certificate-errors")]


def test_chromedriver_runs_in_the_namespace_on_its_loopback() -> None:
    argv = browser.chromedriver_argv("sams-inet", 9515, Path("/a/chromedriver.log"))
    assert argv[:4] == ["ip", "netns", "exec", "sams-inet"]
    assert argv[4] == browser.CHROMEDRIVER == "/usr/bin/chromedriver"
    assert "--port=9515" in argv and "--allowed-ips=127.0.0.1" in argv
    assert "--log-path=/a/chromedriver.log" in argv
    # The real binary, not Debian's launcher script that adds /etc/chromium.d's flags.
    assert browser.CHROMIUM == "/usr/lib/chromium/chromium"


def _cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey) -> str:
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_only_self_signed_roots_become_trust_anchors() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle = _cert("Pebble Root", "Pebble Root", key) + _cert("Pebble Intermediate", "Pebble Root", key)
    certs = browser.ca_certs(bundle)
    assert [(c.nickname, c.anchor) for c in certs] == [("lab-ca-0", True), ("lab-ca-1", False)]
    files = [Path("/h/lab-ca-0.pem"), Path("/h/lab-ca-1.pem")]
    commands = browser.nss_commands(Path("/h/.pki/nssdb"), certs, files)
    assert commands[0] == ["certutil", "-N", "-d", "sql:/h/.pki/nssdb", "--empty-password"]
    assert commands[1][-4:] == ["-t", "C,,", "-i", "/h/lab-ca-0.pem"]
    assert commands[2][-4:] == ["-t", ",,", "-i", "/h/lab-ca-1.pem"]
    with pytest.raises(ValueError, match="no self-signed root"):
        browser.ca_certs(_cert("Pebble Intermediate", "Pebble Root", key))
    with pytest.raises(ValueError, match="no certificate"):
        browser.ca_certs("")
    assert browser.nss_commands(Path("/h/.pki/nssdb"), [], []) == [commands[0]]


def test_artifacts_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SAMS_ARTIFACTS", raising=False)
    assert browser.artifacts_dir("test_x[a/b]") == browser.REPO / "lab" / "artifacts" / "test_x_a_b_"
    monkeypatch.setenv("SAMS_ARTIFACTS", str(tmp_path))
    assert browser.artifacts_dir("test_y") == tmp_path / "test_y"
