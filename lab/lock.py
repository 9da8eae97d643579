"""One lab per machine: a machine-wide lock, and telling a live lab from a dead one's leftovers.

The lab's namespaces, addresses and WireGuard hub have fixed names, so two labs cannot run
side by side (two checkouts, a test run beside ``./run lab``).  Whoever builds or uses a lab
holds ``/run/sams-lab.lock`` (flock: released by the kernel when the holder dies, so a killed
run never leaves it held); a second comer waits for it instead of tearing the first one's
namespaces from under it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from lab.proc import LabError
from lab.spec import NAMES

log = logging.getLogger("lab.lock")

LOCK_PATH = Path(os.environ.get("SAMS_LAB_LOCK", "/run/sams-lab.lock"))


@contextlib.contextmanager
def machine_lock(*, timeout: float, path: Path = LOCK_PATH) -> Iterator[None]:
    """Hold the machine's lab lock for the block; wait up to *timeout* s for another holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            holder = _holder(path)
            if time.monotonic() >= deadline:
                raise LabError(f"another lab run holds {path} ({holder}) for more than {timeout:.0f}s")
            if not said:
                log.warning("waiting for the lab run holding %s (%s)", path, holder)
                said = True
            time.sleep(0.1)  # take the lab as soon as its holder lets go
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {_cmdline(os.getpid())}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "pid unknown"
    except OSError:
        return "pid unknown"


def lab_containers() -> list[int]:
    """systemd-nspawn processes booted into the lab's host namespace, whatever their state dir."""
    needle = f"--network-namespace-path=/run/netns/{NAMES.ns_host}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"systemd-nspawn") and needle in argv:
            found.append(int(entry))
    return found
