"""What a user types into a mail client: servers, ports and security per domain (pure)."""

from __future__ import annotations

from typing import Any

from settings import Settings


def client_settings(settings: Settings) -> dict[str, Any]:
    cfg = settings.config
    host = cfg.hostname
    out: dict[str, Any] = {}
    for domain in settings.mail.domains:
        entry: dict[str, Any] = {
            "username": f"the full address, e.g. {domain.users[0].name if domain.users else 'user'}@{domain.name}",
            "smtp": [
                {"host": host, "port": 465, "security": "SSL/TLS", "auth": "normal password"},
                {"host": host, "port": 587, "security": "STARTTLS", "auth": "normal password"},
            ],
        }
        where = {"public": "internet", "vpn": "WireGuard VPN only"}
        entry["imap"] = {"host": host, "port": 993, "security": "SSL/TLS", "reachable": where[cfg.client_access.imap]}
        entry["pop3"] = {"host": host, "port": 995, "security": "SSL/TLS", "reachable": where[cfg.client_access.pop3]}
        out[domain.name] = entry
    return out
