"""DNS and DKIM as a receiver sees them, asked of the lab DNS (lab/dns.py: NSD in sams-inet, serving
the zones the program publishes, reverse names, a remote sender's domain and the receiver's)."""

from __future__ import annotations

from typing import Any

import dkim


def query(server: str, names: list[tuple[str, str]], timeout: float = 3.0) -> dict[str, Any]:
    """(name, type) -> (rcode, AA flag, sorted rdata texts), asked in sams-inet of a DNS server."""
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode

    out: dict[str, Any] = {}
    for name, kind in names:
        answer = dns.query.udp(dns.message.make_query(name, kind), server, timeout=timeout)
        rdatas = sorted(r.to_text() for rrset in answer.answer for r in rrset)
        out[f"{name} {kind}"] = (dns.rcode.to_text(answer.rcode()), bool(answer.flags & dns.flags.AA), rdatas)
    return out


def dns_silent(server: str, name: str) -> bool:
    """True when an A query over UDP gets no answer at all within 2 s."""
    import dns.exception

    try:
        query(server, [(name, "A")], timeout=2.0)
    except dns.exception.Timeout:
        return True
    return False


def resolver_for(server: str) -> Any:
    """A dnspython resolver that asks only the lab DNS (installed as the child's default)."""
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server]
    resolver.lifetime = 5.0
    dns.resolver.default_resolver = resolver
    return resolver


def verify_dkim(raw: bytes, server: str) -> dict[str, Any]:
    """What a receiver does (in sams-inet): verify the DKIM-Signature with the key in the lab DNS."""
    resolver_for(server)
    signature = dkim.DKIM(raw)
    ok = signature.verify()
    return {"ok": ok, "d": (signature.domain or b"").decode(), "s": (signature.selector or b"").decode()}
