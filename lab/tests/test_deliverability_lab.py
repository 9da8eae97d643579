"""Deliverability as another mail domain sees it: the lab DNS and the independent receiver.

The lab DNS (lab/dns.py, NSD in sams-inet) serves the records the Cloudflare component declares;
the independent receiver (lab/receiver.py, mx.receiver.example at 198.18.0.20) checks what arrives
with pyspf, dkimpy and checkdmarc and writes Authentication-Results. A SAMS user's mail must
arrive there with SPF, DKIM and DMARC passing and aligned; a forgery of the same From must not.
checkdmarc, asking only the lab DNS, must find nothing wrong with the SAMS domains.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from components.dns import records
from lab import dns as labdns
from lab import receiver
from lab.dnsclient import query
from lab.hostcmd import sh
from lab.netclient import dialogue, message
from lab.receiver import Verdicts, authentication_results, dmarc_result
from lab.session import Lab
from lab.world import World, subject, world

RECEIVER = f"someone@{labdns.RECEIVER_DOMAIN}"
SAMS_DOMAINS = ("sams.test", "other.test")


# --- the receiver's DMARC logic (pure, no lab) ---------------------------------------------------------


def org(domain: str) -> str:
    return ".".join(domain.split(".")[-2:])


@pytest.mark.parametrize(
    ("spf", "mail_from", "dkim", "tags", "want"),
    [
        ("pass", "sams.test", [], {"p": "none"}, "pass"),  # SPF alone, aligned
        ("pass", "bounce.sams.test", [], {"p": "none"}, "pass"),  # relaxed: same organizational domain
        ("pass", "bounce.sams.test", [], {"p": "none", "aspf": "s"}, "fail"),  # strict: not the same name
        ("pass", "sender.example", [], {"p": "none"}, "fail"),  # SPF passes for another domain: no alignment
        ("softfail", "sams.test", [("pass", "sams.test", "s1")], {"p": "reject"}, "pass"),  # DKIM alone
        ("softfail", "sams.test", [("pass", "other.test", "s1")], {"p": "reject"}, "fail"),  # unaligned DKIM
        ("softfail", "sams.test", [("fail", "sams.test", "s1")], {"p": "reject"}, "fail"),
        ("pass", "sams.test", [("pass", "sams.test", "s1")], None, "none"),  # no DMARC record
    ],
)
def test_dmarc_alignment(
    spf: str, mail_from: str, dkim: list[tuple[str, str, str]], tags: dict[str, str] | None, want: str
) -> None:
    assert dmarc_result("sams.test", spf, mail_from, dkim, tags, org) == want


def test_authentication_results_header() -> None:
    v = Verdicts("pass", "sams.test", "mail.sams.test", (("pass", "sams.test", "s1"),), "pass", "none", "sams.test")
    assert authentication_results("mx.receiver.example", v) == (
        "mx.receiver.example;\r\n\tspf=pass smtp.mailfrom=sams.test smtp.helo=mail.sams.test;\r\n\t"
        "dkim=pass header.d=sams.test header.s=s1;\r\n\tdmarc=pass (p=none) header.from=sams.test"
    )
    unsigned = Verdicts("softfail", "sams.test", "x", (), "fail", "none", "sams.test")
    assert "dkim=none" in authentication_results("r", unsigned)


# --- in the lab --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mail(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(lab, tmp_path_factory.mktemp("deliverability")) as w:
        yield w


def received(lab: Lab, marker: str, wait: float = 60) -> bytes:
    """The message with `marker` in the receiver's spool, waiting for it (Postfix delivers async)."""
    new = receiver.spool(lab.paths) / "new"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for path in sorted(new.glob("*.eml")) if new.exists() else []:
            raw = path.read_bytes()
            if marker.encode() in raw:
                return raw
        time.sleep(0.2)
    log = sh(lab, "journalctl -u postfix@- -u postfix --no-pager -n 30", check=False)
    raise AssertionError(f"no message with {marker} at the receiver in {wait} s; postfix log:\n{log}")


def auth_results(raw: bytes) -> dict[str, str]:
    """method -> the whole result clause, from the receiver's (topmost) Authentication-Results."""
    header = email.message_from_bytes(raw, policy=email.policy.compat32)["Authentication-Results"]
    clauses = [c.strip() for c in re.sub(r"\s+", " ", str(header)).split(";")]
    assert clauses[0] == f"mx.{labdns.RECEIVER_DOMAIN}", clauses
    return {c.split("=", 1)[0]: c for c in clauses[1:]}


@pytest.mark.lab
def test_lab_dns_serves_the_published_records(mail: World) -> None:
    """Every DnsRecord the program declares, asked over the wire from the internet, as declared."""
    zones = [args["filter"]["name"] for token, args in mail.lab.run.invokes if token == labdns.GETZONE]
    published = [records.from_cloudflare(r.inputs, zones) for r in mail.lab.run.of_type(labdns.DNSRECORD)]
    assert published
    expected: dict[str, list[str]] = {}
    for r in published:
        expected.setdefault(f"{r.name} {r.type}", []).append(r.text())  # dnspython's presentation format
    names = sorted({(r.name, r.type) for r in published})
    names += [("nowhere.sams.test", "A"), ("example.org", "A")]
    answers = mail.inet(query, mail.lab.spec.inet_ipv4, names)
    for key, values in expected.items():
        assert answers[key] == ("NOERROR", True, sorted(values)), key
    assert answers["nowhere.sams.test A"][:2] == ("NXDOMAIN", True)
    # Nothing recurses out of the lab: the empty root answers every other name, as the internet would.
    assert answers["example.org A"][:2] == ("NXDOMAIN", True)


