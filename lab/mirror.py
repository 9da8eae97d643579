"""The lab's Debian mirror: `deb.lab.example`, a signed trixie repository in the lab's internet.

A real VPS installs its packages from its provider's mirror; the lab host does the same from this
one, so cloud-init's first boot and every packages step run `apt-get` for real. The repository
holds exactly the `.deb` files the stack's package lists need on top of the lab's bare tree (their
dependencies included, Recommends not, as every SAMS install runs `--no-install-recommends`): a
package a step forgets is not there, and the step that needs it fails in the lab.

* `ensure_repo()` resolves the stack's packages against the bare tree's own dpkg status with this
  machine's apt (Debian's mirror, trixie), downloads them once, indexes them with `apt-ftparchive`
  and signs Release/InRelease with the lab's mirror key, cached under SAMS_LAB_CACHE beside the
  tree it belongs to (`mirror-<hash>/`).
* `key()` makes that key once (gpg, RSA 3072, SHA-512 signatures: what Debian 13's sqv accepts).
* `seed()` plays the provider's image: the tree's apt sources name only this mirror (deb822, with
  `Signed-By:` the key in /etc/apt/keyrings), and cloud-init is told to keep them.
* `start()`/`stop()` serve the repository over HTTP at deb.lab.example:80 in sams-inet
  (`python -m lab.mirror`), logging every request to run/mirror/mirror.log.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lab import dns
from lab.proc import LabError, daemon_pid, run, start_lab_module, stop_daemon
from lab.spec import NAMES, StatePaths, cache_dir

log = logging.getLogger("lab")

NAME = dns.MIRROR
PORT = 80
SUITE = "trixie"
COMPONENT = "main"
ARCH = "amd64"
UPSTREAM = "http://deb.debian.org/debian"  # Debian's mirror, reached from this machine only
URL = f"http://{NAME}/debian"  # what the lab host's apt sources name
# Where the provider's image keeps the mirror's key and its sources (Debian 13: deb822).
KEYRING = "/etc/apt/keyrings/sams-lab-mirror.asc"
SOURCES = "/etc/apt/sources.list.d/debian.sources"
# Bump when the way a repository is built changes, so an old cache entry is not reused.
BUILD_FORMAT = 1


def sources() -> str:
    """The host's only apt source, as a provider's image would name its own mirror."""
    return (
        "# SAMS lab: written by lab.mirror.seed (the lab plays the provider's mirror)\n"
        f"Types: deb\nURIs: {URL}\nSuites: {SUITE}\nComponents: {COMPONENT}\nSigned-By: {KEYRING}\n"
    )


# cloud-init's apt module would otherwise rewrite the sources from its template (deb.debian.org).
CLOUD_CFG = """\
# SAMS lab: written by lab.mirror.seed; the image's sources name the provider's mirror: keep them.
apt:
  preserve_sources_list: true
"""


# --- the key ------------------------------------------------------------------------------------------


def key_dir() -> Path:
    return cache_dir() / "mirror-key"


def key() -> str:
    """The mirror's public key (ASCII armour), made once in the lab cache."""
    d = key_dir()
    public = d / "mirror.asc"
    if public.exists():
        return public.read_text()
    home = d / "gnupg"
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        run(_gpg(["--quick-gen-key", "SAMS lab mirror <mirror@lab.example>", "rsa3072", "sign", "never"]), timeout=120)
        armoured = subprocess.run(_gpg(["--armor", "--export"]), capture_output=True, check=True).stdout
    finally:
        _stop_agent()
    public.write_bytes(armoured)
    return armoured.decode()


def _stop_agent() -> None:
    """gpg starts a gpg-agent for its secret keys: no daemon of the build outlives it."""
    subprocess.run(["gpgconf", "--homedir", str(key_dir() / "gnupg"), "--kill", "gpg-agent"], check=False)


def _gpg(args: list[str]) -> list[str]:
    return ["gpg", "--homedir", str(key_dir() / "gnupg"), "--batch", "--quiet", "--passphrase", "", *args]


