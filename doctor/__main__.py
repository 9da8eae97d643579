"""python -m doctor --stack STACK --outputs FILE [--ssh DEST] ...: status checks of a deployed host.

    pulumi stack output --json --stack prod > outputs.json
    python -m doctor --stack prod --outputs outputs.json --ssh sams@10.100.0.2
    python -m doctor docs [--check]     # write (or check) docs/doctor.md

Prints the report; exits 1 when any finding fails, 2 on bad usage. See docs/doctor.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from doctor import checks, probe, report  # noqa: E402
from doctor.expect import expected  # noqa: E402

DOCS = PROJECT / "docs" / "doctor.md"


def load_settings(stack: str) -> Any:
    """The stack's validated settings from Pulumi.<stack>.yaml (the doctor reads no secret)."""
    from settings.stackfile import read_stack

    return read_stack(stack, PROJECT)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m doctor", description=__doc__.split("\n")[0])
    p.add_argument("--stack", required=True, help="the stack (Pulumi.<stack>.yaml and its mail list)")
    p.add_argument("--outputs", required=True, help="`pulumi stack output --json` of the stack ('-': stdin)")
    p.add_argument("--resolver", help="ask this DNS server (address) instead of the system's resolver")
    p.add_argument("--address", help="probe this address instead of the publicIpv4 output")
    p.add_argument("--cafile", help="trust these CA certificates (PEM) instead of the system's")
    host = p.add_mutually_exclusive_group()
    host.add_argument("--ssh", metavar="DEST", help="host facts over `ssh DEST` (e.g. sams@10.100.0.2)")
    host.add_argument("--host-facts", metavar="FILE", help="host facts already gathered (doctor/hostscript.py JSON)")
    p.add_argument("--relay-rcpt", default=probe.DEFAULT_RELAY_RCPT, help="a foreign address for the relay test")
    p.add_argument("--outbound-target", default=probe.DEFAULT_OUTBOUND, help="an MX the host should reach on 25")
    p.add_argument("--helo", default="doctor.invalid", help="the name the probe greets port 25 with")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per connection or query")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="list the ok findings too")
    return p


def docs(argv: list[str]) -> int:
    text = report.markdown()
    if "--check" in argv:
        if not DOCS.exists() or DOCS.read_text() != text:
            print(f"{DOCS} is out of date: python -m doctor docs", file=sys.stderr)
            return 1
        return 0
    DOCS.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["docs"]:
        return docs(argv[1:])
    args = parser().parse_args(argv)
    outputs = json.loads(sys.stdin.read() if args.outputs == "-" else Path(args.outputs).read_text())
    plan = expected(args.stack, load_settings(args.stack), outputs)
    opts = probe.ProbeOptions(
        address=args.address or plan.ipv4,
        resolver=args.resolver,
        cafile=args.cafile,
        helo=args.helo,
        relay_rcpt=args.relay_rcpt,
        outbound_target=args.outbound_target,
        timeout=args.timeout,
    )
    host: dict[str, object] | None = None
    host_error = ""
    if args.host_facts:
        host = json.loads(Path(args.host_facts).read_text())
    elif args.ssh:
        try:
            host = probe.gather_host(plan, opts, probe.ssh_runner(args.ssh))
        except (OSError, RuntimeError, ValueError) as exc:
            host_error = f"no host facts over ssh {args.ssh}: {exc}"
    observations = probe.observe(plan, opts, host, host_error)
    findings = checks.evaluate(plan, observations, datetime.now(UTC))
    print(report.to_json(findings) if args.json else report.text(findings, verbose=args.verbose), end="")
    return checks.exit_code(findings)


if __name__ == "__main__":
    sys.exit(main())
