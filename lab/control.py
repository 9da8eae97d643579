"""``up`` / ``down`` / ``status`` of the whole lab (re-exported from ``lab``)."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from lab import acme, backupserver, dns, host, mirror, netns, receiver, rootfs, s3server, sftpserver, webhook, wg
from lab.lock import lab_containers
from lab.proc import LabError, alive, read_pid
from lab.spec import NAMES, LabSpec, StatePaths, state_paths
from lab.ssh import HostShell, SshTarget, pin_host_keys

log = logging.getLogger("lab")


@dataclass
class UpReport:
    """What ``up`` did and how long each phase took (seconds)."""

    tarball: str
    instance_id: str
    cloud_init: str
    timings: dict[str, float] = field(default_factory=dict)


# Where the lab puts Pebble's issuing root on the host (Debian's place for a local CA).
ACME_ROOT_ON_HOST = "/usr/local/share/ca-certificates/sams-lab-acme-root.crt"


def trust_acme_root(shell: HostShell, paths: StatePaths, inet_ipv4: str) -> None:
    """Pebble plays Let's Encrypt, whose roots every Debian host trusts through ca-certificates: the
    lab host trusts Pebble's issuing root the same way, so the host's own TLS clients (Roundcube and
    Radicale logging in at Dovecot and Postfix by the host's name) verify certificates as on a real
    host. Pebble makes a new root at each start: this runs after it started."""
    root_pem = acme.issuer_pems(paths, inet_ipv4).split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    shell.run(
        f"sudo -n install -D -m 0644 /dev/stdin {ACME_ROOT_ON_HOST} && sudo -n update-ca-certificates >/dev/null",
        stdin=root_pem,
        timeout=60,
    )


def up(spec: LabSpec, *, cloud_init_timeout: float = 300.0, paths: StatePaths | None = None) -> UpReport:
    """Bring up a fresh lab for *spec*: network, host (first boot), tunnel, SSH.

    Anything left from an earlier lab is removed first (``down``).  Returns an
    :class:`UpReport` (callers may ignore it); raises :class:`LabError` with the
    relevant log tails on failure, leaving the lab up for inspection.
    """
    paths = paths or state_paths()
    t: dict[str, float] = {}
    t0 = time.monotonic()
    leftovers = down(paths=paths)
    if leftovers:
        log.info("removed leftovers of an earlier lab: %s", ", ".join(leftovers))

    mark = time.monotonic()
    tarball = rootfs.ensure_pristine(spec.packages)
    t["pristine"] = time.monotonic() - mark
    mark = time.monotonic()
    repo = mirror.ensure_repo(tarball, spec.mirror_packages) if spec.mirror_packages else None
    t["mirror_repo"] = time.monotonic() - mark

    mark = time.monotonic()
    paths.run.mkdir(parents=True, exist_ok=True)
    rootfs.fresh_tree(tarball, paths.tree)
    instance_id = f"sams-lab-{uuid.uuid4().hex[:12]}"
    host.seed(paths.tree, spec, instance_id)
    if repo is not None:
        mirror.seed(paths.tree)
    host.attach_mail_volume(paths)
    t["tree"] = time.monotonic() - mark

    if netns.create(spec):
        paths.run_netns_marker.write_text("ip netns add created this mount\n")
    # The internet's services, before the host boots and resolves: DNS, then the receiver.
    mark = time.monotonic()
    dns.start(spec, paths)
    receiver.start(spec, paths, name=f"mx.{dns.RECEIVER_DOMAIN}", domain=dns.RECEIVER_DOMAIN)
    acme.start(spec, paths)  # Pebble: certbot on the host gets its certificates here
    backupserver.start(paths, spec.inet_ipv4)  # sams:backup's repository
    if repo is not None:
        mirror.start(paths, spec.inet_ipv4, repo)  # the provider's Debian mirror: the host's only apt source
    t["internet"] = time.monotonic() - mark

    mark = time.monotonic()
    host.start(paths)
    result = host.wait_cloud_init(paths, timeout=cloud_init_timeout)
    t["boot_to_cloud_init_done"] = time.monotonic() - mark
    log.info(
        "cloud-init %s in %.1f s (%s)",
        result.extended_status,
        result.seconds,
        result.detail,
    )
    if result.recoverable_errors:
        log.warning("cloud-init recoverable errors: %s", result.recoverable_errors)

    target = SshTarget.for_spec(spec, paths)
    pin_host_keys(paths.tree, spec.vpn_host, paths.known_hosts)
    target.save(paths.target)

    mark = time.monotonic()
    wg.up(spec, paths)
    shell = HostShell(target)
    shell.wait_ready(timeout=60)
    shell.open_master()
    t["wg_and_ssh"] = time.monotonic() - mark
    trust_acme_root(shell, paths, spec.inet_ipv4)
    t["total"] = time.monotonic() - t0
    t["boot_to_ssh"] = t["boot_to_cloud_init_done"] + t["wg_and_ssh"]
    report = UpReport(
        str(tarball),
        instance_id,
        result.extended_status,
        {k: round(v, 2) for k, v in t.items()},
    )
    (paths.run / "up-report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    log.info("lab up: %s", report.timings)
    return report


def replace_host(
    spec: LabSpec, paths: StatePaths, *, cloud_init_timeout: float = 300.0, wait_for_cloud_init: bool = True
) -> dict[str, Any]:
    """Lose the host and boot a new one in its place: what a dead disk and `pulumi up` after it do.

    The host's whole tree goes (its disk, every file on it); the lab's internet (DNS, receiver,
    ACME, backup server, mirror), the hub and the program's state (the keystore) stay, so the new
    host boots from the same user-data with the same keys, like a replaced instance. No step counts
    as applied on it. Returns the timings (unix times for `booted_at` and `ssh_at`).

    ``wait_for_cloud_init=False`` returns as soon as SSH answers through the tunnel, as
    pulumi-command would connect: first boot may still be running (`cloud_init_at_ssh` says).
    """
    t0 = time.monotonic()
    with contextlib.suppress(LabError):
        HostShell.from_state(paths).close_master()
    host.stop(paths)
    host.detach_mail_volume(paths)  # the mail volume was on the lost disk too
    rootfs.remove_tree(paths.tree)
    (paths.run / "applied.json").unlink(missing_ok=True)  # lab/program.py's record of what ran there
    rootfs.fresh_tree(rootfs.ensure_pristine(spec.packages), paths.tree)
    host.seed(paths.tree, spec, f"sams-lab-{uuid.uuid4().hex[:12]}")
    if spec.mirror_packages:
        mirror.seed(paths.tree)
    host.attach_mail_volume(paths)
    result: dict[str, Any] = {"booted_at": time.time()}
    mark = time.monotonic()
    host.start(paths)
    shell = HostShell(SshTarget.load(paths.target))
    if wait_for_cloud_init:
        host.wait_cloud_init(paths, timeout=cloud_init_timeout)
        result["boot_to_cloud_init_done"] = round(time.monotonic() - mark, 2)
        pin_host_keys(paths.tree, spec.vpn_host, paths.known_hosts)
        shell.wait_ready(timeout=60)
    else:
        # The host's key is the program's (user-data): the pinned one of the host it replaces.
        shell.wait_ready(timeout=cloud_init_timeout)
        leader = host.leader_pid(read_pid(paths.nspawn_pid) or 0)
        ci = host.container_exec(leader, ["cloud-init", "status"], timeout=10) if leader else None
        result["cloud_init_at_ssh"] = ci.stdout.decode().strip() if ci else ""
    result["ssh_at"] = time.time()
    result["boot_to_ssh"] = round(time.monotonic() - mark, 2)
    shell.open_master()
    if wait_for_cloud_init:
        # The new host trusts the ACME root as the one it replaces did (a real one has Let's
        # Encrypt's in ca-certificates): its webmail and Radicale verify Dovecot's certificate.
        # (Not while first boot may still be making the admin's sudo: that test needs neither.)
        trust_acme_root(shell, paths, spec.inet_ipv4)
    result["total"] = round(time.monotonic() - t0, 2)
    return result


def wait_booted(paths: StatePaths, *, since_pid: int | None = None, timeout: float = 300.0) -> str:
    """Wait for a (re)booted host: a systemd-nspawn other than *since_pid* whose systemd has finished
    starting up; return what ``systemctl is-system-running`` says (running, degraded, ...)."""
    deadline = time.monotonic() + timeout
    last = "no container"
    while time.monotonic() < deadline:
        pid = read_pid(paths.nspawn_pid)
        leader = host.leader_pid(pid) if pid is not None and pid != since_pid and alive(pid) else None
        if leader is not None:
            left = max(1.0, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc = host.container_exec(leader, ["systemctl", "is-system-running", "--wait"], timeout=left)
                last = proc.stdout.decode().strip() or proc.stderr.decode(errors="replace").strip()
                if last not in ("", "offline", "initializing", "starting") and "Failed to connect" not in last:
                    return last
        time.sleep(0.5)
    raise LabError(f"the host did not finish booting in {timeout:.0f} s (last: {last}); see {paths.console_log}")


def _reconnect(paths: StatePaths, timeout: float) -> HostShell:
    shell = HostShell.from_state(paths)
    shell.wait_ready(timeout=timeout)
    shell.open_master()
    return shell


def reboot(paths: StatePaths, *, timeout: float = 300.0) -> str:
    """``systemctl reboot`` on the host, as its admin would; the hypervisor boots it again. Returns
    ``systemctl is-system-running`` once it is up, with SSH through the tunnel working again."""
    before = read_pid(paths.nspawn_pid)
    shell = HostShell.from_state(paths)
    with contextlib.suppress(subprocess.TimeoutExpired):  # the session may die with sshd
        shell.run(["sudo", "-n", "systemctl", "reboot"], check=False, timeout=30)
    shell.close_master()
    state = wait_booted(paths, since_pid=before, timeout=timeout)
    _reconnect(paths, timeout=120)
    return state


def power_cycle(paths: StatePaths, *, timeout: float = 300.0) -> str:
    """A hard power-off (lab/host.py: power_cut) and power-on; returns ``systemctl
    is-system-running`` once the host is up again, with SSH through the tunnel working."""
    HostShell.from_state(paths).close_master()  # its TCP peer dies without a word
    host.power_cut(paths)
    host.start(paths)
    state = wait_booted(paths, timeout=timeout)
    _reconnect(paths, timeout=120)
    return state


def down(*, purge: bool = False, paths: StatePaths | None = None) -> list[str]:
    """Remove everything the lab made, and nothing else; idempotent.

    Order: SSH master, WireGuard hub, container (orderly, then killed), every
    remaining process in the lab namespaces, the namespaces (their veths and
    bridge go with them), /run/netns if the lab mounted it, wireguard-go's stale
    socket, the tree copy (``run/``).  ``purge`` also removes logs and dev keys.
    """
    paths = paths or state_paths()
    removed: list[str] = []
    if paths.target.exists():
        with contextlib.suppress(LabError):
            HostShell.from_state(paths).close_master()
    removed += wg.down(paths)
    removed += host.stop(paths)
    removed += host.detach_mail_volume(paths)
    removed += acme.stop(paths)
    removed += backupserver.stop(paths)
    removed += s3server.stop(paths)  # started by the backup tests, not by up
    removed += sftpserver.stop(paths)  # likewise
    removed += webhook.stop(paths)  # started by the monitoring test, not by up
    removed += mirror.stop(paths)
    removed += receiver.stop(paths)
    removed += dns.stop(paths)
    removed += netns.destroy(unmount_run_netns=paths.run_netns_marker.exists())
    removed += wg.cleanup_uapi()
    if paths.run.exists():
        if paths.tree.exists():
            rootfs.remove_tree(paths.tree)
        shutil.rmtree(paths.run)
        removed.append(f"state {paths.run}")
    if purge and paths.root.exists():
        shutil.rmtree(paths.root)
        removed.append(f"state {paths.root}")
    return removed


def clear_leftovers() -> list[str]:
    """Remove what a dead lab left behind (namespaces, hub socket); refuse if a lab host runs.

    Call it holding :func:`machine_lock`: then no other run is building or using a lab, so
    namespaces without a container are a killed run's leftovers, while a running container
    is someone's lab (``./run lab`` leaves it up on purpose) and is not ours to remove.
    """
    running = lab_containers()
    if running:
        raise LabError(
            f"a lab host is running (systemd-nspawn pid {', '.join(map(str, running))}, "
            "e.g. from `./run lab`): `python -m lab down` first"
        )
    removed = netns.destroy(unmount_run_netns=False)
    removed += wg.cleanup_uapi()
    for item in removed:
        log.warning("removed a dead lab's leftover: %s", item)
    return removed


def status(paths: StatePaths | None = None) -> dict[str, Any]:
    """What is running: namespaces, container, cloud-init, tunnel, SSH target."""
    paths = paths or state_paths()
    info: dict[str, Any] = {
        "state_dir": str(paths.root),
        "namespaces": netns.netns_summary(),
    }
    pid = read_pid(paths.nspawn_pid)
    nspawn_pids = host.find_nspawn_pids(paths.tree)
    if pid is not None and alive(pid) and pid not in nspawn_pids:
        nspawn_pids.append(pid)
    container: dict[str, Any] = {"nspawn_pids": nspawn_pids}
    if nspawn_pids:
        leader = host.leader_pid(nspawn_pids[0])
        container["leader_pid"] = leader
        if leader is not None:
            ci = host.container_exec(leader, ["cloud-init", "status"], timeout=10)
            container["cloud_init"] = ci.stdout.decode().strip()
            sr = host.container_exec(leader, ["systemctl", "is-system-running"], timeout=10)
            container["system"] = sr.stdout.decode().strip()
    info["container"] = container
    info["wireguard"] = wg.show() if NAMES.ns_admin in info["namespaces"] else ""
    info["internet"] = {
        "dns_pid": dns.running(paths),
        "receiver_pid": receiver.running(paths),
        "acme_pid": acme.running(paths),
        "mirror_pid": mirror.running(paths),
    }
    if paths.target.exists():
        info["ssh_target"] = json.loads(paths.target.read_text())
    info["running"] = bool(info["namespaces"] or nspawn_pids)
    return info