# --- the repository -----------------------------------------------------------------------------------


def repo_key(tree_tarball: Path, packages: Iterable[str]) -> str:
    blob = json.dumps(
        {"format": BUILD_FORMAT, "tree": tree_tarball.name, "upstream": UPSTREAM, "packages": sorted(set(packages))},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_repo(tree_tarball: Path, packages: Iterable[str], cache: Path | None = None) -> Path:
    """The signed repository of *packages* for the tree in *tree_tarball*, built once and cached.

    Returns the directory to serve (it holds `debian/dists` and `debian/pool`). The build holds a
    lock and renames a finished directory into place, like the tree's.
    """
    packages = tuple(sorted(set(packages)))
    target = (cache or cache_dir()) / f"mirror-{repo_key(tree_tarball, packages)}"
    if (target / "debian/dists" / SUITE / "InRelease").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "debian/dists" / SUITE / "InRelease").exists():
            return target
        started = time.monotonic()
        partial = target.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        work = partial / "work"
        (work / "lists" / "partial").mkdir(parents=True)
        (work / "cache" / "archives" / "partial").mkdir(parents=True)
        (work / "state").mkdir()
        status = work / "status"
        with tarfile.open(tree_tarball) as tar:
            member = tar.extractfile("./var/lib/dpkg/status")
            if member is None:
                raise LabError(f"{tree_tarball} has no var/lib/dpkg/status")
            status.write_bytes(member.read())
        (work / "sources.list").write_text(
            f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {UPSTREAM} {SUITE} {COMPONENT}\n"
        )
        apt = [
            "apt-get",
            "-q",
            f"-oAPT::Architecture={ARCH}",
            f"-oAPT::Architectures={ARCH}",
            f"-oDir::Etc::SourceList={work / 'sources.list'}",
            "-oDir::Etc::SourceParts=/dev/null",
            "-oDir::Etc::Preferences=/dev/null",
            "-oDir::Etc::PreferencesParts=/dev/null",
            f"-oDir::State={work / 'state'}",
            f"-oDir::State::status={status}",
            f"-oDir::State::Lists={work / 'lists'}",
            f"-oDir::Cache={work / 'cache'}",
            # What the host's installs do: Depends and Pre-Depends, no Recommends.
            "-oAPT::Install-Recommends=false",
            "-oAPT::Sandbox::User=root",
            "-oDebug::NoLocking=true",
        ]
        build_log = target.with_suffix(".log")
        with open(build_log, "w") as logf:
            for argv in ([*apt, "update"], [*apt, "install", "--download-only", "-y", *packages]):
                logf.write(" ".join(argv) + "\n")
                logf.flush()
                proc = subprocess.run(argv, stdout=logf, stderr=subprocess.STDOUT, check=False, timeout=1800)
                if proc.returncode != 0:
                    raise LabError(f"{argv[-1] if argv[-1] == 'update' else 'download'} failed; see {build_log}")
        # None on a tree that has them all (SAMS_LAB_TREE=baked): the repository is then empty.
        debs = sorted((work / "cache" / "archives").glob("*.deb"))
        root = partial / "debian"
        pool = root / "pool" / COMPONENT
        pool.mkdir(parents=True)
        for deb in debs:
            deb.rename(pool / deb.name)
        _index(root)
        shutil.rmtree(work)
        (partial / "manifest.json").write_text(
            json.dumps(
                {
                    "tree": tree_tarball.name,
                    "packages": list(packages),
                    "debs": len(debs),
                    "bytes": sum((pool / d.name).stat().st_size for d in debs),
                    "build_seconds": round(time.monotonic() - started, 1),
                },
                indent=2,
            )
            + "\n"
        )
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
        log.info("lab mirror: %d packages in %s (%.0f s)", len(debs), target, time.monotonic() - started)
    return target


