"""DNS records in one form: a `Record` whose data is a dnspython `Rdata` (pure).

Every place that shows, publishes, serves or compares a record derives it from this one type:

- the plan (components/dns/plan.py) builds Records with the constructors below (`mx`, `txt`,
  `caa`, ...), or with a `Ref` for a value known only after `pulumi up`;
- presentation format (zone files, docs/dns_checklist.md, the doctor's fixes, the `dnsRecords`
  stack output) is dnspython's `Rdata.to_text()`: dnspython quotes and escapes TXT and CAA;
- Cloudflare's `DnsRecord` fields come from `cloudflare_fields`, and `from_cloudflare` reads them
  back (the lab's DNS serves what Cloudflare would get; the policy pack reads DMARC from it);
- the `dnsRecords` output is `Record.to_json()` per record, read back by `Record.from_json`
  (the doctor, the policy pack);
- the doctor compares `normal(rdata)` of the planned record with `normal` of what DNS answered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CAA
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
from dns.rdata import Rdata

RecordType = Literal["A", "AAAA", "CNAME", "MX", "TXT", "SRV", "CAA", "PTR", "NS"]
RECORD_TYPES: frozenset[str] = frozenset(get_args(RecordType))
# The types Cloudflare receives from SAMS (PTR is the provider's reverse DNS, NS Cloudflare's own).
CLOUDFLARE_TYPES = frozenset({"A", "AAAA", "CNAME", "MX", "TXT", "SRV", "CAA"})
IN = dns.rdataclass.IN


@dataclass(frozen=True)
class Ref:
    """A value resolved later: 'ipv4', 'ipv6' or a DKIM key's 'dkim:<selector>._domainkey.<domain>'
    (the whole TXT value, split into character-strings when resolved)."""

    key: str


@dataclass(frozen=True)
class Record:
    """One resource record: the zone it is published in, its owner (fully qualified, lower case,
    no trailing dot), type, TTL and data, and why it exists (for people: checklist, doctor)."""

    zone: str
    name: str
    type: RecordType
    ttl: int
    data: Rdata | Ref
    purpose: str = ""

    def __post_init__(self) -> None:
        if self.type not in RECORD_TYPES:
            raise ValueError(f"{self.name}: record type {self.type!r} is none of {sorted(RECORD_TYPES)}")
        if self.name != self.name.lower().rstrip(".") or not within(self.name, self.zone):
            raise ValueError(f"{self.name} {self.type}: not a lower-case name in zone {self.zone}")
        if isinstance(self.data, Rdata) and dns.rdatatype.to_text(self.data.rdtype) != self.type:
            raise ValueError(f"{self.name} {self.type}: data of type {dns.rdatatype.to_text(self.data.rdtype)}")

    def rdata(self, resolved: Mapping[str, str] | None = None) -> Rdata:
        """The data, a Ref looked up in `resolved` (KeyError names the Ref when it is missing)."""
        if isinstance(self.data, Ref):
            if resolved is None or self.data.key not in resolved:
                raise KeyError(f"{self.name} {self.type}: the value of {self.data.key} is not known")
            return value_rdata(self.type, resolved[self.data.key])
        return self.data

    def resolve(self, resolved: Mapping[str, str]) -> Record:
        return self if isinstance(self.data, Rdata) else dataclasses.replace(self, data=self.rdata(resolved))

    def text(self, resolved: Mapping[str, str] | None = None) -> str:
        """The data in presentation format (what a zone file and `dig` show)."""
        return str(self.rdata(resolved).to_text())

    def line(self, resolved: Mapping[str, str] | None = None, *, origin: str | None = None) -> str:
        """The record as one zone-file line; the owner relative to `origin` when given ('@' for it)."""
        owner = absolute(self.name)
        if origin is not None:
            owner = "@" if self.name == origin else self.name[: -len(origin) - 1]
        return f"{owner} {self.ttl} IN {self.type} {self.text(resolved)}"

    def to_json(self, resolved: Mapping[str, str] | None = None) -> dict[str, Any]:
        """One entry of the `dnsRecords` stack output (plain JSON)."""
        return {
            "zone": self.zone,
            "name": self.name,
            "type": self.type,
            "ttl": self.ttl,
            "data": self.text(resolved),
            "purpose": self.purpose,
        }

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> Record:
        """An entry of the `dnsRecords` output (or anything of that shape) back as a Record."""
        try:
            kind = str(entry["type"]).upper()
            return cls(
                zone=str(entry["zone"]),
                name=str(entry["name"]),
                type=cast(RecordType, kind),
                ttl=int(entry["ttl"]),
                data=parse(kind, str(entry["data"])),
                purpose=str(entry.get("purpose", "")),
            )
        except (KeyError, TypeError, ValueError, dns.exception.DNSException) as exc:
            raise ValueError(f"dnsRecords: not a record {dict(entry)!r}: {exc}") from exc


# --- names and zones -----------------------------------------------------------------------------------


def absolute(name: str) -> str:
    """A host name as an absolute presentation name ("." stays the root)."""
    return name if name.endswith(".") else name + "."


def _name(host: str) -> dns.name.Name:
    return dns.name.from_text(absolute(host))


def _host(name: dns.name.Name) -> str:
    """A target name as Cloudflare and the settings spell it: no trailing dot ("." for the root)."""
    return str(name.to_text(omit_final_dot=True)).lower()


def within(name: str, zone: str) -> bool:
    """Whether `name` is `zone` or a name under it."""
    return name == zone or name.endswith("." + zone)


def zone_of(name: str, zones: Iterable[str]) -> str:
    """The zone a name belongs to: the longest zone that is the name or a parent of it."""
    zones = list(zones)
    matches = [z for z in zones if within(name, z)]
    if not matches:
        raise ValueError(f"{name} is in none of the zones {sorted(zones)}")
    return max(matches, key=len)


# --- data: built, parsed, compared ---------------------------------------------------------------------


def a(address: str) -> Rdata:
    return dns.rdtypes.IN.A.A(IN, dns.rdatatype.A, address)


def aaaa(address: str) -> Rdata:
    return dns.rdtypes.IN.AAAA.AAAA(IN, dns.rdatatype.AAAA, address)


def cname(target: str) -> Rdata:
    return dns.rdtypes.ANY.CNAME.CNAME(IN, dns.rdatatype.CNAME, _name(target))


def ptr(target: str) -> Rdata:
    return dns.rdtypes.ANY.PTR.PTR(IN, dns.rdatatype.PTR, _name(target))


def ns(target: str) -> Rdata:
    return dns.rdtypes.ANY.NS.NS(IN, dns.rdatatype.NS, _name(target))


def mx(preference: int, exchange: str) -> Rdata:
    return dns.rdtypes.ANY.MX.MX(IN, dns.rdatatype.MX, preference, _name(exchange))


def srv(priority: int, weight: int, port: int, target: str) -> Rdata:
    """RFC 2782; target "." says the service is not offered at this domain."""
    return dns.rdtypes.IN.SRV.SRV(IN, dns.rdatatype.SRV, priority, weight, port, _name(target))


def caa(flags: int, tag: str, value: str) -> Rdata:
    return dns.rdtypes.ANY.CAA.CAA(IN, dns.rdatatype.CAA, flags, tag.encode(), value.encode())


def txt(value: str) -> Rdata:
    """One TXT record holding `value` (UTF-8), split into the <=255-byte character-strings DNS
    allows (a DKIM key needs two); a reader joins them again (txt_value)."""
    data = value.encode()
    strings = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, strings)


def txt_value(rdata: Rdata) -> str:
    """A TXT record's value: its character-strings joined, as SPF, DKIM and DMARC read it."""
    strings = cast(tuple[bytes, ...], rdata.strings)  # type: ignore[attr-defined]
    return b"".join(strings).decode(errors="replace")


