#!/usr/bin/python3
"""sams-apply: install one staged SAMS step on this host (runs as root, Python stdlib only).

Usage: sams-apply STEP_DIR   (late values, if the step has any, arrive as a JSON object on stdin)

1. Every file in manifest.json is rendered (late-value tokens replaced), compared with what is
   installed, and replaced atomically only if it differs (mode and owner are enforced too).
2. Files the step installed last time and no longer declares are removed (unless another step
   declares them now), so turning a feature off leaves no stale config and no secret behind. What a
   step installed is recorded in STAGE_DIR/.applied/<step>.json (STAGE_DIR: STEP_DIR's parent).
   A package's pristine conffile that a step replaced is kept aside (.applied/originals/) and put
   back instead, so the package stays whole; a systemd unit is stopped and disabled before its
   file goes, and systemd reloads once.
3. Services watching a changed or removed path are reloaded or restarted, once each; nothing else
   is touched.
4. script.sh, if present, runs with SAMS_CHANGED (changed and removed paths, newline-separated) and
   the late values in its environment (SAMS_LATE_<name>).
5. A one-line JSON summary goes to stdout: {"step", "changed", "removed", "services", "script"}.
Secrets never reach stdout or stderr.
"""

from __future__ import annotations

import fcntl
import fnmatch
import grp
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

TOKEN = "@@SAMS_LATE:{}@@"
# apt's and dpkg's locks (POSIX record locks): first boot's installs or unattended-upgrades may hold
# them when a step starts. `apt-get install` waits on dpkg's itself (DPkg::Lock::Timeout, cloud-init's
# 90sams-lock-timeout), `apt-get update` fails at once on the lists lock: wait for every one here.
APT_LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock")
LOCK_WAIT_S = 600.0
# Beside the staged steps: what each step installed (item 2 above).
RECORDS = ".applied"
# Inside RECORDS: the package's own version of each conffile a step replaced (item 2 above).
ORIGINALS = "originals"
# Unit files under here are stopped and disabled before they are removed.
UNIT_DIR = "/etc/systemd/system/"
UNIT_SUFFIXES = (".service", ".timer", ".socket", ".path")


def _render(text: str, late: dict[str, str], names: list[str]) -> str:
    for name in names:
        text = text.replace(TOKEN.format(name), late[name])
    if "@@SAMS_LATE:" in text:
        raise SystemExit("sams-apply: a file uses a late value the step does not declare")
    return text


def _install(entry: dict[str, str], content: bytes) -> bool:
    path = entry["path"]
    uid = pwd.getpwnam(entry["owner"]).pw_uid
    gid = grp.getgrnam(entry["group"]).gr_gid
    mode = int(entry["mode"], 8)
    try:
        st = os.stat(path)
        with open(path, "rb") as fh:
            same = fh.read() == content
        if same and (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, uid, gid):
            return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".sams-")
    try:
        # Mode and owner are set before the content lands, so a secret is never world-readable.
        os.fchmod(fd, mode)
        os.fchown(fd, uid, gid)
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return True


def _wait_for_apt(timeout: float = LOCK_WAIT_S) -> float:
    """Wait until no other process holds an apt/dpkg lock; return the seconds waited."""
    start = time.monotonic()
    for path in APT_LOCKS:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.lockf(fd, fcntl.LOCK_UN)
                    break
                except OSError:
                    if time.monotonic() - start > timeout:
                        raise SystemExit(f"sams-apply: {path} still locked after {timeout:.0f} s") from None
                    time.sleep(1)
        finally:
            os.close(fd)
    return time.monotonic() - start


def _records_dir(step_dir: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(step_dir)), RECORDS)


def _recorded(path: str) -> list[str]:
    """The files a step's record lists ([] without a record: a step never applied by this version)."""
    try:
        with open(path) as fh:
            files = json.load(fh)["files"]
    except FileNotFoundError:
        return []
    return [str(f) for f in files]


def _record(records: str, step: str, files: list[str]) -> None:
    """Write the step's record atomically (root-only: it names secret files, never their content)."""
    os.makedirs(records, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=records, prefix=".sams-")
    with os.fdopen(fd, "w") as fh:
        json.dump({"step": step, "files": sorted(files)}, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(records, f"{step}.json"))


def _original(records: str, path: str) -> str:
    return os.path.join(records, ORIGINALS, path.lstrip("/").replace("/", "%"))


def _pristine_conffile(path: str) -> bool:
    """Whether a package installed this file and it still holds the package's own content (dpkg's
    md5 of the conffile), so it is worth putting back when a step lets go of it."""
    owner = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True, check=False)
    if owner.returncode != 0:
        return False
    package = owner.stdout.split(":", 1)[0].split(",")[0].strip()
    listed = subprocess.run(
        ["dpkg-query", "-W", "-f=${Conffiles}\n", package], capture_output=True, text=True, check=False
    )
    with open(path, "rb") as fh:
        digest = hashlib.md5(fh.read(), usedforsecurity=False).hexdigest()
    return any(line.split()[:2] == [path, digest] for line in listed.stdout.splitlines())


