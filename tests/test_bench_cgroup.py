"""The bench's per-unit CPU reading, on a cgroup tree laid out the way the lab host's is."""

from __future__ import annotations

from pathlib import Path

from bench.mail_path import ContainerCgroup


def _unit(root: Path, name: str, usec: int) -> None:
    unit = root / "system.slice" / name
    unit.mkdir(parents=True)
    (unit / "cpu.stat").write_text(f"usage_usec {usec}\nuser_usec {usec // 2}\nsystem_usec {usec // 2}\n")


def _cgroup(root: Path) -> ContainerCgroup:
    cg = ContainerCgroup.__new__(ContainerCgroup)  # the constructor finds the root from nspawn's pid
    cg.root = root
    return cg


def test_a_stale_container_scope_does_not_hide_the_live_ones_cpu(tmp_path: Path) -> None:
    # A replaced PostgreSQL container left its scope behind (seen in the lab); it sorts after the
    # live one, and reading it alone had shown the container's CPU per message as 0.
    _unit(tmp_path, "docker-4328bcfb.scope", 7_117_080)
    _unit(tmp_path, "docker-f9fc3fbb.scope", 4_502_817)
    _unit(tmp_path, "dovecot.service", 1_000)
    (tmp_path / "system.slice" / "docker.socket").mkdir()  # no cpu.stat: not counted
    units = _cgroup(tmp_path).units()
    assert units == {"postgres (container)": 11_619_897, "dovecot.service": 1_000}
