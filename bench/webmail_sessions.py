"""Webmail under ten people at once, in real browsers: the memory it takes and how long a login takes.

    sudo .venv/bin/python -m bench.webmail_sessions [--sessions 10]

A fresh lab host (webmail on, exposure vpn), a known password per user (lab/world.py), each user
logged in once (their Roundcube record exists, as for anyone who came before); then
`--sessions` headless Chromiums (lab/browser.py) in the VPN peer's namespace, all started before any
logs in, each logging in through the form, waiting for its INBOX list, opening a message, and going
back to the list. Meanwhile the PSS of PHP-FPM (master and children), Radicale, nginx and Dovecot on
the host is sampled every 0.5 s; printed: idle before, the peak, right after, and 15 s later (when
PHP-FPM's ondemand children have gone), and the seconds from each login click to the INBOX listed.
The figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.fresh import fresh_lab
from bench.mail_path import ContainerCgroup, pss_kib
from bench.record import record
from components.dav.plan import UNIT as DAV_UNIT
from components.webmail.plan import PHP_FPM_UNIT
from lab import acme, browser
from lab.hostcmd import WAIT_RSPAMD, sh
from lab.spec import NAMES
from lab.world import DOMAIN, USERS, known_passwords
from lab.world import subject as make_subject

UNITS = (f"{PHP_FPM_UNIT}.service", f"{DAV_UNIT}.service", "nginx.service", "dovecot.service")
SAMPLE_S = 0.5


def sampled(cg: ContainerCgroup, stop: threading.Event, out: list[dict[str, int]]) -> None:
    while not stop.is_set():
        pids = cg.pids()
        out.append({u: pss_kib(pids.get(u, [])) for u in UNITS})
        stop.wait(SAMPLE_S)


def snapshot(cg: ContainerCgroup) -> dict[str, int]:
    pids = cg.pids()
    return {u: pss_kib(pids.get(u, [])) for u in UNITS}


def session(lab: Any, ca: str, user: str, password: str, marker: str, n: int, go: threading.Barrier) -> float:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    host = str(lab.settings.config.hostname)
    artifacts = browser.artifacts_dir(f"bench-webmail-{n}")
    with browser.browser(NAMES.ns_admin, host_map={host: lab.spec.vpn_host}, ca_pem=ca, artifacts=artifacts) as b:
        assert b.load(f"https://{host}/") is None
        b.wait(30).until(EC.presence_of_element_located((By.NAME, "_user")))
        b.driver.find_element(By.NAME, "_user").send_keys(user)
        b.driver.find_element(By.NAME, "_pass").send_keys(password)
        go.wait(timeout=120)  # every browser is up: the logins start together
        clicked = time.monotonic()
        b.driver.find_element(By.CSS_SELECTOR, "#rcmloginsubmit, button[type=submit]").click()
        try:
            b.wait(60).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#messagelist tbody tr")))
        except Exception as exc:
            b.shot("failed")
            raise RuntimeError(f"{user}: no INBOX list after 60 s: {b.driver.title!r}: {b.text()[:300]!r}") from exc
        seconds = time.monotonic() - clicked
        b.driver.find_element(By.XPATH, f"//tr[contains(., '{marker}')]").click()
        b.wait(30).until(EC.frame_to_be_available_and_switch_to_it((By.ID, "messagecontframe")))
        b.driver.switch_to.default_content()
        if n == 0:
            b.shot("inbox")
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10)
    args = parser.parse_args()
    if not 1 <= args.sessions <= 20:
        raise SystemExit("--sessions: 1 to 20 (each is a Chromium on this machine)")
    tmp = Path(tempfile.mkdtemp(prefix="samsbench-"))
    rows: list[tuple[str, str]] = []
    try:
        with fresh_lab(tmp / "lab") as lab, known_passwords(lab) as passwords:
            ca = acme.issuer_pems(lab.paths, lab.spec.inet_ipv4)
            marker = make_subject("bench")
            users = [u for u in USERS if u.endswith(f"@{DOMAIN}")]
            sh(lab, WAIT_RSPAMD)  # the apply has just restarted it: a message meanwhile would wait in the queue
            for user in users:  # one message each to open, in the INBOX before any browser starts
                sh(lab, f"printf 'Subject: {marker}\\n\\nhello\\n' | /usr/sbin/sendmail -f root@{DOMAIN} {user}")
            for user in users:
                sh(lab, f"for i in $(seq 120); do doveadm search -u {user} mailbox INBOX header subject {marker} "
                        f"| grep -q . && exit 0; sleep 0.5; done; exit 1")  # fmt: skip
            # Each user logs in once first: Roundcube creates a user's record at the first login, and two
            # first logins in the same second race for it (the loser gets the login page again and a
            # "UNIQUE constraint failed" in the log, seen here). People who come back are the case measured.
            for n, user in enumerate(users):
                session(lab, ca, user, passwords[user], marker, 100 + n, threading.Barrier(1))
            cg = ContainerCgroup(int(lab.paths.nspawn_pid.read_text().strip()))
            time.sleep(20)  # any PHP-FPM child from the apply's checks and the first logins is gone
            idle = snapshot(cg)
            samples: list[dict[str, int]] = []
            stop = threading.Event()
            sampler = threading.Thread(target=sampled, args=(cg, stop, samples), daemon=True)
            sampler.start()
            go = threading.Barrier(args.sessions)
            times: list[float] = []
            errors: list[str] = []

            def one(n: int) -> None:
                user = users[n % len(users)]
                try:
                    times.append(session(lab, ca, user, passwords[user], marker, n, go))
                except Exception as exc:  # reported below: the bench fails
                    errors.append(f"session {n}: {exc!r}")

            threads = [threading.Thread(target=one, args=(n,)) for n in range(args.sessions)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            after = snapshot(cg)
            time.sleep(15)
            later = snapshot(cg)
            stop.set()
            sampler.join(timeout=5)
            if errors or len(times) != args.sessions:
                # What the host said meanwhile: Roundcube's errors, Dovecot's refusals.
                said = sh(lab, "{ journalctl -q --no-pager --since -4min -t roundcube; "
                               "journalctl -q --no-pager --since -4min -u dovecot; } "
                               "| grep -iE 'error|fail|maximum' | tail -20", check=False)  # fmt: skip
                raise SystemExit("sessions failed: " + "; ".join(errors) + "\nhost log:\n" + said)
            peak = max(samples, key=lambda s: sum(s.values()))

            def mib(s: dict[str, int]) -> str:
                parts = ", ".join(f"{u.removesuffix('.service')} {k / 1024:.1f}" for u, k in s.items())
                return f"{sum(s.values()) / 1024:.1f} ({parts})"

            rows += [
                ("PSS idle before (MiB)", mib(idle)),
                (f"PSS at the peak of {args.sessions} concurrent browser sessions (MiB)", mib(peak)),
                ("PSS right after (MiB)", mib(after)),
                ("PSS 15 s later (MiB)", mib(later)),
                (
                    f"login click to INBOX listed, {args.sessions} at once: median / max (s)",
                    f"{statistics.median(times):.2f} / {max(times):.2f}",
                ),
            ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    notes = (
        "Debian's Chromium (headless, one per session) in the lab's VPN peer namespace; PSS from "
        "/proc/<pid>/smaps_rollup of the host's units, sampled every 0.5 s; the users' mail is one message each."
    )
    record(f"Webmail: {args.sessions} concurrent browser sessions", rows, notes)


if __name__ == "__main__":
    main()
