"""Cloudflare DNS component: one v6 `DnsRecord` per record of the pure plan (components.dns.plan).

Every record's fields come from components.dns.records (`cloudflare_record`, `cloudflare_fields`);
`records` is the plan, `output` the `dnsRecords` stack output (one JSON object per record).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.dns.plan import dkim_ref, plan, report_authorizations
from components.dns.records import Record, Ref, cloudflare_fields, cloudflare_record, txt_value
from components.keys.derive import dkim_record_value
from components.keys.rotation import DkimPhase
from settings import Settings
from settings.stack import LETS_ENCRYPT_CAA


@dataclass(frozen=True)
class DnsArgs:
    settings: Settings
    ipv4: pulumi.Input[str]
    ipv6: pulumi.Input[str | None]
    has_ipv6: bool
    dkim_public: Mapping[tuple[str, str], pulumi.Input[str]]  # (domain, selector) -> base64 public key
    dkim: DkimPhase | None = None  # the rotation phase the keys were made for (None: no rotation)


def resolve_refs(args: DnsArgs) -> pulumi.Output[dict[str, str]]:
    """All Ref values of the plan, once the host and keys exist."""
    refs: dict[str, Any] = {"ipv4": args.ipv4}
    if args.has_ipv6:
        refs["ipv6"] = args.ipv6
    for (domain, selector), key in args.dkim_public.items():
        refs[dkim_ref(domain, selector).key] = pulumi.Output.from_input(key).apply(dkim_record_value)
    return pulumi.Output.all(**refs)


def resource_key(record: Record) -> str:
    """A stable resource name: type + name (+ discriminator for multi-valued sets)."""
    extra = ""
    data: Any = record.data
    if record.type == "CAA":
        tag, value = data.tag.decode(), data.value.decode()
        # Let's Encrypt's issue record keeps the name it has always had (stable URN); any other
        # allowed CA gets its own resource.
        extra = f"-{tag}" if tag != "issue" or value == LETS_ENCRYPT_CAA else f"-{tag}-{value}"
    elif record.type == "TXT" and not isinstance(data, Ref) and txt_value(data).startswith("v=spf1"):
        extra = "-spf"
    return f"{record.type.lower()}-{record.name}{extra}"


class Dns(pulumi.ComponentResource):
    def __init__(self, name: str, args: DnsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:dns:Dns", name, None, opts)
        self.records = plan(args.settings, has_ipv6=args.has_ipv6, dkim=args.dkim)
        # A report address in a domain SAMS does not serve needs a record only its owner can publish.
        for warning in report_authorizations(args.settings)[1]:
            pulumi.log.warn(warning, resource=self)
        resolved = resolve_refs(args)
        # Records whose data is known stay known in a preview (the policy pack reads DMARC there).
        self.output: list[pulumi.Input[dict[str, Any]]] = [_entry(rec, resolved) for rec in self.records]
        if args.settings.config.dns.provider == "cloudflare":
            self._cloudflare(name, resolved)
        self.register_outputs({"records": self.output})

    def _cloudflare(self, name: str, resolved: pulumi.Output[dict[str, str]]) -> None:
        import pulumi_cloudflare as cloudflare

        zones = {
            zone: cloudflare.get_zone_output(filter=cloudflare.GetZoneFilterArgs(name=zone, match="all")).zone_id
            for zone in sorted({r.zone for r in self.records})
        }
        counts: dict[str, int] = {}
        for record in self.records:
            key = resource_key(record)
            counts[key] = counts.get(key, 0) + 1
            if counts[key] > 1:
                key = f"{key}-{counts[key]}"
            cloudflare.DnsRecord(
                f"{name}-{key}",
                zone_id=zones[record.zone],
                **cloudflare_record(record),
                **_fields(record, resolved),
                opts=pulumi.ResourceOptions(parent=self),
            )


def _entry(record: Record, resolved: pulumi.Output[dict[str, str]]) -> pulumi.Input[dict[str, Any]]:
    """The record's `dnsRecords` entry; a Ref's once the host and keys exist."""
    if isinstance(record.data, Ref):
        return resolved.apply(record.to_json)
    return record.to_json()


def _fields(record: Record, resolved: pulumi.Output[dict[str, str]]) -> dict[str, Any]:
    """The data fields; a Ref's (a `content` of A, AAAA or TXT) once the host and keys exist."""
    if isinstance(record.data, Ref):
        return {"content": resolved.apply(lambda r: cloudflare_fields(record.rdata(r))["content"])}
    return cloudflare_fields(record.data)
