"""One DKIM rotation (s1 -> s2) on the real lab host, judged by the independent receiver.

The program is evaluated again for the lab stack with `sams:dkim.rotation` and a `SAMS_NOW` in each
phase (components/keys/rotation.py), exactly as `SAMS_NOW=<instant> pulumi up` would run it; the
steps whose inputs changed are applied over the tunnel (lab/program.py) and the lab DNS serves that
run's zones (lab/dns.py). In each phase alice sends to the receiver (lab/receiver.py), whose
Authentication-Results must show DKIM passing with the phase's signing selector, and DMARC passing.
A message signed with s1 before the switch must still verify while s1 is published, and fail once
it is withdrawn; after the withdrawal only s2 is in the DNS and on the host.

The lab fixture is shared by every lab module of the session and pytest runs the modules in file
name order (this one after test_deliverability_lab, before test_doctor_lab): the `walk` fixture
puts the stack's own run back at the end (steps re-applied, the original zones served) and checks
that the result is the original run, step for step and zone for zone.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

import mockrun
from components.keys.rotation import NOW_ENV
from components.mail.services import DKIM_KEY_DIR, dkim_key_path
from lab import dns as labdns
from lab import program, receiver
from lab.hostcmd import sh
from lab.netclient import dialogue
from lab.session import Lab
from lab.tests.test_deliverability_lab import RECEIVER, auth_results, query
from lab.world import World, subject, world

pytestmark = pytest.mark.lab

DOMAIN = "sams.test"
OLD, NEW = "s1", "s2"
ROTATION = {
    "selector": OLD,
    "rotation": {"to": NEW, "started": "2026-05-04T09:00:00Z", "switchAfter": "48h", "withdrawAfter": "7d"},
}
# The phases in order, each with an instant inside it; `before` is the rotation written but not begun.
PHASES = {
    "before": "2026-05-04T08:00:00Z",
    "publishing": "2026-05-04T09:00:00Z",
    "switched": "2026-05-06T09:00:00Z",
    "withdrawn": "2026-05-11T09:00:00Z",
}
# What the program's rotation phase function calls each of them (the `dkimRotation` output).
PROGRAM_PHASE = {"before": "scheduled", "publishing": "publishing", "switched": "switched", "withdrawn": "withdrawn"}


def fingerprints(run: mockrun.Run) -> dict[str, str]:
    return {s.name: s.fingerprint() for s in program.steps_of(run)}


@dataclasses.dataclass
class Phase:
    name: str
    run: mockrun.Run
    report: program.ApplyReport
    changed: list[str]  # the steps whose inputs differ from what the host had applied before
    zones: tuple[tuple[str, str], ...]


class Walk:
    """The rotation, one phase after another, on the session's lab host."""

    def __init__(self, mail: World) -> None:
        self.mail = mail
        self.lab: Lab = mail.lab
        self.keys = program.lab_keys(self.lab.paths)
        # What the host has applied (the fixture applied the stack's own run).
        self.applied: dict[str, str] = json.loads(program.applied_path(self.lab.paths).read_text())
        self.done: dict[str, Phase] = {}
        self.s1_message: bytes | None = None  # signed with s1 before the switch, as SAMS sent it

    def evaluate(self, at: str | None, overrides: dict[str, Any] | None) -> mockrun.Run:
        """The program for the lab stack, with `SAMS_NOW=at` (None: the real clock)."""
        with pytest.MonkeyPatch.context() as mp:
            if at is None:
                mp.delenv(NOW_ENV, raising=False)
            else:
                mp.setenv(NOW_ENV, at)
            return program.lab_run(self.lab.paths, self.keys, overrides)

    def apply(self, run: mockrun.Run) -> tuple[program.ApplyReport, list[str]]:
        now = fingerprints(run)
        changed = [name for name, fp in now.items() if self.applied.get(name) != fp]
        report = program.apply(run, self.lab.paths, shell=self.lab.shell)
        self.applied = now
        return report, changed

    def serve(self, zones: tuple[tuple[str, str], ...]) -> None:
        """The lab DNS restarted with `zones` (the same public API the doctor's lab test uses)."""
        labdns.stop(self.lab.paths)
        labdns.start(dataclasses.replace(self.lab.spec, dns_zones=zones), self.lab.paths)

    def goto(self, name: str) -> Phase:
        """Enter phase `name`, walking through every earlier phase not yet entered."""
        for earlier in list(PHASES)[: list(PHASES).index(name) + 1]:
            if earlier not in self.done:
                self.done[earlier] = self._enter(earlier)
        return self.done[name]

    def _enter(self, name: str) -> Phase:
        run = self.evaluate(PHASES[name], {"sams:dkim": ROTATION})
        assert run.outputs["dkimRotation"]["phase"] == PROGRAM_PHASE[name], run.outputs["dkimRotation"]
        report, changed = self.apply(run)
        zones = program.spec_from_run(run, self.lab.settings, self.keys).dns_zones
        self.serve(zones)
        return Phase(name, run, report, changed, zones)

    def restore(self) -> tuple[program.ApplyReport, mockrun.Run]:
        """The stack's own run (no rotation, the real clock) applied again, its zones served."""
        run = self.evaluate(None, None)
        report, _ = self.apply(run)
        self.serve(self.lab.spec.dns_zones)
        return report, run


