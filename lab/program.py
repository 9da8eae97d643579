"""The lab's top half: the real SAMS program decides what the lab host is and what runs on it.

1. `lab_run()` runs `__main__.py` for the `lab` stack under Pulumi's mocks, with the lab's own
   admin SSH key and WireGuard hub key as config overrides, and with generated values (the
   host's keys, DKIM keys, passwords) kept in a KeyStore so they survive between applies the way
   Pulumi state would.
2. `spec_from_run()` turns its outputs into a LabSpec: the user-data is the program's
   `hostUserData`, the host's WireGuard key and address are the program's.
3. `apply()` replays the program's remote steps (CopyToRemote + Command) over SSH through the
   tunnel, in registration order (a dependency order: Pulumi registers a resource only after
   everything it depends on), skipping steps whose inputs did not change since the last apply.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import mockrun
from cloudinit import BASE_PACKAGES
from components.backup.plan import BACKUP_PACKAGES, SFTP_PACKAGES
from components.dav.plan import PACKAGES as DAV_PACKAGES
from components.journal.plan import PACKAGES as JOURNAL_PACKAGES
from components.mail.services import CLAMAV_PACKAGES, MAIL_PACKAGES, RELAY_SASL_PACKAGES
from components.monitoring.plan import PACKAGES as MONITORING_PACKAGES
from components.webmail.plan import PACKAGES as WEBMAIL_PACKAGES
from lab import acme, backupserver, dns
from lab.proc import LabError
from lab.spec import LabSpec, StatePaths
from lab.ssh import HostShell
from settings import Settings, load

STACK = "lab"
# The lab's own "internet" subnet around the host's public address.
PUBLIC_PREFIX = 24
# The independent receiver's host number on the lab's internet (198.18.0.20).
RECEIVER_HOST = 20
# Every package the program's cloud-init and steps install, with the options lab tests turn on
# (ClamAV, SASL for a relay login, SFTP backups, journal forwarding): what the lab's Debian mirror serves. A step whose
# list misses a package finds it nowhere, as on a VPS it would find it missing after install.
STACK_PACKAGES = (
    *BASE_PACKAGES,
    *MAIL_PACKAGES,
    *RELAY_SASL_PACKAGES,
    *CLAMAV_PACKAGES,
    *BACKUP_PACKAGES,
    *SFTP_PACKAGES,
    *DAV_PACKAGES,
    *MONITORING_PACKAGES,
    *JOURNAL_PACKAGES,
    *WEBMAIL_PACKAGES,
)
# SAMS_LAB_TREE=baked: the explicitly named fast path, every package baked into the tree so no
# install runs (first boot and the steps find them installed). The default is the bare tree.
TREE_ENV = "SAMS_LAB_TREE"


def baked_tree() -> bool:
    value = os.environ.get(TREE_ENV, "bare")
    if value not in ("bare", "baked"):
        raise LabError(f"{TREE_ENV}={value!r}: expected 'bare' (the default) or 'baked'")
    return value == "baked"


BUILD_IMAGE = Path(__file__).resolve().parent / "docker" / "build_postgres_image.sh"


@dataclass(frozen=True)
class LabKeys:
    ssh_private_key: Path
    ssh_public_key: str
    hub_private_key: str
    hub_public_key: str
    acme_server_ca: str = ""  # PEM: the CA of the lab's ACME server (lab/acme.py), sams:acme.serverCa
    backup_password: str = ""  # the host's login on the lab's backup server (lab/backupserver.py)


def lab_keys(paths: StatePaths) -> LabKeys:
    """The admin's SSH key and the hub's WireGuard key, made once per state directory."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    directory = paths.root / "keys"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ssh_key = directory / "admin_ed25519"
    if not ssh_key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sams-lab-admin", "-f", str(ssh_key)], check=True
        )
    hub = directory / "hub.key"
    if not hub.exists():
        raw = X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        hub.write_text(base64.b64encode(raw).decode() + "\n")
        hub.chmod(0o600)
    private = hub.read_text().strip()
    from components.keys.derive import wireguard_public_key

    return LabKeys(
        ssh_key,
        (directory / "admin_ed25519.pub").read_text().strip(),
        private,
        wireguard_public_key(private),
        acme.server_ca(paths),
        backupserver.password(paths),
    )


