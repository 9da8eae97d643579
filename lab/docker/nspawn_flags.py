"""What `systemd-nspawn -b` needs so that Docker runs inside the lab host.

Measured on the lab machine (Debian 12 host, systemd-nspawn 252, no systemd on
the host, cgroup v1 "hybrid" host, kernel 6.18) booting a Debian 13 tree
(systemd 257, docker.io 26.1.5, containerd 1.7.24, runc 1.1.15), see
README.md beside this file for the evidence and the errors each item avoids.

These are *in addition* to what the lab already passes to boot a trixie tree:
``--register=no --keep-unit``, ``--network-namespace-path=...``,
``--capability=CAP_NET_ADMIN`` (also needed by dockerd: it creates docker0 and
nftables chains; without it dockerd dies with "iptables -t nat -N DOCKER ...
Permission denied"), ``SYSTEMD_NSPAWN_API_VFS_WRITABLE=network`` (also needed
by dockerd: "Enabling IP forwarding failed: open /proc/sys/net/ipv4/ip_forward:
read-only file system") and ``--bind=/dev/net/tun`` (WireGuard; Docker does
not need it).

Usage::

    from lab.docker.nspawn_flags import (
        NSPAWN_DOCKER_ARGS, NSPAWN_DOCKER_ENV, DOCKER_DAEMON_JSON,
        DOCKER_TREE_PACKAGES, host_cgroup_preexec,
    )
    env = {**os.environ, **NSPAWN_DOCKER_ENV}
    subprocess.Popen(["systemd-nspawn", ..., *NSPAWN_DOCKER_ARGS, "-b"], env=env,
                     preexec_fn=host_cgroup_preexec("mail"))
    (tree / "etc/docker/daemon.json").write_text(json.dumps(DOCKER_DAEMON_JSON, indent=2))
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

NSPAWN_DOCKER_ARGS: tuple[str, ...] = (
    # nspawn's default seccomp allow-list refuses these three syscalls with
    # EPERM; --system-call-filter adds them back (one argument, space-separated).
    #  * add_key, keyctl: runc gives every container its own session keyring;
    #    without them `docker run` fails with "unable to join session keyring:
    #    unable to create session key: operation not permitted".
    #  * bpf: on cgroup v2 runc enforces the device allow-list with a
    #    BPF_CGROUP_DEVICE program; without it: "bpf_prog_query(BPF_CGROUP_DEVICE)
    #    failed: operation not permitted".
    # (SYSTEMD_SECCOMP=0 in nspawn's environment also works, by dropping the
    # whole filter; this keeps the rest of the filter in place.)
    "--system-call-filter=add_key keyctl bpf",
)

NSPAWN_DOCKER_ENV: dict[str, str] = {
    # Give the container a pure cgroup v2 tree (/sys/fs/cgroup = its own,
    # writable, delegated subtree of the host's /sys/fs/cgroup/unified) instead
    # of the host's hybrid layout. In hybrid mode nspawn mounts the v1
    # controller hierarchies read-only, dockerd picks cgroup v1 + cgroupfs and
    # every `docker run` fails: "unable to apply cgroup configuration: mkdir
    # /sys/fs/cgroup/cpuset/docker: read-only file system". With v2 dockerd
    # uses the systemd cgroup driver and runs containers as
    # system.slice/docker-<id>.scope. The v2 tree has no controllers on this
    # host (they are all bound to the v1 hierarchies), so docker reports
    # "No memory limit support" etc.: limits (--memory, --cpus) are not
    # enforced in the lab, everything else works. It also matches production:
    # Debian 13 on a VPS is pure cgroup v2.
    "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
    # Already set by the lab for its own reasons; listed because dockerd needs
    # it too: it writes net.ipv4.ip_forward (and bridge sysctls) when it
    # creates docker0, and refuses to start when /proc/sys/net is read-only.
    "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network",
}

# /etc/docker/daemon.json of the lab host. Nothing in it is needed to make
# Docker work (the defaults do), it pins what the lab relies on:
DOCKER_DAEMON_JSON: dict[str, object] = {
    # Fail loudly instead of silently falling back to "vfs" (a full copy of
    # the image per container) if /var/lib/docker is not on a plain
    # filesystem: overlay2 cannot use an overlayfs-backed /var/lib/docker
    # ("driver not supported: overlay2"), see DOCKER_STATE_NOTE.
    "storage-driver": "overlay2",
    # Keep docker0 and any user-defined bridge inside the lab's address plan
    # (198.18.0.0/15) instead of 172.17.0.0/16 and friends. The SAMS
    # PostgreSQL container uses host networking and never touches these.
    "bip": "198.19.255.1/24",
    "default-address-pools": [{"base": "198.19.248.0/22", "size": 24}],
}

# Alternative, also tested end to end: Docker never touches the firewall or
# creates docker0 (no `nft` rules at all in the lab host), for a host whose
# containers all use --network host and whose nftables ruleset is owned by
# SAMS (a `flush ruleset` reload would otherwise wipe Docker's chains).
# Containers without --network host then only get a loopback interface.
# CAP_NET_ADMIN is still required (dockerd fails "failed to create default
# sandbox: operation not permitted" without it, even for --network host).
DOCKER_DAEMON_JSON_HOST_NETWORK_ONLY: dict[str, object] = {
    "storage-driver": "overlay2",
    "bridge": "none",
    "iptables": False,
    "ip6tables": False,
    # without this dockerd still writes net.ipv4.ip_forward at start
    "ip-forward": False,
}

# Packages the lab tree needs (mmdebstrap --include) for this to work.
DOCKER_TREE_PACKAGES: tuple[str, ...] = (
    "docker.io",  # dockerd (26.1.5 in trixie), enables docker.socket/.service
    "docker-cli",  # the `docker` command is only a Recommends of docker.io in trixie
    "containerd",
    "runc",
    "iptables",  # dockerd drives nftables through iptables-nft
    "ca-certificates",
    "postgresql-client-17",  # psql/pg_isready on the lab host, for the checks
)

DOCKER_STATE_NOTE = (
    "If the lab's root is an overlayfs (--overlay, --volatile=overlay), bind a "
    "directory of the host's ext4 that is outside the overlay's lower/upper "
    "trees onto /var/lib/docker (--bind=HOSTDIR:/var/lib/docker); a directory "
    "inside the lower tree fails the same way (overlayfs refuses overlapping "
    "layers)."
)

HOST_CGROUP2_ROOT = Path("/sys/fs/cgroup/unified")


def host_cgroup_preexec(name: str, root: Path = HOST_CGROUP2_ROOT) -> Callable[[], None]:
    """preexec_fn that moves the about-to-exec nspawn into its own host cgroup.

    With SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 and --keep-unit, nspawn splits
    *its own* cgroup into ``supervisor/`` and ``payload/``. Started from the
    host's root cgroup (no systemd on the host) that is ``/supervisor`` and
    ``/payload`` at the top of /sys/fs/cgroup/unified, shared by every nspawn
    started that way: two lab hosts at once would share one cgroup tree.
    Giving each its own ``sams-lab-<name>`` avoids that.
    """
    target = root / f"sams-lab-{name}"

    def _enter() -> None:
        target.mkdir(parents=True, exist_ok=True)
        (target / "cgroup.procs").write_text(f"{os.getpid()}\n")

    return _enter


def remove_host_cgroup(name: str, root: Path = HOST_CGROUP2_ROOT) -> None:
    """After nspawn exited: remove the (now empty) cgroup dirs it left behind."""
    target = root / f"sams-lab-{name}"
    if not target.is_dir():
        return
    for d in sorted((p for p in target.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):  # still busy: leave it
            d.rmdir()
    with contextlib.suppress(OSError):
        target.rmdir()
