"""Cloudflare DNS component: one v6 `DnsRecord` per record of the pure plan (components.dns.plan)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.dns.plan import Record, Ref, dkim_ref, plan, report_authorizations, table, txt_content
from components.keys.derive import dkim_record_value
from components.keys.rotation import DkimPhase
from settings import Settings


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


class Dns(pulumi.ComponentResource):
    def __init__(self, name: str, args: DnsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:dns:Dns", name, None, opts)
        self.records = plan(args.settings, has_ipv6=args.has_ipv6, dkim=args.dkim)
        # A report address in a domain SAMS does not serve needs a record only its owner can publish.
        for warning in report_authorizations(args.settings)[1]:
            pulumi.log.warn(warning, resource=self)
        resolved = resolve_refs(args)
        self.table: pulumi.Output[str] = resolved.apply(lambda r: table(self.records, r))
        if args.settings.config.dns.provider == "cloudflare":
            self._cloudflare(name, args, resolved)
        self.register_outputs({"table": self.table})

    def _cloudflare(self, name: str, args: DnsArgs, resolved: pulumi.Output[dict[str, str]]) -> None:
        import pulumi_cloudflare as cloudflare

        ttl = args.settings.config.dns.ttl
        zones = {
            zone: cloudflare.get_zone_output(filter=cloudflare.GetZoneFilterArgs(name=zone, match="all")).zone_id
            for zone in sorted({r.zone for r in self.records})
        }
        counts: dict[str, int] = {}
        for record in self.records:
            key = record.key
            counts[key] = counts.get(key, 0) + 1
            if counts[key] > 1:
                key = f"{key}-{counts[key]}"
            cloudflare.DnsRecord(
                f"{name}-{key}",
                zone_id=zones[record.zone],
                name=record.name,
                type=record.type,
                ttl=ttl,
                # Mail records must resolve to the host itself: never through Cloudflare's proxy.
                proxied=False,
                comment=f"SAMS: {record.purpose}",
                **_fields(record, resolved),
                opts=pulumi.ResourceOptions(parent=self),
            )


def _fields(record: Record, resolved: pulumi.Output[dict[str, str]]) -> dict[str, Any]:
    if record.srv:
        prio, weight, port, target = record.srv
        return {"data": {"priority": prio, "weight": weight, "port": port, "target": target}}
    if record.caa:
        flags, tag, value = record.caa
        return {"data": {"flags": flags, "tag": tag, "value": value}}
    if record.type == "MX":
        return {"content": record.content, "priority": record.priority}
    if isinstance(record.content, Ref):
        ref = record.content.key
        if record.type == "TXT":
            return {"content": resolved.apply(lambda r: txt_content(r[ref]))}
        return {"content": resolved.apply(lambda r: r[ref])}
    if record.type == "TXT":
        return {"content": txt_content(record.content)}
    return {"content": record.content}
