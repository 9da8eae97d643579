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

from components.remote import RemoteStep, RemoteStepArgs, Tunnel
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
        after: Sequence[pulumi.Resource] = args.after
        packages = packages_step(args.settings)
        if packages is not None:
            self.packages = RemoteStep(
                f"{name}-{packages.name}",
                RemoteStepArgs(packages, args.tunnel, after=after),
                pulumi.ResourceOptions(parent=self),
            )
            after = [*after, self.packages]
        spec = webmail_step(args.settings)
        self.step = RemoteStep(
            f"{name}-{spec.name}",
            RemoteStepArgs(spec, args.tunnel, after=after),
            pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({})
