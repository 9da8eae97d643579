"""The lab's network: three network namespaces joined by veth pairs.

::

    sams-admin                 sams-inet ("the internet")            sams-host
    eth0 198.18.0.2/24 ── inet-admin ─┐                          ┌─ inet-host ── eth0 198.18.0.10/24
    (+ WireGuard hub)                 br0 198.18.0.1/24 ─────────┘               (nspawn container)

Both ends of every veth pair are created directly inside lab namespaces, so
nothing is ever added to the root namespace and no lab traffic can leave the
machine: there is no link between the lab and the root namespace at all.
Addresses come from the :class:`~lab.spec.LabSpec`; names from :data:`~lab.spec.NAMES`.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from lab.proc import LabError, kill_pids, netns_inode, pids_in_netns, run, wait_gone
from lab.spec import NAMES, LabSpec

log = logging.getLogger("lab.netns")

RUN_NETNS = Path("/run/netns")


def run_netns_is_mount() -> bool:
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(RUN_NETNS) for line in mounts)


def existing() -> list[str]:
    """The lab namespaces that currently exist."""
    return [ns for ns in NAMES.namespaces if netns_inode(ns) is not None]


def _ip(*args: str) -> None:
    run(["ip", *args])


def create(spec: LabSpec) -> bool:
    """Create the three namespaces, the bridge and the veths, and address them.

    Returns True if this call made /run/netns a mount point (``ip netns add``
    does that the first time), so ``down`` can undo it.
    """
    if existing():
        raise LabError(f"lab namespaces already exist: {existing()}; run `python -m lab down` first")
    made_mount = not run_netns_is_mount()
    n = NAMES
    pub = spec.public_prefix
    try:
        for ns in n.namespaces:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # the internet: a bridge carrying the inet namespace's own address
        _ip("-n", n.ns_inet, "link", "add", n.bridge, "type", "bridge")
        _ip("-n", n.ns_inet, "addr", "add", f"{spec.inet_ipv4}/{pub}", "dev", n.bridge)
        _ip("-n", n.ns_inet, "link", "set", n.bridge, "up")
        # one veth per attached namespace, both ends born inside lab namespaces
        for peer_ns, inet_end, addr in (
            (n.ns_host, n.veth_inet_host, spec.public_ipv4),
            (n.ns_admin, n.veth_inet_admin, spec.admin_public_ipv4),
        ):
            _ip(
                "link",
                "add",
                inet_end,
                "netns",
                n.ns_inet,
                "type",
                "veth",
                "peer",
                "name",
                n.uplink,
                "netns",
                peer_ns,
            )
            _ip("-n", n.ns_inet, "link", "set", inet_end, "master", n.bridge)
            _ip("-n", n.ns_inet, "link", "set", inet_end, "up")
            _ip("-n", peer_ns, "addr", "add", f"{addr}/{pub}", "dev", n.uplink)
            _ip("-n", peer_ns, "link", "set", n.uplink, "up")
            _ip("-n", peer_ns, "route", "add", "default", "via", spec.inet_ipv4)
    except LabError:
        destroy(made_mount)
        raise
    log.info("network namespaces up: %s", ", ".join(n.namespaces))
    return made_mount


def destroy(unmount_run_netns: bool) -> list[str]:
    """Kill every process in the lab namespaces and delete them (idempotent).

    Deleting a namespace removes its veths and bridge with it.  Returns what
    was removed, for the report.
    """
    removed: list[str] = []
    pids = [p for ns in NAMES.namespaces for p in pids_in_netns(ns) if p != os.getpid()]
    if pids:
        kill_pids(pids, signal.SIGTERM)
        left = wait_gone(pids, 3.0)
        kill_pids(left, signal.SIGKILL)
        left = wait_gone(left, 5.0)
        if left:
            raise LabError(f"processes survive SIGKILL in lab namespaces: {left}")
        removed.append(f"{len(pids)} processes")
    for ns in NAMES.namespaces:
        if netns_inode(ns) is not None:
            run(["ip", "netns", "del", ns])
            removed.append(f"netns {ns}")
    if unmount_run_netns and run_netns_is_mount() and RUN_NETNS.is_dir() and not any(RUN_NETNS.iterdir()):
        run(["umount", str(RUN_NETNS)])
        removed.append(f"mount {RUN_NETNS}")
    return removed


def netns_summary() -> dict[str, list[str]]:
    """Per lab namespace: its interfaces with addresses (``ip -br addr``)."""
    result: dict[str, list[str]] = {}
    for ns in existing():
        text = run(["ip", "-n", ns, "-br", "addr"], check=False).stdout.decode()
        result[ns] = [line for line in text.splitlines() if line.strip()]
    return result
