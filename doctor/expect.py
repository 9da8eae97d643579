"""What the doctor expects to find, from the stack's settings and its outputs (pure).

The records are the DNS plan (components/dns/plan.py) for the DKIM selectors the last `pulumi up`
published (the `dkimRotation` output), with the values only the outputs know: the host's
addresses (`publicIpv4`, `publicIpv6`) and the DKIM public keys (their rows in `dnsRecords`).
Ports come from the port policy that renders the cloud firewall and nftables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from components.dns.plan import Record, Ref, plan, value_text
from components.firewall.policy import NEVER_PUBLIC_SERVICES, port_policy
from components.hostpaths import VMAIL_ROOT
from components.keys.rotation import DkimPhase
from doctor.model import (
    Expected,
    ExpectedRecord,
    PortSpec,
    TlsEndpoint,
    TlsMode,
    caa_value,
    mx_value,
    normalize_address,
    normalize_name,
    srv_value,
)
from settings import Settings

# Who serves TLS on which public port, and how the handshake starts.
_TLS: dict[int, tuple[TlsMode, str]] = {
    25: ("smtp-starttls", "postfix"),
    465: ("implicit", "postfix"),
    587: ("smtp-starttls", "postfix"),
    993: ("implicit", "dovecot"),
    995: ("implicit", "dovecot"),
    443: ("implicit", "nginx"),
}


def table_rows(table: str) -> list[tuple[str, str, str, str]]:
    """(name, type, value, purpose) from the `dnsRecords` output (components.dns.plan.table)."""
    lines = table.splitlines()
    if not lines or not lines[0].startswith("NAME"):
        raise ValueError("dnsRecords: not a record table (no NAME header)")
    header = lines[0]
    type_at, value_at = header.index("TYPE"), header.index("VALUE")
    rows = []
    for line in lines[1:]:
        value, _, purpose = line[value_at:].partition("  # ")
        rows.append((line[:type_at].strip(), line[type_at:value_at].strip(), value, purpose))
    return rows


def unquote_txt(presentation: str) -> str:
    """The TXT value from its quoted character-strings ('"a" "b"' -> 'ab')."""
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', presentation)
    return "".join(re.sub(r"\\(.)", r"\1", p) for p in parts)


def resolved_values(outputs: Mapping[str, Any], records: tuple[Record, ...]) -> dict[str, str]:
    """The plan's Refs as the outputs know them (a Ref the outputs lack is simply absent)."""
    resolved: dict[str, str] = {}
    if outputs.get("publicIpv4"):
        resolved["ipv4"] = str(outputs["publicIpv4"])
    if outputs.get("publicIpv6"):
        resolved["ipv6"] = str(outputs["publicIpv6"])
    rows = table_rows(str(outputs["dnsRecords"])) if outputs.get("dnsRecords") else []
    for record in records:
        if isinstance(record.content, Ref) and record.content.key.startswith("dkim:"):
            for name, kind, value, _ in rows:
                if name == record.name and kind == "TXT":
                    resolved[record.content.key] = unquote_txt(value)
    return resolved


def dkim_phase_of(outputs: Mapping[str, Any]) -> DkimPhase | None:
    """The DKIM phase of the last `pulumi up` (None when the outputs do not say)."""
    summary = outputs.get("dkimRotation")
    if not isinstance(summary, Mapping):
        return None
    return DkimPhase(summary["phase"], tuple(summary["published"]), summary["signing"])


def _normal(record: Record, resolved: Mapping[str, str]) -> str | None:
    if isinstance(record.content, Ref):
        if record.content.key not in resolved:
            return None
        content = resolved[record.content.key]
    else:
        content = record.content
    if record.type in ("A", "AAAA"):
        return normalize_address(content)
    if record.type == "MX":
        return mx_value(record.priority or 0, content)
    if record.type == "CNAME":
        return normalize_name(content)
    if record.srv:
        return srv_value(*record.srv)
    if record.caa:
        return caa_value(*record.caa)
    return content  # TXT


def expected_records(settings: Settings, outputs: Mapping[str, Any]) -> tuple[ExpectedRecord, ...]:
    ttl = settings.config.dns.ttl
    records = plan(settings, has_ipv6=bool(outputs.get("publicIpv6")), dkim=dkim_phase_of(outputs))
    resolved = resolved_values(outputs, records)
    out = []
    for r in records:
        value = _normal(r, resolved)
        line = f"{r.name}. {ttl} IN {r.type} {value_text(r, resolved)}" if value is not None else ""
        out.append(ExpectedRecord(normalize_name(r.name), r.type, value, r.purpose, line))
    return tuple(out)


def expected(stack: str, settings: Settings, outputs: Mapping[str, Any]) -> Expected:
    """Everything the checks compare with. `outputs`: `pulumi stack output --json` (or a mock run's)."""
    cfg = settings.config
    if not outputs.get("publicIpv4"):
        raise ValueError("the stack outputs have no publicIpv4: give `pulumi stack output --json` of a deployed stack")
    policy = port_policy(cfg)
    public = tuple(PortSpec(p.number, p.proto, p.service) for p in policy if p.exposure == "public")
    private = {(p.number, p.proto): p.service for p in policy if p.exposure == "vpn"}
    for number, service in NEVER_PUBLIC_SERVICES.items():
        private.setdefault((number, "tcp"), service)
    public_tcp = {p.number for p in public if p.proto == "tcp"}
    tls = tuple(TlsEndpoint(port, mode, service) for port, (mode, service) in _TLS.items() if port in public_tcp)
    return Expected(
        stack=stack,
        provider=cfg.provider,
        dns_provider=cfg.dns.provider,
        hostname=normalize_name(cfg.hostname),
        ipv4=normalize_address(str(outputs["publicIpv4"])),
        ipv6=normalize_address(str(outputs["publicIpv6"])) if outputs.get("publicIpv6") else None,
        records=expected_records(settings, outputs),
        public_ports=public,
        private_ports=tuple(PortSpec(n, proto, s) for (n, proto), s in sorted(private.items())),
        tls=tuple(sorted(tls, key=lambda t: t.port)),
        relay=(cfg.relay.host, cfg.relay.port) if cfg.relay else None,
        backup_enabled=cfg.backup.enabled,
        backup_repository=cfg.backup.repository,
        mail_root=VMAIL_ROOT,
        antivirus=cfg.antivirus.clamav,
    )
