"""ClamAV (sams:antivirus.clamav) on the lab host, switched by the program as `pulumi up` would.

Turned on, Rspamd asks clamd about every attachment: a virus is refused in the SMTP session, from
another MTA on 25 and from a signed-in user on 587, and clean mail still arrives. Turned off again,
clamd and freshclam stop and the same virus is no longer refused.

The lab has no route to ClamAV's mirrors, so freshclam cannot fetch the official signatures. The
first test shows what `up` does then: the antivirus step fails, naming the download, and Rspamd is
not told to ask a clamd that is not there. The fixture then puts a one-signature database where
freshclam would have put the official ones: it detects the EICAR test file under a name of our own
(a refusal naming it proves clamd loaded it), beside empty main.inc and daily.inc, which are what
Debian's clamav-daemon units and the antivirus step look for once freshclam has run.
"""

from __future__ import annotations

import dataclasses
import email
import email.message
import email.utils
from collections.abc import Iterator
from typing import Any

import pytest

from components.mail import services
from doctor import checks, probe
from doctor.expect import expected
from doctor.model import Observations, host_facts
from lab import program
from lab.dns import SENDER_DOMAIN
from lab.hostcmd import WAIT_RSPAMD, sh
from lab.netclient import mx_attempt, submit_attempt
from lab.proc import LabError
from lab.session import Lab, up_with
from lab.world import World, subject, world

pytestmark = pytest.mark.lab

# The EICAR test file (split so this file is no EICAR file itself) and the lab's signature for it.
EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "SAMS.Lab.EICAR"
DETECTED = f"{SIGNATURE}.UNOFFICIAL"  # clamd's name for a find from a database not signed by ClamAV
LAB_DATABASE = f"{services.CLAMAV_DB_DIR}/sams-lab.ndb"
FIRST_DATABASES = " ".join(f"{services.CLAMAV_DB_DIR}/{db}.inc" for db in services.CLAMAV_FIRST_DATABASES)
RSPAMD_ANTIVIRUS = f"{services.RSPAMD_LOCAL}/local.d/antivirus.conf"
PING_TRIES = 60  # clamd loads the lab's one signature in well under a second


def up(lab: Lab, *, clamav: bool) -> program.ApplyReport:
    """`pulumi up` of the lab stack with sams:antivirus.clamav set."""
    return up_with(lab, {"sams:antivirus": {"clamav": clamav}})


def with_attachment(sender: str, to: str, tag: str, payload: str, filename: str) -> bytes:
    """A message with one attachment. The tests name even the virus .txt: Rspamd's own rules score an
    executable's extension (.com) high enough to greylist, which would hide what ClamAV decided."""
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, tag
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain=sender.split("@")[-1])
    msg.set_content("the file you asked for\n")
    msg.add_attachment(payload.encode(), maintype="application", subtype="octet-stream", filename=filename)
    return msg.as_bytes()


def from_the_internet(mail: World, tag: str, payload: str, filename: str) -> tuple[int, str]:
    """Another MTA delivers to bob on 25 a message with this attachment: the final reply."""
    sender = f"someone@{SENDER_DOMAIN}"
    data = with_attachment(sender, "bob@sams.test", tag, payload, filename)
    return mail.inet(mx_attempt, mail.host, sender, "bob@sams.test", data)


def active(lab: Lab, unit: str) -> str:
    return sh(lab, f"systemctl is-active {unit}", check=False).strip()


