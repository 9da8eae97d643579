"""Alert drills (issue 22 item 7): the faults whose alerts wait minutes by design, end to end in the lab.

    sudo .venv/bin/python -m bench.alerts

Runs lab/drills/test_alert_drills.py on a lab host of its own (refused while another lab runs):
Dovecot stopped, the mail disk filled and the queue over its threshold at once, then password
guessing from the internet. Prints, for each alert, the seconds from the fault to the webhook and
from the fix to its all-clear, against docs/monitoring.md's bounds; exits non-zero if an alert does
not arrive in time. ~25 minutes: the disk alert's `for` is 5 minutes, the queue alert's 10.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DRILLS = Path(__file__).resolve().parent.parent / "lab" / "drills" / "test_alert_drills.py"


def main() -> int:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "-q", "--durations=0", str(DRILLS)]
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
