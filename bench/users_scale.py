"""Users at scale: what 10,000 mailboxes over 50 domains add to program evaluation (goal < 2 s).

    python -m bench.users_scale [--repeat N] [--vault]

Compares the lab stack with 50 domains x 200 users against the same 50 domains x 1 user, each
the best of N fresh interpreter runs under mocks (the users component registers ONE dynamic
resource and one step whatever the count). With --vault, also against an OpenBao dev server
holding 10,000 secrets, i.e. including the preview's read-only offboarding listing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import record

PROJECT = Path(__file__).resolve().parents[1]
DOMAINS = 50


def mail_list(path: Path, per_domain: int) -> Path:
    lines = ["domains:"]
    for d in range(DOMAINS):
        lines += [f"  - name: {'sams.test' if d == 0 else f'd{d}.sams.test'}", "    users:"]
        lines += [f"      - user{u}" for u in range(per_domain)]
    path.write_text("\n".join(lines) + "\n")
    return path


def timed(overrides: dict[str, Any], secrets: dict[str, str], repeat: int) -> float:
    code = (
        "import json, sys, mockrun; o = json.loads(sys.argv[1]); s = json.loads(sys.argv[2]); "
        "mockrun.run('lab', overrides=o, secret_config={**mockrun.TEST_SECRETS, **s})"
    )
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code, json.dumps(overrides), json.dumps(secrets)],
            cwd=PROJECT,
            check=True,
            capture_output=True,
        )
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--vault", action="store_true", help="also with 10,000 secrets in an OpenBao dev server")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sams-bench-users-"))
    try:
        # 50 domains cannot all have web hosts on one certificate (settings refuse it): no publicWeb,
        # DNS-01 certificates, as a user must set such a stack.
        web = {"sams:publicWeb": False, "sams:acme": {"challenge": "dns-01-cloudflare"}}
        small = {**web, "sams:mailList": str(mail_list(tmp / "small.yml", 1))}
        big = {**web, "sams:mailList": str(mail_list(tmp / "big.yml", 200))}
        base = timed(small, {}, args.repeat)
        large = timed(big, {}, args.repeat)
        rows = [
            ("50 domains x 1 user, evaluation (s)", f"{base:.2f}"),
            ("50 domains x 200 users, evaluation (s)", f"{large:.2f}"),
            ("added by 10,000 users (goal < 2 s)", f"{large - base:.2f}"),
        ]
        if args.vault:
            rows += with_vault(tmp, small, big, args.repeat)
        record("Users at scale (bench/users_scale.py)", rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def with_vault(tmp: Path, small: dict[str, Any], big: dict[str, Any], repeat: int) -> list[tuple[str, str]]:
    import socket

    import hvac

    from components.users.vault import parallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bao = shutil.which("bao") or str(Path(sys.executable).parent / "bao")
    proc = subprocess.Popen(
        [bao, "server", "-dev", "-dev-root-token-id=bench", f"-dev-listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        address = f"http://127.0.0.1:{port}"
        client = hvac.Client(url=address, token="bench")
        for _ in range(100):
            try:
                if client.sys.is_initialized():
                    break
            except Exception:
                time.sleep(0.1)
        kv = client.secrets.kv.v2
        names = [
            (f"{'sams.test' if d == 0 else f'd{d}.sams.test'}", f"user{u}") for d in range(DOMAINS) for u in range(200)
        ]
        parallel(
            lambda n: kv.create_or_update_secret(path=f"mail/users/{n[0]}/{n[1]}", secret={"password": "x"}), names
        )
        vault = {"sams:vault": {"address": address}}
        secrets = {"sams:vaultToken": "bench"}
        base = timed({**small, **vault}, secrets, repeat)
        large = timed({**big, **vault}, secrets, repeat)
        return [
            ("with Vault listing, 50 x 1 listed, 10,000 secrets (s)", f"{base:.2f}"),
            ("with Vault listing, 50 x 200 listed, 10,000 secrets (s)", f"{large:.2f}"),
        ]
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
