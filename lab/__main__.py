"""``python -m lab {up,apply,down,status,ssh}``: the SAMS lab, driven by the real program."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from lab.control import down, status, up
from lab.lock import machine_lock
from lab.proc import LabError
from lab.spec import state_paths
from lab.ssh import HostShell

# Another run (a test session, a second checkout) may hold the one lab of this machine.
LOCK_WAIT_S = 1200.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description="SAMS local lab (nspawn + WireGuard)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="boot a fresh lab host from the program's cloud-init, then apply every step")
    sub.add_parser("apply", help="run the program's remote steps that changed since the last apply")
    p_down = sub.add_parser("down", help="remove everything the lab made (idempotent)")
    p_down.add_argument(
        "--purge",
        action="store_true",
        help="also remove logs and dev keys (whole state dir)",
    )
    p_status = sub.add_parser("status", help="say what is running")
    p_status.add_argument("--json", action="store_true")
    p_ssh = sub.add_parser("ssh", help="shell or command on the host, through the tunnel")
    p_ssh.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if os.geteuid() != 0:
        print("the lab needs root (namespaces, nspawn)", file=sys.stderr)
        return 2
    try:
        if args.cmd in ("up", "apply"):
            with machine_lock(timeout=LOCK_WAIT_S):
                return _up_or_apply(args.cmd)
        if args.cmd == "down":
            with machine_lock(timeout=LOCK_WAIT_S):
                removed = down(purge=args.purge)
            print("removed: " + (", ".join(removed) if removed else "nothing (lab was not up)"))
        elif args.cmd == "status":
            info = status()
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                _print_status(info)
            return 0 if info["running"] else 3
        elif args.cmd == "ssh":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            return HostShell.from_state(state_paths()).interactive(command)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


def _up_or_apply(cmd: str) -> int:
    from lab import program

    paths = state_paths()
    keys = program.lab_keys(paths)
    run = program.lab_run(paths, keys)
    settings = program.lab_settings(keys)
    if cmd == "up":
        spec = program.spec_from_run(run, settings, keys)
        report = up(spec)
        print("up: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.timings.items()))
    result = program.apply(run, paths, images=(settings.config.database.image,))
    print(
        f"apply: {len(result.ran)} steps ran, {len(result.skipped)} unchanged, "
        f"{result.changed_files} files changed, services {result.services or 'none'} ({result.seconds:.1f}s)"
    )
    return 0


def _print_status(info: dict[str, object]) -> None:
    if not info["running"]:
        print("lab is down")
        return
    namespaces = info["namespaces"]
    assert isinstance(namespaces, dict)
    for ns, lines in namespaces.items():
        print(f"netns {ns}:")
        for line in lines:
            print(f"    {line}")
    container = info["container"]
    assert isinstance(container, dict)
    print(
        f"container: nspawn {container.get('nspawn_pids')} leader {container.get('leader_pid')} "
        f"system {container.get('system', '?')}"
    )
    if container.get("cloud_init"):
        print(f"cloud-init: {container['cloud_init']}")
    if info.get("wireguard"):
        print(str(info["wireguard"]).rstrip())
    for key, what in (
        ("dns_pid", "lab DNS (NSD)"),
        ("receiver_pid", "independent receiver"),
        ("acme_pid", "ACME (Pebble)"),
    ):
        if info.get(key):
            print(f"{what}: pid {info[key]}")
    target = info.get("ssh_target")
    if isinstance(target, dict):
        print(f"ssh: {target['user']}@{target['address']} from netns {target['netns']}")


if __name__ == "__main__":
    sys.exit(main())
