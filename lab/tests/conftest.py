"""The lab fixture: ONE Debian 13 host for every lab test module (first boot ~20 s with cloud-init's
installs from the lab mirror, plus the apply with the packages steps' installs; a second lab
cannot run beside it). At the end of the session the lab is torn down and
the teardown is checked: nothing of it may remain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import control, program
from lab.lock import machine_lock
from lab.session import Lab
from lab.spec import NAMES, StatePaths
from lab.ssh import HostShell


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: boots the local nspawn/WireGuard lab (needs root and host tools)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that destroy and rebuild the host run last, so every other test meets the first host."""
    items.sort(key=lambda item: item.get_closest_marker("replaces_host") is not None)


def _lines(cmd: list[str]) -> set[str]:
    return set(subprocess.run(cmd, capture_output=True, check=True, text=True).stdout.splitlines())


def snapshot() -> dict[str, set[str]]:
    """What a lab could leave behind: namespaces, links, mounts, processes."""
    procs = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            procs.add(f"{entry} {cmd.strip()}")
    return {
        "netns": {line.split()[0] for line in _lines(["ip", "netns", "list"]) if line.strip()},
        "links": {line.split(":")[1].strip() for line in _lines(["ip", "-o", "link"])},
        "mounts": {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()},
        "procs": procs,
    }


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    assert os.geteuid() == 0, "the lab tests need root (namespaces, nspawn): run them through ./run test"
    # Another run's lab (a second checkout's tests) is waited for, a dead run's leftovers are
    # cleared, a running `./run lab` host is left alone and named in the error.
    with machine_lock(timeout=LOCK_WAIT_S):
        control.clear_leftovers()
        assert not control.status()["running"], "a lab is already up: `python -m lab down` first"
        yield from _session_lab()


# A whole lab test session takes ~3 min here; wait for one other run, not forever.
LOCK_WAIT_S = 1200.0


def _session_lab() -> Iterator[Lab]:
    before = snapshot()
    root = Path(tempfile.mkdtemp(prefix="samslab-"))  # short: ssh's ControlPath must fit sun_path
    paths = StatePaths(root)
    try:
        keys = program.lab_keys(paths)
        run = program.lab_run(paths, keys)
        settings = program.lab_settings(keys)
        spec = program.spec_from_run(run, settings, keys)
        report = control.up(spec, paths=paths)
        print(f"\nlab up: {report.timings}")
        shell = HostShell.from_state(paths)
        images = (settings.config.database.image,)
        first = program.apply(run, paths, shell=shell, images=images)
        yield Lab(paths, spec, settings, run, shell, first, before, images)
        removed = control.down(paths=paths)
        assert any("nspawn" in r for r in removed)
        assert control.down(paths=paths) == []
        assert_nothing_left(before, paths)
    finally:
        control.down(purge=True, paths=paths)
        shutil.rmtree(root, ignore_errors=True)


def assert_nothing_left(before: dict[str, set[str]], paths: StatePaths) -> None:
    after = snapshot()
    # Only what is this lab's: its state dir (tree, nspawn), its hub interface, its namespaces.
    needles = [str(paths.root), NAMES.wg_hub, *NAMES.namespaces]
    for kind in before:
        new = {i for i in after[kind] - before[kind] if any(n in i for n in needles)}
        assert not new, f"down left {kind}: {sorted(new)}"
    assert not any(ns in after["netns"] for ns in NAMES.namespaces)
