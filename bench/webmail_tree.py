"""A trixie tree with the webmail candidates installed, derived from lab.trixie_chroot's tree.

``ensure_webmail_tree()`` copies the cached mail-daemon tree (``lab.trixie_chroot.ensure_tree``),
installs Roundcube 1.6 (PHP-FPM, PostgreSQL driver), SOGo, memcached and Radicale into it with
apt-get inside the chroot, and caches the result under /var/cache/sams-lab/chroot-webmail, keyed
on the base tree and the package list, the way trixie_chroot caches its own. Services are not
started by the packages (policy-rc.d exits 101); the bench starts each daemon itself.

    sudo .venv/bin/python -m bench.webmail_tree      # build (or report) the cached tree
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lab import trixie_chroot

# What each candidate needs from Debian 13, and nothing the mail tree already has (nginx, Dovecot,
# PostgreSQL 17 are there).
PACKAGES: tuple[str, ...] = (
    # Candidate A: Roundcube 1.6 on PHP-FPM, its tables in the host's PostgreSQL.
    "php-fpm",
    "roundcube-core",
    "roundcube-pgsql",
    "roundcube-plugins",
    # Candidate B: SOGo (its tables in the same PostgreSQL) and the memcached it requires.
    "sogo",
    "memcached",
    # The DAV server paired with Roundcube, and Debian's separate Dovecot-auth plugin for it.
    "radicale",
    "python3-radicale-dovecot-auth",
)
# Answers for the packages' debconf questions: dbconfig-common would otherwise try to create
# Roundcube's database in a PostgreSQL that is not running during the install; the bench creates
# it itself.
DEBCONF = (
    "roundcube-core roundcube/dbconfig-install boolean false\nroundcube-core roundcube/database-type select pgsql\n"
)
# Bump when the way the tree is built changes, so an old cache is rebuilt.
BUILD_FORMAT = 1
# A file only a finished build has.
MARKER = "usr/sbin/sogod"


def cache_dir() -> Path:
    return Path(os.environ.get("SAMS_WEBMAIL_CACHE", "/var/cache/sams-lab/chroot-webmail"))


def _stamp() -> dict[str, object]:
    return {
        "format": BUILD_FORMAT,
        "base": trixie_chroot.tree_path().name,
        "packages": list(PACKAGES),
        "debconf": DEBCONF,
    }


def tree_path() -> Path:
    key = hashlib.sha256(json.dumps(_stamp(), sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{trixie_chroot.SUITE}-{key}"


def _run(root: Path, argv: list[str], log: Path, timeout: float = 900) -> None:
    env = {"DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}
    done = trixie_chroot.run_in(root, argv, env=env, timeout=timeout)
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise trixie_chroot.ChrootError(f"{' '.join(argv)} failed ({done.returncode}); see {log}:\n{tail}")


def ensure_webmail_tree() -> Path:
    """The pristine webmail tree, built on first use (``trixie_chroot.cached_tree``: a lock and a
    ``.partial`` rename make an interrupted build harmless)."""
    target = tree_path()

    def install(partial: Path) -> None:
        base = trixie_chroot.ensure_tree()
        subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(partial)], check=True)
        log = target.with_suffix(".log")
        log.write_text("")
        # Packages must not start their daemons in a chroot: invoke-rc.d asks policy-rc.d first.
        policy = partial / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        sources = partial / "etc/apt/sources.list"
        if not sources.exists() or "trixie" not in sources.read_text():
            sources.write_text(f"deb {trixie_chroot.MIRROR} {trixie_chroot.SUITE} main\n")
        shutil.copy("/etc/resolv.conf", partial / "etc/resolv.conf")
        with trixie_chroot.mounted(partial):
            _run(partial, ["sh", "-c", f"printf '{DEBCONF}' | debconf-set-selections"], log)
            _run(partial, ["apt-get", "update"], log)
            _run(partial, ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], log)
            _run(partial, ["apt-get", "clean"], log)
            _run(partial, ["sh", "-c", "dpkg-query -W > /var/lib/sams-webmail-versions.txt"], log)

    return trixie_chroot.cached_tree(target, MARKER, _stamp(), install)


def versions(tree: Path) -> dict[str, str]:
    """Installed package -> version, as dpkg recorded them when the tree was built."""
    out: dict[str, str] = {}
    for line in (tree / "var/lib/sams-webmail-versions.txt").read_text().splitlines():
        name, _, version = line.partition("\t")
        out[name.split(":")[0]] = version
    return out


if __name__ == "__main__":
    began = time.monotonic()
    tree = ensure_webmail_tree()
    print(f"{tree} ready in {time.monotonic() - began:.1f} s", file=sys.stderr)
