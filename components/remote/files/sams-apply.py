#!/usr/bin/python3
"""sams-apply: install one staged SAMS step on this host (runs as root, Python stdlib only).

Usage: sams-apply STEP_DIR   (late values, if the step has any, arrive as a JSON object on stdin)

1. Every file in manifest.json is rendered (late-value tokens replaced), compared with what is
   installed, and replaced atomically only if it differs (mode and owner are enforced too).
2. Services watching a changed path are reloaded or restarted, once each; nothing else is touched.
3. script.sh, if present, runs with SAMS_CHANGED (changed paths, newline-separated) and the late
   values in its environment (SAMS_LATE_<name>).
4. A one-line JSON summary goes to stdout: {"step", "changed", "services", "script"}.
Secrets never reach stdout or stderr.
"""

from __future__ import annotations

import fcntl
import fnmatch
import grp
import json
import os
import pwd
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

    changed: list[str] = []
    for entry in manifest["files"]:
        with open(os.path.join(step_dir, entry["src"]), encoding="utf-8") as fh:
            text = _render(fh.read(), late, names)
        if _install(entry, text.encode()):
            changed.append(entry["path"])

    # One action per unit, the strongest wins: a restart already includes a reload.
    strength = {"reload": 0, "reload-or-restart": 1, "restart": 2}
    todo: dict[str, str] = {}
    for svc in manifest["services"]:
        if any(fnmatch.fnmatch(p, w) for p in changed for w in svc["watches"]):
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
        env = dict(os.environ, SAMS_CHANGED="\n".join(changed), SAMS_STEP_DIR=step_dir)
        env.update({f"SAMS_LATE_{k}": v for k, v in late.items()})
        subprocess.run(["/bin/sh", "-eu", script], check=True, env=env, stdin=subprocess.DEVNULL)
        ran_script = True

    print(json.dumps({"step": manifest["step"], "changed": changed, "services": acted, "script": ran_script}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1]))
