#!/usr/bin/python3
"""sams-logs: the saved log queries of a SAMS host (installed by SAMS; runbook: docs/logs.md).

Usage: sams-logs QUERY [--since 1h] [--json]
       sams-logs counters --state FILE [--hold SECONDS]

  auth-failures  failed logins by address and login: IMAP and POP3 (Dovecot) and SMTP AUTH (Postfix)
  rejects        mail refused during the SMTP session, by reason (Postfix, Rspamd's milter)
  deliveries     delivery results (sent, deferred, bounced) by recipient domain
  senders        messages submitted on 587/465, by login

It reads Postfix's and Dovecot's journal (journalctl -o json) and counts; nothing is kept. --since
takes journalctl's forms too ("today", "2026-12-07 08:00"), or a number with s, m, h or d for
"that long ago".

`counters` is what sams-metrics asks every minute (the monitoring component): the same queries as
running totals kept in FILE, each run adding only the journal entries after the cursor it saved
(the first run only finds the journal's end), printed as JSON. A key met for the first time is printed at
0 for --hold seconds and counted after, as counters should start. Python's standard library only.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

# The units whose journal is read: written in when SAMS installs the tool (components/mail/services.py).
UNITS: tuple[str, ...] = ()

# Dovecot 2.4: "imap-login: Login aborted: Logged out (auth failed, 1 attempts in 2 secs): user=<a@b>, method=PLAIN,
# rip=198.51.100.7, lip=..."
DOVECOT_FAILED = re.compile(
    r"^(?P<service>imap|pop3)-login: (?:Login aborted|Disconnected): .*\(auth failed, (?P<n>\d+) attempts?"
    r".*?user=<(?P<user>[^>]*)>.*?rip=(?P<addr>[0-9A-Fa-f.:]+)"
)
# Postfix: "warning: unknown[198.51.100.7]: SASL PLAIN authentication failed: ..., sasl_username=a@b"
POSTFIX_FAILED = re.compile(
    r"^warning: [^\[\s]*\[(?P<addr>[^\]]+)\]: SASL \S+ authentication failed: (?P<why>.*?)"
    r"(?:, sasl_username=(?P<user>\S+))?$"
)
# "NOQUEUE: reject: RCPT from x[1.2.3.4]: 550 5.1.1 <a@b>: Recipient address rejected: ...; from=<..> to=<..>"
REJECT = re.compile(r"(?:NOQUEUE: reject|milter-reject): \S+ from [^:]*: (?P<reply>[^;]*)")
# "QID: to=<a@b>, relay=..., delay=1, delays=..., dsn=2.0.0, status=sent (250 ...)"
DELIVERY = re.compile(r"^\w+: to=<[^@>]*@(?P<domain>[^>]+)>,.* status=(?P<status>\w+)")
# "QID: client=unknown[1.2.3.4], sasl_method=PLAIN, sasl_username=a@b"
SUBMITTED = re.compile(r"^\w+: client=.*, sasl_username=(?P<user>\S+)")


def since_arg(text: str) -> str:
    """'90m' -> journalctl's '-90m'; anything else goes to journalctl as it is."""
    return f"-{text}" if re.fullmatch(r"\d+[smhd]", text) else text


def read_journal(start: list[str]) -> tuple[list[tuple[str, str]], str | None]:
    """(syslog identifier, message) of the Postfix and Dovecot lines from `start` (journalctl's
    --since or --after-cursor), and the cursor of the last entry read (None: nothing read)."""
    if not UNITS:
        raise SystemExit("sams-logs: no units to read (install it with SAMS)")
    argv = ["journalctl", "--no-pager", "-o", "json", *start]
    for unit in UNITS:
        argv += ["-u", unit]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"sams-logs: journalctl failed: {proc.stderr.strip()}")
    lines, cursor = [], None
    for line in proc.stdout.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        cursor = entry.get("__CURSOR", cursor)
        message = entry.get("MESSAGE")
        if isinstance(message, str):
            lines.append((str(entry.get("SYSLOG_IDENTIFIER", "")), message))
    return lines, cursor


def journal(since: str) -> Iterator[tuple[str, str]]:
    """(syslog identifier, message) of every Postfix and Dovecot line since then."""
    yield from read_journal(["--since", since_arg(since)])[0]


def auth_failures(lines: Iterator[tuple[str, str]]) -> Counter[tuple[str, ...]]:
    """(service, address, login) -> failed attempts."""
    counts: Counter[tuple[str, ...]] = Counter()
    for ident, msg in lines:
        if ident == "dovecot" and (m := DOVECOT_FAILED.search(msg)):
            counts[(m["service"], m["addr"], m["user"] or "?")] += int(m["n"])
        elif ident.startswith("postfix/") and (m := POSTFIX_FAILED.search(msg)):
            if "authentication server" in m["why"] or m["user"] in (None, "(unavailable)"):
                continue  # Dovecot was away: no password was checked (as the fail2ban filter counts)
            counts[("smtp-auth", m["addr"], m["user"])] += 1
    return counts


def rejects(lines: Iterator[tuple[str, str]]) -> Counter[tuple[str, ...]]:
    """(reply without its addresses) -> refusals."""
    counts: Counter[tuple[str, ...]] = Counter()
    for ident, msg in lines:
        if ident.startswith("postfix/") and (m := REJECT.search(msg)):
            counts[(re.sub(r"<[^>]*>: ?", "", m["reply"]).strip(),)] += 1
    return counts


