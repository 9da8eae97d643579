"""An SFTP backup server in the lab's internet: OpenSSH's sshd at backup.lab.example:2222.

A real SSH server, as an owner's storage box or a second machine would be: the host logs in with
the key the program made for it (the stack output backup.sshPublicKey, written to this server's
authorized_keys) and accepts the server only by the host key pinned in sams:backup.sftpHostKey.
It serves nothing but SFTP (internal-sftp, no shell, no forwarding). The sshd is this machine's
(./run installs openssh-server) run in sams-inet with a config of its own; its host key,
authorized_keys and the repositories live in the lab's run/sftp/. Started by the SFTP backup tests.

Lab-only choices: the login is root (sshd needs an account of this machine, and the lab adds none);
the sftp session starts in run/sftp/data (`internal-sftp -d`) so a relative repository path lands
there, without a chroot (sshd refuses one below the world-writable /tmp the lab's state lives in);
StrictModes is off for the same reason.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab import dns
from lab.proc import LabError, daemon_pid, start_listener, stop_daemon
from lab.spec import NAMES, StatePaths

NAME = dns.BACKUP_SERVER
PORT = 2222  # off 22, so the [host]:port form of the pinned key is what the lab proves
USER = "root"
SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SftpServer:
    pid: int
    directory: Path
    host_key: str  # the public host key line, as sams:backup.sftpHostKey takes it

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def repository(self, path: str = "sams") -> str:
        return repository(path)


def repository(path: str = "sams") -> str:
    """restic's URL for a repository in the session's start directory (one slash: relative)."""
    return f"sftp://{USER}@{NAME}:{PORT}/{path}"


def directory(paths: StatePaths) -> Path:
    return paths.run / "sftp"


def host_key(paths: StatePaths, name: str = "host_ed25519") -> str:
    """A host key of this server (made once per name); its public line."""
    key = directory(paths) / name
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", NAME, "-f", str(key)], check=True)
    return key.with_suffix(".pub").read_text().strip()


def start(
    paths: StatePaths, listen: str, authorized: list[str], *, key_name: str = "host_ed25519", timeout: float = 20.0
) -> SftpServer:
    """sshd in sams-inet on listen:PORT, SFTP only, for the given public keys; wait until it answers."""
    d = directory(paths)
    (d / "data").mkdir(parents=True, exist_ok=True)
    public = host_key(paths, key_name)
    (d / "authorized_keys").write_text("".join(f"{k.strip()}\n" for k in authorized))
    (d / "authorized_keys").chmod(0o600)
    config = d / "sshd_config"
    config.write_text(
        f"""\
ListenAddress {listen}
Port {PORT}
HostKey {d / key_name}
PidFile none
AuthorizedKeysFile {d / "authorized_keys"}
AllowUsers {USER}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
ForceCommand internal-sftp -d {d / "data"}
Subsystem sftp internal-sftp
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
LogLevel VERBOSE
"""
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise LabError(f"the lab's sshd_config does not load: {check.stderr.strip()}")
    pid = start_listener(NAMES.ns_inet, [SSHD, "-D", "-e", "-f", str(config)], d, "sshd", listen, PORT, timeout)
    return SftpServer(pid, d, public)


def running(paths: StatePaths) -> int | None:
    return daemon_pid(directory(paths) / "sshd.pid", b"sshd")


def stop(paths: StatePaths) -> list[str]:
    return stop_daemon(running(paths), "sftp server")
