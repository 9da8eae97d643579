"""Client autoconfiguration (pure): Thunderbird's config-v1.1.xml and Outlook's POX autodiscover.xml.

A user who types only an address into Thunderbird or Outlook gets the servers from
https://autoconfig.<domain>/mail/config-v1.1.xml or https://autodiscover.<domain>/autodiscover/autodiscover.xml,
both served by nginx on this host (components/tls/certs.py, the tls-web step). Both documents are
rendered from the same per-domain entry as the `clientSettings` stack output and the Gmail guide
(components.mail.clients.client_settings), and advertise only what the port policy opens to the
internet: IMAP or POP3 set to VPN-only (sams:clientAccess) is left out; submission is always public.
The login name is always the full address: Thunderbird fills in its own %EMAILADDRESS%; for
Outlook, nginx puts the address Outlook asked about in place of ADDRESS (see the nginx site).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from components.firewall.policy import public_ports
from components.remote.steps import File
from components.render import render
from settings import Settings

# Per mail domain: CLIENTS_ROOT/<domain>/ is the document root of autoconfig.<domain> and autodiscover.<domain>.
CLIENTS_ROOT = "/var/www/sams/clients"
THUNDERBIRD_PATH = "/mail/config-v1.1.xml"
OUTLOOK_PATH = "/autodiscover/autodiscover.xml"
# Outlook's login name in the file as staged; nginx replaces it with the requested address.
ADDRESS = "%EMAILADDRESS%"
# nginx's local server that does that replacement (the autodiscover hosts proxy to it). Loopback
# TCP, not a unix socket: a socket file left by a killed nginx would stop the next start (EADDRINUSE).
AUTODISCOVER_LOCAL = "127.0.0.1:8380"
# The templates stand for every domain's file: var/www/sams/clients/domain/... lands at CLIENTS_ROOT/<domain>/...
_TEMPLATE_DIR = "var/www/sams/clients/domain"

Kind = Literal["imap", "pop3", "smtp"]

# clientSettings' human wording -> how each client names the transport security.
_THUNDERBIRD_SOCKET = {"SSL/TLS": "SSL", "STARTTLS": "STARTTLS"}
_OUTLOOK_ENCRYPTION = {"SSL/TLS": "SSL", "STARTTLS": "TLS"}


@dataclass(frozen=True)
class Server:
    kind: Kind
    host: str
    port: int
    security: str  # as in clientSettings: "SSL/TLS" or "STARTTLS"

    @property
    def socket_type(self) -> str:
        return _THUNDERBIRD_SOCKET[self.security]

    @property
    def encryption(self) -> str:
        return _OUTLOOK_ENCRYPTION[self.security]


def open_tcp_ports(settings: Settings) -> frozenset[int]:
    return frozenset(p.number for p in public_ports(settings.config) if p.proto == "tcp")


def public_servers(client: Mapping[str, Any], open_ports: Collection[int]) -> list[Server]:
    """The servers of one clientSettings entry a client on the internet can reach, in the order a
    client should prefer them: IMAP before POP3, then submission as clientSettings lists it."""
    entries: list[tuple[Kind, Mapping[str, Any]]] = [("imap", client["imap"]), ("pop3", client["pop3"])]
    entries += [("smtp", s) for s in client["smtp"]]
    return [
        Server(kind, str(e["host"]), int(e["port"]), str(e["security"]))
        for kind, e in entries
        if int(e["port"]) in open_ports
    ]


def thunderbird_config(domain: str, client: Mapping[str, Any], open_ports: Collection[int]) -> str:
    """config-v1.1.xml (Thunderbird's autoconfig format) for `domain`."""
    servers = public_servers(client, open_ports)
    return render(
        "tls",
        f"{_TEMPLATE_DIR}{THUNDERBIRD_PATH}.j2",
        domain=domain,
        address=ADDRESS,
        incoming=[s for s in servers if s.kind != "smtp"],
        outgoing=[s for s in servers if s.kind == "smtp"],
    )


def outlook_autodiscover(domain: str, client: Mapping[str, Any], open_ports: Collection[int]) -> str:
    """Outlook's POX autodiscover response for `domain`: one Protocol per type, the first public one."""
    first: dict[Kind, Server] = {}
    for s in public_servers(client, open_ports):
        first.setdefault(s.kind, s)
    protocols = list(first.values())
    return render("tls", f"{_TEMPLATE_DIR}{OUTLOOK_PATH}.j2", domain=domain, protocols=protocols, address=ADDRESS)


def client_files(settings: Settings) -> tuple[File, ...]:
    """Both documents of every domain, where nginx serves them from."""
    # Here, not at the top: components.mail imports components.tls.certs, which imports this module.
    from components.mail.clients import client_settings

    clients = client_settings(settings)
    ports = open_tcp_ports(settings)
    files: list[File] = []
    for domain in settings.mail.domains:
        d, client = domain.name, clients[domain.name]
        files.append(File(f"{CLIENTS_ROOT}/{d}{THUNDERBIRD_PATH}", thunderbird_config(d, client, ports)))
        files.append(File(f"{CLIENTS_ROOT}/{d}{OUTLOOK_PATH}", outlook_autodiscover(d, client, ports)))
    return tuple(files)