def _index(root: Path) -> None:
    """Packages(.gz), Release, InRelease and Release.gpg for the pool under *root*."""
    binary = root / "dists" / SUITE / COMPONENT / f"binary-{ARCH}"
    binary.mkdir(parents=True)
    packages = subprocess.run(
        ["apt-ftparchive", "packages", f"pool/{COMPONENT}"], cwd=root, capture_output=True, check=True
    ).stdout
    (binary / "Packages").write_bytes(packages)
    run(["gzip", "-9", "-k", str(binary / "Packages")])
    dist = root / "dists" / SUITE
    fields = {
        "Origin": "SAMS lab",
        "Label": "SAMS lab mirror",
        "Suite": SUITE,
        "Codename": SUITE,
        "Architectures": ARCH,
        "Components": COMPONENT,
    }
    options = [f"-oAPT::FTPArchive::Release::{k}={v}" for k, v in fields.items()]
    release = subprocess.run(
        ["apt-ftparchive", *options, "release", "."], cwd=dist, capture_output=True, check=True
    ).stdout
    (dist / "Release").write_bytes(release)
    key()  # made before the first signature
    sign = ["--digest-algo", "SHA512", "--yes"]
    try:
        run(_gpg([*sign, "--clearsign", "--output", str(dist / "InRelease"), str(dist / "Release")]))
        run(_gpg([*sign, "--armor", "--detach-sign", "--output", str(dist / "Release.gpg"), str(dist / "Release")]))
    finally:
        _stop_agent()


def repo_packages(repo: Path) -> set[str]:
    """The package names the repository serves."""
    text = (repo / "debian/dists" / SUITE / COMPONENT / f"binary-{ARCH}" / "Packages").read_text()
    return {line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Package:")}


# --- the provider's image -----------------------------------------------------------------------------


def seed(tree: Path) -> None:
    """Point the tree's apt at the lab mirror only, trusting the lab key (what a provider's image does)."""
    (tree / "etc/apt/sources.list").unlink(missing_ok=True)
    for old in (tree / "etc/apt/sources.list.d").glob("*"):
        old.unlink()
    keyring = tree / KEYRING.lstrip("/")
    keyring.parent.mkdir(parents=True, exist_ok=True)
    keyring.write_text(key())
    keyring.chmod(0o644)
    (tree / SOURCES.lstrip("/")).write_text(sources())
    (tree / "etc/cloud/cloud.cfg.d/91_sams_lab_mirror.cfg").write_text(CLOUD_CFG)


# --- the server ---------------------------------------------------------------------------------------


def serve(listen: str, port: int, directory: Path) -> None:
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), fmt % args)

    server = ThreadingHTTPServer((listen, port), Handler)
    print(f"listening on {listen}:{port}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--directory", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    serve(args.listen, args.port, args.directory)
    return 0


def directory(paths: StatePaths) -> Path:
    return paths.run / "mirror"


def log_file(paths: StatePaths) -> Path:
    """Every request the mirror answered (what the host downloaded)."""
    return directory(paths) / "mirror.log"


def start(paths: StatePaths, address: str, repo: Path, timeout: float = 20.0) -> int:
    args = ["--listen", address, "--port", str(PORT), "--directory", str(repo)]
    pid = start_lab_module(NAMES.ns_inet, "mirror", args, directory(paths), timeout)
    log.info("lab mirror (pid %d) at %s, serving %s", pid, URL, repo)
    return pid


def running(paths: StatePaths) -> int | None:
    return daemon_pid(directory(paths) / "mirror.pid", b"lab.mirror")


def stop(paths: StatePaths) -> list[str]:
    return stop_daemon(running(paths), "mirror")


def downloads(paths: StatePaths) -> list[str]:
    """The package files the host fetched so far (names of the .deb files, in order)."""
    try:
        text = log_file(paths).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [line.split("GET ", 1)[1].split()[0].rsplit("/", 1)[-1] for line in text.splitlines() if ".deb " in line]


if __name__ == "__main__":
    sys.exit(main())