def _config(keys: LabKeys) -> dict[str, str]:
    cfg = mockrun.stack_config(STACK)
    wireguard = json.loads(cfg["sams:wireguard"])
    wireguard["hubPublicKey"] = keys.hub_public_key
    cfg["sams:wireguard"] = json.dumps(wireguard)
    cfg["sams:adminSshKeys"] = json.dumps([keys.ssh_public_key])
    if keys.acme_server_ca:
        cfg.update(acme.stack_overrides(cfg, keys.acme_server_ca))
        # The backup server's certificate comes from the same CA (acme.issue).
        backup = json.loads(cfg.get("sams:backup", "{}"))
        backup["serverCa"] = keys.acme_server_ca
        cfg["sams:backup"] = json.dumps(backup)
    if keys.backup_password:
        cfg["sams:backupKeyId"] = backupserver.USER
        cfg["sams:backupKeySecret"] = keys.backup_password
    return cfg


def lab_settings(keys: LabKeys) -> Settings:
    return load(STACK, _config(keys), mockrun.PROJECT_DIR)


def lab_run(paths: StatePaths, keys: LabKeys, overrides: dict[str, Any] | None = None) -> mockrun.Run:
    """`overrides` patch the lab's config (values as in YAML), e.g. a `sams:dkim` rotation."""
    store = mockrun.KeyStore(paths.root / "keystore.json")
    cfg = _config(keys)
    cfg.update({k: mockrun.encode_config(v) for k, v in (overrides or {}).items()})
    # Steps are staged in this lab's own state directory, not the checkout's .sams/build/lab: a
    # test or preview of the lab stack running meanwhile in the checkout restages that one with
    # other values (no ACME server CA, other keys), and the apply would ship its files.
    previous = os.environ.get("SAMS_BUILD_DIR")
    os.environ["SAMS_BUILD_DIR"] = str(paths.root / "build")
    try:
        return mockrun.run(STACK, config=cfg, store=store)
    finally:
        if previous is None:
            del os.environ["SAMS_BUILD_DIR"]
        else:
            os.environ["SAMS_BUILD_DIR"] = previous


def spec_from_run(run: mockrun.Run, settings: Settings, keys: LabKeys) -> LabSpec:
    cfg = settings.config
    public = IPv4Network(f"{run.outputs['publicIpv4']}/{PUBLIC_PREFIX}", strict=False)
    inet, receiver = str(public.network_address + 1), str(public.network_address + RECEIVER_HOST)
    return LabSpec(
        public_ipv4=run.outputs["publicIpv4"],
        public_prefix=PUBLIC_PREFIX,
        inet_ipv4=inet,
        admin_public_ipv4=str(public.network_address + 2),
        vpn_prefix=cfg.wireguard.network.prefixlen,
        vpn_host=run.outputs["wireguardAddress"],
        vpn_hub=str(cfg.wireguard.hub_address),
        wg_port=cfg.wireguard.port,
        hub_private_key=keys.hub_private_key,
        host_public_key=run.outputs["wireguardPublicKey"],
        admin_user=cfg.admin_user,
        ssh_private_key=keys.ssh_private_key,
        user_data=run.outputs["hostUserData"],
        packages=tuple(sorted(set(STACK_PACKAGES))) if baked_tree() else (),
        mirror_packages=tuple(sorted(set(STACK_PACKAGES))),
        # The program's published records (its DnsRecord inputs) plus the lab's own zones.
        dns_zones=dns.zones_for_run(
            run,
            hostname=cfg.hostname,
            public_ipv4=run.outputs["publicIpv4"],
            prefix=PUBLIC_PREFIX,
            inet_ipv4=inet,
            receiver_ipv4=receiver,
        ),
        receiver_ipv4=receiver,
    )


