"""Rspamd's two controller passwords, asked of a real Rspamd 3.12 in the trixie tree with SAMS's
config: the read-only one (monitoring's, which nginx sends for /metrics) reads and cannot change
anything; the controller password can; without a password, even from loopback, nothing answers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from components.mail.services import RSPAMD_CONTROLLER, RSPAMD_CONTROLLER_PASSWORD, RSPAMD_METRICS_PASSWORD
from tests.mailcore.conftest import DUMMY_LATE

pytestmark = pytest.mark.chroot

# An HTTP client inside the tree: prints the status of METHOD PATH with the Password header (- for none).
CLIENT = """\
import sys, urllib.error, urllib.request
method, path, password = sys.argv[1:4]
data = b"Subject: t\\r\\n\\r\\nhello\\r\\n" if method == "POST" else None
request = urllib.request.Request(f"http://{controller}{path}", method=method, data=data)
if password != "-":
    request.add_header("Password", password)
try:
    print(urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as error:
    print(error.code)
"""

# In a network namespace of its own (unshare -n): loopback only. Starts Rspamd, asks, stops it.
ASK = """\
ip link set lo up
install -d -o _rspamd -g _rspamd /run/rspamd
rspamd -u _rspamd -g _rspamd >/tmp/rspamd.out 2>&1
trap 'pid=$(cat /run/rspamd/rspamd.pid); kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done' EXIT
for i in $(seq 120); do [ "$(python3 /tmp/client.py GET /ping -)" = 200 ] && break; sleep 0.5; done
while read -r name method path password; do
    echo "$name $(python3 /tmp/client.py "$method" "$path" "$password")"
done < /tmp/asks
"""


def test_the_read_only_password_reads_metrics_and_changes_nothing(mail_root: Path) -> None:
    reader, admin = DUMMY_LATE[RSPAMD_METRICS_PASSWORD], DUMMY_LATE[RSPAMD_CONTROLLER_PASSWORD]
    asks = {
        "metrics-none": ("GET", "/metrics", "-"),
        "metrics-reader": ("GET", "/metrics", reader),
        "metrics-admin": ("GET", "/metrics", admin),
        # /learnham trains the Bayes filter: a write, the controller password's alone.
        "learn-none": ("POST", "/learnham", "-"),
        "learn-reader": ("POST", "/learnham", reader),
        "learn-admin": ("POST", "/learnham", admin),
    }
    (mail_root / "tmp/client.py").write_text(CLIENT.replace("{controller}", RSPAMD_CONTROLLER))
    (mail_root / "tmp/asks").write_text("".join(f"{n} {' '.join(a)}\n" for n, a in asks.items()))
    (mail_root / "tmp/ask.sh").write_text(ASK)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    result = subprocess.run(
        ["unshare", "-n", "chroot", str(mail_root), "/bin/sh", "-eu", "/tmp/ask.sh"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    answers = dict(line.split() for line in result.stdout.splitlines())
    # Learned, or already known (2xx either way): what matters is that the password was taken.
    assert answers.pop("learn-admin", "").startswith("2"), result.stdout
    assert answers == {
        "metrics-none": "401",
        "metrics-reader": "200",
        "metrics-admin": "200",
        "learn-none": "401",
        "learn-reader": "401",
    }, result.stdout