# The record types whose value a Ref may stand for, and how the value becomes data.
_VALUE_RDATA = {"A": a, "AAAA": aaaa, "CNAME": cname, "TXT": txt}


def value_rdata(kind: str, value: str) -> Rdata:
    """The data of a `kind` record for one plain value (an address, a target name, a TXT value)."""
    if kind not in _VALUE_RDATA:
        raise ValueError(f"a {kind} record is not made from one value")
    return _VALUE_RDATA[kind](value)


def parse(kind: str, text: str) -> Rdata:
    """Record data from presentation format (dnspython's parser; relative names are refused)."""
    if kind not in RECORD_TYPES:
        raise ValueError(f"record type {kind} is none of {sorted(RECORD_TYPES)}")
    return dns.rdata.from_text(IN, dns.rdatatype.from_text(kind), text, origin=dns.name.root, relativize=False)


def normal(rdata: Rdata) -> str:
    """One comparable text per record data, whoever spelled it: a TXT record's joined value, else
    the presentation format of the canonical form (names lower case, RFC 4034 section 6.2; CAA
    tags lower case, RFC 8659 section 4.1)."""
    if rdata.rdtype == dns.rdatatype.TXT:
        return txt_value(rdata)
    wire = rdata.to_digestable()
    canonical = dns.rdata.from_wire(rdata.rdclass, rdata.rdtype, wire, 0, len(wire))
    if rdata.rdtype == dns.rdatatype.CAA:
        flags, tag, value = canonical.flags, canonical.tag, canonical.value  # type: ignore[attr-defined]
        canonical = caa(flags, tag.decode().lower(), value.decode(errors="replace"))
    return str(canonical.to_text())


