"""Who may claim a SAMS address, on the lab host: header-From spoofing on submission, mail from the
internet that claims a hosted domain, and the DNS records that tell the world what is offered.

Submission (587/465): Postfix already refuses an envelope sender the login does not own
(smtpd_sender_login_maps). The From: header a user's mail client shows to the recipient must be
that same checked envelope sender, or Rspamd refuses the message (5.7.1) before OpenDKIM signs it:
no display-name trick, second address, second From:, encoded word or case change gets a SAMS
domain's signature on a From: the login does not own. The independent receiver
(mx.receiver.example) shows what another domain sees: a refused spoof never arrives; mail from an
alias the login owns arrives signed for the alias's domain, DMARC passing.

Port 25: a stranger using a hosted domain as envelope or header sender is refused unless the
message carries a valid DKIM signature of that domain or passes its SPF; a forwarded copy of a
SAMS user's signed message (DKIM intact) is accepted. The host's resolver must resolve the lab's
.test domains for Rspamd to check any of this (Unbound blocks test. by default).

DNS (components/dns): the SRV records say what the port policy opens, and the domain that
receives another SAMS domain's DMARC reports authorizes them (RFC 7489 section 7.1).
"""

from __future__ import annotations

import base64
import email.utils
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from components.firewall.policy import port_policy
from lab import dns as labdns
from lab.dns import SENDER_DOMAIN
from lab.dnsclient import query
from lab.hostcmd import sh
from lab.netclient import mx_attempt, submit_attempt
from lab.session import Lab
from lab.tests.test_deliverability_lab import auth_results, checkdmarc_domains, received
from lab.world import World, subject, world

pytestmark = pytest.mark.lab

RECEIVER = f"someone@{labdns.RECEIVER_DOMAIN}"
ALICE = "alice@sams.test"


