"""The lab fixture: ONE Debian 13 host for every lab test module (first boot ~20 s with cloud-init's
installs from the lab mirror, plus the apply with the packages steps' installs; a second lab
cannot run beside it). At the end of the session the lab is torn down and
the teardown is checked: nothing of it may remain.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
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


class Boot:
    """The session's lab, built in a thread while the rest of the suite runs (the unit and chroot tests
    take ~4 minutes, the host's first boot and apply ~3.5 more; the two mostly use different cores).
    The thread holds the machine's lock from its start until the session's teardown."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()
        self.lab: Lab | None = None
        self.error: BaseException | None = None
        # The program runs here, in the main thread: Pulumi's mocks are process-wide, and the unit
        # tests run the program too once this returns. The thread only boots and applies.
        self.root = Path(tempfile.mkdtemp(prefix="samslab-"))  # short: ssh's ControlPath must fit sun_path
        self.stack.callback(shutil.rmtree, self.root, ignore_errors=True)
        self.paths = StatePaths(self.root)
        keys = program.lab_keys(self.paths)
        self.run = program.lab_run(self.paths, keys)
        self.settings = program.lab_settings(keys)
        self.spec = program.spec_from_run(self.run, self.settings, keys)
        self.thread = threading.Thread(target=self._boot, name="lab-boot", daemon=True)

    def _boot(self) -> None:
        try:
            # Another run's lab (a second checkout's tests) is waited for, a dead run's leftovers are
            # cleared, a running `./run lab` host is left alone and named in the error.
            self.stack.enter_context(machine_lock(timeout=LOCK_WAIT_S))
            control.clear_leftovers()
            assert not control.status()["running"], "a lab is already up: `python -m lab down` first"
            before = snapshot()
            self.stack.callback(control.down, purge=True, paths=self.paths)
            report = control.up(self.spec, paths=self.paths)
            print(f"\nlab up: {report.timings}")
            shell = HostShell.from_state(self.paths)
            images = (self.settings.config.database.image,)
            first = program.apply(self.run, self.paths, shell=shell, images=images)
            self.lab = Lab(self.paths, self.spec, self.settings, self.run, shell, first, before, images)
        except BaseException as exc:  # the first lab test raises it
            self.error = exc

    def wait(self) -> Lab:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.lab is not None
        return self.lab


BOOT: list[Boot] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the lab now when a lab test will need it, so it boots while the tests before it run."""
    if os.geteuid() == 0 and any("lab" in getattr(item, "fixturenames", ()) for item in session.items):
        BOOT.append(Boot())
        BOOT[0].thread.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A lab no test took (an interrupted or failed run): torn down all the same."""
    for boot in BOOT:
        boot.thread.join()
        boot.stack.close()


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    assert os.geteuid() == 0, "the lab tests need root (namespaces, nspawn): run them through ./run test"
    if not BOOT:  # collected without the hook (another plugin's selection): boot it now
        BOOT.append(Boot())
        BOOT[0].thread.start()
    boot = BOOT[0]
    lab = boot.wait()
    yield lab
    removed = control.down(paths=lab.paths)
    assert any("nspawn" in r for r in removed)
    assert control.down(paths=lab.paths) == []
    assert_nothing_left(lab.before, lab.paths)
    boot.stack.close()


# A whole lab test session takes ~3 min here; wait for one other run, not forever.
LOCK_WAIT_S = 1200.0


def assert_nothing_left(before: dict[str, set[str]], paths: StatePaths) -> None:
    after = snapshot()
    # Only what is this lab's: its state dir (tree, nspawn), its hub interface, its namespaces.
    needles = [str(paths.root), NAMES.wg_hub, *NAMES.namespaces]
    for kind in before:
        new = {i for i in after[kind] - before[kind] if any(n in i for n in needles)}
        assert not new, f"down left {kind}: {sorted(new)}"
    assert not any(ns in after["netns"] for ns in NAMES.namespaces)
