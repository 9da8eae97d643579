"""A fresh lab for one benchmark: booted from the program's user-data, every step applied, torn
down (purged) afterwards, whatever happens. A running lab is refused, not replaced."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lab import control, program
from lab.lock import machine_lock
from lab.session import Lab
from lab.spec import StatePaths
from lab.ssh import HostShell


def lab_object(paths: StatePaths, report: program.ApplyReport, overrides: dict[str, Any] | None = None) -> Lab:
    """The handle the lab tests use, for the lab whose state is at `paths`."""
    keys = program.lab_keys(paths)
    run = program.lab_run(paths, keys, overrides or {})
    settings = program.lab_settings(keys)
    spec = program.spec_from_run(run, settings, keys)
    return Lab(paths, spec, settings, run, HostShell.from_state(paths), report, {}, (settings.config.database.image,))


@contextmanager
def fresh_lab(state_dir: Path, overrides: dict[str, Any] | None = None) -> Iterator[Lab]:
    """A new lab host with its state in `state_dir`, the lab stack applied with `overrides`."""
    paths = StatePaths(state_dir)
    with machine_lock(timeout=1200):
        control.clear_leftovers()
        if control.status()["running"]:
            raise SystemExit("a lab is up: `python -m lab down` first")
        try:
            keys = program.lab_keys(paths)
            run = program.lab_run(paths, keys, overrides or {})
            settings = program.lab_settings(keys)
            control.up(program.spec_from_run(run, settings, keys), paths=paths)
            report = program.apply(run, paths, images=(settings.config.database.image,))
            yield lab_object(paths, report, overrides)
        finally:
            control.down(purge=True, paths=paths)
