"""A Debian trixie tree with the mail daemons installed, for checking rendered configs.

``ensure_tree()`` runs mmdebstrap once (cached as a directory under
``SAMS_CHROOT_CACHE``, default /var/cache/sams-lab/chroot-mailcore) and
``scratch()`` gives each test run its own writable tree (an overlay, or a
copy).  ``run_in()`` runs a command inside a tree with /proc, /dev and fresh
/run and /tmp mounted (``mounted()`` keeps them for several commands), and
unmounts them afterwards whatever happens.  No network is
created: the only traffic is mmdebstrap fetching from the mirror.

    python -m lab.trixie_chroot            # build (or report) the cached tree
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from components.mail.services import MAIL_PACKAGES

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
# The packages whose checkers the mailcore tests run (postfix check, doveconf,
# opendkim -n, rspamadm configtest), plus openssl for the self-signed cert
PACKAGES: tuple[str, ...] = (
    *MAIL_PACKAGES,
    "ca-certificates",
    # The same PostgreSQL the host runs (the lab's image is built from trixie's postgresql-17):
    # the tests apply the schema and run the daemons' lookup queries against it.
    "postgresql-17",
)
# Bump when the way the tree is built changes, so an old cache is rebuilt.
BUILD_FORMAT = 1


class ChrootError(RuntimeError):
    """The tree could not be built or a command inside it could not be started."""


def cache_dir() -> Path:
    return Path(os.environ.get("SAMS_CHROOT_CACHE", "/var/cache/sams-lab/chroot-mailcore"))


def _stamp() -> dict[str, object]:
    return {
        "format": BUILD_FORMAT,
        "suite": SUITE,
        "mirror": MIRROR,
        "packages": list(PACKAGES),
    }


def _key() -> str:
    return hashlib.sha256(json.dumps(_stamp(), sort_keys=True).encode()).hexdigest()[:16]


def tree_path() -> Path:
    """Where the pristine tree lives (whether built or not)."""
    return cache_dir() / f"{SUITE}-{_key()}"


def cached_tree(target: Path, marker: str, stamp: dict[str, object], build: Callable[[Path], None]) -> Path:
    """*target*, a directory tree that ``build(partial)`` makes once, then served from the cache.

    The build holds a lock, writes to a ``.partial`` directory and renames it, so an interrupted
    build never leaves a tree that a later run would trust; *marker* is a file only a finished tree
    has, and ``<target>.json`` records *stamp* and the build's seconds.
    """
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / marker).exists():
            return target
        partial = target.with_suffix(".partial")
        if partial.exists():
            _remove(partial)
        started = time.monotonic()
        build(partial)
        partial.rename(target)
        seconds = round(time.monotonic() - started, 1)
        target.with_suffix(".json").write_text(json.dumps({**stamp, "build_seconds": seconds}, indent=2) + "\n")
    return target


def ensure_tree() -> Path:
    """Return the pristine tree, building it with mmdebstrap if it is missing (``cached_tree``)."""
    target = tree_path()

    def mmdebstrap(partial: Path) -> None:
        cmd = [
            "mmdebstrap",
            "--variant=minbase",
            "--mode=root",
            "--format=directory",
            "--components=main",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(partial),
            MIRROR,
        ]
        build_log = target.with_suffix(".log")
        with open(build_log, "wb") as logf:
            logf.write((" ".join(cmd) + "\n").encode())
            logf.flush()
            rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, check=False).returncode
        if rc != 0:
            tail = build_log.read_text(errors="replace").splitlines()[-20:]
            raise ChrootError(f"mmdebstrap failed ({rc}); see {build_log}:\n" + "\n".join(tail))

    return cached_tree(target, "usr/sbin/postfix", _stamp(), mmdebstrap)


def scratch_copy(dest: Path) -> Path:
    """A writable copy of the pristine tree at *dest* (replaced if present)."""
    src = ensure_tree()
    if dest.exists():
        _remove(dest)
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dest)], check=True)
    return dest


@contextlib.contextmanager
def scratch(workdir: Path) -> Iterator[Path]:
    """A throw-away writable tree under *workdir*, removed on exit.

    An overlay on the pristine tree when the kernel allows it (instant, the cache stays
    untouched); otherwise a full copy.
    """
    src = ensure_tree()
    workdir.mkdir(parents=True, exist_ok=True)
    upper, work, merged = workdir / "upper", workdir / "work", workdir / "root"
    for d in (upper, work, merged):
        d.mkdir(exist_ok=True)
    opts = f"lowerdir={src},upperdir={upper},workdir={work}"
    overlay = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], capture_output=True, check=False
    )
    try:
        if overlay.returncode != 0:
            scratch_copy(merged)
        yield merged
    finally:
        if overlay.returncode == 0:
            subprocess.run(["umount", str(merged)], check=False)
        _remove(workdir)


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[Path]:
    """/proc, /dev (with a private /dev/shm), and fresh /run and /tmp inside *root*, for as long
    as the block runs; ``run_in`` calls inside it share them (a daemon started by one call is
    reachable by the next). Unmounted on exit even if the block fails."""
    mounts: list[Path] = []
    try:
        for point, args in (
            ("proc", ["-t", "proc", "proc"]),
            ("dev", ["--rbind", "/dev"]),
            ("dev/shm", ["-t", "tmpfs", "tmpfs"]),
            ("run", ["-t", "tmpfs", "tmpfs"]),
            ("tmp", ["-t", "tmpfs", "tmpfs"]),
        ):
            where = root / point
            where.mkdir(exist_ok=True)
            subprocess.run(["mount", *args, str(where)], check=True)
            mounts.append(where)
            if point == "dev":
                # keep unmounts below from propagating back to the host's /dev
                subprocess.run(["mount", "--make-rslave", str(where)], check=True)
        yield root
    finally:
        for where in reversed(mounts):
            subprocess.run(["umount", "-R", "-l", str(where)], check=False)


def run_in(
    root: Path,
    argv: Sequence[str],
    *,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run *argv* inside the tree at *root*; output captured, never raises on the exit code.

    Mounts /proc and friends for this one call unless a ``mounted(root)`` block already has.
    """
    full_env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/root",
        **(env or {}),
    }
    cmd = ["chroot", str(root), *argv]
    if os.path.ismount(root / "proc"):
        return subprocess.run(
            cmd, input=input, capture_output=True, text=True, env=full_env, timeout=timeout, check=False
        )
    with mounted(root):
        return subprocess.run(
            cmd, input=input, capture_output=True, text=True, env=full_env, timeout=timeout, check=False
        )


def _remove(path: Path) -> None:
    """Delete a tree; refuses to cross into anything still mounted below it."""
    resolved = path.resolve()
    if resolved == Path("/") or len(resolved.parts) < 3:
        raise ChrootError(f"refusing to remove {resolved}")
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            mnt = line.split()[1].replace("\\040", " ")
            if mnt == str(resolved) or mnt.startswith(str(resolved) + "/"):
                raise ChrootError(f"{mnt} is still mounted; not removing {resolved}")
    shutil.rmtree(resolved)


def remove_tree(path: Path) -> None:
    """Delete a scratch copy made by ``scratch_copy``."""
    _remove(path)


if __name__ == "__main__":
    started = time.monotonic()
    tree = ensure_tree()
    print(f"{tree} ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
