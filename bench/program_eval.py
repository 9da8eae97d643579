"""Program evaluation: the prod stack under mocks vs. the bare import of the SDKs it uses.

    python -m bench.program_eval [--repeat N]

Figures: bare SDK import time; whole evaluation (imports included) and its ratio to the bare
import (goal <= 1.3x); extra time for 1,000 and 10,000 mailboxes (goal <= 2 s at 10,000).
Each figure is the best of N fresh interpreter runs (the cold first run is discarded by `best`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.record import record

PROJECT = Path(__file__).resolve().parents[1]
# What the prod stack (Vultr) imports: the SDK itself and the providers it uses.
SDKS = "import pulumi, pulumi_command, pulumi_cloudflare, ediri_vultr, pulumi_random, pulumi_tls"


def timed(code: str, cwd: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def project_with_users(users: int, domains: int) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="sams-bench-"))
    for name in ("__main__.py", "Pulumi.prod.yaml"):
        shutil.copy(PROJECT / name, tmp / name)
    for pkg in ("settings", "components", "cloudinit", "mockrun"):
        (tmp / pkg).symlink_to(PROJECT / pkg)
    per = users // domains
    lines = ["domains:"]
    for d in range(domains):
        domain = "example.org" if d == 0 else f"d{d}.example.net"
        lines += [f"  - name: {domain}", "    users:"]
        lines += [f"      - user{u}" for u in range(per)]
    (tmp / "stacks" / "prod").mkdir(parents=True)
    (tmp / "stacks" / "prod" / "mail_list.yml").write_text("\n".join(lines) + "\n")
    return tmp


def web_overrides(domains: int) -> dict[str, object]:
    """Beyond 33 domains one certificate cannot name every web host (settings refuse publicWeb):
    such a stack serves no web hosts and gets its certificate through DNS-01, as a user must set it."""
    if domains <= 33:
        return {}
    return {"sams:publicWeb": False, "sams:acme": {"challenge": "dns-01-cloudflare"}}


def run_list(users: int, domains: int, repeat: int) -> float:
    tmp = project_with_users(users, domains)
    code = (
        f"import sys; sys.path.insert(0, {str(tmp)!r}); import mockrun; from pathlib import Path; "
        f"mockrun.run('prod', project_dir=Path({str(tmp)!r}), secret_config=mockrun.TEST_SECRETS, "
        f"overrides={web_overrides(domains)!r})"
    )
    try:
        return timed(code, PROJECT, max(2, repeat // 2))
    finally:
        shutil.rmtree(tmp)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.repeat
    bare = timed(SDKS, PROJECT, n)
    evaluate = "import mockrun; mockrun.run('prod', secret_config=mockrun.TEST_SECRETS)"
    whole = timed(evaluate, PROJECT, n)
    rows = [
        ("bare SDK import (s)", f"{bare:.2f}"),
        ("prod stack evaluation, imports included (s)", f"{whole:.2f}"),
        ("ratio (goal <= 1.3)", f"{whole / bare:.2f}x"),
    ]
    # The mailboxes' own cost: N users over D domains vs. the same D domains with one user each
    # (each domain brings ~18 DNS records and a DKIM key, a per-domain cost reported separately).
    for users, domains in ((1000, 10), (10000, 50)):
        base = run_list(1 * domains, domains, n)
        full = run_list(users, domains, n)
        rows.append((f"{domains} domains x 1 user (s)", f"{base:.2f}"))
        rows.append((f"{domains} domains, {users:,} mailboxes (s)", f"{full:.2f}"))
        rows.append((f"extra for {users:,} mailboxes (goal <= 2 s at 10,000)", f"{full - base:+.2f}"))
        rows.append(
            (f"per-domain cost, {domains} domains vs. prod's 2 (s/domain)", f"{(base - whole) / (domains - 2):.3f}")
        )
    record("Program evaluation (issue 7.1)", rows)


if __name__ == "__main__":
    main()
