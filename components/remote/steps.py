"""Remote steps, the pure half: what a step installs on the host, staged as a directory.

A step is a set of files (with mode and owner), the services to reload or restart when any of
them change, and an optional script. `stage()` writes it to a local directory whose content hash
becomes the `triggers` of the pulumi-command resources, so a step runs again exactly when what it
installs changes. On the host, `sams-apply` (files/sams-apply.py) installs the files atomically,
substitutes late values read from stdin, removes the files the step installed before and declares
no more, reloads only what changed and prints a JSON summary.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

STAGE_ROOT = "/var/lib/sams/stage"
# A shell function for step scripts: is this Debian package installed?
INSTALLED_FN = """installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }"""
APPLY_SCRIPT = Path(__file__).resolve().parent / "files" / "sams-apply.py"


def late(name: str) -> str:
    """A token that `sams-apply` replaces with the named value from stdin (secrets, late outputs)."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"late value names are [A-Za-z0-9_]: {name!r}")
    return f"@@SAMS_LATE:{name}@@"


@dataclass(frozen=True)
class File:
    path: str  # absolute path on the host
    content: str
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"

    def __post_init__(self) -> None:
        if not self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"file path must be absolute and normalised: {self.path!r}")


@dataclass(frozen=True)
class Service:
    """A unit to reload (or restart) when any file under one of `watches` changes."""

    unit: str
    watches: tuple[str, ...]
    action: str = "reload"  # reload | restart | reload-or-restart


@dataclass(frozen=True)
class StepSpec:
    name: str
    files: tuple[File, ...] = ()
    services: tuple[Service, ...] = ()
    script: str = ""  # /bin/sh, runs after files are installed, every time the step runs
    late_values: tuple[str, ...] = ()  # names the files/script expect on stdin
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.replace("-", "").isalnum():
            raise ValueError(f"step names are [a-z0-9-]: {self.name!r}")
        paths = [f.path for f in self.files]
        if len(paths) != len(set(paths)):
            raise ValueError(f"step {self.name}: a file is listed twice")

    @property
    def remote_dir(self) -> str:
        return f"{STAGE_ROOT}/{self.name}"

    def manifest(self) -> dict[str, object]:
        return {
            "step": self.name,
            "files": [
                {"path": f.path, "src": "files" + f.path, "mode": f.mode, "owner": f.owner, "group": f.group}
                for f in self.files
            ],
            "services": [{"unit": s.unit, "watches": list(s.watches), "action": s.action} for s in self.services],
            "late_values": list(self.late_values),
            "has_script": bool(self.script),
        }


def stop_units(*units: str) -> str:
    """Shell lines that stop and disable each service whose unit file exists (a feature turned off
    whose package may never have been installed)."""
    return "".join(
        f"""\
if systemctl list-unit-files -q {unit}.service >/dev/null 2>&1; then
    systemctl disable -q --now {unit}.service
fi
"""
        for unit in units
    )


def digest(spec: StepSpec) -> str:
    """Content hash of everything the step installs (not of late values: those hash separately)."""
    h = hashlib.sha256()
    h.update(json.dumps(spec.manifest(), sort_keys=True).encode())
    for f in spec.files:
        h.update(f.path.encode() + b"\0" + f.content.encode() + b"\0")
    h.update(spec.script.encode())
    h.update(APPLY_SCRIPT.read_bytes())
    return h.hexdigest()


def stage(spec: StepSpec, build_root: Path) -> Path:
    """Write the step to build_root/<name>/ (replacing what was there) and return that directory."""
    out = build_root / spec.name
    if out.exists():
        shutil.rmtree(out)
    (out / "files").mkdir(parents=True)
    for f in spec.files:
        target = out / "files" / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content)
    (out / "manifest.json").write_text(json.dumps(spec.manifest(), indent=2, sort_keys=True) + "\n")
    if spec.script:
        (out / "script.sh").write_text(spec.script)
    shutil.copyfile(APPLY_SCRIPT, out / "sams-apply")
    return out


def apply_command(spec: StepSpec) -> str:
    """The command pulumi-command runs on the host (as the admin user, through sudo)."""
    return f"sudo -n /usr/bin/python3 {spec.remote_dir}/sams-apply {spec.remote_dir}"