def _keep_originals(records: str, declared: list[str]) -> None:
    """Before a step first replaces a package's pristine conffile, keep a copy (content, mode,
    owner) to put back when the step stops declaring it."""
    ours: set[str] = set()
    if os.path.isdir(records):
        for name in os.listdir(records):
            if name.endswith(".json"):
                ours.update(_recorded(os.path.join(records, name)))
    for path in declared:
        keep = _original(records, path)
        if path in ours or os.path.exists(keep) or not os.path.isfile(path) or os.path.islink(path):
            continue
        if _pristine_conffile(path):
            os.makedirs(os.path.dirname(keep), mode=0o700, exist_ok=True)
            shutil.copy2(path, keep)
            st = os.stat(path)
            os.chown(keep, st.st_uid, st.st_gid)


def _withdraw(records: str, step: str, declared: list[str]) -> list[str]:
    """Remove the files this step installed before and declares no more (a kept package original
    goes back instead); the paths removed or put back.

    A path that another step's record lists now belongs to that step and stays.
    """
    mine = os.path.join(records, f"{step}.json")
    stale = set(_recorded(mine)) - set(declared)
    if not stale:
        return []
    others: set[str] = set()
    for name in os.listdir(records):
        if name.endswith(".json") and name != f"{step}.json":
            others.update(_recorded(os.path.join(records, name)))
    removed = []
    for path in sorted(stale - others):
        if os.path.isdir(path) and not os.path.islink(path):
            continue  # only ever a file was installed here; a directory now is not ours to delete
        keep = _original(records, path)
        if os.path.exists(keep):
            st = os.stat(keep)
            shutil.copy2(keep, path)
            os.chown(path, st.st_uid, st.st_gid)
            os.unlink(keep)
            removed.append(path)
            continue
        unit = os.path.basename(path)
        if os.path.dirname(path) + "/" == UNIT_DIR and unit.endswith(UNIT_SUFFIXES) and os.path.exists(path):
            # A unit whose file goes stops first: systemd keeps running what it has loaded.
            subprocess.run(["systemctl", "disable", "-q", "--now", unit], check=False)
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append(path)
    if any(p.startswith("/etc/systemd/") for p in removed):
        subprocess.run(["systemctl", "daemon-reload"], check=True)
    return removed


def main(step_dir: str) -> int:
    with open(os.path.join(step_dir, "manifest.json")) as fh:
        manifest = json.load(fh)
    names: list[str] = manifest["late_values"]
    late: dict[str, str] = {}
    if names:
        late = json.load(sys.stdin)
        missing = [n for n in names if n not in late]
        if missing:
            raise SystemExit(f"sams-apply: late values missing on stdin: {', '.join(missing)}")

    records = _records_dir(step_dir)
    declared = [entry["path"] for entry in manifest["files"]]
    _keep_originals(records, declared)
    changed: list[str] = []
    for entry in manifest["files"]:
        with open(os.path.join(step_dir, entry["src"]), encoding="utf-8") as fh:
            text = _render(fh.read(), late, names)
        if _install(entry, text.encode()):
            changed.append(entry["path"])

    removed = _withdraw(records, manifest["step"], declared)
    _record(records, manifest["step"], declared)
    touched = changed + removed

    # One action per unit, the strongest wins: a restart already includes a reload.
    strength = {"reload": 0, "reload-or-restart": 1, "restart": 2}
    todo: dict[str, str] = {}
    for svc in manifest["services"]:
        if any(fnmatch.fnmatch(p, w) for p in touched for w in svc["watches"]):
            current = todo.get(svc["unit"])
            if current is None or strength[svc["action"]] > strength[current]:
                todo[svc["unit"]] = svc["action"]
    acted: list[str] = []
    for unit, action in todo.items():
        subprocess.run(["systemctl", action, unit], check=True)
        acted.append(f"{action}:{unit}")

    ran_script = False
    script = os.path.join(step_dir, "script.sh")
    if manifest["has_script"]:
        _wait_for_apt()
        env = dict(os.environ, SAMS_CHANGED="\n".join(touched), SAMS_STEP_DIR=step_dir)
        env.update({f"SAMS_LATE_{k}": v for k, v in late.items()})
        subprocess.run(["/bin/sh", "-eu", script], check=True, env=env, stdin=subprocess.DEVNULL)
        ran_script = True

    summary = {"step": manifest["step"], "changed": changed, "removed": removed, "services": acted}
    print(json.dumps({**summary, "script": ran_script}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1]))
