"""DEVELOPMENT FIXTURE -- the lead will replace this with the Pulumi program's real user-data.

It exists only so the lab's whole path (tree -> nspawn -> cloud-init ->
WireGuard -> SSH) can be proven before the program produces its own
``LabSpec``.  It generates throw-away keys (kept in ``$SAMS_LAB_STATE/dev/``
and reused across ``up``s) and a minimal ``#cloud-config`` that only:

* creates the admin user with passwordless sudo and the dev SSH key,
* writes /etc/wireguard/wg0.conf and enables ``wg-quick@wg0``,
* makes sshd listen only on the WireGuard address (key-only).

No nftables, fail2ban or unattended-upgrades configuration: that is the
program's job.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lab.spec import LabSpec, StatePaths, state_paths

# Addresses of the dev lab (198.18.0.0/15 "public" range; never 192.0.2/24 or 203.0.113/24).
PUBLIC_IPV4 = "198.18.0.10"
PUBLIC_PREFIX = 24
INET_IPV4 = "198.18.0.1"
ADMIN_PUBLIC_IPV4 = "198.18.0.2"
VPN_PREFIX = 24
VPN_HOST = "10.100.0.2"
VPN_HUB = "10.100.0.1"
WG_PORT = 51820
ADMIN_USER = "sams"


def _wg_keypair(directory: Path, name: str) -> tuple[str, str]:
    priv_file = directory / f"{name}.wg.key"
    if not priv_file.exists():
        key = subprocess.run(["wg", "genkey"], capture_output=True, check=True).stdout.decode().strip()
        fd = os.open(priv_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
    private = priv_file.read_text().strip()
    public = subprocess.run(["wg", "pubkey"], input=private.encode(), capture_output=True,
                            check=True).stdout.decode().strip()
    return private, public


def _ssh_key(directory: Path) -> Path:
    key = directory / "admin_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sams-lab-dev", "-f", str(key)],
                       check=True)
    return key


def user_data(admin_user: str, ssh_pubkey: str, host_wg_private: str, hub_wg_public: str,
              vpn_host: str, vpn_hub: str, vpn_prefix: int, wg_port: int) -> str:
    """The minimal dev ``#cloud-config`` (see module docstring)."""
    return f"""#cloud-config
# SAMS lab DEVELOPMENT FIXTURE (lab/dev_userdata.py); the program's user-data replaces it.
users:
  - name: {admin_user}
    groups: [sudo]
    shell: /bin/bash
    lock_passwd: true
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    ssh_authorized_keys:
      - {ssh_pubkey}
disable_root: true
ssh_pwauth: false
write_files:
  - path: /etc/wireguard/wg0.conf
    permissions: "0600"
    content: |
      [Interface]
      PrivateKey = {host_wg_private}
      Address = {vpn_host}/{vpn_prefix}
      ListenPort = {wg_port}

      [Peer]
      PublicKey = {hub_wg_public}
      AllowedIPs = {vpn_hub}/32
  - path: /etc/ssh/sshd_config.d/10-sams-lab-dev.conf
    content: |
      ListenAddress {vpn_host}
      PasswordAuthentication no
      KbdInteractiveAuthentication no
      PermitRootLogin no
  - path: /etc/systemd/system/ssh.service.d/10-after-wg0.conf
    content: |
      [Unit]
      Wants=wg-quick@wg0.service
      After=wg-quick@wg0.service
runcmd:
  - [systemctl, daemon-reload]
  - [systemctl, enable, --now, wg-quick@wg0]
  - [systemctl, restart, ssh]
"""


def dev_spec(paths: StatePaths | None = None, packages: tuple[str, ...] = ()) -> LabSpec:
    """A complete :class:`LabSpec` for development, keys generated (once) under ``state/dev``."""
    paths = paths or state_paths()
    d = paths.dev
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    host_priv, host_pub = _wg_keypair(d, "host")
    hub_priv, hub_pub = _wg_keypair(d, "hub")
    key = _ssh_key(d)
    ssh_pub = key.with_suffix(".pub").read_text().strip()
    return LabSpec(
        public_ipv4=PUBLIC_IPV4,
        public_prefix=PUBLIC_PREFIX,
        inet_ipv4=INET_IPV4,
        admin_public_ipv4=ADMIN_PUBLIC_IPV4,
        vpn_prefix=VPN_PREFIX,
        vpn_host=VPN_HOST,
        vpn_hub=VPN_HUB,
        wg_port=WG_PORT,
        hub_private_key=hub_priv,
        host_public_key=host_pub,
        admin_user=ADMIN_USER,
        ssh_private_key=key,
        user_data=user_data(ADMIN_USER, ssh_pub, host_priv, hub_pub, VPN_HOST, VPN_HUB, VPN_PREFIX, WG_PORT),
        packages=packages,
    )
