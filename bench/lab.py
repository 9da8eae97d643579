"""The lab's figures (issues 3, 7.2 and 27): build, first boot to mail flowing, convergence, re-apply.

    sudo .venv/bin/python -m bench.lab [--skip-fresh-build]

Needs root and the lab's tools (`./run setup`). The fresh build goes into a throwaway cache
directory, so it measures a real mmdebstrap and mirror download from Debian's mirror; the boots use
the normal cache. A running lab is refused, not replaced (a dead run's leftovers are cleared).

Convergence (issues 7.2, 27) is "fresh host to mail flowing" over "a plain `apt-get install` of the
same package set on the same tree", both measured here from the bare tree and the lab's mirror:

* SAMS: `lab up` from the bare tree (cloud-init's first boot installs its packages from the lab
  mirror), program evaluation, the full apply (the packages steps install the rest), and the first
  message from the internet namespace on port 25 landing in a Maildir. Split into boot (less
  cloud-init's installs), cloud-init's installs, the remote steps' installs (apt's own Start/End in
  the host's /var/log/apt/history.log) and configuration (the rest of the apply).
* reference: the same bare tree in a chroot, its apt pointed at the same lab mirror (reached from
  inside sams-inet), `apt-get update && apt-get install --no-install-recommends` of the packages
  the SAMS host ended up with as manually installed (`apt-mark showmanual`, less the tree's own).
"""

from __future__ import annotations

import argparse
import calendar
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

from bench.record import record
from lab import control, mirror, program, rootfs
from lab.lock import machine_lock
from lab.netclient import dialogue, in_netns, message
from lab.spec import NAMES, StatePaths
from lab.ssh import HostShell
from lab.trixie_chroot import mounted

RECIPIENT = ("bob", "sams.test")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-fresh-build", action="store_true", help="only the cached figures")
    args = parser.parse_args()
    with machine_lock(timeout=1200):
        control.clear_leftovers()
        if control.status()["running"]:
            raise SystemExit("a lab is up: `python -m lab down` first")
        rows = measure(skip_fresh_build=args.skip_fresh_build)
    record("Lab: first boot from the bare tree and convergence (issues 3, 7.2, 27)", rows)


def plain_install_seconds(packages: tuple[str, ...], workdir: Path, spec_inet_ipv4: str) -> float:
    """`apt-get update && apt-get install` of *packages* on a pristine bare tree, from the lab mirror."""
    tree = rootfs.fresh_tree(rootfs.ensure_pristine(()), workdir / "plain")
    try:
        mirror.seed(tree)
        # The chroot runs in sams-inet, where the mirror is; its name resolves from /etc/hosts.
        (tree / "etc/hosts").write_text(f"127.0.0.1 localhost\n{spec_inet_ipv4} {mirror.NAME}\n")
        # Like mmdebstrap and a booted host's first install: no daemon is started in a chroot.
        policy = tree / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        with mounted(tree):
            start = time.monotonic()
            for argv in (
                ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            ):
                cmd = ["ip", "netns", "exec", NAMES.ns_inet, "chroot", str(tree), *argv]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
                if proc.returncode != 0:
                    raise SystemExit(f"{' '.join(argv[:2])} failed in the reference tree:\n{proc.stderr[-2000:]}")
            return time.monotonic() - start
    finally:
        rootfs.remove_tree(tree)


def apt_seconds(shell: HostShell, after: float = 0.0) -> tuple[float, float]:
    """Seconds apt spent installing on the host (history.log's Start/End), split at unix time *after*:
    (before, from then on)."""
    text = shell.run(["sudo", "-n", "cat", "/var/log/apt/history.log"]).stdout.decode()
    before = since = 0.0
    begin = 0.0
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key in ("Start-Date", "End-Date"):
            at = calendar.timegm(time.strptime(" ".join(value.split()), "%Y-%m-%d %H:%M:%S"))
            if key == "Start-Date":
                begin = at
            elif begin >= after:
                since += at - begin
            else:
                before += at - begin
    return before, since


