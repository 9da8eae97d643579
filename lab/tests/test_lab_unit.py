"""Fast checks of the lab's pure parts (no root, no network, no processes)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab import host, hypervisor, rootfs, wg
from lab.lock import machine_lock
from lab.proc import LabError
from lab.spec import NAMES, LabSpec, StatePaths
from lab.ssh import HostShell, SshTarget

SPEC = LabSpec(
    public_ipv4="198.18.0.10",
    public_prefix=24,
    inet_ipv4="198.18.0.1",
    admin_public_ipv4="198.18.0.2",
    vpn_prefix=24,
    vpn_host="10.100.0.2",
    vpn_hub="10.100.0.1",
    wg_port=51820,
    hub_private_key="aHViLXByaXZhdGUta2V5LWZvci10ZXN0cy1vbmx5LTA=",
    host_public_key="aG9zdC1wdWJsaWMta2V5LWZvci10ZXN0cy1vbmx5LTA=",
    admin_user="sams",
    ssh_private_key=Path("/nonexistent/key"),
    user_data="#cloud-config\n",
)


@pytest.mark.parametrize(
    "change",
    [
        {"inet_ipv4": "192.0.2.1", "public_ipv4": "192.0.2.10", "admin_public_ipv4": "192.0.2.2"},
        {"inet_ipv4": "203.0.113.1", "public_ipv4": "203.0.113.10", "admin_public_ipv4": "203.0.113.2"},
        {"vpn_hub": "192.0.2.1", "vpn_host": "192.0.2.2"},
        {"public_ipv4": "198.18.1.10"},  # not in the public /24
        {"vpn_host": "198.18.0.20"},  # VPN address outside the VPN net
        {"user_data": "#!/bin/sh\n"},
    ],
)
def test_spec_rejects_unsafe_or_inconsistent(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(SPEC, **change)


def test_cache_key_depends_on_packages_only_as_a_set() -> None:
    a = rootfs.cache_key(rootfs.package_set(["postfix", "dovecot-core"]))
    b = rootfs.cache_key(rootfs.package_set(["dovecot-core", "postfix", "postfix"]))
    c = rootfs.cache_key(rootfs.package_set([]))
    assert a == b != c
    assert rootfs.cache_key(rootfs.package_set([]), suite="forky") != c
    with pytest.raises(ValueError):
        rootfs.package_set(["bad name"])


def test_hub_config_points_at_the_public_endpoint() -> None:
    text = wg.hub_config(SPEC)
    assert f"Address = {SPEC.vpn_hub}/{SPEC.vpn_prefix}" in text
    assert f"Endpoint = {SPEC.public_ipv4}:{SPEC.wg_port}" in text
    assert f"AllowedIPs = {SPEC.vpn_host}/32" in text


def test_nspawn_flags_join_the_host_namespace() -> None:
    argv = host.nspawn_argv(Path("/x/tree"))
    assert f"--network-namespace-path=/run/netns/{NAMES.ns_host}" in argv
    assert "--register=no" in argv and "--keep-unit" in argv and "--boot" in argv
    assert argv[-1] == "--directory=/x/tree"
    assert host.NSPAWN_ENV["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] == "1"


def test_seed_writes_nocloud_files(tmp_path: Path) -> None:
    (tmp_path / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    host.seed(tmp_path, SPEC, "iid-1")
    seed = tmp_path / "var/lib/cloud/seed/nocloud"
    assert (seed / "meta-data").read_text().startswith("instance-id: iid-1\n")
    assert (seed / "user-data").read_text() == SPEC.user_data
    assert "NoCloud" in (tmp_path / "etc/cloud/cloud.cfg.d/90_sams_lab.cfg").read_text()


def test_ssh_goes_through_the_admin_namespace_key_only(tmp_path: Path) -> None:
    shell = HostShell(SshTarget.for_spec(SPEC, StatePaths(tmp_path)))
    argv = shell.ssh_argv()
    assert argv[:4] == ["ip", "netns", "exec", NAMES.ns_admin]
    assert argv[-1] == SPEC.vpn_host
    assert "StrictHostKeyChecking=yes" in argv and "PasswordAuthentication=no" in argv


def test_machine_lock_waits_for_a_holder_and_names_it(tmp_path: Path) -> None:
    lock = tmp_path / "lab.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from lab.lock import machine_lock\n"
            f"with machine_lock(timeout=5, path=Path({str(lock)!r})):\n"
            "    print('held', flush=True); time.sleep(3)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LabError, match=rf"holds {lock} \({holder.pid} "), machine_lock(timeout=0.5, path=lock):
            pass
        start = time.monotonic()
        with machine_lock(timeout=30, path=lock):
            waited = time.monotonic() - start
            assert lock.read_text().startswith(f"{os.getpid()} ")
        assert 1.0 < waited < 10, waited
    finally:
        holder.kill()
        holder.wait()
    # A holder killed outright does not leave the lock held.
    killed = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pathlib import Path; from lab.lock import machine_lock\n"
            f"with machine_lock(timeout=5, path=Path({str(lock)!r})):\n"
            "    print('held', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert killed.stdout is not None and killed.stdout.readline().strip() == "held"
    killed.kill()
    killed.wait()
    with machine_lock(timeout=1, path=lock):
        pass


def test_bare_tree_has_nothing_of_sams() -> None:
    """The default tree is a cloud image's package set: SAMS's packages come from the lab mirror."""
    from cloudinit import BASE_PACKAGES as FIRST_BOOT
    from components.mail.services import MAIL_PACKAGES
    from lab import program

    bare = set(rootfs.package_set(()))
    assert {"cloud-init", "openssh-server", "sudo", "ca-certificates", "python3"} <= bare
    sams = (set(FIRST_BOOT) | set(MAIL_PACKAGES)) - {"ca-certificates", "curl", "iproute2", "python3", "sudo",
                                                     "openssh-server", "unattended-upgrades", "openssl"}  # fmt: skip
    assert not sams & bare, sorted(sams & bare)
    assert sams <= set(program.STACK_PACKAGES)


def test_tree_choice_is_bare_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from lab import program

    monkeypatch.delenv(program.TREE_ENV, raising=False)
    assert not program.baked_tree()
    monkeypatch.setenv(program.TREE_ENV, "baked")
    assert program.baked_tree()
    monkeypatch.setenv(program.TREE_ENV, "cached")
    with pytest.raises(LabError, match="SAMS_LAB_TREE='cached'"):
        program.baked_tree()


def test_mirror_seed_points_apt_only_at_the_lab_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lab import dns, mirror

    monkeypatch.setenv("SAMS_LAB_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    (tree / "etc/apt/sources.list.d").mkdir(parents=True)
    (tree / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    (tree / "etc/apt/sources.list").write_text("deb http://deb.debian.org/debian trixie main\n")
    (tree / "etc/apt/sources.list.d/other.list").write_text("deb http://example.org/ x y\n")
    mirror.seed(tree)
    assert not (tree / "etc/apt/sources.list").exists()
    assert [p.name for p in (tree / "etc/apt/sources.list.d").iterdir()] == ["debian.sources"]
    sources = (tree / mirror.SOURCES.lstrip("/")).read_text()
    assert f"URIs: http://{dns.MIRROR}/debian\n" in sources and f"Signed-By: {mirror.KEYRING}\n" in sources
    key = (tree / mirror.KEYRING.lstrip("/")).read_text()
    assert key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert "preserve_sources_list: true" in (tree / "etc/cloud/cloud.cfg.d/91_sams_lab_mirror.cfg").read_text()
    assert any(r.name == dns.MIRROR and r.type == "A" for r in dns.lab_records(
        hostname="mail.sams.test", public_ipv4="198.18.0.10", inet_ipv4="198.18.0.1", receiver_ipv4="198.18.0.20"
    ))  # fmt: skip
    # no gpg-agent of the key's generation is left running
    agents = subprocess.run(["pgrep", "-f", f"gpg-agent --homedir {tmp_path}"], capture_output=True, check=False)
    assert agents.returncode == 1, agents.stdout


def test_hypervisor_boots_again_after_a_reboot_only(tmp_path: Path) -> None:
    """nspawn's exit status 133 (a reboot inside) starts it again; any other status ends the loop."""
    boots = tmp_path / "boots"
    # A stand-in for systemd-nspawn: "reboots" twice, then powers off with status 0.
    fake = ["sh", "-c", f'echo x >> {boots}; [ "$(wc -l < {boots})" -ge 3 ] && exit 0; exit 133']
    status = hypervisor.supervise(tmp_path / "nspawn.pid", tmp_path / "console.log", fake)
    assert status == 0 and boots.read_text().count("x") == 3
    assert int((tmp_path / "nspawn.pid").read_text()) > 0
    assert (tmp_path / "console.log").read_text().count("lab hypervisor: boot") == 3
    fake = ["sh", "-c", "exit 1"]  # a crash is not a reboot
    assert hypervisor.supervise(tmp_path / "nspawn.pid", tmp_path / "console.log", fake) == 1