@pytest.fixture(scope="module")
def mail(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(lab, tmp_path_factory.mktemp("antivirus")) as w:
        yield w


@pytest.fixture(scope="module")
def download_failed(lab: Lab) -> Iterator[LabError]:
    """`up` with ClamAV on, where freshclam cannot reach a mirror (no signatures on the host yet)."""
    sh(lab, f"rm -rf {LAB_DATABASE} {FIRST_DATABASES}")
    try:
        with pytest.raises(LabError) as failed:
            up(lab, clamav=True)
        yield failed.value
    finally:
        # Back to the stack's own state, whatever a test did.
        up(lab, clamav=False)
        sh(lab, f"rm -rf {LAB_DATABASE} {FIRST_DATABASES}")


@pytest.fixture(scope="module")
def clamav_on(lab: Lab, download_failed: LabError, mail: World) -> program.ApplyReport:
    """ClamAV on, with the lab's database standing in for freshclam's first download."""
    hexsig = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE".hex()
    sh(
        lab,
        f"printf '%s\\n' '{SIGNATURE}:0:*:{hexsig}' > {LAB_DATABASE} && chown clamav:clamav {LAB_DATABASE} && "
        f"install -d -o clamav -g clamav {FIRST_DATABASES}",
    )
    report = up(lab, clamav=True)
    sh(lab, WAIT_RSPAMD)  # the Rspamd step reloaded it
    return report


def test_without_signatures_up_fails_naming_the_download_and_rspamd_is_not_switched(
    lab: Lab, download_failed: LabError
) -> None:
    text = str(download_failed)
    assert "step mail-antivirus failed" in text and "first signature download failed" in text, text
    assert "Could not resolve hostname" in text  # freshclam's own reason, passed on
    # The chain stopped before Rspamd: it does not ask a clamd that is not there.
    assert "enabled = false;" in sh(lab, f"cat {RSPAMD_ANTIVIRUS}")
    assert active(lab, "clamav-daemon.service") == "inactive"
    # freshclam's daemon was started again, to keep trying by itself.
    assert active(lab, "clamav-freshclam.service") == "active"


def test_turned_on_clamd_runs_as_clamav_on_its_socket(lab: Lab, clamav_on: program.ApplyReport) -> None:
    # (the packages step ran on the failed try before it, and has not changed since)
    assert {"mail-antivirus", "mail-rspamd"} <= set(clamav_on.ran), clamav_on.ran
    for unit in services.CLAMAV_UNITS:
        assert active(lab, unit) == "active", unit
    # The settings of SAMS's clamd.conf that the running clamd shows: its user and its socket.
    assert sh(lab, "ps -o user= -C clamd").split() == ["clamav"]
    assert services.CLAMD_SOCKET in sh(lab, "ss -Hxlp | grep clamd")
    scan = sh(lab, f"printf '%s' '{EICAR}' > /tmp/eicar.txt && clamdscan --fdpass /tmp/eicar.txt", check=False)
    assert f"{DETECTED} FOUND" in scan, scan


def test_the_doctor_sees_clamd_answer(lab: Lab, clamav_on: object) -> None:
    """doctor's host script, run on the host as `--ssh` runs it, asks the real clamd."""
    plan = expected("lab", lab.settings, lab.run.outputs)
    plan = dataclasses.replace(plan, antivirus=True)  # the stack as this module applied it

    def run(argv: Any, stdin: str) -> str:
        return lab.shell.run(list(argv), stdin=stdin, timeout=60).stdout.decode()

    facts = host_facts(probe.gather_host(plan, probe.ProbeOptions(lab.spec.public_ipv4), run))
    assert facts.clamd == "PONG"
    (finding,) = checks.check_antivirus(plan, Observations(host=facts))
    assert finding.status == "ok", finding


def test_a_virus_from_the_internet_is_refused_and_clean_mail_arrives(mail: World, clamav_on: object) -> None:
    infected, clean = subject("eicar-25"), subject("clean-25")
    refused = from_the_internet(mail, infected, EICAR, "eicar.txt")
    assert refused[0] == 554 and f'virus found: "{DETECTED}"' in refused[1], refused
    taken = from_the_internet(mail, clean, "hello\n", "a.txt")
    assert taken[0] == 250, taken
    assert len(mail.read("bob@sams.test", clean)) == 1
    assert mail.read("bob@sams.test", infected, want=1, wait=2) == []


def test_a_virus_a_user_submits_is_refused(mail: World, clamav_on: object) -> None:
    tag = subject("eicar-587")
    data = with_attachment("alice@sams.test", "bob@sams.test", tag, EICAR, "eicar.txt")
    refused = mail.inet(
        submit_attempt, mail.host, 587, mail.cafile, mail.login("alice@sams.test"), "alice@sams.test",
        ["bob@sams.test"], data,
    )  # fmt: skip
    assert refused[0] == 554 and DETECTED in refused[1], refused


def test_while_clamd_is_down_mail_is_delivered_unscanned_and_the_log_says_so(
    lab: Lab, mail: World, clamav_on: object
) -> None:
    """The documented failure mode: Rspamd cannot reach clamd, so the message goes through with
    CLAMAV_FAIL in its task summary (Rspamd's log), neither refused nor lost."""
    tag = subject("clamd-down")
    # A part never sent before: Rspamd keeps each part's verdict in Redis and would not ask clamd again.
    data = with_attachment(f"someone@{SENDER_DOMAIN}", "bob@sams.test", tag, f"{tag}\n", "a.txt")
    message_id = email.message_from_bytes(data)["Message-ID"]
    sh(lab, "systemctl stop clamav-daemon.socket clamav-daemon.service")
    try:
        taken = mail.inet(mx_attempt, mail.host, f"someone@{SENDER_DOMAIN}", "bob@sams.test", data)
    finally:
        sh(lab, "systemctl start clamav-daemon.socket clamav-daemon.service")
    assert taken[0] == 250, taken
    assert len(mail.read("bob@sams.test", tag)) == 1
    (summary,) = sh(lab, f"grep -F 'id: {message_id}' /var/log/rspamd/rspamd.log").splitlines()
    assert "CLAMAV_FAIL" in summary, summary
    sh(lab, f"clamdscan --ping {PING_TRIES}:1 >/dev/null")  # back for the next test


def test_turned_off_clamav_stops_and_the_virus_is_no_longer_refused(lab: Lab, mail: World, clamav_on: object) -> None:
    report = up(lab, clamav=False)
    assert {"mail-antivirus", "mail-rspamd"} <= set(report.ran), report.ran
    for unit in services.CLAMAV_UNITS:
        assert active(lab, unit) == "inactive", unit
        assert sh(lab, f"systemctl is-enabled {unit}", check=False).strip() == "disabled", unit
    sh(lab, WAIT_RSPAMD)  # the Rspamd step reloaded it
    taken = from_the_internet(mail, subject("eicar-off"), EICAR, "eicar.txt")
    assert taken[0] == 250, taken
