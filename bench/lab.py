"""The lab's figures (issues 3 and 7.2): build, boot, apply, convergence, and re-apply.

    sudo .venv/bin/python -m bench.lab [--skip-fresh-build]

Needs root and the lab's tools (`./run setup`). The fresh build goes into a throwaway cache
directory, so it measures a real mmdebstrap from the mirror; the boots use the normal cache.
A running lab is refused, not replaced (a dead run's leftovers are cleared).

Convergence (issue 7.2) is "fresh host to mail flowing" over "a plain `apt-get install` of the
same package set on the same kind of host", both measured here:

* reference: a pristine Debian 13 tree with only the lab's base packages (what a cloud image
  has), then `apt-get update && apt-get install --no-install-recommends <the set>` in it (chroot,
  packages from the mirror, nothing cached) — the set being everything SAMS adds to a host:
  cloud-init's base list and the mail stack.
* SAMS: the same install (the lab bakes it into the tree because its host has no route to a
  mirror; on a VPS cloud-init and the packages step run it), plus boot to SSH through the tunnel,
  program evaluation, the full apply, and the first message from the internet namespace on
  port 25 landing in a Maildir.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench.record import record
from lab import control, program, rootfs
from lab.lock import machine_lock
from lab.netclient import dialogue, in_netns, message
from lab.spec import NAMES, StatePaths
from lab.ssh import HostShell
from lab.trixie_chroot import mounted, run_in

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
    record("Lab and convergence (issues 3, 7.2)", rows)


def plain_install_seconds(packages: tuple[str, ...], workdir: Path) -> float:
    """`apt-get update && apt-get install` of *packages* on a pristine base tree (the reference)."""
    extra = tuple(sorted(set(packages) - set(rootfs.BASE_PACKAGES)))
    tree = rootfs.fresh_tree(rootfs.ensure_pristine(()), workdir / "plain")
    try:
        shutil.copy("/etc/resolv.conf", tree / "etc/resolv.conf")  # the chroot uses this machine's network
        # Like mmdebstrap and a booted host's first install: no daemon is started in a chroot.
        policy = tree / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        with mounted(tree):
            start = time.monotonic()
            for argv in (
                ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *extra],
            ):
                proc = run_in(tree, argv, env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=1800)
                if proc.returncode != 0:
                    raise SystemExit(f"{' '.join(argv[:2])} failed in the reference tree:\n{proc.stderr[-2000:]}")
            return time.monotonic() - start
    finally:
        rootfs.remove_tree(tree)


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
                rootfs.ensure_pristine(spec.packages, cache=cache)
                rows.append(("fresh tree build, mmdebstrap from the mirror (s)", f"{time.monotonic() - start:.1f}"))
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        install = plain_install_seconds(spec.packages, root)
        rows.append(("reference: plain apt-get install of the set on a base tree (s)", f"{install:.1f}"))
        rootfs.ensure_pristine(spec.packages)  # the normal cache, so `up` below is the cached case
        report = control.up(spec, paths=paths)
        rows.append(("cached up: extract tree (s)", f"{report.timings['tree']:.1f}"))
        rows.append(("cached up: boot to cloud-init done (s)", f"{report.timings['boot_to_cloud_init_done']:.1f}"))
        boot = report.timings["boot_to_ssh"]
        rows.append(("cached up: boot to SSH through the tunnel (s)", f"{boot:.1f}"))
        start = time.monotonic()
        evaluated = program.lab_run(paths, keys)
        evaluation = time.monotonic() - start
        rows.append(("program evaluation for the apply (s)", f"{evaluation:.1f}"))
        program.image_tarball(settings.config.database.image)  # built once, outside the timing
        first = program.apply(evaluated, paths, images=(settings.config.database.image,))
        rows.append(("full apply (s)", f"{first.seconds:.1f}"))
        rows.append(
            (
                "full apply: steps run / files changed / services",
                f"{len(first.ran)} / {first.changed_files} / {len(first.services)}",
            )
        )
        mail = first_mail_seconds(HostShell.from_state(paths), spec.public_ipv4, settings.config.hostname)
        rows.append(("first inbound message delivered after the apply (s)", f"{mail:.2f}"))
        converge = install + boot + evaluation + first.seconds + mail
        rows.append(("fresh host to mail flowing: install + boot + eval + apply + mail (s)", f"{converge:.1f}"))
        rows.append(("convergence ratio (fresh host to mail : plain apt-get install)", f"{converge / install:.2f}"))
        again = program.apply(evaluated, paths)
        rows.append(("no-change re-apply (s)", f"{again.seconds:.3f}"))
        rows.append(
            (
                "no-change re-apply: steps run / files changed / services",
                f"{len(again.ran)} / {again.changed_files} / {len(again.services)}",
            )
        )
        program.applied_path(paths).unlink()  # forget every trigger: each step's script runs again
        forced = program.apply(evaluated, paths)
        rows.append(("forced re-run of every step (s)", f"{forced.seconds:.1f}"))
        rows.append(
            (
                "forced re-run: steps run / files changed / services",
                f"{len(forced.ran)} / {forced.changed_files} / {len(forced.services)}",
            )
        )
    finally:
        control.down(purge=True, paths=paths)
        shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