@pytest.mark.lab
def test_host_resolves_through_the_lab_dns(mail: World) -> None:
    """The host's resolver is the lab DNS: the receiver's MX, and its own PTR = hostname = HELO."""
    lab = mail.lab
    assert f"nameserver {lab.spec.inet_ipv4}" in sh(lab, "cat /etc/resolv.conf")
    assert sh(lab, f"getent hosts mx.{labdns.RECEIVER_DOMAIN}").split()[0] == lab.spec.receiver_ipv4
    assert sh(lab, f"getent hosts {lab.spec.public_ipv4}").split()[1] == lab.settings.config.hostname
    assert sh(lab, "postconf -h myhostname").strip() == lab.settings.config.hostname


@pytest.mark.lab
def test_sams_mail_passes_spf_dkim_dmarc_at_the_receiver(mail: World) -> None:
    """alice submits on 587 to the receiver's domain; Postfix finds its MX through the lab DNS and
    delivers; the receiver finds SPF, DKIM and DMARC passing and aligned on sams.test."""
    tag = subject("deliver")
    mail.submit(587, "alice@sams.test", [RECEIVER], tag, body="to another domain\n")
    raw = received(mail.lab, tag)
    results = auth_results(raw)
    assert results["spf"].startswith("spf=pass smtp.mailfrom=sams.test"), results
    assert f"smtp.helo={mail.lab.settings.config.hostname}" in results["spf"], results
    selector = mail.lab.settings.config.dkim.selector
    assert results["dkim"] == f"dkim=pass header.d=sams.test header.s={selector}", results
    assert results["dmarc"].startswith("dmarc=pass") and results["dmarc"].endswith("header.from=sams.test"), results
    # It came straight from the host's public address (no relay in the lab stack).
    assert f"([{mail.lab.spec.public_ipv4}])" in raw.split(b"\r\n\r\n", 1)[0].decode(), raw[:800]


@pytest.mark.lab
def test_forged_sams_mail_fails_dmarc_at_the_receiver(mail: World) -> None:
    """The same From sent by someone else (sams-inet's own address, unsigned) fails: the receiver
    really judges, it does not wave mail through."""
    tag = subject("forged")
    data = message("alice@sams.test", RECEIVER, tag).decode()
    replies = mail.inet(
        dialogue,
        mail.lab.spec.receiver_ipv4,
        25,
        [("mail", "FROM:<alice@sams.test>"), ("rcpt", f"TO:<{RECEIVER}>"), ("data", data)],
    )["replies"]
    assert [code for code, _ in replies] == [250, 250, 250], replies
    results = auth_results(received(mail.lab, tag, wait=10))
    assert not results["spf"].startswith("spf=pass"), results  # ~all in the lab (DMARC p=none), -all in prod
    assert results["dkim"] == "dkim=none", results
    assert results["dmarc"].startswith("dmarc=fail"), results


def checkdmarc_domains(server: str, domains: list[str]) -> list[dict[str, Any]]:
    import json

    import checkdmarc

    found = checkdmarc.check_domains(domains, nameservers=[server], timeout=3)
    results = found if isinstance(found, list) else [found]
    return [json.loads(json.dumps(r, default=str)) for r in results]


# checkdmarc's sections this issue answers for; mta_sts needs the HTTPS policy host (another item).
CHECKED = ("soa", "ns", "mx", "spf", "dmarc", "smtp_tls_reporting")


def published_txt(lab: Lab, name: str) -> str:
    """The TXT value the program declares for `name` (its DnsRecord input), unquoted."""
    (record,) = [r for r in lab.run.of_type(labdns.DNSRECORD) if r.inputs["name"] == name]
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', str(record.inputs["content"])))


@pytest.mark.lab
def test_checkdmarc_finds_no_error(mail: World) -> None:
    results = mail.inet(checkdmarc_domains, mail.lab.spec.inet_ipv4, list(SAMS_DOMAINS), timeout=180)
    assert sorted(r["domain"] for r in results) == sorted(SAMS_DOMAINS)
    for result in results:
        domain = result["domain"]
        for section in CHECKED:
            assert "error" not in result[section], (domain, section, result[section])
        assert result["spf"]["valid"] and result["dmarc"]["valid"], result
        assert result["dmarc"]["record"] == published_txt(mail.lab, f"_dmarc.{domain}"), result["dmarc"]
        assert [h["hostname"] for h in result["mx"]["hosts"]] == [mail.lab.settings.config.hostname], result["mx"]
        assert [n.rstrip(".") for n in result["ns"]["hostnames"]] == [labdns.NAMESERVER], result["ns"]
