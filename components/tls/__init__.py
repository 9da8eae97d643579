"""TLS component: nginx (ACME webroot, MTA-STS policy host) and certbot, as remote steps.

The pure half is components/tls/certs.py; the bootstrap certificate the daemons start with is made
by the mail-base step (certs.bootstrap_script), before Postfix and Dovecot first load. These steps
run after the mail daemons and the DNS records exist: HTTP-01 needs the names to resolve to the
host, and the deploy hook reloads the daemons that serve the certificate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components.remote import RemoteStep, Tunnel, chain
from components.tls.certs import CLOUDFLARE_TOKEN, tls_steps
from settings import Settings


@dataclass(frozen=True)
class TlsArgs:
    settings: Settings
    tunnel: Tunnel
    cloudflare_token: pulumi.Input[str] | None = None  # required for acme.challenge dns-01-cloudflare
    after: Sequence[pulumi.Resource] = ()


class Tls(pulumi.ComponentResource):
    def __init__(self, name: str, args: TlsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:tls:Tls", name, None, opts)
        values: dict[str, pulumi.Input[str]] = {}
        if args.cloudflare_token is not None:
            values[CLOUDFLARE_TOKEN] = pulumi.Output.secret(args.cloudflare_token)
        specs = tls_steps(args.settings)
        self.steps: list[RemoteStep] = chain(name, specs, args.tunnel, values, after=args.after, parent=self)
        self.register_outputs({"steps": [s.name for s in specs]})
