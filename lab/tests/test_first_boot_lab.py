"""A new host installs like a VPS (issue 27): the lab's tree is a bare cloud image, its only apt
source the lab's Debian mirror (lab/mirror.py), so cloud-init's first boot and every packages step
run apt for real. The last test replaces the host and starts the apply the moment SSH answers,
while a stand-in for unattended-upgrades holds apt's locks, and watches from the internet that no
daemon answers before SAMS configured it.
"""

from __future__ import annotations

import calendar
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudinit import BASE_PACKAGES
from components.firewall.policy import NEVER_PUBLIC, public_ports
from components.mail.services import mail_packages
from lab import control, mirror, program, rootfs
from lab.hostcmd import sh
from lab.session import Lab
from lab.spec import NAMES

pytestmark = pytest.mark.lab


def test_tree_is_bare_and_apt_names_only_the_lab_mirror(lab: Lab) -> None:
    """The tree had none of SAMS's packages; cloud-init and the steps installed them from the mirror."""
    if program.baked_tree():
        pytest.fail(f"{program.TREE_ENV}=baked: this module checks the bare tree, run it without")
    tree = rootfs.package_set(lab.spec.packages)
    assert not {"postfix", "dovecot-core", "docker.io", "nftables", "fail2ban"} & set(tree)
    assert {"postfix", "dovecot-core", "docker.io", "nftables"} <= mirror.repo_packages(_repo(lab))
    sources = sh(lab, "apt-get indextargets --format '$(REPO_URI)' | sort -u").split()
    assert sources == [mirror.URL + "/"], sources
    fetched = {name.split("_", 1)[0] for name in mirror.downloads(lab.paths)}
    # First boot's (cloud-init) and the mail packages step's installs both went over the network.
    assert {"docker.io", "nftables", "fail2ban", "wireguard-tools"} <= fetched, sorted(fetched)
    assert {"postfix", "dovecot-imapd", "rspamd", "nginx"} <= fetched, sorted(fetched)
    installed = sh(lab, "dpkg-query -W -f '${Package} ${Status}\\n'")
    for pkg in (*BASE_PACKAGES, *mail_packages(lab.settings)):
        assert f"{pkg} install ok installed" in installed, pkg


def test_a_forgotten_package_fails_the_install(lab: Lab) -> None:
    """The mirror holds what the lists name and their Depends, nothing else: a name no list has is
    not installable, as a step forgetting a package would find its daemon missing."""
    out = lab.shell.run(
        ["sudo", "-n", "apt-get", "install", "-y", "--no-install-recommends", "--dry-run", "postgresql-17"], check=False
    )
    assert out.returncode != 0
    assert "Unable to locate package postgresql-17" in out.stderr.decode() + out.stdout.decode()


def _repo(lab: Lab) -> Path:
    return mirror.ensure_repo(rootfs.ensure_pristine(lab.spec.packages), lab.spec.mirror_packages)


# --- a new host, applied while its first boot may still be busy ------------------------------------------

# Each public port's daemon, and the step that writes its configuration and starts it.
CONFIGURED_BY = {25: "postfix", 465: "postfix", 587: "postfix", 143: "dovecot", 993: "dovecot", 995: "dovecot",
                 4190: "dovecot", 110: "dovecot", 80: "tls-web", 443: "tls-web"}  # fmt: skip
PROBE_S = 1200  # the prober stops by itself after this long
PROBE = """\
import json, socket, sys, time
address, ports, until = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], time.time() + float(sys.argv[3])
state = dict.fromkeys(ports, False)
while time.time() < until:
    for port in ports:
        try:
            socket.create_connection((address, port), timeout=0.3).close()
            now = True
        except OSError:
            now = False
        if now and not state[port]:
            print(json.dumps({"port": port, "at": time.time()}), flush=True)
        state[port] = now
    time.sleep(0.3)
"""
# Stands in for unattended-upgrades during first boot: holds apt's and dpkg's locks for HOLD_S.
HOLD_S = 45  # longer than the image load before the first step (~15 s): the steps must wait
HOLDER = f"""\
import fcntl, time
files = [open(p, "a") for p in ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock")]
for f in files:
    fcntl.lockf(f, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep({HOLD_S})
print(time.time(), flush=True)
"""


# How long after its step a daemon must still be running without systemd having restarted it.
SETTLE_S = 90
SETTLED_UNITS = ("rspamd", "redis-server", "unbound", "opendkim", "dovecot", "postfix", "nginx", "fail2ban",
                 "docker", "sams-postgres")  # fmt: skip


