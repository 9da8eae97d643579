"""Journal forwarding on the lab host (sams:monitoring.journalUploadUrl, docs/logs.md), with real
daemons at both ends: Debian 13's systemd-journal-upload on the host, and the collector docs/logs.md
describes, systemd-journal-remote, on the hub's side of the tunnel (lab/journalremote.py, in
sams-admin, listening on the hub's WireGuard address only):

* a line logged on the host reaches the collector's journal files within a bounded time, sent from
  the host's tunnel address over wg0;
* the collector going away for longer than systemd's default start limit tolerates loses nothing:
  the uploader keeps trying and sends what was logged meanwhile once the collector is back;
* the memory the uploader takes (PSS);
* the setting off stops and disables the uploader and leaves none of its files.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from components.journal.plan import CONFIG, DROPIN, UNIT
from lab import journalremote
from lab.hostcmd import sh
from lab.session import Lab, up_with
from settings.stack import JOURNAL_REMOTE_PORT

pytestmark = pytest.mark.lab

TAG = "sams-journal-test"
# Mode external: the least of monitoring that forwarding needs (node_exporter and the health checks).
MONITORING: dict[str, Any] = {"enabled": True, "mode": "external"}
# How long a logged line may take to reach the collector: the uploader follows the journal as it grows.
ARRIVAL_S = 30.0


def url(lab: Lab) -> str:
    return f"http://{lab.spec.vpn_hub}:{JOURNAL_REMOTE_PORT}"


def log_token(lab: Lab) -> str:
    token = f"journal-{uuid.uuid4().hex}"
    sh(lab, f"logger -t {TAG} {token}")
    return token


def received(lab: Lab, token: str) -> list[dict[str, Any]]:
    return [e for e in journalremote.entries(lab.paths, TAG) if e.get("MESSAGE") == token]


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> tuple[Any, float]:
    """check()'s first truthy value and the seconds it took; fails after `timeout`."""
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def unit_state(lab: Lab) -> dict[str, str]:
    props = "ActiveState,SubState,NRestarts,UnitFileState,After,StartLimitIntervalUSec,MainPID"
    out = sh(lab, f"systemctl show -p {props} {UNIT}.service")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def forwarded(lab: Lab) -> Iterator[Lab]:
    journalremote.start(lab.paths, lab.spec.vpn_hub)
    try:
        up_with(lab, {"sams:monitoring": {**MONITORING, "journalUploadUrl": url(lab)}})
        yield lab
    finally:
        journalremote.stop(lab.paths)
        up_with(lab, {})  # the stack's own settings again, for the modules after this one


def test_a_line_logged_on_the_host_reaches_the_collector(forwarded: Lab) -> None:
    lab = forwarded
    token = log_token(lab)
    entries, took = wait_for("the token in the collector's journal", lambda: received(lab, token), ARRIVAL_S)
    print(f"\nlogged on the host, in the collector's journal after {took:.1f} s")
    assert len(entries) == 1, entries
    assert entries[0]["_HOSTNAME"] == sh(lab, "hostname").strip()
    # The first start sent the journal from its oldest entry on, not only what came after it.
    host_first = json.loads(sh(lab, "journalctl -o json --no-pager | head -n 1"))
    sent_first = journalremote.oldest(lab.paths)
    print(f"the collector's oldest entry: {sent_first.get('MESSAGE')!r}; the host's: {host_first.get('MESSAGE')!r}")
    assert sent_first["__REALTIME_TIMESTAMP"] == host_first["__REALTIME_TIMESTAMP"]


def test_the_journal_travels_over_the_tunnel(forwarded: Lab) -> None:
    lab = forwarded
    # The daemon's own view of its configuration: the drop-in's URL, the hub's tunnel address.
    config = sh(lab, "systemd-analyze cat-config systemd/journal-upload.conf")
    assert f"URL={url(lab)}" in config and CONFIG in config, config
    # The host routes the hub's address into wg0 ...
    assert " dev wg0 " in sh(lab, f"ip route get {lab.spec.vpn_hub}"), "the hub is not routed through wg0"
    # ... and the collector (listening on that address only, in sams-admin) saw the host's tunnel
    # address as the sender: one file, named after it.
    assert journalremote.files(lab.paths) == [f"remote-{lab.spec.vpn_host}.journal"]
    state = unit_state(lab)
    assert state["ActiveState"] == "active" and state["UnitFileState"] == "enabled", state
    assert "wg-quick@wg0.service" in state["After"].split(), state


def test_a_collector_outage_loses_nothing(forwarded: Lab) -> None:
    """Longer than systemd's default start limit (5 starts in 10 s) would tolerate: the uploader
    stays alive or restarting, never failed, and sends what was logged meanwhile afterwards."""
    lab = forwarded
    journalremote.stop(lab.paths)
    try:
        before = int(unit_state(lab)["NRestarts"])
        token = log_token(lab)
        time.sleep(25)
        state = unit_state(lab)
        print(f"\nafter 25 s without a collector: {state['ActiveState']}/{state['SubState']}, "
              f"{int(state['NRestarts']) - before} restarts")  # fmt: skip
        assert state["ActiveState"] != "failed", state
        assert state["StartLimitIntervalUSec"] == "0", state
        assert received(lab, token) == []
    finally:
        journalremote.start(lab.paths, lab.spec.vpn_hub)
    # The longest retry delay is a minute (the unit's RestartMaxDelaySec).
    _, took = wait_for("the line logged during the outage", lambda: received(lab, token), 90.0)
    print(f"sent {took:.1f} s after the collector came back")


def test_the_memory_the_uploader_takes(forwarded: Lab) -> None:
    lab = forwarded
    script = (
        f"for p in $(cat /sys/fs/cgroup/system.slice/{UNIT}.service/cgroup.procs); do "
        "awk '/^Pss:/ {print $2}' /proc/$p/smaps_rollup; done"
    )
    kib = [int(v) for v in sh(lab, script).split()]
    print(f"\n{UNIT}: {len(kib)} process(es), PSS {sum(kib) / 1024:.1f} MiB")
    assert kib and 0 < sum(kib) / 1024 < 32


def test_the_setting_off_stops_the_uploader_and_removes_its_files(forwarded: Lab) -> None:
    lab = forwarded
    up_with(lab, {"sams:monitoring": MONITORING})
    state = unit_state(lab)
    assert (state["ActiveState"], state["UnitFileState"]) == ("inactive", "disabled"), state
    assert sh(lab, f"ls {CONFIG} {DROPIN} 2>&1 || true").count("No such") == 2
    assert "URL=http" not in sh(lab, "systemd-analyze cat-config systemd/journal-upload.conf")
    # The package's own journal-upload.conf is whole (dpkg --verify names a changed conffile).
    assert "journal-upload.conf" not in sh(lab, "dpkg --verify systemd-journal-remote", check=False)
    # Nothing logged now reaches the collector (which is still listening).
    token = log_token(lab)
    time.sleep(10)
    assert received(lab, token) == []
