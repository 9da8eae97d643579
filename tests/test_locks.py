"""The dependency locks: requirements.lock (the program) and requirements-dev.lock (what ./run and
CI install, with --require-hashes) pin every package with its hashes, within the ranges that
requirements.txt and requirements-dev.txt allow, and the dev lock runs the program's own pins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+) \\$")


def pins(lock: Path) -> dict[str, str]:
    """name -> version, each pin followed by at least one sha256 hash."""
    out: dict[str, str] = {}
    lines = lock.read_text().splitlines()
    for i, line in enumerate(lines):
        found = PIN.match(line)
        if found:
            assert lines[i + 1].strip().startswith("--hash=sha256:"), f"{lock.name}: {line} has no hash"
            out[canonicalize_name(found.group(1))] = found.group(2)
        elif line and not line.startswith((" ", "#")):
            pytest.fail(f"{lock.name}: a line that is neither a pin nor a hash: {line!r}")
    return out


def ranges(requirements: Path) -> list[Requirement]:
    out = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


@pytest.mark.parametrize(("txt", "lock"), [("requirements.txt", "requirements.lock"),
                                           ("requirements-dev.txt", "requirements-dev.lock")])  # fmt: skip
def test_every_requirement_is_pinned_within_its_range(txt: str, lock: str) -> None:
    pinned = pins(PROJECT / lock)
    wanted = ranges(PROJECT / txt) + (ranges(PROJECT / "requirements.txt") if txt != "requirements.txt" else [])
    assert len(wanted) >= 10
    for req in wanted:
        version = pinned.get(canonicalize_name(req.name))
        assert version is not None, f"{lock} does not pin {req.name}: run pip-compile (README)"
        assert req.specifier.contains(version, prereleases=True), f"{lock}: {req.name}=={version} is not {req}"


def test_the_dev_lock_runs_the_programs_own_pins() -> None:
    """What CI tests is what the program's lock installs: the same version of every shared package."""
    program, dev = pins(PROJECT / "requirements.lock"), pins(PROJECT / "requirements-dev.lock")
    assert {n: dev.get(n) for n in program} == program


def test_run_installs_from_the_lock_with_hashes() -> None:
    run = (PROJECT / "run").read_text()
    assert "pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock" in run