@pytest.mark.replaces_host
def test_new_host_applied_while_first_boot_runs(lab: Lab) -> None:
    """pulumi up's steps start as soon as SSH answers; they wait for cloud-init (host-ready) and for
    apt's locks (sams-apply) instead of failing; from the internet no port answers before its daemon
    has SAMS's configuration, none of the never-public ones ever; one apply converges."""
    ports = sorted(NEVER_PUBLIC | set(CONFIGURED_BY))
    prober = subprocess.Popen(
        ["ip", "netns", "exec", NAMES.ns_inet, sys.executable, "-c", PROBE, lab.spec.public_ipv4,
         ",".join(map(str, ports)), str(PROBE_S)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        boot = control.replace_host(lab.spec, lab.paths, wait_for_cloud_init=False, cloud_init_timeout=600)
        lab.shell.run(
            ["sudo", "-n", "sh", "-c", f"setsid python3 -c '{HOLDER}' </dev/null >/run/sams-lock-holder.out 2>&1 &"]
        )
        deadline = time.monotonic() + 30
        while "held" not in sh(lab, "cat /run/sams-lock-holder.out", check=False):
            assert time.monotonic() < deadline, "the lock holder did not start"
            time.sleep(0.2)
        start = time.time()
        first = program.apply(lab.run, lab.paths, shell=lab.shell, images=lab.images)
        released = float(sh(lab, "tail -1 /run/sams-lock-holder.out").strip())
        # A forced re-run of every step (the applied record forgotten) finds nothing to change.
        program.applied_path(lab.paths).unlink()
        again = program.apply(lab.run, lab.paths, shell=lab.shell, images=lab.images)
    finally:
        prober.terminate()
    # Each time a port went from closed to open; the old host's (still up when probing began) do not count.
    events = [json.loads(line) for line in (prober.communicate(timeout=10)[0] or "").splitlines()]
    opened = [e for e in events if e["at"] > boot["booted_at"]]
    print(f"\nreplaced: {boot}\nports opened: {opened}\nsteps started: {first.started}")
    assert first.ran == [s.name for s in program.steps_of(lab.run)]
    # The steps ran while the locks were held and waited for them: the first install came after.
    first_install = _first_dpkg_install(lab)
    assert start < released <= first_install + 1, (start, released, first_install)  # dpkg.log: whole seconds
    # host-ready (the first step, `cloud-init status --wait`) returned only once the locks were free.
    assert first.finished["host-ready"] >= released, (first.finished["host-ready"], released)
    assert again.changed_files == 0 and again.services == [], again
    for event in opened:
        port, at = event["port"], event["at"]
        assert port not in NEVER_PUBLIC, f"never-public port {port} answered from the internet at {at}"
        # The program's step names are its component's plus the step's: mail-postfix, tls-tls-web.
        step = next(name for name in first.started if name.endswith(f"-{CONFIGURED_BY[port]}"))
        assert port in {p.number for p in public_ports(lab.settings.config)}, f"{port} answered but is not public"
        # The step writes the daemon's files, then starts it: never an answer before the step began.
        configured = first.started[step]
        assert at >= configured, f"port {port} answered {configured - at:.1f} s before the {step} step began"
    assert {e["port"] for e in opened} >= {25, 993}, f"the prober saw no mail port open: {events}"
    # The host settles: no daemon the steps started exits and is started again by systemd's
    # Restart= (Rspamd did, ~50 s after its step, when the step reloaded it mid-start).
    time.sleep(max(0.0, first.finished["mail-rspamd"] + SETTLE_S - time.time()))
    show = "echo $u $(systemctl show -p NRestarts --value $u)"
    restarts = sh(lab, f"for u in {' '.join(SETTLED_UNITS)}; do {show}; done")
    assert restarts.split() == [w for u in SETTLED_UNITS for w in (u, "0")], restarts


def _first_dpkg_install(lab: Lab) -> float:
    """Unix time of the first package the steps installed (dpkg.log after first boot's installs)."""
    # The backup step's restic, or the mail packages step's Postfix when backups are off.
    out = sh(lab, "grep -E ' install (restic|postfix):' /var/log/dpkg.log | head -1 | cut -d' ' -f1,2")
    return calendar.timegm(time.strptime(out.strip(), "%Y-%m-%d %H:%M:%S"))  # the host's clock is UTC