@pytest.fixture(scope="module")
def mail(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(lab, tmp_path_factory.mktemp("dkim-rotation")) as w:
        yield w


@pytest.fixture(scope="module")
def walk(mail: World) -> Iterator[Walk]:
    w = Walk(mail)
    try:
        yield w
    finally:
        # Explicit, whatever failed above: the modules after this one expect the stack's own state.
        w.restore()


# --- what the receiver and the host say ----------------------------------------------------------


def arrivals(lab: Lab, marker: str, count: int, wait: float = 60) -> list[bytes]:
    """Every message with `marker` in the receiver's spool, oldest first, once `count` have arrived."""
    new = receiver.spool(lab.paths) / "new"
    deadline = time.monotonic() + wait
    while True:
        found = [p.read_bytes() for p in sorted(new.glob("*.eml"))] if new.exists() else []
        found = [raw for raw in found if marker.encode() in raw]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            log = sh(lab, "journalctl -u postfix@- -u opendkim --no-pager -n 30", check=False)
            raise AssertionError(f"{len(found)} of {count} messages with {marker} at the receiver; log:\n{log}")
        time.sleep(0.2)


def dkim_tags(raw: bytes) -> dict[str, str]:
    """The tags of the message's one DKIM-Signature."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    (signature,) = msg.get_all("DKIM-Signature") or []
    value = "".join(str(signature).split())
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def as_sent(raw: bytes) -> bytes:
    """The message as SAMS sent it: without the receiver's Authentication-Results and Received on top."""
    lines = raw.split(b"\r\n")
    received = next(i for i, line in enumerate(lines) if line.startswith(b"Received: "))
    assert lines[0].startswith(b"Authentication-Results: "), lines[:3]
    return b"\r\n".join(lines[received + 1 :])


def send_and_judge(walk: Walk, tag: str) -> tuple[dict[str, str], dict[str, str], bytes]:
    """alice submits on 587 to the receiver: its verdicts, the DKIM-Signature tags, the raw arrival."""
    walk.mail.submit(587, f"alice@{DOMAIN}", [RECEIVER], tag, body=f"{tag}\n")
    (raw,) = arrivals(walk.lab, tag, 1)
    return auth_results(raw), dkim_tags(raw), raw


def redeliver(walk: Walk, raw: bytes, count: int) -> dict[str, str]:
    """The same signed message handed to the receiver again (a copy that waited in a queue); the
    verdict on that copy, the `count`th arrival of its Subject."""
    lab = walk.lab
    tag = str(email.message_from_bytes(raw, policy=email.policy.compat32)["Subject"])
    steps = [("mail", f"FROM:<alice@{DOMAIN}>"), ("rcpt", f"TO:<{RECEIVER}>"), ("data", raw.decode())]
    replies = walk.mail.inet(dialogue, lab.spec.receiver_ipv4, 25, steps)["replies"]
    assert [code for code, _ in replies] == [250, 250, 250], replies
    return auth_results(arrivals(lab, tag, count)[-1])


def key_files(lab: Lab) -> set[str]:
    return set(sh(lab, f"find {DKIM_KEY_DIR} -name '*.private'").split())


def domains(lab: Lab) -> list[str]:
    return [d.name for d in lab.settings.mail.domains]


def dkim_answers(walk: Walk) -> dict[str, Any]:
    names = [(f"{s}._domainkey.{d}", "TXT") for d in domains(walk.lab) for s in (OLD, NEW)]
    return walk.mail.inet(query, walk.lab.spec.inet_ipv4, names)


def assert_signed(results: dict[str, str], tags: dict[str, str], selector: str) -> None:
    assert tags["d"] == DOMAIN and tags["s"] == selector, tags
    assert results["dkim"] == f"dkim=pass header.d={DOMAIN} header.s={selector}", results
    assert results["dmarc"].startswith("dmarc=pass") and results["dmarc"].endswith(f"header.from={DOMAIN}"), results


# --- the phases, in order ---------------------------------------------------------------------------

DKIM_STEPS = {"mail-dkim-keys", "mail-opendkim"}


def assert_only_dkim_steps_ran(phase: Phase) -> None:
    """A phase change re-ran some of the DKIM steps and nothing else."""
    assert phase.changed and set(phase.changed) <= DKIM_STEPS, phase.changed
    assert phase.report.ran == phase.changed, phase.report


def test_before_the_start_nothing_changes_and_s1_signs(walk: Walk) -> None:
    """The rotation written down but not begun: no step runs, s1 signs, s2 exists nowhere."""
    phase = walk.goto("before")
    assert phase.changed == [] and phase.report.ran == [], phase.report
    assert phase.zones == walk.lab.spec.dns_zones
    results, tags, _ = send_and_judge(walk, subject("rot-before"))
    assert_signed(results, tags, OLD)
    assert key_files(walk.lab) == {dkim_key_path(d, OLD) for d in domains(walk.lab)}


def test_publishing_adds_s2_and_still_signs_with_s1(walk: Walk) -> None:
    phase = walk.goto("publishing")
    assert_only_dkim_steps_ran(phase)
    answers = dkim_answers(walk)
    for d in domains(walk.lab):
        for s in (OLD, NEW):
            rcode, authoritative, values = answers[f"{s}._domainkey.{d} TXT"]
            assert (rcode, authoritative) == ("NOERROR", True) and len(values) == 1, (s, d, answers)
    assert key_files(walk.lab) == {dkim_key_path(d, s) for d in domains(walk.lab) for s in (OLD, NEW)}
    tag = subject("rot-publishing")
    results, tags, raw = send_and_judge(walk, tag)
    assert_signed(results, tags, OLD)
    walk.s1_message = as_sent(raw)


def test_switched_signs_with_s2_and_s1_mail_still_verifies(walk: Walk) -> None:
    phase = walk.goto("switched")
    assert_only_dkim_steps_ran(phase)
    assert phase.zones == walk.done["publishing"].zones  # both records stay published
    results, tags, _ = send_and_judge(walk, subject("rot-switched"))
    assert_signed(results, tags, NEW)
    # The message signed with s1 before the switch, arriving late: s1 is still published.
    assert walk.s1_message is not None
    late = redeliver(walk, walk.s1_message, 2)
    assert late["dkim"] == f"dkim=pass header.d={DOMAIN} header.s={OLD}", late
    assert late["dmarc"].startswith("dmarc=pass"), late


def test_reapplying_a_phase_without_change_runs_no_step(walk: Walk) -> None:
    walk.goto("switched")
    again = walk.evaluate(PHASES["switched"], {"sams:dkim": ROTATION})
    report, changed = walk.apply(again)
    assert changed == [] and report.ran == [], report
    assert len(report.skipped) == len(program.steps_of(again)) > 0, report


def test_withdrawn_leaves_only_s2_in_dns_and_on_the_host(walk: Walk) -> None:
    phase = walk.goto("withdrawn")
    assert_only_dkim_steps_ran(phase)
    answers = dkim_answers(walk)
    for d in domains(walk.lab):
        assert answers[f"{OLD}._domainkey.{d} TXT"][:2] == ("NXDOMAIN", True), answers
        assert answers[f"{NEW}._domainkey.{d} TXT"] == answers_before_withdrawal(walk, d), answers
    assert key_files(walk.lab) == {dkim_key_path(d, NEW) for d in domains(walk.lab)}
    assert sh(walk.lab, f"test -e {dkim_key_path(DOMAIN, OLD)} && echo present || echo gone").strip() == "gone"
    results, tags, _ = send_and_judge(walk, subject("rot-withdrawn"))
    assert_signed(results, tags, NEW)
    # The old s1 message no longer verifies: its key is gone from the DNS.
    assert walk.s1_message is not None
    late = redeliver(walk, walk.s1_message, 3)
    assert late["dkim"].startswith("dkim=fail") and f"header.s={OLD}" in late["dkim"], late
    assert late["dmarc"].startswith("dmarc=fail"), late


def answers_before_withdrawal(walk: Walk, domain: str) -> tuple[str, bool, list[str]]:
    """The s2 record as the publishing phase served it (the same key from publishing to the end)."""
    zones = dict(walk.done["publishing"].zones)
    owner = f"{NEW}._domainkey "
    (line,) = [ln for ln in zones[domain].splitlines() if ln.startswith(owner) and " TXT " in ln]
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, line.split(" TXT ", 1)[1])
    return ("NOERROR", True, [rdata.to_text()])


def test_restored_to_the_stacks_own_state(walk: Walk) -> None:
    """The end of the walk: the stack's own run again, the host and the DNS as the session began."""
    walk.goto("withdrawn")
    report, run = walk.restore()
    assert report.ran and set(report.ran) <= DKIM_STEPS, report
    assert fingerprints(run) == fingerprints(walk.lab.run)
    assert program.spec_from_run(run, walk.lab.settings, walk.keys).dns_zones == walk.lab.spec.dns_zones
    assert key_files(walk.lab) == {dkim_key_path(d, OLD) for d in domains(walk.lab)}
    results, tags, _ = send_and_judge(walk, subject("rot-restored"))
    assert_signed(results, tags, walk.lab.settings.config.dkim.selector)
