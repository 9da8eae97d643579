"""Small process helpers shared by the lab modules (commands, namespaces, pids)."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger("lab")


class LabError(RuntimeError):
    """A lab step failed; the message says which and why."""


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run *cmd*; on failure with ``check`` raise :class:`LabError` with its stderr."""
    log.debug("run: %s", shlex.join(cmd))
    proc = subprocess.run(
        list(cmd),
        input=input,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip()
        raise LabError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{err}")
    return proc


def out(cmd: Sequence[str], *, check: bool = True, timeout: float | None = None) -> str:
    """Run *cmd* and return its stdout as text."""
    return run(cmd, check=check, timeout=timeout).stdout.decode()


def netns_exec(ns: str, cmd: Sequence[str]) -> list[str]:
    """Prefix *cmd* so that it runs inside network namespace *ns*."""
    return ["ip", "netns", "exec", ns, *cmd]


def netns_inode(ns: str) -> int | None:
    """Inode of the named network namespace, or None if it does not exist."""
    try:
        return os.stat(f"/run/netns/{ns}").st_ino
    except FileNotFoundError:
        return None


def pids_in_netns(ns: str) -> list[int]:
    """Pids of all processes whose network namespace is the named one (like ``ip netns pids``)."""
    ino = netns_inode(ns)
    if ino is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                found.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still "exists"; treat it as dead
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until the pids are gone; return the ones still alive after *timeout*."""
    left = list(pids)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        if left:
            time.sleep(0.1)
    return [p for p in left if alive(p)]


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def daemon_pid(pid_file: Path, needle: bytes) -> int | None:
    """The pid in *pid_file* if that process is alive and its command line contains *needle*
    (a reused pid of some other program is not ours to signal)."""
    pid = read_pid(pid_file)
    if pid is None or not alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if needle in cmdline else None


def stop_daemon(pid: int | None, what: str) -> list[str]:
    """SIGTERM, then SIGKILL after 5 s; reaped if it is our child. Returns what was stopped."""
    if pid is None:
        return []
    kill_pids([pid], signal.SIGTERM)
    left = wait_gone([pid], 5.0)
    kill_pids(left, signal.SIGKILL)
    wait_gone(left, 5.0)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # our child when a test session started it: no zombie
    return [f"{what} {pid}"]


def tail(path: Path, lines: int = 40) -> str:
    """Last *lines* lines of a text file (for error messages)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no {path})"
    return "\n".join(text.splitlines()[-lines:])


def start_lab_module(ns: str, module: str, args: Sequence[str], directory: Path, timeout: float = 20.0) -> int:
    """`python -m lab.<module> ARGS` in network namespace `ns`, in a session of its own, its output in
    <directory>/<module>.log and its pid in <directory>/<module>.pid; returns once the log says
    "listening on" (a LabError with the log's tail if it exits or the time runs out first)."""
    project = Path(__file__).resolve().parents[1]
    directory.mkdir(parents=True, exist_ok=True)
    log_file = directory / f"{module}.log"
    argv = [sys.executable, "-m", f"lab.{module}", *args]
    with open(log_file, "wb") as output:
        proc = subprocess.Popen(
            netns_exec(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=project,
            env={**os.environ, "PYTHONPATH": str(project)},
        )
    (directory / f"{module}.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while b"listening on" not in log_file.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"lab.{module} did not start\n--- {log_file} ---\n{tail(log_file)}")
        time.sleep(0.1)
    return proc.pid


def start_listener(ns: str, argv: Sequence[str], directory: Path, name: str, address: str, port: int,
                   timeout: float = 20.0) -> int:  # fmt: skip
    """A server binary in network namespace `ns`, in a session of its own, its output in
    <directory>/<name>.log and its pid in <directory>/<name>.pid; returns once address:port accepts a
    connection (a LabError with the log's tail if it exits or the time runs out first)."""
    log_file = directory / f"{name}.log"
    with open(log_file, "ab") as output:
        proc = subprocess.Popen(
            netns_exec(ns, argv), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    (directory / f"{name}.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    probe = ["python3", "-c", f"import socket; socket.create_connection(({address!r}, {port}), 1)"]
    while run(netns_exec(ns, probe), check=False).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"{name} did not start\n--- {log_file} ---\n{tail(log_file)}")
        time.sleep(0.1)
    return proc.pid
