"""nginx serves Apple's configuration profile beside Thunderbird's and Outlook's documents: the
tls-web step's site and files in the Debian 13 tree (test_tls's fixture), nginx in a private network
namespace inside it, a probe asking https://autoconfig.<domain>/apple.mobileconfig as a phone does.

    sudo .venv/bin/python -m pytest -p no:cacheprovider -m chroot tests/mailcore/test_dav_profile.py
"""

from __future__ import annotations

import json
import plistlib
import textwrap
from pathlib import Path

import pytest

import settings
from components.tls import autoconfig, certs
from lab.trixie_chroot import run_in
from tests.mailcore.test_tls import tls_root  # noqa: F401 (the fixture)

pytestmark = pytest.mark.chroot

# Each query: the status, the Content-Type and the body, verified against the bootstrap certificate.
_PROBE = r"""
import http.client, json, socket, ssl, sys, time
domains, cafile = json.loads(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)

def ask(host, path):
    for _ in range(50):
        try:
            raw = socket.create_connection(("127.0.0.1", 443), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    conn = http.client.HTTPConnection(host)
    conn.sock = ctx.wrap_socket(raw, server_hostname=host)
    conn.request("GET", path)
    answer = conn.getresponse()
    return {"status": answer.status, "type": answer.getheader("content-type", ""), "body": answer.read().decode()}

out = {}
for d in domains:
    host = f"autoconfig.{d}"
    out[d] = {
        "plain": ask(host, "/apple.mobileconfig"),
        "named": ask(host, f"/apple.mobileconfig?emailaddress=alice%40{d}"),
        "named-at": ask(host, f"/apple.mobileconfig?emailaddress=bob.x+y@{d}"),
        "markup": ask(host, f"/apple.mobileconfig?emailaddress=a%3C/string%3E%40{d}"),
        "variant-direct": ask(host, "/apple-address.mobileconfig"),
    }
print(json.dumps(out))
"""


def test_nginx_serves_the_apple_profile(tls_root: Path, lab_settings: settings.Settings) -> None:  # noqa: F811
    (tls_root / "tmp/profile_probe.py").write_text(_PROBE)
    domains = [d.name for d in lab_settings.mail.domains]
    script = textwrap.dedent(f"""\
        ip link set lo up
        nginx -g 'daemon off;' &
        pid=$!
        rc=0
        python3 /tmp/profile_probe.py '{json.dumps(domains)}' {certs.TLS_FULLCHAIN} || rc=$?
        kill "$pid"
        wait "$pid" || true
        cat /var/log/nginx/error.log >&2
        exit "$rc"
        """)
    result = run_in(tls_root, ["unshare", "--net", "/bin/sh", "-eu", "-c", script])
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    files = {f.path: f.content for f in autoconfig.client_files(lab_settings)}
    for d in domains:
        plain = files[f"{autoconfig.CLIENTS_ROOT}/{d}{autoconfig.APPLE_PROFILE_PATH}"]
        named = files[f"{autoconfig.CLIENTS_ROOT}/{d}{autoconfig.APPLE_PROFILE_ADDRESS_PATH}"]
        answers = got[d]
        for name in ("plain", "named", "named-at", "markup"):
            assert answers[name]["status"] == 200, (name, answers[name])
            assert answers[name]["type"] == autoconfig.APPLE_PROFILE_TYPE, (name, answers[name]["type"])
            plistlib.loads(answers[name]["body"].encode())  # a device parses what it got
        assert answers["plain"]["body"] == plain
        # The address asked about names the account and its logins; nothing else changes.
        assert answers["named"]["body"] == named.replace(autoconfig.ADDRESS, f"alice@{d}")
        assert answers["named-at"]["body"] == named.replace(autoconfig.ADDRESS, f"bob.x+y@{d}")
        mail = plistlib.loads(answers["named"]["body"].encode())["PayloadContent"][0]
        assert mail["EmailAddress"] == mail["IncomingMailServerUsername"] == f"alice@{d}"
        # Not plainly an address: nothing of it is echoed, the device asks.
        assert answers["markup"]["body"] == plain
        # The variant is not served on its own.
        assert answers["variant-direct"]["status"] == 404
