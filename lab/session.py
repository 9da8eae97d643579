"""A lab test session's handle on the lab: its state, the stack's settings and run, the host's
shell; and `up_with`, a `pulumi up` of the lab stack with config overrides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mockrun
from lab import program
from lab.spec import LabSpec, StatePaths
from lab.ssh import HostShell
from settings import Settings


@dataclass
class Lab:
    paths: StatePaths
    spec: LabSpec
    settings: Settings
    run: mockrun.Run
    shell: HostShell
    first_apply: program.ApplyReport
    before: dict[str, set[str]]
    images: tuple[str, ...]


def up_with(lab: Lab, overrides: dict[str, Any]) -> program.ApplyReport:
    """`pulumi up` of the lab stack with these config overrides (values as in YAML; {}: the stack's own)."""
    run = program.lab_run(lab.paths, program.lab_keys(lab.paths), overrides)
    return program.apply(run, lab.paths, shell=lab.shell, images=lab.images)