@pytest.fixture(scope="module")
def mail(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(lab, tmp_path_factory.mktemp("spoofing")) as w:
        yield w


def raw_message(headers: list[str], tag: str, body: str = "hello\n") -> bytes:
    """A message with exactly these header lines (From: and To: included) and a Subject of `tag`."""
    lines = [*headers, f"Subject: {tag}", f"Date: {email.utils.formatdate()}"]
    lines += [f"Message-ID: <{tag}@laptop.example>", "MIME-Version: 1.0", "Content-Type: text/plain", ""]
    return ("\r\n".join(lines) + "\r\n" + body.replace("\n", "\r\n")).encode()


def send_as(mail: World, login: str, envelope: str, from_lines: list[str], tag: str, to: str = RECEIVER) -> Any:
    """Submit on 587 as `login` with MAIL FROM `envelope` and these From: header lines: (code, text)."""
    data = raw_message([*from_lines, f"To: <{to}>"], tag)
    return mail.inet(submit_attempt, mail.host, 587, mail.cafile, mail.login(login), envelope, [to], data)


def at_receiver(mail: World, tag: str, wait: float) -> list[bytes]:
    """What reached the independent receiver with `tag`, after waiting `wait` seconds for the queue."""
    from lab import receiver

    new = receiver.spool(mail.lab.paths) / "new"
    deadline = time.monotonic() + wait
    found: list[bytes] = []
    while time.monotonic() < deadline and not found:
        found = [p.read_bytes() for p in sorted(new.glob("*.eml"))] if new.exists() else []
        found = [raw for raw in found if tag.encode() in raw]
        time.sleep(0.5)
    return found


def encoded_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


# --- 1. header-From spoofing on submission ----------------------------------------------------------

# (case, From: header lines) that alice, logged in and with her own envelope sender, must not send.
SPOOFS: list[tuple[str, list[str]]] = [
    ("another user", ["From: Carol <carol@other.test>"]),
    ("display name with alice's address", ['From: "alice@sams.test" <carol@other.test>']),
    ("display name claiming another address", ['From: "carol@other.test" <alice@sams.test>']),
    ("unquoted address as display name", ["From: alice@sams.test <carol@other.test>"]),
    ("two addresses", ["From: alice@sams.test, carol@other.test"]),
    ("two From: headers", ["From: <alice@sams.test>", "From: <carol@other.test>"]),
    ("encoded word hiding an address", [f"From: {encoded_word('carol@other.test')} <alice@sams.test>"]),
    ("encoded word for the address", [f"From: {encoded_word('carol@other.test')}"]),
    ("case of another user", ["From: <Carol@OTHER.test>"]),
    ("an alias alice owns, but not the envelope", ["From: <postmaster@other.test>"]),
    ("no address at all", ["From: undisclosed-recipients:;"]),
]


@pytest.mark.parametrize(("case", "from_lines"), SPOOFS, ids=[c for c, _ in SPOOFS])
def test_submission_refuses_a_from_the_login_did_not_send(mail: World, case: str, from_lines: list[str]) -> None:
    tag = subject("hfrom-spoof")
    code, text = send_as(mail, ALICE, ALICE, from_lines, tag)
    assert code == 554 and text.startswith("5.7.1") and "From:" in text, (case, code, text)
    assert at_receiver(mail, tag, wait=3) == [], case  # nothing was queued for another domain


def test_null_envelope_sender_vouches_for_no_from(mail: World) -> None:
    """MAIL FROM:<> passes Postfix's ownership check (no address to own), so it cannot vouch for a From:."""
    tag = subject("hfrom-null")
    code, text = send_as(mail, ALICE, "", ["From: Carol <carol@other.test>"], tag)
    assert code == 554 and text.startswith("5.7.1") and "From:" in text, (code, text)
    assert at_receiver(mail, tag, wait=3) == []


def test_no_from_header_is_refused(mail: World) -> None:
    tag = subject("hfrom-none")
    data = raw_message([f"To: <{RECEIVER}>"], tag)
    code, text = mail.inet(submit_attempt, mail.host, 587, mail.cafile, mail.login(ALICE), ALICE, [RECEIVER], data)
    assert code == 554 and text.startswith("5.7.1"), (code, text)


# (envelope, From: lines, signing domain): what alice may send, and the domain whose key signs it.
ALLOWED: list[tuple[str, list[str], str]] = [
    (ALICE, ["From: Alice <alice@sams.test>"], "sams.test"),
    (ALICE, ["From: =?utf-8?q?Alice_Liddell?= <ALICE@Sams.Test>"], "sams.test"),
    # postmaster@other.test delivers to alice (stacks/lab/mail_list.yml): hers to send as, signed there.
    ("postmaster@other.test", ["From: Postmaster <postmaster@other.test>"], "other.test"),
]


@pytest.mark.parametrize(("envelope", "from_lines", "domain"), ALLOWED, ids=["own", "case+encoded", "alias"])
def test_receiver_sees_owned_from_signed_and_aligned(
    mail: World, envelope: str, from_lines: list[str], domain: str
) -> None:
    tag = subject("hfrom-ok")
    code, text = send_as(mail, ALICE, envelope, from_lines, tag)
    assert code == 250, (code, text)
    results = auth_results(received(mail.lab, tag))
    assert results["dkim"].startswith(f"dkim=pass header.d={domain} "), results
    assert results["dmarc"].startswith("dmarc=pass") and results["dmarc"].endswith(f"header.from={domain}"), results


def test_opendkim_signs_for_the_from_header_only(mail: World) -> None:
    """OpenDKIM picks its key by SenderHeaders: pinned to From (never Sender: or Resent-From:)."""
    assert re.search(r"(?m)^SenderHeaders\s+From$", sh(mail.lab, "cat /etc/opendkim.conf")), "SenderHeaders"
    tag = subject("hfrom-sender-hdr")
    data = raw_message(["Sender: <carol@other.test>", "From: <alice@sams.test>", f"To: <{RECEIVER}>"], tag)
    code, _ = mail.inet(submit_attempt, mail.host, 587, mail.cafile, mail.login(ALICE), ALICE, [RECEIVER], data)
    assert code == 250
    assert auth_results(received(mail.lab, tag))["dkim"].startswith("dkim=pass header.d=sams.test "), tag


# --- 2. mail claiming a hosted domain, from the internet ----------------------------------------------


# One TXT query to the host's Unbound on loopback (what Rspamd asks), with the standard library only:
# prints the response code and the number of answers.
ASK_UNBOUND = """python3 - {name} <<'EOF'
import random, socket, struct, sys
qid = random.randrange(65536)
qname = b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[1].split(".")) + b"\\0"
packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 16, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(packet, ("127.0.0.1", 53))
reply = s.recv(4096)
print(reply[3] & 15, struct.unpack(">H", reply[6:8])[0])
EOF"""


def test_host_resolver_answers_for_the_hosted_domains(mail: World) -> None:
    """Rspamd asks Unbound on loopback: it must see the published SPF, DKIM and DMARC records
    (Unbound's built-in `local-zone: "test." static` answers NXDOMAIN, rcode 3, for the lab's names)."""
    lab = mail.lab
    selector = lab.settings.config.dkim.selector
    for name in ("sams.test", "_dmarc.sams.test", f"{selector}._domainkey.other.test"):
        rcode, answers = sh(lab, ASK_UNBOUND.format(name=name)).split()
        assert (rcode, answers != "0") == ("0", True), (name, rcode, answers)


def inbound(mail: World, envelope: str, data: bytes, rcpt: str = "bob@sams.test") -> Any:
    """A remote MTA (198.18.0.1, mx.sender.example) delivering on port 25: the reply to the final dot."""
    return mail.inet(mx_attempt, mail.host, envelope, rcpt, data)


@pytest.mark.parametrize(
    ("envelope", "header_from"),
    [
        (f"someone@{SENDER_DOMAIN}", ALICE),  # header only: what the user sees
        (ALICE, f"someone@{SENDER_DOMAIN}"),  # envelope only: where bounces go
        (ALICE, ALICE),
    ],
    ids=["header", "envelope", "both"],
)
def test_a_stranger_claiming_a_hosted_domain_is_refused(mail: World, envelope: str, header_from: str) -> None:
    tag = subject("inbound-forged")
    data = raw_message([f"From: <{header_from}>", "To: <bob@sams.test>"], tag)
    code, text = inbound(mail, envelope, data)
    assert code == 554 and text.startswith("5.7.1") and "sams.test" in text, (code, text)
    assert mail.read("bob@sams.test", tag, want=1, wait=1) == []


def genuine_signed(mail: World, tag: str) -> bytes:
    """alice's message as it left SAMS (signed), taken from the independent receiver's spool."""
    code, text = send_as(mail, ALICE, ALICE, ["From: Alice <alice@sams.test>"], tag)
    assert code == 250, (code, text)
    raw = received(mail.lab, tag)
    # Without the receiver's own two trace lines on top: the message as the forwarder got it.
    header, _, body = raw.partition(b"\r\n\r\n")
    lines = re.split(rb"\r\n(?![ \t])", header)
    kept = [h for h in lines if not h.startswith((b"Authentication-Results: mx.", b"Received: from mail."))]
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def test_forwarded_signed_mail_of_a_hosted_domain_is_accepted(mail: World) -> None:
    """A forwarder without SRS keeps the envelope (SPF cannot pass) but not the signature: DKIM passes,
    DMARC passes, and Rspamd on the host says so in Authentication-Results."""
    tag = subject("inbound-forwarded")
    forwarded = genuine_signed(mail, tag)
    code, text = inbound(mail, ALICE, forwarded)
    assert code == 250, (code, text)
    (got,) = mail.read("bob@sams.test", tag)
    ar = re.sub(r"\s+", " ", got.split(b"\r\n\r\n", 1)[0].decode())
    ar = ar.split("Authentication-Results: ", 1)[1]
    assert re.search(r"dkim=pass header\.d=sams\.test", ar), ar
    assert re.search(r"dmarc=pass .*header\.from=sams\.test", ar), ar
    assert re.search(r"spf=softfail .*smtp\.mailfrom=alice@sams\.test", ar), ar  # the lab publishes ~all


def test_modified_forward_of_a_hosted_domain_is_refused(mail: World) -> None:
    """The trade-off, as it is: a forwarder that changes the message (a list's footer) breaks the
    signature, and nothing else vouches for the hosted domain: refused, as DMARC p=reject would."""
    tag = subject("inbound-footer")
    forwarded = genuine_signed(mail, tag) + b"-- \r\nA list footer\r\n"
    code, text = inbound(mail, ALICE, forwarded)
    assert code == 554 and text.startswith("5.7.1"), (code, text)


# --- 11. the DNS plan ---------------------------------------------------------------------------------


def test_srv_records_say_what_the_ports_do(mail: World) -> None:
    """RFC 6186/8314 SRV records, asked from the internet, agree with the firewall's port policy:
    a service whose port is public points at the host, one that is not says '.' (not offered)."""
    lab = mail.lab
    host = lab.settings.config.hostname
    public = {p.service for p in port_policy(lab.settings.config) if p.exposure == "public"}
    ports = {"submission": 587, "submissions": 465, "imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995}
    names = [(f"_{svc}._tcp.sams.test", "SRV") for svc in ports]
    answers = mail.inet(query, lab.spec.inet_ipv4, names)
    for svc, port in ports.items():
        (rdata,) = answers[f"_{svc}._tcp.sams.test SRV"][2]
        offered = rdata.split()[2:] == [str(port), f"{host}."]
        assert offered == (svc in public), (svc, rdata, sorted(public))
        if not offered:
            assert rdata == "0 0 0 .", (svc, rdata)


def test_dmarc_report_destination_is_authorized(mail: World) -> None:
    """other.test sends its DMARC reports to postmaster@sams.test (Pulumi.lab.yaml): sams.test must say
    it accepts them, or receivers drop the reports. checkdmarc, asking the lab DNS, agrees."""
    lab = mail.lab
    name = "other.test._report._dmarc.sams.test"
    answers = mail.inet(query, lab.spec.inet_ipv4, [(name, "TXT")])
    assert answers[f"{name} TXT"][:3] == ("NOERROR", True, ['"v=DMARC1"']), answers
    (result,) = mail.inet(checkdmarc_domains, lab.spec.inet_ipv4, ["other.test"], timeout=180)
    warnings = " ".join(str(w) for w in result["dmarc"].get("warnings", []))
    assert "does not indicate that it accepts DMARC reports" not in warnings, warnings
