"""Idle memory of a freshly built host, before any mail (issue 21 item 12).

    sudo .venv/bin/python -m bench.idle_memory [--quiet SECONDS] [--monitoring [--scrape SECONDS]]

Boots a new lab host from the program's user-data (refused if a lab runs), applies every step,
waits `--quiet` seconds (default 110, Postfix's max_idle plus a margin) without any mail, then
prints the PSS of the mail stack by unit and of the whole host container, as bench.mail_path
counts them. `--monitoring` applies the lab stack with sams:monitoring on (node_exporter,
Prometheus, Alertmanager on the host) and prints their PSS beside the stack's, and the CPU each
monitoring unit used per scrape over the quiet time (`--scrape`: its interval, default the setting's
60 s; issue 22 asks for 15 s and an hour: `--monitoring --scrape 15 --quiet 3600`).

This is the figure a new owner meets first: no message has passed, so the per-connection
processes have never run, but every daemon's start-up allocations are there.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.fresh import fresh_lab
from bench.mail_path import STACK, ContainerCgroup, pss_kib
from bench.record import record
from components.dav.plan import UNIT as DAV_UNIT
from components.webmail.plan import PHP_FPM_UNIT
from lab.spec import StatePaths


def by_size(pss: dict[str, int], limit: int | None = None) -> str:
    """'unit MiB, ...', largest first."""
    ranked = sorted(pss.items(), key=lambda i: -i[1])[:limit]
    return ", ".join(f"{u.removesuffix('.service')} {k / 1024:.0f}" for u, k in ranked)


MONITORING = (
    "prometheus-node-exporter.service",
    "prometheus.service",
    "prometheus-alertmanager.service",
    # The health checks' prober (components/monitoring/health.py).
    "prometheus-blackbox-exporter.service",
)


# The webmail's own daemons (sams:webmail, on by default): Roundcube's PHP-FPM and Radicale. nginx was
# there before them (MTA-STS) and stays in the rest.
WEBMAIL = (f"{PHP_FPM_UNIT}.service", f"{DAV_UNIT}.service")


def measure(paths: StatePaths, quiet: float, scrape: float | None = None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    cg = ContainerCgroup(int(paths.nspawn_pid.read_text().strip()))
    cpu_before = cg.units()
    time.sleep(quiet)
    cpu = {u: n - cpu_before.get(u, 0) for u, n in cg.units().items()}
    pids = cg.pids()
    by_unit = {unit: pss_kib(procs) for unit, procs in pids.items()}
    stack = {u: k for u, k in by_unit.items() if u in STACK}
    when = f"fresh host, {quiet:.0f} s after apply, before any mail"
    rows.append((f"idle PSS {when}: mail stack incl. Docker, PostgreSQL (MiB)", f"{sum(stack.values()) / 1024:.0f}"))
    rows.append(("  by unit (MiB)", by_size(stack)))
    rspamd = pids.get("rspamd.service", [])
    # Whether Rspamd holds private copies of its compiled Hyperscan databases (docs/performance.md).
    rows.append(
        ("  Rspamd anonymous / mapped files (MiB)",
         f"{pss_kib(rspamd, 'Pss_Anon') / 1024:.0f} / {pss_kib(rspamd, 'Pss_File') / 1024:.0f}")
    )  # fmt: skip
    mon = {u: k for u, k in by_unit.items() if u in MONITORING}
    if mon:
        rows.append(("idle PSS of monitoring (MiB)", f"{sum(mon.values()) / 1024:.0f}"))
        rows.append(("  by unit (MiB)", by_size(mon)))
        # Go binaries: much of their PSS is their own executable's pages, clean and read back from
        # disk if the kernel takes them under memory pressure; the anonymous part is what stays.
        rows.append(
            ("  of which anonymous / mapped files, by unit (MiB)", ", ".join(
                f"{u.removesuffix('.service')} {pss_kib(pids[u], 'Pss_Anon') / 1024:.0f} / "
                f"{pss_kib(pids[u], 'Pss_File') / 1024:.0f}" for u in MONITORING if u in pids))
        )  # fmt: skip
        if scrape:
            scrapes = quiet / scrape
            per = {u.removesuffix(".service"): cpu.get(u, 0) / scrapes / 1000 for u in MONITORING}
            rows.append(
                (f"CPU per scrape ({scrape:.0f} s interval, {scrapes:.0f} scrapes; ms)", ", ".join(
                    f"{u} {ms:.1f}" for u, ms in per.items()))
            )  # fmt: skip
    web = {u: k for u, k in by_unit.items() if u in WEBMAIL}
    if web:
        rows.append(("idle PSS of webmail and calendars (MiB)", f"{sum(web.values()) / 1024:.0f}"))
        rows.append(("  by unit (MiB)", by_size(web)))
    rest = {u: k for u, k in by_unit.items() if u not in STACK and u not in MONITORING and u not in WEBMAIL}
    rows.append(("idle PSS of the rest of the host (MiB)", f"{sum(rest.values()) / 1024:.0f}"))
    rows.append(("  largest (MiB)", by_size(rest, 6)))
    rows.append((f"idle PSS {when}: whole host container (MiB)", f"{sum(by_unit.values()) / 1024:.0f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", type=float, default=110.0, help="seconds idle after the apply")
    parser.add_argument("--monitoring", action="store_true", help="with sams:monitoring on")
    parser.add_argument("--scrape", type=int, default=None, help="monitoring's scrape interval in seconds")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="samsbench-"))
    monitoring: dict[str, object] = {"enabled": True}
    if args.scrape:
        monitoring["scrapeIntervalSeconds"] = args.scrape
    overrides = {"sams:monitoring": monitoring} if args.monitoring else {}
    try:
        with fresh_lab(tmp / "lab", overrides) as lab:
            rows = measure(lab.paths, args.quiet, (args.scrape or 60) if args.monitoring else None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    notes = (
        "PSS from /proc/<pid>/smaps_rollup of every process in the host container's cgroup, by systemd "
        "unit; the mail stack is bench.mail_path's STACK (Postfix, Dovecot, OpenDKIM, Rspamd, Redis, "
        "Unbound, dockerd, containerd with its shims, sams-postgres and the PostgreSQL container)."
    )
    record("Idle memory of a fresh host" + (" with monitoring" if args.monitoring else ""), rows, notes)


if __name__ == "__main__":
    main()
