"""The lab's inputs (:class:`LabSpec`) and its fixed names and directories.

Every address the lab configures comes from a :class:`LabSpec`; the namespace
and interface *names* are fixed here (:data:`NAMES`) so that ``down`` can find
and remove exactly what ``up`` made, even without a spec.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

# Networks the lab must never use: this machine's own uplink and the package
# mirror live there, and a route to them inside the lab would be harmless but a
# route in the root namespace would cut the mirror.  We refuse them outright.
FORBIDDEN_NETWORKS: tuple[ipaddress.IPv4Network, ...] = (
    ipaddress.IPv4Network("203.0.113.0/24"),
    ipaddress.IPv4Network("192.0.2.0/24"),
)
# The lab's "public internet" must live in the benchmarking range.
PUBLIC_RANGE = ipaddress.IPv4Network("198.18.0.0/15")


@dataclass(frozen=True)
class LabSpec:
    """Everything ``lab.up`` needs; produced by the Pulumi program (or the dev fixture)."""

    public_ipv4: str  # host's public address, 198.18.0.10
    public_prefix: int  # 24
    inet_ipv4: str  # the internet namespace's own address (default gateway), 198.18.0.1
    admin_public_ipv4: str  # 198.18.0.2
    vpn_prefix: int  # 24
    vpn_host: str  # host's WireGuard address, 10.100.0.2
    vpn_hub: str  # hub/admin WireGuard address, 10.100.0.1
    wg_port: int  # 51820, host listens on it publicly
    hub_private_key: str  # base64 X25519 of the admin end
    host_public_key: str  # base64 public key of the host's wg0 (host config comes from cloud-init)
    admin_user: str  # e.g. "sams"
    ssh_private_key: Path  # admin's private key file; its .pub was put into user-data
    user_data: str  # complete cloud-init user-data text (#cloud-config ...)
    packages: tuple[str, ...] = ()  # extra packages baked into the tree beyond the bare set (fast path)
    # What the lab's Debian mirror (lab/mirror.py) serves, with dependencies: what the program's
    # cloud-init and steps install; empty = no mirror (the host then installs nothing).
    mirror_packages: tuple[str, ...] = ()
    # The lab DNS (lab/dns.py, NSD at inet_ipv4): (zone, zone file text); empty = no DNS server.
    dns_zones: tuple[tuple[str, str], ...] = ()
    # The independent receiver's address on the internet bridge (lab/receiver.py); "" = none.
    receiver_ipv4: str = ""

    def __post_init__(self) -> None:
        public = ipaddress.IPv4Network(f"{self.inet_ipv4}/{self.public_prefix}", strict=False)
        if not public.subnet_of(PUBLIC_RANGE):
            raise ValueError(f"lab public network {public} must be inside {PUBLIC_RANGE}")
        vpn = ipaddress.IPv4Network(f"{self.vpn_hub}/{self.vpn_prefix}", strict=False)
        for net in (public, vpn):
            for bad in FORBIDDEN_NETWORKS:
                if net.overlaps(bad):
                    raise ValueError(f"lab network {net} overlaps forbidden {bad}")
        for name in ("public_ipv4", "admin_public_ipv4"):
            if ipaddress.IPv4Address(getattr(self, name)) not in public:
                raise ValueError(f"{name}={getattr(self, name)} is not in {public}")
        if ipaddress.IPv4Address(self.vpn_host) not in vpn:
            raise ValueError(f"vpn_host={self.vpn_host} is not in {vpn}")
        if vpn.overlaps(public):
            raise ValueError(f"VPN network {vpn} overlaps public network {public}")
        if len({self.public_ipv4, self.inet_ipv4, self.admin_public_ipv4}) != 3:
            raise ValueError("public_ipv4, inet_ipv4 and admin_public_ipv4 must differ")
        if self.receiver_ipv4 and (
            ipaddress.IPv4Address(self.receiver_ipv4) not in public
            or self.receiver_ipv4 in (self.public_ipv4, self.inet_ipv4, self.admin_public_ipv4)
        ):
            raise ValueError(f"receiver_ipv4={self.receiver_ipv4} must be a free address in {public}")
        if not 0 < self.wg_port < 65536:
            raise ValueError(f"wg_port {self.wg_port} out of range")
        if not self.user_data.startswith("#cloud-config"):
            raise ValueError("user_data must start with '#cloud-config'")


@dataclass(frozen=True)
class Names:
    """Fixed names of everything the lab creates (``down`` relies on them)."""

    ns_inet: str = "sams-inet"  # the internet: a bridge, senders/receivers/scanners
    ns_host: str = "sams-host"  # the mail host's network namespace (nspawn runs here)
    ns_admin: str = "sams-admin"  # admin laptop: WireGuard hub end + SSH client
    bridge: str = "br0"  # bridge inside sams-inet
    veth_inet_host: str = "inet-host"  # sams-inet side of the host's veth
    veth_inet_admin: str = "inet-admin"  # sams-inet side of the admin's veth
    uplink: str = "eth0"  # name of the veth end inside sams-host / sams-admin
    wg_hub: str = "sams-hub"  # WireGuard interface name in sams-admin
    machine: str = "samshost"  # nspawn machine name == container hostname

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.ns_inet, self.ns_host, self.ns_admin)


NAMES = Names()


def cache_dir() -> Path:
    """Where pristine trees are cached (``SAMS_LAB_CACHE``, default /var/cache/sams-lab)."""
    return Path(os.environ.get("SAMS_LAB_CACHE", "/var/cache/sams-lab"))


def state_dir() -> Path:
    """Per-lab state (``SAMS_LAB_STATE``, default /var/lib/sams-lab)."""
    return Path(os.environ.get("SAMS_LAB_STATE", "/var/lib/sams-lab"))


@dataclass(frozen=True)
class StatePaths:
    """Layout of the state directory.

    ``run/`` holds everything belonging to one running lab and is removed by
    ``down``; ``logs/`` (console log, cloud-init output) and ``dev/`` (the dev
    fixture's keys) survive ``down`` and are removed only by ``down --purge``.
    """

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def tree(self) -> Path:
        return self.run / "tree"

    @property
    def nspawn_pid(self) -> Path:
        return self.run / "nspawn.pid"

    @property
    def hypervisor_pid(self) -> Path:
        """lab/hypervisor.py, which boots nspawn again after a reboot."""
        return self.run / "hypervisor.pid"

    @property
    def mail_volume(self) -> Path:
        """Mount point of the host's mail volume (lab/host.py: attach_mail_volume)."""
        return self.run / "mailvol"

    @property
    def mail_volume_image(self) -> Path:
        return self.run / "mailvol.img"

    @property
    def wg_conf(self) -> Path:
        return self.run / "wg" / f"{NAMES.wg_hub}.conf"

    @property
    def ssh_dir(self) -> Path:
        return self.run / "ssh"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def target(self) -> Path:
        """JSON with how to reach the host (user, address, key) for ``lab ssh``."""
        return self.run / "target.json"

    @property
    def run_netns_marker(self) -> Path:
        """Exists if the lab's ``ip netns add`` created the /run/netns mount."""
        return self.run / "created-run-netns-mount"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def console_log(self) -> Path:
        return self.logs / "console.log"

    @property
    def dev(self) -> Path:
        return self.root / "dev"


def state_paths() -> StatePaths:
    return StatePaths(state_dir())
