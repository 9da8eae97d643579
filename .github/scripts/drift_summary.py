"""Turn `pulumi refresh --preview-only --expect-no-changes --json` into a drift report.

Writes a Markdown table to $GITHUB_STEP_SUMMARY (or stdout) and one `::error::` annotation per
drifted resource, naming its type, name, operation and the changed property *keys*. Values are
never printed, so no secret can leak through the report. Exit status: 0 in sync, 1 drifted,
otherwise the CLI's own failure code.

    python .github/scripts/drift_summary.py --stack prod --exit-code "$rc" refresh.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Operations that mean "the cloud differs from the state"; same/read/refresh with no diff are in sync.
IN_SYNC_OPS = frozenset({"same", "read", "refresh"})


@dataclass(frozen=True)
class Drift:
    urn: str
    op: str
    keys: tuple[str, ...]

    @property
    def type(self) -> str:
        parts = self.urn.split("::")
        return parts[2].rsplit("$", 1)[-1] if len(parts) > 3 else "?"

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


def drifted(report: dict[str, Any]) -> list[Drift]:
    found = []
    for step in report.get("steps") or []:
        op = str(step.get("op", ""))
        keys = set(step.get("diffReasons") or []) | set((step.get("detailedDiff") or {}).keys())
        if op in IN_SYNC_OPS and not keys:
            continue
        if step.get("urn", "").endswith("::pulumi:pulumi:Stack") or "pulumi:providers:" in step.get("urn", ""):
            continue
        found.append(Drift(str(step.get("urn", "?")), op or "update", tuple(sorted(keys))))
    return found


def errors(report: dict[str, Any]) -> list[str]:
    return [
        str(d.get("message", "")).strip()
        for d in report.get("diagnostics") or []
        if d.get("severity") == "error" and d.get("message")
    ]


def markdown(stack: str, drifts: list[Drift], errs: list[str], parsed: bool) -> str:
    lines = [f"### Drift check: `{stack}`", ""]
    if not parsed:
        lines.append("The refresh did not produce a JSON report; see the job log.")
    elif drifts:
        lines += [
            f"**{len(drifts)} resource(s) drifted** from the state. Run `pulumi refresh --stack {stack}` to accept "
            f"the cloud's values, or `pulumi up --stack {stack}` to put the program's back.",
            "",
            "| Resource | Type | Operation | Changed properties |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| `{d.name}` | `{d.type}` | {d.op} | {', '.join(d.keys) or '-'} |" for d in drifts]
    else:
        lines.append("No drift: every resource matches the state.")
    if errs:
        lines += ["", "Errors:", ""] + [f"- {e.splitlines()[0]}" for e in errs]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("report", type=Path)
    parser.add_argument("--stack", required=True)
    parser.add_argument("--exit-code", type=int, default=0, help="pulumi refresh's own exit code")
    args = parser.parse_args(argv)

    try:
        report = json.loads(args.report.read_text() or "{}")
        parsed = isinstance(report, dict)
    except (OSError, json.JSONDecodeError):
        report, parsed = {}, False
    drifts = drifted(report) if parsed else []
    errs = errors(report) if parsed else []

    text = markdown(args.stack, drifts, errs, parsed)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    for d in drifts:
        changed = ", ".join(d.keys) or "the resource itself"
        print(f"::error title=Drift in {args.stack}::{d.type} {d.name} ({d.op}): {changed}")

    if drifts:
        return 1
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
