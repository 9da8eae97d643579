"""Build and cache the Debian trixie root tree the lab host boots from.

``ensure_pristine()`` runs mmdebstrap once per (suite, variant, mirror, package
set) and keeps the result as an uncompressed tarball in the cache directory
(``SAMS_LAB_CACHE``, default /var/cache/sams-lab), named by a hash of those
inputs.  ``fresh_tree()`` extracts it into a new directory, so every ``up``
starts from a never-booted tree and cloud-init really runs its first boot.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from lab.proc import LabError, run, tail
from lab.spec import cache_dir

log = logging.getLogger("lab.rootfs")

SUITE = "trixie"
VARIANT = "minbase"  # Priority: required + apt; everything else is listed below
MIRROR = os.environ.get("SAMS_LAB_MIRROR", "http://deb.debian.org/debian")
# Bump when the way a tree is built changes, so old cache entries are not reused.
BUILD_FORMAT = 2

# The bare tree: what a provider's Debian 13 cloud image has (Debian's own genericcloud images and
# Vultr's/Oracle's are this set give or take a few tools), and nothing of SAMS's own. Everything the
# program installs comes from the lab mirror (lab/mirror.py) when cloud-init or a step asks for it.
BASE_PACKAGES: tuple[str, ...] = (
    # init and the basics a cloud image has
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",  # logind sessions for SSH logins
    "sudo",
    "python3",
    "procps",
    "netbase",
    "ca-certificates",
    "curl",
    "wget",
    "less",
    "iproute2",
    "iputils-ping",
    "unattended-upgrades",  # Debian's cloud images install and enable it
    # cloud-init with the NoCloud datasource: the seed is read from
    # /var/lib/cloud/seed/nocloud, so no extra tools (no cloud-image-utils,
    # no ISO/vfat reader) are needed; cloud-init's Depends cover the rest.
    "cloud-init",
    # remote access
    "openssh-server",
    "openssh-sftp-server",
    # Not in a cloud image: a stand-in for the kernel's WireGuard module, which every Debian 13
    # kernel has and this machine's has not (wg-quick falls back to it).
    "wireguard-go",
)


def package_set(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The base packages plus *extra*, de-duplicated and sorted (the cache key input)."""
    pkgs = set(BASE_PACKAGES)
    for name in extra:
        name = name.strip()
        if not name or any(c in name for c in " ,\t\n"):
            raise ValueError(f"bad package name {name!r}")
        pkgs.add(name)
    return tuple(sorted(pkgs))


def cache_key(
    packages: Iterable[str],
    suite: str = SUITE,
    variant: str = VARIANT,
    mirror: str = MIRROR,
) -> str:
    """Stable short hash of everything that determines the tree's content."""
    blob = json.dumps(
        {
            "format": BUILD_FORMAT,
            "suite": suite,
            "variant": variant,
            "mirror": mirror,
            "packages": sorted(set(packages)),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pristine_path(extra: Iterable[str] = (), suite: str = SUITE, cache: Path | None = None) -> Path:
    """Where the pristine tarball for this package set lives (whether built or not)."""
    key = cache_key(package_set(extra), suite)
    return (cache or cache_dir()) / f"{suite}-{key}.tar"


def ensure_pristine(extra: Iterable[str] = (), suite: str = SUITE, cache: Path | None = None) -> Path:
    """Return the pristine tarball for base + *extra* packages, building it if missing.

    A build holds an exclusive lock on the cache entry, writes to a temporary
    file and renames it, so a crashed or concurrent build never leaves a
    half-written tarball that a later ``up`` would trust.
    """
    packages = package_set(extra)
    target = pristine_path(extra, suite, cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        log.info("pristine tree cached: %s", target)
        return target
    lock_path = target.with_suffix(".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():  # built by someone else while we waited
            return target
        partial = target.with_suffix(".tar.partial")
        build_log = target.with_suffix(".log")
        partial.unlink(missing_ok=True)
        cmd = [
            "mmdebstrap",
            f"--variant={VARIANT}",
            "--mode=root",
            "--format=tar",
            "--components=main",
            f"--include={','.join(packages)}",
            suite,
            str(partial),
            MIRROR,
        ]
        log.info("building %s tree with mmdebstrap (log: %s)", suite, build_log)
        started = time.monotonic()
        with open(build_log, "wb") as logf:
            logf.write((" ".join(cmd) + "\n").encode())
            logf.flush()
            rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, check=False).returncode
        if rc != 0:
            partial.unlink(missing_ok=True)
            raise LabError(f"mmdebstrap failed ({rc}); last lines of {build_log}:\n{tail(build_log)}")
        partial.rename(target)
        (target.with_suffix(".json")).write_text(
            json.dumps(
                {
                    "suite": suite,
                    "variant": VARIANT,
                    "mirror": MIRROR,
                    "packages": list(packages),
                    "build_seconds": round(time.monotonic() - started, 1),
                },
                indent=2,
            )
            + "\n"
        )
        log.info("built %s in %.1f s", target, time.monotonic() - started)
    return target


def fresh_tree(tarball: Path, dest: Path) -> Path:
    """Replace *dest* with a fresh extraction of *tarball* and return it."""
    if dest.exists():
        remove_tree(dest)
    dest.mkdir(parents=True)
    run(
        [
            "tar",
            "-xpf",
            str(tarball),
            "-C",
            str(dest),
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
        ]
    )
    return dest


def remove_tree(path: Path) -> None:
    """Delete a tree copy; refuses to cross into mounts (nothing must be mounted below it)."""
    resolved = path.resolve()
    if resolved == Path("/") or len(resolved.parts) < 3:
        raise LabError(f"refusing to remove {resolved}")
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            mnt = line.split()[1].replace("\\040", " ")
            if mnt == str(resolved) or mnt.startswith(str(resolved) + "/"):
                raise LabError(f"{mnt} is still mounted; not removing {resolved}")
    shutil.rmtree(resolved)
