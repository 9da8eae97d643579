"""Invariants of every remote step, over every step a mock run of each stack variant stages
(tests/conftest.py VARIANTS, and one with every optional step on): a new component's step is
checked without asking.

Read from the staged directories, as CopyToRemote ships them: manifest.json, files/, script.sh.
  * the script is POSIX sh that shellcheck passes;
  * the late values the manifest declares are exactly those the files and the script use;
  * a file that receives a late value (a secret) is not readable by other users;
  * every path is absolute and normalised, and every listed file is staged;
  * every step the program registers is staged, and nothing else is;
  * each step's trigger is the hash of what is shipped.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import mockrun
from components.remote.steps import STAGE_ROOT
from tests.conftest import VARIANTS

TOKEN = re.compile(r"@@SAMS_LATE:([A-Za-z0-9_]+)@@")
SCRIPT_LATE = re.compile(r"\$\{?SAMS_LATE_([A-Za-z0-9_]+)")


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q"
# The steps' other forms: ClamAV on, backups to SFTP with a second copy, monitoring on the host with
# the journal forwarded.
ALL_OPTIONS: dict[str, Any] = {
    "sams:antivirus": {"clamav": True},
    "sams:monitoring": {
        "enabled": True,
        "emailTo": ["ops@example.org"],
        "journalUploadUrl": "http://10.100.0.1:19532",
    },
    "sams:backup": {
        "enabled": True,
        "repository": "sftp:backup@backup.example.org:/srv/sams",
        "sftpHostKey": HOST_KEY,
        "copyTo": {"repository": "rest:https://archive.example.org/sams/"},
    },
}
STACKS = {**VARIANTS, "lab-all-options": ("lab", ALL_OPTIONS)}


@pytest.fixture(scope="module", params=sorted(STACKS))
def staged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One variant's mock run, its steps staged in a directory of this test's own."""
    stack, overrides = STACKS[request.param]
    build = tmp_path_factory.mktemp(f"build-{request.param}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAMS_BUILD_DIR", str(build))
        secrets = {**mockrun.TEST_SECRETS, "sams:monitoringWebhookUrl": "https://hooks.example.org/services/T0/B0/x"}
        run = mockrun.run(stack, overrides=overrides, secret_config=secrets)
    steps = {d.name: d for d in (build / stack).iterdir() if d.is_dir()}
    return {"variant": request.param, "run": run, "steps": steps}


def manifest(step: Path) -> dict[str, Any]:
    return dict(json.loads((step / "manifest.json").read_text()))


def test_every_registered_step_is_staged_and_nothing_else(staged: dict[str, Any]) -> None:
    steps = re.compile(rf"{re.escape(STAGE_ROOT)}/([a-z0-9-]+)/sams-apply")
    commands = [c.inputs["create"] for c in staged["run"].of_type("command:remote:Command")]
    registered = {m.group(1) for create in commands for m in steps.finditer(create)}
    assert registered == set(staged["steps"]), staged["variant"]
    assert len(registered) >= 10  # the pattern above does find the steps


def test_step_scripts_pass_shellcheck(staged: dict[str, Any]) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is part of the test tools (see ./run)"
    checked = 0
    for name, step in sorted(staged["steps"].items()):
        script = step / "script.sh"
        assert script.exists() == manifest(step)["has_script"], name
        if not script.exists():
            continue
        # sams-apply hands the step its late values as SAMS_LATE_<name>: declared, so assigned.
        given = "".join(f"export SAMS_LATE_{n}=\n" for n in manifest(step)["late_values"])
        result = subprocess.run(
            [shellcheck, "-s", "sh", "-"],
            input="#!/bin/sh\n" + given + script.read_text(),
            text=True,
            capture_output=True,
        )
        assert result.returncode == 0, f"{staged['variant']}/{name}:\n{result.stdout}"
        checked += 1
    assert checked >= 5


def test_late_values_are_declared_and_used(staged: dict[str, Any]) -> None:
    for name, step in staged["steps"].items():
        m = manifest(step)
        used = {t for f in m["files"] for t in TOKEN.findall((step / f["src"]).read_text())}
        if (step / "script.sh").exists():
            used |= set(SCRIPT_LATE.findall((step / "script.sh").read_text()))
        assert used == set(m["late_values"]), f"{staged['variant']}/{name}"


def test_secret_files_are_not_readable_by_others(staged: dict[str, Any]) -> None:
    secrets = 0
    for name, step in staged["steps"].items():
        for f in manifest(step)["files"]:
            if TOKEN.search((step / f["src"]).read_text()):
                secrets += 1
                assert int(f["mode"], 8) & 0o007 == 0, f"{staged['variant']}/{name}: {f['path']} is {f['mode']}"
    assert secrets >= 3  # the database passwords at least: the check has something to check


def test_paths_are_absolute_and_every_file_is_staged(staged: dict[str, Any]) -> None:
    for name, step in staged["steps"].items():
        m = manifest(step)
        assert m["step"] == name
        for f in m["files"]:
            path = f["path"]
            assert path.startswith("/") and ".." not in path.split("/") and "//" not in path, (name, path)
            assert (step / f["src"]).is_file(), (name, path)
            assert re.fullmatch(r"0[0-7]{3}", f["mode"]), (name, path, f["mode"])
        for service in m["services"]:
            assert all(w.startswith("/") for w in service["watches"]), (name, service)


def test_each_trigger_is_the_hash_of_what_is_shipped(staged: dict[str, Any]) -> None:
    """Change any file, the script, a mode or sams-apply itself, and the step runs again: its
    CopyToRemote's and Command's trigger is the hash of the staged directory's content."""
    copies = {c.name.removesuffix("-copy"): c for c in staged["run"].of_type("command:remote:CopyToRemote")}
    for name, step in staged["steps"].items():
        (copy,) = [c for c in copies.values() if Path(c.inputs["source"]["path"]).name == name]
        assert copy.inputs["triggers"][0] == shipped_digest(step), f"{staged['variant']}/{name}"


def shipped_digest(step: Path) -> str:
    """components.remote.steps.digest, recomputed from a staged directory as CopyToRemote ships it."""
    m = manifest(step)
    h = hashlib.sha256(json.dumps(m, sort_keys=True).encode())
    for f in m["files"]:
        h.update(f["path"].encode() + b"\0" + (step / f["src"]).read_bytes() + b"\0")
    script = step / "script.sh"
    h.update(script.read_bytes() if script.exists() else b"")
    h.update((step / "sams-apply").read_bytes())
    return h.hexdigest()
