"""cloud-init user-data for the mail host, rendered from settings (pure: no Pulumi here).

First boot leaves the host in this state, and every later change comes over WireGuard:
an admin user with sudo and SSH keys only (root and passwords off), wg0 up, sshd listening
on the WireGuard address only, nftables from the port policy, fail2ban, unattended-upgrades
and Docker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from components.firewall.policy import nftables_conf
from components.remote.steps import STAGE_ROOT
from components.render import render_in
from settings.stack import StackConfig

HERE = Path(__file__).resolve().parent
WG_INTERFACE = "wg0"

# What the host needs before the first remote step; the lab bakes the same list into its tree.
BASE_PACKAGES: tuple[str, ...] = (
    "ca-certificates",
    "curl",  # sams-postgres.service waits on its container through Docker's socket
    "docker.io",
    "docker-cli",  # trixie splits the client out of docker.io (only recommended there)
    "fail2ban",
    "iproute2",
    "nftables",
    "openssh-server",
    "python3",
    "python3-systemd",  # fail2ban's journal backend
    "sudo",
    "unattended-upgrades",
    "wireguard-tools",
)


@dataclass(frozen=True)
class BootSecrets:
    """Secrets the program generated for this host (kept in Pulumi state)."""

    wireguard_private_key: str
    ssh_host_ed25519_private: str  # OpenSSH format
    ssh_host_ed25519_public: str


def _files(cfg: StackConfig, keys: BootSecrets) -> list[dict[str, str]]:
    wg = cfg.wireguard
    ctx = {
        "admin_user": cfg.admin_user,
        "vpn_address": str(wg.address),
        "vpn_prefix": wg.network.prefixlen,
        "vpn_network": str(wg.network),
        "wg_interface": WG_INTERFACE,
        "wg_port": wg.port,
        "hub_public_key": wg.hub_public_key,
        "hub_endpoint": wg.hub_endpoint,
        "private_key": keys.wireguard_private_key,
        "packages": BASE_PACKAGES,
        "stage_root": STAGE_ROOT,
    }
    templated = [
        ("/etc/ssh/sshd_config.d/10-sams.conf", "0644"),
        ("/etc/systemd/system/ssh.service.d/10-after-wireguard.conf", "0644"),
        (f"/etc/wireguard/{WG_INTERFACE}.conf", "0600"),
        ("/etc/fail2ban/jail.d/sams.local", "0644"),
        ("/etc/apt/apt.conf.d/20auto-upgrades", "0644"),
        ("/etc/apt/apt.conf.d/90sams-lock-timeout", "0644"),
        ("/usr/local/sbin/sams-bootstrap", "0755"),
    ]
    template_of = {f"/etc/wireguard/{WG_INTERFACE}.conf": "etc/wireguard/wg0.conf.j2"}
    files = [
        {
            "path": path,
            "permissions": mode,
            "owner": "root:root",
            "content": render_in(HERE, template_of.get(path, path.lstrip("/") + ".j2"), **ctx),
        }
        for path, mode in templated
    ]
    files.append(
        {"path": "/etc/nftables.conf", "permissions": "0755", "owner": "root:root", "content": nftables_conf(cfg)}
    )
    return files


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the user-data reads like the files it writes."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def user_data(cfg: StackConfig, keys: BootSecrets) -> str:
    """The complete `#cloud-config` document (it carries private keys: treat it as a secret)."""
    doc = {
        "users": [
            {
                "name": cfg.admin_user,
                "groups": ["sudo"],
                "shell": "/bin/bash",
                # Key-only admin: no password exists, so sudo must not ask for one.
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": list(cfg.admin_ssh_keys),
            }
        ],
        "disable_root": True,
        # No `ssh_pwauth`: cloud-init would restart sshd before wg0 exists; 10-sams.conf turns
        # passwords off instead.
        "manage_etc_hosts": "localhost",  # sudo must resolve the host's own name
        # The host key is the program's, so connections can pin it instead of trusting on first use.
        "ssh_deletekeys": True,
        # Only ed25519, which is provided above, so cloud-init generates nothing.
        "ssh_genkeytypes": ["ed25519"],
        "ssh_keys": {
            "ed25519_private": keys.ssh_host_ed25519_private,
            "ed25519_public": keys.ssh_host_ed25519_public,
        },
        "hostname": cfg.hostname.split(".", 1)[0],
        "fqdn": cfg.hostname,
        "prefer_fqdn_over_hostname": True,
        "write_files": _files(cfg, keys),
        "runcmd": [["/usr/local/sbin/sams-bootstrap"]],
    }
    return "#cloud-config\n" + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=4096)


def hub_peer(cfg: StackConfig, *, public_key: str, public_ipv4: str) -> str:
    """The [Peer] section the admin's hub needs for this host."""
    return (
        f"[Peer]\n# {cfg.hostname}\nPublicKey = {public_key}\n"
        f"AllowedIPs = {cfg.wireguard.address}/32\nEndpoint = {public_ipv4}:{cfg.wireguard.port}\n"
    )