def manual_packages(shell: HostShell) -> tuple[str, ...]:
    """What the host has as manually installed, less what the bare tree had: what SAMS asked for."""
    manual = set(shell.run(["apt-mark", "showmanual"]).stdout.decode().split())
    with tarfile.open(rootfs.ensure_pristine(())) as tar:
        member = tar.extractfile("./var/lib/dpkg/status")
        status = member.read().decode() if member else ""
    in_tree = {line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Package:")}
    return tuple(sorted(manual - in_tree))


def first_mail_seconds(shell: HostShell, spec_public_ipv4: str, hostname: str) -> float:
    """A message from the internet namespace on 25 until it is a file in the recipient's Maildir."""
    local, domain = RECIPIENT
    tag = f"converge-{uuid.uuid4().hex[:10]}"
    data = message(f"someone@{NAMES.ns_inet}.example", f"{local}@{domain}", tag).decode()
    start = time.monotonic()
    steps = [("mail", "FROM:<someone@sender.example>"), ("rcpt", f"TO:<{local}@{domain}>"), ("data", data)]
    replies = in_netns(NAMES.ns_inet, {hostname: spec_public_ipv4}, dialogue, hostname, 25, steps)["replies"]
    if [code for code, _ in replies] != [250, 250, 250]:
        raise SystemExit(f"the first message was refused: {replies}")
    maildir = f"/var/mail/vmail/{domain}/{local}"
    while time.monotonic() - start < 120:
        found = shell.run(["sudo", "-n", "grep", "-rlF", tag, maildir], check=False)
        if found.returncode == 0:
            return time.monotonic() - start
        time.sleep(0.1)
    raise SystemExit(f"the first message did not reach {maildir} within 120 s")


class Rows(list[tuple[str, str]]):
    """The table, each figure also printed as soon as it is measured."""

    def append(self, row: tuple[str, str]) -> None:
        print(f"{row[0]}: {row[1]}", flush=True)
        super().append(row)


def measure(*, skip_fresh_build: bool) -> list[tuple[str, str]]:
    rows = Rows()
    root = Path(tempfile.mkdtemp(prefix="samsbench-"))
    paths = StatePaths(root)
    try:
        keys = program.lab_keys(paths)
        run = program.lab_run(paths, keys)
        settings = program.lab_settings(keys)
        spec = program.spec_from_run(run, settings, keys)
        if not skip_fresh_build:
            cache = Path(tempfile.mkdtemp(prefix="samsbench-cache-"))
            try:
                start = time.monotonic()
                tar = rootfs.ensure_pristine(spec.packages, cache=cache)
                rows.append(
                    ("fresh bare tree build, mmdebstrap from Debian's mirror (s)", f"{time.monotonic() - start:.1f}")
                )
                start = time.monotonic()
                mirror.ensure_repo(tar, spec.mirror_packages, cache=cache)
                rows.append(("fresh lab mirror: download, index, sign (s)", f"{time.monotonic() - start:.1f}"))
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        program.image_tarball(settings.config.database.image)  # built once, outside the timing
        report = control.up(spec, paths=paths)
        shell = HostShell.from_state(paths)
        cloud_init_done = time.time()
        ci_installs, _ = apt_seconds(shell, after=cloud_init_done)  # every install so far is first boot's
        boot = report.timings["boot_to_ssh"]
        rows.append(("up: extract tree (s)", f"{report.timings['tree']:.1f}"))
        rows.append(("first boot to SSH through the tunnel (s)", f"{boot:.1f}"))
        rows.append(("  of which boot, cloud-init, tunnel without installs (s)", f"{boot - ci_installs:.1f}"))
        rows.append(("  of which cloud-init's package installs (apt) (s)", f"{ci_installs:.1f}"))
        start = time.monotonic()
        evaluated = program.lab_run(paths, keys)
        evaluation = time.monotonic() - start
        rows.append(("program evaluation for the apply (s)", f"{evaluation:.1f}"))
        first = program.apply(evaluated, paths, images=(settings.config.database.image,))
        _, step_installs = apt_seconds(shell, after=cloud_init_done)
        rows.append(("full apply (s)", f"{first.seconds:.1f}"))
        rows.append(("  of which the remote steps' package installs (apt) (s)", f"{step_installs:.1f}"))
        rows.append(("  of which configuration (s)", f"{first.seconds - step_installs:.1f}"))
        rows.append(
            (
                "full apply: steps run / files changed / services",
                f"{len(first.ran)} / {first.changed_files} / {len(first.services)}",
            )
        )
        mail = first_mail_seconds(shell, spec.public_ipv4, settings.config.hostname)
        rows.append(("first inbound message delivered after the apply (s)", f"{mail:.2f}"))
        converge = boot + evaluation + first.seconds + mail
        rows.append(("first boot to mail flowing: boot + eval + apply + mail (s)", f"{converge:.1f}"))
        again = program.apply(evaluated, paths)
        rows.append(("no-change re-apply (s)", f"{again.seconds:.3f}"))
        program.applied_path(paths).unlink()  # forget every trigger: each step's script runs again
        forced = program.apply(evaluated, paths)
        rows.append(("forced re-run of every step (s)", f"{forced.seconds:.1f}"))
        rows.append(
            (
                "forced re-run: steps run / files changed / services",
                f"{len(forced.ran)} / {forced.changed_files} / {len(forced.services)}",
            )
        )
        packages = manual_packages(shell)
        install = plain_install_seconds(packages, root, spec.inet_ipv4)
        rows.append(
            (f"reference: plain apt-get install of the same {len(packages)} packages, same tree (s)", f"{install:.1f}")
        )
        rows.append(
            ("convergence ratio (first boot to mail : plain apt-get install; goal <= 1.5)", f"{converge / install:.2f}")
        )
    finally:
        control.down(purge=True, paths=paths)
        shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
