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
from components.remote import Tunnel, chain
from settings import Settings


@dataclass(frozen=True)
class DavArgs:
    settings: Settings
    tunnel: Tunnel
    after: Sequence[pulumi.Resource] = ()


class Dav(pulumi.ComponentResource):
    def __init__(self, name: str, args: DavArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:dav:Dav", name, None, opts)
        # The packages (none when off), then the step: each after the one before.
        specs = [s for s in (packages_step(args.settings), dav_step(args.settings)) if s is not None]
        self.steps = chain(name, specs, args.tunnel, {}, after=args.after, parent=self)
        self.register_outputs({})