def deliveries(lines: Iterator[tuple[str, str]]) -> Counter[tuple[str, ...]]:
    """(recipient domain, status) -> recipients."""
    counts: Counter[tuple[str, ...]] = Counter()
    for ident, msg in lines:
        if ident.startswith("postfix/") and (m := DELIVERY.search(msg)):
            counts[(m["domain"].lower(), m["status"])] += 1
    return counts


def senders(lines: Iterator[tuple[str, str]]) -> Counter[tuple[str, ...]]:
    """(login) -> messages submitted."""
    counts: Counter[tuple[str, ...]] = Counter()
    for ident, msg in lines:
        if ident.startswith(("postfix/submission/", "postfix/submissions/")) and (m := SUBMITTED.search(msg)):
            counts[(m["user"],)] += 1
    return counts


QUERIES: dict[str, tuple[Callable[[Iterator[tuple[str, str]]], Counter[tuple[str, ...]]], tuple[str, ...]]] = {
    "auth-failures": (auth_failures, ("service", "address", "login")),
    "rejects": (rejects, ("reason",)),
    "deliveries": (deliveries, ("domain", "status")),
    "senders": (senders, ("login",)),
}


# The enhanced status code of a refusal ("550 5.1.1 ..." and a milter's "5.7.1 ..." alike): few values, each a cause.
STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def totals(lines: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """The counters' additions from these lines: refusals by enhanced status code, delivery results
    by status (sent, deferred, bounced, expired; the domains stay out: there are too many), messages
    submitted by login, failed logins by service."""
    rejected: Counter[str] = Counter()
    for (reason,), n in rejects(iter(lines)).items():
        found = STATUS.search(reason)
        rejected[found.group(1) if found else "unknown"] += n
    delivered: Counter[str] = Counter()
    for (_domain, status), n in deliveries(iter(lines)).items():
        delivered[status] += n
    failed: Counter[str] = Counter()
    for (service, _addr, _login), n in auth_failures(iter(lines)).items():
        failed[service] += n
    return {
        "rejects": dict(rejected),
        "deliveries": dict(delivered),
        "submitted": {login: n for (login,), n in senders(iter(lines)).items()},
        "auth_failures": dict(failed),
    }


def counters(state_path: Path, hold: float = 0.0, now: float | None = None) -> dict[str, dict[str, int]]:
    """The running totals in `state_path`, brought up to the end of the journal. One run at a time
    (a lock beside the file): the timer's run and the monitoring step's own must not count twice.

    A key met for the first time is printed at 0 for `hold` seconds, its count held back meanwhile:
    Prometheus's increase() sees no rise in a series whose first sample is already 4 (a login's first
    burst), so the 0 must last long enough to be scraped (sams-metrics passes two scrape intervals)."""
    now = time.time() if now is None else now
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with open(state_path.with_name(state_path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads(state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        cursor = state.get("cursor")
        lines: list[tuple[str, str]] = []
        last = None
        if cursor:
            try:
                lines, last = read_journal(["--after-cursor", cursor])
            except SystemExit:
                cursor = None  # the journal no longer knows it (vacuumed, or a new machine id)
        if not cursor:
            # Counting starts at the journal's end: what happened before counting began is not "the
            # last hour" of anything (a day's mail counted in one minute would read as a burst).
            _, last = read_journal(["--lines", "1"])
        totals_now: dict[str, dict[str, int]] = state.get("totals", {})
        # kind -> key -> [held count, first seen]
        held: dict[str, dict[str, list[float]]] = state.get("held", {})
        new: set[tuple[str, str]] = set()
        for kind, added in totals(lines).items():
            kept, waiting = totals_now.setdefault(kind, {}), held.setdefault(kind, {})
            for key, n in added.items():
                if key in waiting:
                    waiting[key][0] += n
                elif key in kept:
                    kept[key] += n
                else:
                    kept[key] = 0
                    waiting[key] = [n, now]
                    new.add((kind, key))
        for kind, waiting in held.items():
            for key, (count, since) in list(waiting.items()):
                if now - since >= hold and (kind, key) not in new:  # printed at 0 once at least
                    totals_now[kind][key] += int(count)
                    del waiting[key]
        state = {"cursor": last or cursor, "totals": totals_now, "held": {k: w for k, w in held.items() if w}}
        tmp = state_path.with_name(f".{state_path.name}.tmp")
        tmp.write_text(json.dumps(state, sort_keys=True))
        os.replace(tmp, state_path)
    return totals_now


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["counters"]:
        counting = argparse.ArgumentParser(prog="sams-logs counters")
        counting.add_argument("--state", required=True, type=Path, help="where the totals and the cursor are kept")
        counting.add_argument("--hold", type=float, default=0.0, help="seconds a new key stays at 0 (default 0)")
        args = counting.parse_args(argv[1:])
        print(json.dumps(counters(args.state, args.hold), sort_keys=True))
        return 0
    parser = argparse.ArgumentParser(prog="sams-logs", description=__doc__.split("\n\n")[0])
    parser.add_argument("query", choices=sorted(QUERIES))
    parser.add_argument("--since", default="1h", help="how far back (default 1h)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args(argv)
    count, columns = QUERIES[args.query]
    rows = count(journal(args.since)).most_common()
    if args.json:
        for key, n in rows:
            print(json.dumps({**dict(zip(columns, key, strict=True)), "count": n}))
        return 0
    if not rows:
        print(f"nothing since {args.since}")
        return 0
    widths = [max(len(c), *(len(k[i]) for k, _ in rows)) for i, c in enumerate(columns)]
    print("count  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for key, n in rows:
        print(f"{n:5d}  " + "  ".join(v.ljust(w) for v, w in zip(key, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
