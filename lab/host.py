"""Boot the lab host: the trixie tree under ``systemd-nspawn -b`` inside ``sams-host``.

cloud-init is seeded through its NoCloud datasource (files in
/var/lib/cloud/seed/nocloud of the tree, a fresh instance-id per ``up``), and
``wait_cloud_init`` polls ``cloud-init status`` inside the container (via
nsenter into its PID 1) until it has finished.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lab.docker.nspawn_flags import NSPAWN_DOCKER_ARGS
from lab.proc import LabError, alive, kill_pids, read_pid, run, wait_gone
from lab.spec import NAMES, LabSpec, StatePaths

log = logging.getLogger("lab.host")

# All systemd-nspawn options of the lab, in ONE place (lab/docker will extend
# this list for Docker-in-the-container).  The per-run ones (--directory) are
# added by nspawn_argv().
NSPAWN_FLAGS: list[str] = [
    # This host runs no systemd: there is no machined to register with ...
    "--register=no",
    # ... and no systemd to create a scope unit for us: stay in our own cgroup.
    "--keep-unit",
    # Run the tree's own systemd as PID 1, like a real VM boots.
    "--boot",
    # Machine name == the container's hostname until cloud-init sets one.
    f"--machine={NAMES.machine}",
    # Join the lab's host namespace: the container sees eth0 with the public address,
    # the default route via sams-inet, and nothing of this machine's real network.
    f"--network-namespace-path=/run/netns/{NAMES.ns_host}",
    # nftables, wg-quick (ip link/route, sysctls) and fail2ban need CAP_NET_ADMIN;
    # CAP_NET_RAW for ping/raw sockets (in nspawn's default set, listed for clarity).
    "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
    # wireguard-go (the kernel has no wireguard module) creates a TUN device.
    # No device cgroup applies (no systemd on the host), so the bind is enough.
    "--bind=/dev/net/tun",
    # No user namespace: tree files keep real uids, so the host side can read
    # e.g. the generated SSH host keys, and Docker inside works on plain uids.
    "--private-users=no",
    # Leave /etc/resolv.conf and /etc/localtime to the tree and its cloud-init.
    "--resolv-conf=off",
    "--timezone=off",
    # The host has no /var/log/journal to link the container's journal into.
    "--link-journal=no",
    # stdin is not a terminal: copy the console to stdout (= the console log).
    "--console=read-only",
    # Docker inside the host (PostgreSQL runs in it): see lab/docker/nspawn_flags.py.
    *NSPAWN_DOCKER_ARGS,
]

# Environment for systemd-nspawn (also in one place, with reasons).
NSPAWN_ENV: dict[str, str] = {
    # The host mounts cgroups in hybrid mode; give the container a pure cgroup2
    # tree, which Docker inside needs (lab/docker/nspawn_flags.py has the error).
    "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
    # Make /proc/sys/net writable: the host sets ip_forward, wg-quick and
    # nftables touch net sysctls.  Safe: the container has its own netns.
    "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network",
}

# cloud-init settings the lab (playing the cloud provider) puts into the tree.
LAB_CLOUD_CFG = """\
# SAMS lab: written by lab.host.seed (the lab plays the cloud provider)
# Only the NoCloud seed in /var/lib/cloud/seed/nocloud; don't probe other clouds.
datasource_list: [ NoCloud ]
# The provider (lab/netns.py) has already configured eth0 from outside;
# cloud-init's fallback DHCP config must not touch it.
network: {config: disabled}
"""

# The host's resolver in the lab: only the lab DNS, which answers at once or not at all.
LAB_RESOLV_CONF = """\
# SAMS lab: written by lab.host.seed (the lab plays the provider's resolver)
nameserver {server}
# A lost UDP answer is retried after 1 s, not 5 s (the glibc default).
options timeout:1
"""


# The host's mail volume: Postfix's queue and the Maildirs on one size-bounded filesystem, as on a
# real host, where both are on its disk (or on one volume mounted at both places). The tree is a
# directory on this machine's large disk, which no test could fill: a sparse ext4 image, loop-mounted
# here and bound into the container, can be (lab/tests/test_resilience_lab.py fills it).
MAIL_VOLUME_MIB = 8192
# Where each directory of the volume appears in the container.
MAIL_VOLUME_BINDS: tuple[tuple[str, str], ...] = (("mail", "/var/mail"), ("spool", "/var/spool/postfix"))

# Where lab/hypervisor.py is imported from.
REPO_ROOT = Path(__file__).resolve().parent.parent


def nspawn_argv(tree: Path, mail_volume: Path | None = None) -> list[str]:
    binds = [f"--bind={mail_volume}/{sub}:{path}" for sub, path in MAIL_VOLUME_BINDS] if mail_volume else []
    return ["systemd-nspawn", *NSPAWN_FLAGS, *binds, f"--directory={tree}"]


def attach_mail_volume(paths: StatePaths) -> None:
    """Give the host a fresh mail volume, filled with the tree's own /var/mail and Postfix spool
    (owners and modes as the packages made them). A volume already attached is kept (a reboot)."""
    volume = paths.mail_volume
    if os.path.ismount(volume):
        return
    image = paths.mail_volume_image
    image.unlink(missing_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(MAIL_VOLUME_MIB << 20)  # sparse: only what is written takes space here
    # -m 0: no blocks reserved for root, so "free" means the same to root and to the daemons.
    run(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", "sams-mail", str(image)])
    volume.mkdir(parents=True, exist_ok=True)
    run(["mount", "-o", "loop", str(image), str(volume)])
    for sub, path in MAIL_VOLUME_BINDS:
        source = paths.tree / path.lstrip("/")
        if source.is_dir():
            run(["cp", "-a", str(source), str(volume / sub)])
        else:
            (volume / sub).mkdir(mode=0o755)


def detach_mail_volume(paths: StatePaths) -> list[str]:
    """Unmount and delete the mail volume (the container must be stopped)."""
    removed = []
    if os.path.ismount(paths.mail_volume):
        run(["umount", str(paths.mail_volume)])  # mount -o loop frees the loop device with it
        removed.append(f"mail volume {paths.mail_volume}")
    if paths.mail_volume_image.exists():
        paths.mail_volume_image.unlink()
    return removed


def seed(tree: Path, spec: LabSpec, instance_id: str) -> None:
    """Write the NoCloud seed (user-data, meta-data) and the lab's cloud.cfg drop-in."""
    seed_dir = tree / "var/lib/cloud/seed/nocloud"
    seed_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(seed_dir, 0o700)
    (seed_dir / "meta-data").write_text(f"instance-id: {instance_id}\nlocal-hostname: {NAMES.machine}\n")
    ud = seed_dir / "user-data"
    ud.write_text(spec.user_data if spec.user_data.endswith("\n") else spec.user_data + "\n")
    os.chmod(ud, 0o600)
    (tree / "etc/cloud/cloud.cfg.d/90_sams_lab.cfg").write_text(LAB_CLOUD_CFG)
    if spec.dns_zones:
        # The provider's resolver, played by the lab DNS (lab/dns.py); real hosts keep their own.
        resolv = tree / "etc/resolv.conf"
        resolv.unlink(missing_ok=True)  # the tree's copy of the build machine's, or a symlink
        resolv.write_text(LAB_RESOLV_CONF.format(server=spec.inet_ipv4))


