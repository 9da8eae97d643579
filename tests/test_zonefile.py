"""Zone files from the published records (components/dns/zonefile.py) and the lab DNS's zones.

The zone text must say exactly what the Cloudflare component declares (its inputs read back as
components.dns.records.Record): every record, TXT values
split into the same character-strings, parseable by dnspython and accepted by NSD's own checker
(nsd-checkzone, installed by ./run setup from lab/requirements-apt.txt).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

import mockrun
from components.dns import records, zonefile
from components.dns.records import Record
from lab import dns as labdns

DNSRECORD = "cloudflare:index/dnsRecord:DnsRecord"
NS = ["ns.lab.example"]


def published_zones(run: mockrun.Run) -> dict[str, str]:
    zones = [a["filter"]["name"] for t, a in run.invokes if t == labdns.GETZONE]
    published = [records.from_cloudflare(r.inputs, zones) for r in run.of_type(DNSRECORD)]
    return zonefile.zone_files(published, zones, nameservers=NS)


def parse(zones: dict[str, str]) -> dict[str, dns.zone.Zone]:
    return {name: dns.zone.from_text(text, origin=name, relativize=False) for name, text in zones.items()}


def origin(zone: dns.zone.Zone) -> dns.name.Name:
    assert zone.origin is not None
    return zone.origin


def rdatas(parsed: dict[str, dns.zone.Zone], name: str, kind: str) -> set[str]:
    owner = dns.name.from_text(name)
    # The most specific zone answers, as on the wire (the lab also serves the root).
    holders = [z for z in parsed.values() if owner.is_subdomain(origin(z))]
    if not holders:
        return set()
    zone = max(holders, key=lambda z: len(origin(z)))
    found = zone.get_rdataset(owner, kind)
    return {r.to_text() for r in found} if found else set()


def expected_rdata(inputs: dict[str, object]) -> str:
    """What the record's data is, independently of the renderer: Cloudflare's fields as DNS text."""
    kind = str(inputs["type"])
    if kind in ("SRV", "CAA"):
        data = inputs["data"]
        assert isinstance(data, dict)
        if kind == "SRV":
            target = str(data["target"])
            parts = [int(data["priority"]), int(data["weight"]), int(data["port"])]
            text = " ".join(map(str, parts)) + " " + (target if target == "." else target + ".")
        else:
            text = f'{int(data["flags"])} {data["tag"]} "{data["value"]}"'
    elif kind == "MX":
        text = f"{int(float(str(inputs['priority'])))} {inputs['content']}."
    elif kind == "CNAME":
        text = f"{inputs['content']}."
    else:
        text = str(inputs["content"])
    # Canonical form through dnspython, so "a" "b" and spacing compare equal.
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(kind), text).to_text()


def test_every_published_record_is_served(runner: Callable[[str], mockrun.Run], variant: str) -> None:
    run = runner(variant)
    published = run.of_type(DNSRECORD)
    assert published, f"{variant}: the program publishes no DnsRecord"
    parsed = parse(published_zones(run))
    served = sum(
        len(rs)
        for z in parsed.values()
        for _, rs in z.iterate_rdatasets()
        if rs.rdtype not in (dns.rdatatype.SOA, dns.rdatatype.NS)
    )
    assert served == len(published), (served, len(published))  # nothing more, nothing less (SOA/NS aside)
    for record in published:
        got = rdatas(parsed, str(record.inputs["name"]), str(record.inputs["type"]))
        assert expected_rdata(record.inputs) in got, (record.name, got)


def test_txt_character_strings_are_kept(runner: Callable[[str], mockrun.Run]) -> None:
    """The DKIM key (longer than 255 bytes) arrives as the same strings the plan split it into."""
    run = runner("lab")
    parsed = parse(published_zones(run))
    dkim = [r for r in run.of_type(DNSRECORD) if "._domainkey." in str(r.inputs["name"])]
    assert dkim
    for record in dkim:
        owner = dns.name.from_text(str(record.inputs["name"]))
        zone = next(z for z in parsed.values() if owner.is_subdomain(origin(z)))
        (rdata,) = zone.find_rdataset(owner, "TXT")
        strings = [s.decode() for s in rdata.strings]
        assert len(strings) >= 2 and all(len(s) <= 255 for s in strings)
        planned: Any = records.txt("".join(strings))
        assert rdata.strings == planned.strings  # the plan's split, kept
        assert "".join(strings).startswith("v=DKIM1; k=rsa; p=")


def test_every_zone_has_soa_and_ns(runner: Callable[[str], mockrun.Run]) -> None:
    for name, zone in parse(published_zones(runner("prod"))).items():
        (soa,) = zone.find_rdataset(origin(zone), "SOA")
        assert soa.mname.to_text() == "ns.lab.example." and soa.rname.to_text() == f"hostmaster.{name}."
        assert {r.to_text() for r in zone.find_rdataset(origin(zone), "NS")} == {"ns.lab.example."}


def nsd_checkzone(zone: str, text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    path = directory / f"{zone}.zone"
    path.write_text(text)
    return subprocess.run(["nsd-checkzone", zone, str(path)], capture_output=True, text=True, check=False)


def test_nsd_accepts_every_zone(runner: Callable[[str], mockrun.Run], variant: str, tmp_path: Path) -> None:
    for zone, text in published_zones(runner(variant)).items():
        proc = nsd_checkzone(zone, text, tmp_path)
        assert proc.returncode == 0 and f"zone {zone} is ok" in proc.stdout, proc.stdout + proc.stderr


def test_nsd_rejects_a_broken_zone(tmp_path: Path) -> None:
    """The checker is live: a CNAME beside other data at the same name is refused (RFC 1034 3.6.2)."""
    broken = [
        Record("sams.test", "www.sams.test", "CNAME", 300, records.cname("mail.sams.test")),
        Record("sams.test", "www.sams.test", "A", 300, records.a("198.18.0.10")),
    ]
    text = zonefile.render("sams.test", broken, nameservers=NS)
    proc = nsd_checkzone("sams.test", text, tmp_path)
    assert proc.returncode != 0, proc.stdout


def test_records_outside_every_zone_are_refused_and_line_breaks_stay_data(tmp_path: Path) -> None:
    elsewhere = Record("elsewhere.example", "mail.elsewhere.example", "A", 300, records.a("198.18.0.10"))
    with pytest.raises(ValueError, match="none of the zones"):
        zonefile.zone_files([elsewhere], ["sams.test"], nameservers=NS)
    with pytest.raises(ValueError, match=re.escape("not in zone sams.test")):
        zonefile.render("sams.test", [elsewhere], nameservers=NS)
    with pytest.raises(ValueError, match="not read from Cloudflare"):
        records.from_cloudflare({"type": "HTTPS", "name": "sams.test", "content": "x"}, ["sams.test"])
    # A value with a line break and quotes cannot add a record: dnspython escapes it in the data.
    evil = 'a"\n@ NS evil.'
    text = zonefile.render(
        "sams.test", [Record("sams.test", "sams.test", "TXT", 300, records.txt(evil))], nameservers=NS
    )
    parsed = parse({"sams.test": text})
    assert rdatas(parsed, "sams.test", "NS") == {"ns.lab.example."}
    (served,) = parsed["sams.test"].find_rdataset("sams.test.", "TXT")
    assert records.txt_value(served) == evil
    assert nsd_checkzone("sams.test", text, tmp_path).returncode == 0


def test_longest_zone_wins() -> None:
    inner = {"type": "A", "name": "mail.sub.sams.test", "content": "198.18.0.10", "ttl": 300}
    apex = {"type": "A", "name": "sams.test", "content": "198.18.0.11", "ttl": 300}
    zones = ["sams.test", "sub.sams.test"]
    files = zonefile.zone_files([records.from_cloudflare(r, zones) for r in (inner, apex)], zones, nameservers=NS)
    assert "mail 300 IN A 198.18.0.10" in files["sub.sams.test"] and "198.18.0.10" not in files["sams.test"]
    assert "@ 300 IN A 198.18.0.11" in files["sams.test"]
    # A record filed in the parent zone would sit under the child's cut, never served: refused.
    hidden = Record("sams.test", "mail.sub.sams.test", "A", 300, records.a("198.18.0.10"))
    with pytest.raises(ValueError, match=re.escape("filed in zone sams.test, but sub.sams.test holds it")):
        zonefile.zone_files([hidden], zones, nameservers=NS)


# --- the lab's zones (lab/dns.py, pure part) --------------------------------------------------------


def lab_zones(run: mockrun.Run) -> dict[str, str]:
    return dict(
        labdns.zones_for_run(
            run,
            hostname="mail.sams.test",
            public_ipv4="198.18.0.10",
            prefix=24,
            inet_ipv4="198.18.0.1",
            receiver_ipv4="198.18.0.20",
        )
    )


def test_lab_serves_the_program_zones_and_its_own(runner: Callable[[str], mockrun.Run], tmp_path: Path) -> None:
    run = runner("lab")
    zones = lab_zones(run)
    for zone, text in published_zones(run).items():
        assert zones[zone] == text  # the program's zones untouched
    parsed = parse(zones)
    assert rdatas(parsed, "10.0.18.198.in-addr.arpa", "PTR") == {"mail.sams.test."}  # PTR = hostname
    assert rdatas(parsed, "receiver.example", "MX") == {"10 mx.receiver.example."}
    assert rdatas(parsed, "mx.receiver.example", "A") == {"198.18.0.20"}
    assert rdatas(parsed, "ns.lab.example", "A") == {"198.18.0.1"}
    # The empty root: SOA and NS only, so every other name is an authoritative NXDOMAIN.
    root = parsed["."]
    assert [str(n) for n in root.nodes] == ["."] and rdatas({".": root}, ".", "NS") == {"ns.lab.example."}
    for zone, text in zones.items():
        proc = nsd_checkzone(zone, text, tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    conf = tmp_path / "nsd.conf"
    conf.write_text(labdns.nsd_conf(tmp_path, "198.18.0.1", zones))
    check = subprocess.run(["nsd-checkconf", str(conf)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    # No response rate limiting: under it a busy host's RBL lookups got TC answers, Rspamd moved
    # to DNS over TCP and its resolver then spun on the idle connection (a core at 100 %).
    rrl = subprocess.run(["nsd-checkconf", "-o", "rrl-ratelimit", str(conf)], capture_output=True, text=True)
    assert rrl.stdout.strip() == "0", rrl.stdout + rrl.stderr


def test_reverse_zone_needs_an_octet_boundary() -> None:
    assert labdns.reverse_zone("198.18.0.10", 24) == "0.18.198.in-addr.arpa"
    assert labdns.reverse_zone("198.18.0.10", 16) == "18.198.in-addr.arpa"
    with pytest.raises(ValueError):
        labdns.reverse_zone("198.18.0.10", 25)
