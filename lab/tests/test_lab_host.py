"""The lab, end to end: the program's own cloud-init boots a Debian 13 host, its steps apply over
WireGuard, and the host is what the program promised. Needs root and the host tools (`./run setup`);
the first run builds the trixie tree from the mirror (~1 min), later runs reuse it.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from components.firewall.policy import NEVER_PUBLIC, public_ports
from lab import program
from lab.session import Lab
from lab.spec import NAMES

pytestmark = pytest.mark.lab


def sh(lab: Lab, command: str) -> str:
    return lab.shell.run(["sudo", "-n", "sh", "-c", command]).stdout.decode()


def tcp(ns: str, address: str, port: int) -> str:
    """'open', 'refused' (the host answered: nothing listens) or 'filtered' (dropped)."""
    code = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(({address!r}, {port}), timeout=2).close(); print('open')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except OSError: print('filtered')\n"
    )
    out = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_cloud_init_finished_cleanly(lab: Lab) -> None:
    status = sh(lab, "cloud-init status --format json")
    assert json.loads(status)["extended_status"] == "done", status
    # Debian 13's own cloud-init (newer than the test machine's) accepts the program's user-data.
    assert "Valid schema user-data" in sh(lab, "cloud-init schema --system 2>&1")


def test_admin_user_has_sudo_by_key(lab: Lab) -> None:
    ident = lab.shell.run(["id"]).stdout.decode()
    assert f"({lab.settings.config.admin_user})" in ident and "(sudo)" in ident
    assert lab.shell.run(["sudo", "-n", "id", "-u"]).stdout.decode().strip() == "0"


def _ssh_as(lab: Lab, user: str, *options: str) -> subprocess.CompletedProcess[str]:
    argv = [
        "ip", "netns", "exec", NAMES.ns_admin, "ssh", "-F", "/dev/null", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={lab.paths.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "ConnectTimeout=5", *options, f"{user}@{lab.spec.vpn_host}", "true",
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_root_login_refused(lab: Lab) -> None:
    result = _ssh_as(lab, "root", "-i", str(lab.spec.ssh_private_key), "-o", "IdentitiesOnly=yes")
    assert result.returncode == 255 and "Permission denied" in result.stderr


def test_password_login_refused(lab: Lab) -> None:
    result = _ssh_as(
        lab, lab.settings.config.admin_user, "-o", "PubkeyAuthentication=no",
        "-o", "PreferredAuthentications=password,keyboard-interactive",
    )  # fmt: skip
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr, result.stderr


def test_sshd_only_on_the_tunnel(lab: Lab) -> None:
    listeners = sh(lab, "ss -Htln 'sport = :22'").split()
    assert f"{lab.spec.vpn_host}:22" in listeners
    assert "0.0.0.0:22" not in listeners and "*:22" not in listeners
    assert tcp(NAMES.ns_inet, lab.spec.public_ipv4, 22) == "filtered"
    assert tcp(NAMES.ns_admin, lab.spec.vpn_host, 22) == "open"


def test_nftables_is_the_declared_policy(lab: Lab) -> None:
    ruleset = json.loads(sh(lab, "nft -j list table inet sams"))["nftables"]
    chain = next(i["chain"] for i in ruleset if "chain" in i and i["chain"]["name"] == "input")
    assert chain["policy"] == "drop"
    public: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for item in ruleset:
        rule = item.get("rule")
        if not rule or rule["chain"] != "input":
            continue
        matches = [e["match"] for e in rule["expr"] if "match" in e]
        on_wg = any(m["left"].get("meta", {}).get("key") == "iifname" for m in matches)
        for m in matches:
            payload = m["left"].get("payload", {})
            if payload.get("field") == "dport" and not on_wg:
                right = m["right"]
                ports = right["set"] if isinstance(right, dict) else [right]
                public[payload["protocol"]].update(int(p) for p in ports)
    declared = public_ports(lab.settings.config)
    assert public["tcp"] == {p.number for p in declared if p.proto == "tcp"}
    assert public["udp"] == {p.number for p in declared if p.proto == "udp"}
    assert not (public["tcp"] | public["udp"]) & NEVER_PUBLIC


def test_firewall_from_the_internet(lab: Lab) -> None:
    """A public port the host accepts answers (here: refused, nothing listens yet); others are dropped."""
    assert tcp(NAMES.ns_inet, lab.spec.public_ipv4, 25) in ("open", "refused")
    for port in (22, 5432, 11334):
        assert tcp(NAMES.ns_inet, lab.spec.public_ipv4, port) == "filtered", port


def test_wireguard_up_with_handshake(lab: Lab) -> None:
    dump = sh(lab, "wg show wg0 dump").splitlines()
    peer = dump[1].split("\t")
    assert peer[0] == program.lab_keys(lab.paths).hub_public_key
    assert int(peer[4]) > 0, "no handshake with the hub"
    assert sh(lab, "systemctl is-active wg-quick@wg0 fail2ban nftables ssh").split() == ["active"] * 4


def test_steps_applied_and_rerun_is_a_no_op(lab: Lab) -> None:
    names = [s.name for s in program.steps_of(lab.run)]
    assert lab.first_apply.ran == names and lab.first_apply.skipped == []
    again = program.apply(lab.run, lab.paths, shell=lab.shell, images=lab.images)
    assert again.ran == [] and again.skipped == names
    # and the files are there, with the modes the program asked for
    for domain in lab.settings.mail.domains:
        mode = sh(lab, f"stat -c %a /etc/dkimkeys/{domain.name}/{lab.settings.config.dkim.selector}.private")
        assert mode.strip() == "600"


def test_unattended_upgrades_and_fail2ban_loaded(lab: Lab) -> None:
    """The files cloud-init wrote are the ones the daemons run with."""
    apt = sh(lab, "apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in apt
    assert 'APT::Periodic::Update-Package-Lists "1";' in apt
    jail = sh(lab, "fail2ban-client get sshd ignoreip")
    assert str(lab.settings.config.wireguard.network) in jail
    assert "nftables" in sh(lab, "fail2ban-client get sshd actions")
