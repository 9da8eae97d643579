"""Webmail component: Roundcube 1.6 on PHP-FPM behind the host's nginx at https://<hostname>/, where
users read mail and change their own password (`sams:webmail`, docs/webmail.md).

* the packages step, then the step (components/webmail/steps.py): no secret crosses the tunnel;
  Roundcube's session key is made on the host, and the password service reaches the database as a
  role without a password (components/database/roles.py's PASSWORD_CHANGER).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components.remote import Tunnel, chain
from components.webmail.steps import packages_step, webmail_step
from settings import Settings


@dataclass(frozen=True)
class WebmailArgs:
    settings: Settings
    tunnel: Tunnel
    after: Sequence[pulumi.Resource] = ()


class Webmail(pulumi.ComponentResource):
    def __init__(self, name: str, args: WebmailArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:webmail:Webmail", name, None, opts)
        # The packages (none when off), then the step: each after the one before.
        specs = [s for s in (packages_step(args.settings), webmail_step(args.settings)) if s is not None]
        self.steps = chain(name, specs, args.tunnel, {}, after=args.after, parent=self)
        self.register_outputs({})