def start(paths: StatePaths, timeout: float = 10.0) -> int:
    """Boot the host: lab/hypervisor.py runs systemd-nspawn (again after each reboot) in its own
    session; return nspawn's pid."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **NSPAWN_ENV}
    volume = paths.mail_volume if os.path.ismount(paths.mail_volume) else None
    argv = nspawn_argv(paths.tree, volume)
    log.info("starting: %s", " ".join(argv))
    paths.nspawn_pid.unlink(missing_ok=True)
    paths.console_log.write_bytes(b"")  # one console log per start, appended across reboots
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.hypervisor", str(paths.nspawn_pid), str(paths.console_log), "--", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        cwd=REPO_ROOT,
    )
    paths.hypervisor_pid.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while (pid := read_pid(paths.nspawn_pid)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"lab hypervisor did not start systemd-nspawn (exit {proc.poll()}); see {paths.console_log}")
        time.sleep(0.05)
    return pid


def find_hypervisor_pids(paths: StatePaths) -> list[int]:
    """lab/hypervisor.py processes of this lab (also found if the pid file is lost)."""
    needle = str(paths.nspawn_pid).encode()
    return pids_whose_cmdline(lambda argv: b"lab.hypervisor" in argv and needle in argv)


def power_cut(paths: StatePaths) -> None:
    """Pull the plug: SIGKILL the hypervisor (nothing boots again), the container's PID 1 (the kernel
    then kills every process of the container at once, no shutdown, no unit stopped) and nspawn.
    What the processes wrote but did not fsync is still in this machine's page cache: unlike a
    real power loss, only what no process had written yet is lost. :func:`start` powers it on."""
    nspawns = set(find_nspawn_pids(paths.tree))
    if (pid := read_pid(paths.nspawn_pid)) is not None and alive(pid):
        nspawns.add(pid)
    leaders = [lp for p in nspawns if (lp := leader_pid(p)) is not None]
    hypervisors = find_hypervisor_pids(paths)
    kill_pids(hypervisors, signal.SIGKILL)
    kill_pids(leaders, signal.SIGKILL)
    kill_pids(nspawns, signal.SIGKILL)
    left = wait_gone([*hypervisors, *leaders, *nspawns], 15.0)
    if left:
        raise LabError(f"power cut: processes {left} survived SIGKILL")


def _status_field(pid: int, name: str) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    except FileNotFoundError:
        pass
    return ""


def leader_pid(nspawn_pid: int) -> int | None:
    """The container's PID 1 as seen from here: nspawn's child that is pid 1 in its own pid ns."""
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    for child in children:
        nspid = _status_field(int(child), "NSpid").split()
        if len(nspid) >= 2 and nspid[-1] == "1":
            return int(child)
    return None


def container_exec(leader: int, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """Run *argv* inside the container (all of PID 1's namespaces, its root and cwd)."""
    return subprocess.run(
        ["nsenter", f"--target={leader}", "--all", "--root", "--wd", *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class CloudInitResult:
    status: str  # done | error | disabled | ...
    extended_status: str
    seconds: float
    errors: list[str] = field(default_factory=list)
    recoverable_errors: dict[str, list[str]] = field(default_factory=dict)
    detail: str = ""


def _interesting(path: Path, lines: int, only_problems: bool = False) -> str:
    """Last *lines* lines of a log, without ssh-keygen randomart (and only problems if asked)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no {path})"
    keep = []
    for line in text:
        body = line.split(": ", 1)[-1].strip()
        if body[:1] in ("|", "+") or "randomart" in body:
            continue
        if only_problems and not any(w in line for w in (" WARNING", " ERROR", "Traceback", "Error")):
            continue
        keep.append(line)
    return "\n".join(keep[-lines:])


def _failure(paths: StatePaths, message: str) -> LabError:
    logs = paths.tree / "var/log"
    return LabError(
        f"{message}\n--- problems in {logs}/cloud-init.log ---\n"
        f"{_interesting(logs / 'cloud-init.log', 20, only_problems=True)}"
        f"\n--- last lines of {logs}/cloud-init-output.log ---\n"
        f"{_interesting(logs / 'cloud-init-output.log', 25)}"
        f"\n--- last lines of {paths.console_log} ---\n{_interesting(paths.console_log, 25)}"
    )


def wait_cloud_init(paths: StatePaths, timeout: float = 300.0, allow_degraded: bool = True) -> CloudInitResult:
    """Poll ``cloud-init status`` in the container until it has finished.

    Fails (with the tails of the console log and cloud-init-output.log) if
    nspawn exits, cloud-init reports an error (or a degraded finish when not
    *allow_degraded*), or *timeout* seconds pass.
    """
    start_t = time.monotonic()
    nspawn_pid = read_pid(paths.nspawn_pid)
    if nspawn_pid is None:
        raise LabError("no nspawn pid file: the host was not started")
    last = ""
    while True:
        elapsed = time.monotonic() - start_t
        if not alive(nspawn_pid):
            raise _failure(
                paths,
                f"systemd-nspawn exited while waiting for cloud-init ({elapsed:.1f} s)",
            )
        if elapsed > timeout:
            raise _failure(
                paths,
                f"cloud-init not finished after {timeout:.0f} s (last status: {last or 'none'})",
            )
        leader = leader_pid(nspawn_pid)
        if leader is not None:
            proc = container_exec(leader, ["cloud-init", "status", "--format=json"], timeout=30)
            try:
                data = json.loads(proc.stdout.decode() or "{}")
            except json.JSONDecodeError:
                data = {}
            status = str(data.get("status", ""))
            last = status or proc.stderr.decode(errors="replace").strip()[-200:]
            if status in ("done", "error", "disabled"):
                result = CloudInitResult(
                    status=status,
                    extended_status=str(data.get("extended_status", status)),
                    seconds=time.monotonic() - start_t,
                    errors=[str(e) for e in data.get("errors", [])],
                    recoverable_errors=dict(data.get("recoverable_errors", {})),
                    detail=str(data.get("detail", "")),
                )
                _keep_logs(paths)
                if status == "disabled":
                    raise _failure(
                        paths,
                        "cloud-init is disabled in the container (no NoCloud seed seen?)",
                    )
                if status == "error" or (not allow_degraded and result.extended_status != "done"):
                    raise _failure(
                        paths,
                        f"cloud-init finished with {result.extended_status}: errors={result.errors} "
                        f"recoverable={result.recoverable_errors}",
                    )
                return result
        time.sleep(0.5)


def _keep_logs(paths: StatePaths) -> None:
    """Copy cloud-init's logs out of the tree into logs/ (they outlive ``down``)."""
    for name in ("cloud-init.log", "cloud-init-output.log"):
        src = paths.tree / "var/log" / name
        if src.exists():
            (paths.logs / name).write_bytes(src.read_bytes())


def pids_whose_cmdline(match: Callable[[list[bytes]], bool]) -> list[int]:
    """The processes whose argv (/proc/<pid>/cmdline, split at NULs) `match` accepts."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if argv and match(argv):
            found.append(int(entry))
    return found


def find_nspawn_pids(tree: Path) -> list[int]:
    """systemd-nspawn processes booting *tree* (also finds them if the pid file is lost)."""
    needle = f"--directory={tree}".encode()
    return pids_whose_cmdline(lambda argv: argv[0].endswith(b"systemd-nspawn") and needle in argv)


def stop(paths: StatePaths, timeout: float = 15.0) -> list[str]:
    """Shut the container down: SIGTERM to nspawn (orderly poweroff), then SIGKILL.

    Killing the container's PID 1 makes the kernel kill every process in its
    PID namespace, including ones in other network namespaces (e.g. Docker's).
    """
    # The hypervisor first: it passes SIGTERM on to nspawn and boots nothing again.
    hypervisors = find_hypervisor_pids(paths)
    kill_pids(hypervisors, signal.SIGTERM)
    pids = set(find_nspawn_pids(paths.tree))
    pid = read_pid(paths.nspawn_pid)
    if pid is not None and alive(pid):
        pids.add(pid)
    if not pids:
        kill_pids(wait_gone(hypervisors, 5.0), signal.SIGKILL)
        return [f"hypervisor {sorted(hypervisors)}"] if hypervisors else []
    leaders = [lp for p in pids if (lp := leader_pid(p)) is not None]
    kill_pids(pids, signal.SIGTERM)
    left = wait_gone(pids, timeout)
    if left:
        log.warning("nspawn did not stop in %.0f s; killing the container", timeout)
        kill_pids(leaders, signal.SIGKILL)
        kill_pids(left, signal.SIGKILL)
        left = wait_gone([*left, *leaders], 10.0)
        if left:
            raise LabError(f"could not kill nspawn/container processes {left}")
    left = wait_gone(hypervisors, 10.0)
    kill_pids(left, signal.SIGKILL)
    if wait_gone(left, 5.0):
        raise LabError(f"could not stop the lab hypervisor {left}")
    return [f"nspawn {sorted(pids)}"]