# --- Cloudflare's fields --------------------------------------------------------------------------------


def cloudflare_fields(rdata: Rdata) -> dict[str, Any]:
    """A `cloudflare.DnsRecord`'s data inputs: `content` (+ `priority` for MX), or `data` for SRV
    and CAA. Cloudflare takes target names without the trailing dot, and TXT content as quoted
    character-strings (dnspython's presentation format)."""
    kind = dns.rdatatype.to_text(rdata.rdtype)
    r: Any = rdata
    if kind in ("A", "AAAA"):
        return {"content": r.address}
    if kind in ("CNAME", "PTR", "NS"):
        return {"content": _host(r.target)}
    if kind == "MX":
        return {"content": _host(r.exchange), "priority": r.preference}
    if kind == "TXT":
        return {"content": rdata.to_text()}
    if kind == "SRV":
        return {"data": {"priority": r.priority, "weight": r.weight, "port": r.port, "target": _host(r.target)}}
    if kind == "CAA":
        return {"data": {"flags": r.flags, "tag": r.tag.decode(), "value": r.value.decode()}}
    raise ValueError(f"record type {kind} has no Cloudflare fields here")


# Cloudflare's comment on each record says who made it and why.
COMMENT_PREFIX = "SAMS: "


def cloudflare_record(record: Record) -> dict[str, Any]:
    """A `cloudflare.DnsRecord`'s inputs other than the zone and the data (cloudflare_fields)."""
    return {
        "name": record.name,
        "type": record.type,
        "ttl": record.ttl,
        # Mail records must resolve to the host itself: never through Cloudflare's proxy.
        "proxied": False,
        "comment": COMMENT_PREFIX + record.purpose,
    }


def _int(value: Any) -> int:
    """A number from the engine (JSON numbers come back as floats)."""
    return int(float(value))


def rdata_from_cloudflare(inputs: Mapping[str, Any]) -> Rdata:
    """The record data a `cloudflare.DnsRecord`'s inputs describe (the inverse of cloudflare_fields).

    Cloudflare reads an unquoted TXT content as one value, so it is taken as it is."""
    kind = str(inputs["type"]).upper()
    if kind == "TXT":
        content = str(inputs["content"])
        return parse(kind, content) if content.lstrip().startswith('"') else txt(content)
    if kind == "MX":
        return mx(_int(inputs["priority"]), str(inputs["content"]))
    if kind == "SRV":
        d = inputs["data"]
        return srv(_int(d["priority"]), _int(d["weight"]), _int(d["port"]), str(d["target"]))
    if kind == "CAA":
        d = inputs["data"]
        return caa(_int(d["flags"]), str(d["tag"]), str(d["value"]))
    if kind in ("A", "AAAA", "CNAME"):
        return value_rdata(kind, str(inputs["content"]))
    if kind in ("PTR", "NS"):
        return parse(kind, absolute(str(inputs["content"])))
    raise ValueError(f"{inputs.get('name')}: record type {kind} is not read from Cloudflare here")


def from_cloudflare(inputs: Mapping[str, Any], zones: Iterable[str]) -> Record:
    """One `cloudflare.DnsRecord`'s inputs as a Record of the longest of `zones` holding its name."""
    name = str(inputs["name"]).rstrip(".").lower()
    return Record(
        zone=zone_of(name, zones),
        name=name,
        type=cast(RecordType, str(inputs["type"]).upper()),
        ttl=_int(inputs.get("ttl", 300)),
        data=rdata_from_cloudflare(inputs),
        purpose=str(inputs.get("comment") or "").removeprefix(COMMENT_PREFIX),
    )
