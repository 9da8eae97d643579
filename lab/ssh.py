"""Run commands on, and copy files to, the lab host as the admin user.

Every connection goes from inside ``sams-admin`` to the host's WireGuard
address, with the admin's key only (no agent, no passwords, no user
~/.ssh/config).  The host's SSH host keys are pinned out of band: after
cloud-init has generated them, ``pin_host_keys`` reads the public halves from
the container's tree (as a cloud console would show them) into a lab-local
known_hosts, and every connection then runs with ``StrictHostKeyChecking=yes``.

:meth:`HostShell.run` and :meth:`HostShell.copy_to` replay pulumi-command's
``remote.Command`` (``create`` with ``environment`` and ``stdin``) and
``remote.CopyToRemote`` (recursive copy to ``remote_path``).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from lab.proc import LabError, netns_exec
from lab.spec import NAMES, LabSpec, StatePaths

log = logging.getLogger("lab.ssh")

# sun_path is 108 bytes; OpenSSH appends a random suffix while creating it.
_MAX_CONTROL_PATH = 90


@dataclass(frozen=True)
class SshTarget:
    user: str
    address: str
    key: Path
    known_hosts: Path
    control_dir: Path
    netns: str = NAMES.ns_admin

    @classmethod
    def for_spec(cls, spec: LabSpec, paths: StatePaths) -> SshTarget:
        return cls(
            spec.admin_user,
            spec.vpn_host,
            spec.ssh_private_key,
            paths.known_hosts,
            paths.ssh_dir,
        )

    def save(self, path: Path) -> None:
        data = {k: str(v) for k, v in asdict(self).items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SshTarget:
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab is up ({path} missing)") from None
        return cls(
            d["user"],
            d["address"],
            Path(d["key"]),
            Path(d["known_hosts"]),
            Path(d["control_dir"]),
            d["netns"],
        )


def pin_host_keys(tree: Path, address: str, known_hosts: Path) -> int:
    """Write known_hosts for *address* from the host keys in the container *tree*; return count."""
    lines = []
    for pub in sorted((tree / "etc" / "ssh").glob("ssh_host_*_key.pub")):
        fields = pub.read_text().split()
        if len(fields) >= 2:
            lines.append(f"{address} {fields[0]} {fields[1]}\n")
    if not lines:
        raise LabError(f"no SSH host keys in {tree}/etc/ssh (did sshd's key generation run?)")
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(known_hosts.parent, 0o700)
    known_hosts.write_text("".join(lines))
    return len(lines)


class HostShell:
    """SSH access to the lab host through the tunnel (see module docstring)."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        control = target.control_dir / "cm-%C"
        self._control: Path | None = control if len(str(control)) + 40 <= _MAX_CONTROL_PATH else None

    @classmethod
    def from_state(cls, paths: StatePaths) -> HostShell:
        return cls(SshTarget.load(paths.target))

    def _options(self) -> list[str]:
        t = self.target
        opts = {
            "User": t.user,
            "IdentitiesOnly": "yes",
            "IdentityAgent": "none",
            "PreferredAuthentications": "publickey",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "BatchMode": "yes",
            "UserKnownHostsFile": str(t.known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "yes",
            "CheckHostIP": "no",
            "ConnectTimeout": "5",
            "ServerAliveInterval": "15",
            "LogLevel": "ERROR",
        }
        if self._control is not None:
            opts["ControlPath"] = str(self._control)
            opts["ControlMaster"] = "no"  # use the master if one is running, else connect directly
        args = ["-F", "/dev/null", "-i", str(t.key)]
        for k, v in opts.items():
            args += ["-o", f"{k}={v}"]
        return args

    def ssh_argv(self, *extra: str) -> list[str]:
        """Full argv (``ip netns exec sams-admin ssh ...``) up to, excluding, the remote command."""
        return netns_exec(self.target.netns, ["ssh", *self._options(), *extra, self.target.address])

    # -- connection master -------------------------------------------------

    def open_master(self, persist: str = "30m") -> None:
        """Start a background ControlMaster so later commands skip the handshake."""
        if self._control is None:
            return
        self.target.control_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.target.control_dir, 0o700)
        argv = self.ssh_argv(
            "-M",
            "-N",
            "-f",
            "-o",
            "ControlMaster=yes",
            "-o",
            f"ControlPersist={persist}",
        )
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
            timeout=30,
        )
        if proc.returncode != 0:
            raise LabError(f"ssh master failed: {proc.stderr.decode(errors='replace').strip()}")

    def close_master(self) -> None:
        if self._control is None:
            return
        subprocess.run(
            self.ssh_argv("-O", "exit"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )

    # -- commands ------------------------------------------------------------

    def run(
        self,
        command: str | Sequence[str],
        *,
        environment: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        check: bool = True,
        timeout: float | None = None,
        env_via: Literal["setenv", "export"] = "setenv",
    ) -> subprocess.CompletedProcess[bytes]:
        """Run *command* on the host as the admin user; returns stdout/stderr as bytes.

        A string is handed to the remote login shell as is (like pulumi's
        ``create``); a sequence is shell-quoted first.  ``environment`` is sent
        like pulumi-command does, with SSH ``SetEnv`` (so it only arrives if the
        host's sshd ``AcceptEnv`` allows it: a faithful replay); ``env_via="export"``
        prepends ``export K=V;`` instead, which always works.
        """
        remote = command if isinstance(command, str) else shlex.join(command)
        extra: list[str] = []
        for key, value in (environment or {}).items():
            if not key.isidentifier():
                raise ValueError(f"bad environment variable name {key!r}")
            if env_via == "export":
                remote = f"export {key}={shlex.quote(value)}; {remote}"
            else:
                if '"' in value or "\n" in value:
                    raise ValueError(f"{key}: SetEnv cannot carry quotes or newlines; use env_via='export'")
                extra += ["-o", f'SetEnv={key}="{value}"']
        data = stdin.encode() if isinstance(stdin, str) else stdin
        argv = [*self.ssh_argv(*extra), "--", remote]
        proc = subprocess.run(
            argv,
            input=data,
            stdin=subprocess.DEVNULL if data is None else None,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"remote command failed ({proc.returncode}): {remote}\n"
                f"stdout: {proc.stdout.decode(errors='replace')[-2000:]}\n"
                f"stderr: {proc.stderr.decode(errors='replace')[-2000:]}"
            )
        return proc

    def copy_to(self, local: Path | str, remote_path: str, *, timeout: float | None = None) -> None:
        """Copy a local file or directory (recursively) to *remote_path*, like ``CopyToRemote``.

        Missing parent directories are created; if *remote_path* is an existing
        directory the source is copied into it; a file replaces an existing file;
        a directory onto an existing file fails.
        """
        src = Path(local)
        if not src.exists():
            raise LabError(f"copy source {src} does not exist")
        parent = os.path.dirname(remote_path.rstrip("/")) or "/"
        self.run(["mkdir", "-p", "--", parent], timeout=timeout)
        # scp's options are the ssh ones; scp -r has exactly CopyToRemote's "into an existing dir" rule
        argv = netns_exec(
            self.target.netns,
            [
                "scp",
                "-q",
                "-p",
                "-r",
                *self._options(),
                "--",
                str(src),
                f"{self.target.address}:{remote_path}",
            ],
        )
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise LabError(f"copy {src} -> {remote_path} failed: {proc.stderr.decode(errors='replace').strip()}")

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Retry ``true`` over SSH until it works; return the seconds it took."""
        start = time.monotonic()
        last = ""
        while time.monotonic() - start < timeout:
            proc = self.run("true", check=False, timeout=15)
            if proc.returncode == 0:
                return time.monotonic() - start
            last = proc.stderr.decode(errors="replace").strip()
            time.sleep(0.5)
        raise LabError(f"SSH to {self.target.user}@{self.target.address} not ready after {timeout:.0f} s: {last}")

    def interactive(self, command: Sequence[str] = ()) -> int:
        """Run with the caller's terminal (``lab ssh``): a login shell, or *command*."""
        tty = ["-t"] if not command and os.isatty(0) else []
        argv = self.ssh_argv(*tty)
        if command:
            # Like ssh itself: words are joined with spaces and the remote shell parses them.
            argv += ["--", " ".join(command)]
        return subprocess.run(argv, check=False).returncode
