"""Journal forwarding: systemd-journal-upload sends the host's journal to a systemd-journal-remote
collector over the WireGuard tunnel (`sams:monitoring.journalUploadUrl`, docs/logs.md).

* the step (components/journal/steps.py), registered whether or not forwarding is on: off, it
  stops the uploader and removes its drop-ins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components.journal.steps import journal_step
from components.remote import RemoteStep, RemoteStepArgs, Tunnel
from settings import Settings


@dataclass(frozen=True)
class JournalArgs:
    settings: Settings
    tunnel: Tunnel
    after: Sequence[pulumi.Resource] = ()


class Journal(pulumi.ComponentResource):
    def __init__(self, name: str, args: JournalArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sams:journal:Journal", name, None, opts)
        spec = journal_step(args.settings)
        self.step = RemoteStep(
            f"{name}-{spec.name}",
            RemoteStepArgs(spec, args.tunnel, after=args.after),
            pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({})