@dataclass(frozen=True)
class Step:
    name: str
    copy: mockrun.Captured
    command: mockrun.Captured

    def fingerprint(self) -> str:
        """What Pulumi would diff: every input of both resources (secrets included, hashed)."""
        blob = json.dumps([self.copy.inputs, self.command.inputs], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def steps_of(run: mockrun.Run) -> list[Step]:
    copies = {r.name.removesuffix("-copy"): r for r in run.of_type("command:remote:CopyToRemote")}
    steps = []
    for cmd in run.of_type("command:remote:Command"):
        name = cmd.name.removesuffix("-apply")
        if name not in copies:
            raise LabError(f"step {name}: a Command without its CopyToRemote")
        steps.append(Step(name, copies[name], cmd))
    return steps


@dataclass
class ApplyReport:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    changed_files: int = 0
    services: list[str] = field(default_factory=list)
    seconds: float = 0.0
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)  # each step's last JSON line
    started: dict[str, float] = field(default_factory=dict)  # unix time each step that ran began
    finished: dict[str, float] = field(default_factory=dict)  # ... and returned


def applied_path(paths: StatePaths) -> Path:
    """Last-applied fingerprints; lives in run/, so a fresh host (lab up) starts with none."""
    return paths.run / "applied.json"


def image_tarball(image: str) -> Path:
    """The lab's stand-in for a registry: images it builds from Debian packages, cached."""
    if image != "sams/postgres:17-trixie":
        raise LabError(f"the lab cannot pull {image!r}: it builds only sams/postgres:17-trixie")
    cache = Path(os.environ.get("SAMS_LAB_CACHE", "/var/cache/sams-lab"))
    tarball = cache / "sams-postgres-17-trixie.tar"
    if not tarball.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", str(BUILD_IMAGE), str(tarball)], check=True, stdout=subprocess.DEVNULL)
    return tarball


def provide_image(shell: HostShell, image: str) -> None:
    """Load the image into the host's Docker unless it is there (what `docker pull` does for real)."""
    if shell.run(["sudo", "-n", "docker", "image", "inspect", image], check=False).returncode == 0:
        return
    tarball = image_tarball(image)
    shell.copy_to(tarball, "/tmp/sams-image.tar")
    shell.run(["sudo", "-n", "sh", "-c", "docker load -q -i /tmp/sams-image.tar && rm /tmp/sams-image.tar"])


def apply(
    run: mockrun.Run, paths: StatePaths, *, shell: HostShell | None = None, images: tuple[str, ...] = ()
) -> ApplyReport:
    """Replay the run's steps; first provide `images` (the stack's container images) to the host."""
    shell = shell or HostShell.from_state(paths)
    for image in images:
        provide_image(shell, image)
    state_file = applied_path(paths)
    applied: dict[str, str] = json.loads(state_file.read_text()) if state_file.exists() else {}
    report = ApplyReport()
    start = time.monotonic()
    for step in steps_of(run):
        fp = step.fingerprint()
        if applied.get(step.name) == fp:
            report.skipped.append(step.name)
            print(f"  = {step.name}: unchanged")
            continue
        report.started[step.name] = time.time()
        source = step.copy.inputs["source"]["path"]
        shell.copy_to(source, step.copy.inputs["remotePath"])
        proc = shell.run(
            step.command.inputs["create"],
            stdin=step.command.inputs.get("stdin"),
            environment=step.command.inputs.get("environment"),
            check=False,
        )
        out = proc.stdout.decode(errors="replace").strip()
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            raise LabError(f"step {step.name} failed (exit {proc.returncode}):\n{out}\n{err}")
        summary = _summary(out)
        report.finished[step.name] = time.time()
        report.ran.append(step.name)
        report.summaries[step.name] = summary
        report.changed_files += len(summary.get("changed", []))
        report.services += summary.get("services", [])
        took = report.finished[step.name] - report.started[step.name]
        changed = len(summary.get("changed", []))
        print(f"  + {step.name} ({took:.1f} s): {changed} files changed, services {summary.get('services', [])}")
        applied[step.name] = fp
        state_file.write_text(json.dumps(applied, indent=1, sort_keys=True))
    report.seconds = time.monotonic() - start
    return report


def _summary(stdout: str) -> dict[str, Any]:
    last = stdout.splitlines()[-1] if stdout else "{}"
    try:
        value = json.loads(last)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
