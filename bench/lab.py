"""The lab's figures (issue 3): fresh tree build, cached boot-to-SSH, full apply, no-change re-apply.

    sudo .venv/bin/python -m bench.lab [--skip-fresh-build]

Needs root and the lab's tools (`./run setup`). The fresh build goes into a throwaway cache
directory, so it measures a real mmdebstrap from the mirror; the boots use the normal cache.
A running lab is refused, not replaced.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.record import record
from lab import control, program, rootfs
from lab.lock import machine_lock
from lab.spec import StatePaths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-fresh-build", action="store_true", help="only the cached figures")
    args = parser.parse_args()
    with machine_lock(timeout=1200):
        control.clear_leftovers()
        if control.status()["running"]:
            raise SystemExit("a lab is up: `python -m lab down` first")
        rows = measure(skip_fresh_build=args.skip_fresh_build)
    record("Lab (issue 3)", rows)


def measure(*, skip_fresh_build: bool) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    root = Path(tempfile.mkdtemp(prefix="samsbench-"))
    paths = StatePaths(root)
    try:
        keys = program.lab_keys(paths)
        run = program.lab_run(paths, keys)
        settings = program.lab_settings(keys)
        spec = program.spec_from_run(run, settings, keys)
        if not skip_fresh_build:
            cache = Path(tempfile.mkdtemp(prefix="samsbench-cache-"))
            try:
                start = time.monotonic()
                rootfs.ensure_pristine(spec.packages, cache=cache)
                rows.append(("fresh tree build, mmdebstrap from the mirror (s)", f"{time.monotonic() - start:.1f}"))
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        rootfs.ensure_pristine(spec.packages)  # the normal cache, so `up` below is the cached case
        report = control.up(spec, paths=paths)
        rows.append(("cached up: extract tree (s)", f"{report.timings['tree']:.1f}"))
        rows.append(("cached up: boot to cloud-init done (s)", f"{report.timings['boot_to_cloud_init_done']:.1f}"))
        rows.append(("cached up: boot to SSH through the tunnel (s)", f"{report.timings['boot_to_ssh']:.1f}"))
        start = time.monotonic()
        evaluated = program.lab_run(paths, keys)
        rows.append(("program evaluation for the apply (s)", f"{time.monotonic() - start:.1f}"))
        program.image_tarball(settings.config.database.image)  # built once, outside the timing
        first = program.apply(evaluated, paths, images=(settings.config.database.image,))
        rows.append(("full apply (s)", f"{first.seconds:.2f}"))
        rows.append(("full apply: steps run / files changed", f"{len(first.ran)} / {first.changed_files}"))
        again = program.apply(evaluated, paths)
        rows.append(("no-change re-apply (s)", f"{again.seconds:.3f}"))
        rows.append(("no-change re-apply: steps run / skipped", f"{len(again.ran)} / {len(again.skipped)}"))
    finally:
        control.down(purge=True, paths=paths)
        shutil.rmtree(root, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
