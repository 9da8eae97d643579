"""The lab's hypervisor: keeps the host's systemd-nspawn running the way a hypervisor keeps a VM.

``systemctl reboot`` in the container ends systemd-nspawn with exit status 133 (systemd-nspawn(1));
a hypervisor would boot the machine again, so this loop starts nspawn again with the same argv and
the same console log. Any other exit (a poweroff, a crash, :func:`lab.host.stop`) ends the loop with
nspawn's status. SIGTERM is passed on to nspawn (an orderly poweroff) and ends the loop; SIGKILL of
this process and of the container is the hard power-off (:func:`lab.host.power_cut`).

Run by :func:`lab.host.start`::

    python -m lab.hypervisor PID_FILE CONSOLE_LOG -- systemd-nspawn ...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

# systemd-nspawn's exit status when the container rebooted.
REBOOT_EXIT = 133


def supervise(pid_file: Path, console_log: Path, argv: list[str]) -> int:
    """Run *argv* until it exits with anything but :data:`REBOOT_EXIT`; return that status."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        boot = 0
        while True:
            boot += 1
            with open(console_log, "ab") as console:
                console.write(f"\n--- lab hypervisor: boot {boot} at {time.strftime('%H:%M:%S')} ---\n".encode())
                console.flush()
                child = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, cwd="/"
                )
            pid_file.write_text(f"{child.pid}\n")
            status = child.wait()
            with open(console_log, "ab") as console:
                console.write(f"\n--- lab hypervisor: systemd-nspawn exited with {status} ---\n".encode())
            if status != REBOOT_EXIT or stopping:
                return status
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    pid_file, console_log, argv = Path(args[0]), Path(args[1]), args[3:]
    status = supervise(pid_file, console_log, argv)
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main(sys.argv[1:]))
