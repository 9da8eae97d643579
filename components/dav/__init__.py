"""DAV component: CalDAV and CardDAV for phones and Thunderbird, Radicale from Debian behind the
webmail's nginx at https://<hostname>/dav/ (`sams:webmail.calendars`, docs/calendars.md).

* the packages step (when calendars are on), then the dav step (components/dav/steps.py); no
  secret: Radicale asks the host's own Dovecot for each password.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components.dav.steps import dav_step, packages_step
from components.remote import RemoteStep, RemoteStepArgs, Tunnel
from settings import Settings


@dataclass(frozen=True)
class DavArgs:
    settings: Settings
    tunnel: Tunnel
    after: Sequence[pulumi.Resource] = ()


class Dav(pulumi.ComponentResource):
    def __init__(self, name: str, args: DavArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:dav:Dav", name, None, opts)
        after: Sequence[pulumi.Resource] = args.after
        packages = packages_step(args.settings)
        if packages is not None:
            self.packages = RemoteStep(
                f"{name}-{packages.name}",
                RemoteStepArgs(packages, args.tunnel, after=after),
                pulumi.ResourceOptions(parent=self),
            )
            after = [*after, self.packages]
        spec = dav_step(args.settings)
        self.step = RemoteStep(
            f"{name}-{spec.name}", RemoteStepArgs(spec, args.tunnel, after=after), pulumi.ResourceOptions(parent=self)
        )
        self.register_outputs({})
