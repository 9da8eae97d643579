"""`python -m doctor` against the lab, run where a stranger stands: in `sams-inet`, the internet.

DNS comes from the lab DNS (lab/dns.py, NSD at 198.18.0.1, serving the program's own records and
the host's PTR); clients trust Pebble's issuers (lab/acme.py); the host's facts are gathered over
the tunnel with doctor's own host script and handed to the CLI (`--host-facts`), since the SSH port
is, rightly, not reachable from the internet. One record is then deliberately broken in the lab
DNS, and the doctor must fail on it, naming the record and the planned value.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from doctor import checks, probe
from doctor.expect import expected
from doctor.model import Finding, Observations, host_facts
from doctor.report import from_json
from lab import acme, dns
from lab.proc import netns_exec
from lab.session import Lab
from lab.spec import NAMES

pytestmark = pytest.mark.lab

PROJECT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Doctor:
    lab: Lab
    directory: Path
    outputs: Path
    cafile: Path

    def facts(self, outbound_target: str) -> dict[str, Any]:
        """The host's facts through the tunnel, with doctor's own script (as --ssh would gather them)."""
        plan = expected("lab", self.lab.settings, self.lab.run.outputs)
        opts = probe.ProbeOptions(self.lab.spec.public_ipv4, outbound_target=outbound_target)

        def run(argv: Any, stdin: str) -> str:
            return self.lab.shell.run(list(argv), stdin=stdin, timeout=60).stdout.decode()

        return probe.gather_host(plan, opts, run)

    def run(self, *, outbound_target: str) -> tuple[int, list[Finding], str]:
        """The CLI in sams-inet: exit code, findings (--json) and stderr."""
        facts = self.directory / "host-facts.json"
        facts.write_text(json.dumps(self.facts(outbound_target)))
        argv = [
            sys.executable, "-m", "doctor", "--stack", "lab", "--outputs", str(self.outputs),
            "--resolver", self.lab.spec.inet_ipv4, "--cafile", str(self.cafile), "--host-facts", str(facts),
            "--relay-rcpt", f"relay-test@{dns.RECEIVER_DOMAIN}", "--outbound-target", outbound_target,
            "--helo", f"mx.{dns.SENDER_DOMAIN}", "--json",
        ]  # fmt: skip
        proc = subprocess.run(netns_exec(NAMES.ns_inet, argv), cwd=PROJECT, capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, 1), proc.stderr
        return proc.returncode, from_json(proc.stdout), proc.stderr


@pytest.fixture(scope="module")
def doctor(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Doctor:
    d = tmp_path_factory.mktemp("doctor")
    outputs = d / "outputs.json"  # what `pulumi stack output --json` gives for a real stack
    outputs.write_text(json.dumps(lab.run.outputs))
    cafile = d / "pebble-issuers.pem"
    cafile.write_text(acme.issuer_pems(lab.paths, lab.spec.inet_ipv4))
    # A healthy host has had its nightly backup (to the lab's backup server): run it as the timer would.
    lab.shell.run(["sudo", "-n", "systemctl", "start", "sams-backup.service"])
    return Doctor(lab, d, outputs, cafile)


def of(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


@pytest.fixture(scope="module")
def healthy(doctor: Doctor) -> tuple[int, list[Finding]]:
    code, findings, _ = doctor.run(outbound_target=f"mx.{dns.RECEIVER_DOMAIN}")
    return code, findings


def test_records_ptr_and_helo_as_planned(doctor: Doctor, healthy: tuple[int, list[Finding]]) -> None:
    _, findings = healthy
    plan = expected("lab", doctor.lab.settings, doctor.lab.run.outputs)
    records = of(findings, "dns")
    assert {f.subject for f in records} == {f"{r.name} {r.type}" for r in plan.records}
    assert [f for f in records if f.status != "ok"] == []
    ptr = of(findings, "ptr")
    assert [(f.subject, f.status) for f in ptr] == [(f"PTR of {doctor.lab.spec.public_ipv4}", "ok")], ptr
    helo = of(findings, "helo")
    assert len(helo) == 2 and all(f.status == "ok" and plan.hostname in f.message for f in helo), helo


def test_certificates_trusted_on_every_tls_port(doctor: Doctor, healthy: tuple[int, list[Finding]]) -> None:
    _, findings = healthy
    tls = of(findings, "tls")
    ports = sorted(int(f.subject.split()[2]) for f in tls)
    assert ports == [25, 443, 465, 587, 993, 995]
    assert all(f.status == "ok" and "trusted" in f.message for f in tls), [f for f in tls if f.status != "ok"]


def test_public_ports_open_private_closed_no_relay(doctor: Doctor, healthy: tuple[int, list[Finding]]) -> None:
    _, findings = healthy
    ports = {f.subject: f for f in of(findings, "ports")}
    for number in (25, 465, 587, 993, 995, 443, 80):
        f = next(f for s, f in ports.items() if s.startswith(f"port {number}/tcp"))
        assert f.status == "ok" and "is open" in f.message, f
    for number in (22, 5432, 4190, 11334, 6379):
        f = next(f for s, f in ports.items() if s.startswith(f"port {number}/tcp"))
        assert f.status == "ok" and "is open" not in f.message, f
    wireguard = [f for f in ports.values() if "/udp" in f.subject]
    assert [f.status for f in wireguard] == ["unchecked"] and "cannot be probed" in wireguard[0].message
    (relay,) = of(findings, "relay")
    assert relay.status == "ok" and "Relay access denied" in relay.message, relay


def test_host_facts_and_exit_code(doctor: Doctor, healthy: tuple[int, list[Finding]]) -> None:
    code, findings = healthy
    (outbound,) = of(findings, "outbound")
    assert outbound.status == "ok" and f"mx.{dns.RECEIVER_DOMAIN}:25" in outbound.message, outbound
    (backup,) = of(findings, "backup")  # the status record the backup unit wrote, read over the tunnel
    assert backup.status == "ok" and "rest:https://backup.lab.example:8000/sams/" in backup.message, backup
    (wal,) = of(findings, "wal")  # the host script read PostgreSQL's archive_status over the tunnel
    assert wal.status == "ok" and "waiting" in wal.message, wal
    assert {f.check for f in findings if f.check in ("disk", "memory") and f.status != "unchecked"} == {
        "disk",
        "memory",
    }
    # Disk and memory are this machine's (the lab host shares them); everything else must pass.
    failing = {f.check for f in findings if f.status == "fail"}
    assert failing <= {"disk", "memory"}, [f for f in findings if f.status == "fail"]
    assert code == (1 if failing else 0)


def test_outbound_to_the_real_internet_is_reported_unchecked(doctor: Doctor) -> None:
    """The lab has no internet DNS: the default outbound probe (Gmail's MX) says it could not check."""
    plan = expected("lab", doctor.lab.settings, doctor.lab.run.outputs)
    facts = host_facts(doctor.facts(probe.DEFAULT_OUTBOUND))
    (finding,) = checks.check_outbound(plan, Observations(host=facts))
    assert finding.status == "unchecked" and probe.DEFAULT_OUTBOUND in finding.message, finding


@pytest.fixture
def broken_dkim(doctor: Doctor) -> Iterator[str]:
    """The lab DNS serving the DKIM record with another key; the lab's own zones back afterwards."""
    lab = doctor.lab
    selector, domain = lab.settings.config.dkim.selector, "sams.test"
    owner = f"{selector}._domainkey "
    zones = []
    for zone, text in lab.spec.dns_zones:
        if zone == domain:
            lines = text.splitlines(keepends=True)
            hits = [i for i, line in enumerate(lines) if line.startswith(owner) and " TXT " in line]
            assert len(hits) == 1, text
            # Same length: the first character-string stays within 255 bytes.
            lines[hits[0]] = lines[hits[0]].replace("p=MIIB", "p=BADK", 1)
            text = "".join(lines)
        zones.append((zone, text))
    dns.stop(lab.paths)
    try:
        dns.start(dataclasses.replace(lab.spec, dns_zones=tuple(zones)), lab.paths)
        yield f"{selector}._domainkey.{domain}"
    finally:
        dns.stop(lab.paths)
        dns.start(lab.spec, lab.paths)


def test_broken_record_fails(doctor: Doctor, broken_dkim: str) -> None:
    code, findings, _ = doctor.run(outbound_target=f"mx.{dns.RECEIVER_DOMAIN}")
    plan = expected("lab", doctor.lab.settings, doctor.lab.run.outputs)
    record = next(r for r in plan.records if r.name == broken_dkim)
    failing = [f for f in findings if f.status == "fail" and f.check == "dns"]
    assert [f.subject for f in failing] == [f"{broken_dkim} TXT"], failing
    assert "differs from the plan" in failing[0].message and "p=BADK" in failing[0].message
    assert record.zone_line in failing[0].fix
    assert code == 1
