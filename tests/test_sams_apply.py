"""sams-apply, the on-host installer, run for real against a scratch directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.remote.steps import File, StepSpec, digest, late, stage


def _apply(step_dir: Path, stdin: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(step_dir / "sams-apply"), str(step_dir)],
        input=json.dumps(stdin) if stdin is not None else "",
        capture_output=True,
        text=True,
    )


def _spec(root: Path, content: str = "a = 1\n", script: str = "") -> StepSpec:
    return StepSpec(
        name="demo",
        files=(
            File(f"{root}/etc/demo/demo.conf", content),
            File(f"{root}/etc/demo/secret.conf", f"password = {late('pw')}\n", mode="0600"),
        ),
        script=script,
        late_values=("pw",),
    )


def test_installs_substitutes_and_is_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "host"
    step = stage(_spec(root, script='printf "%s" "$SAMS_CHANGED" > "$SAMS_STEP_DIR/changed"\n'), tmp_path / "build")
    first = _apply(step, {"pw": "s3cret"})
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert sorted(summary["changed"]) == [f"{root}/etc/demo/demo.conf", f"{root}/etc/demo/secret.conf"]
    assert summary["script"] is True
    secret = root / "etc/demo/secret.conf"
    assert secret.read_text() == "password = s3cret\n"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert "s3cret" not in first.stdout + first.stderr
    second = _apply(step, {"pw": "s3cret"})
    assert json.loads(second.stdout)["changed"] == []
    assert (step / "changed").read_text() == ""


def test_changed_late_value_rewrites_only_its_file(tmp_path: Path) -> None:
    root = tmp_path / "host"
    step = stage(_spec(root), tmp_path / "build")
    assert _apply(step, {"pw": "one"}).returncode == 0
    out = json.loads(_apply(step, {"pw": "two"}).stdout)
    assert out["changed"] == [f"{root}/etc/demo/secret.conf"]


def test_missing_late_value_fails_before_writing(tmp_path: Path) -> None:
    root = tmp_path / "host"
    step = stage(_spec(root), tmp_path / "build")
    result = _apply(step, {})
    assert result.returncode != 0 and "late values missing on stdin: pw" in result.stderr
    assert not (root / "etc/demo/demo.conf").exists()


def test_mode_drift_is_repaired(tmp_path: Path) -> None:
    root = tmp_path / "host"
    step = stage(_spec(root), tmp_path / "build")
    _apply(step, {"pw": "x"})
    os.chmod(root / "etc/demo/secret.conf", 0o644)
    out = json.loads(_apply(step, {"pw": "x"}).stdout)
    assert out["changed"] == [f"{root}/etc/demo/secret.conf"]


def test_digest_follows_content() -> None:
    a, b = _spec(Path("/x")), _spec(Path("/x"), content="a = 2\n")
    assert digest(a) == digest(_spec(Path("/x"))) != digest(b)


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        File("etc/relative", "")
    with pytest.raises(ValueError, match="listed twice"):
        StepSpec("x", files=(File("/a", ""), File("/a", "")))


def test_only_watching_services_act_once_each(tmp_path: Path) -> None:
    """A changed file reloads (or restarts) exactly the units watching it, once, strongest action."""
    from components.remote.steps import Service

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    root = tmp_path / "host"
    spec = StepSpec(
        name="svc",
        files=(File(f"{root}/etc/a/main.conf", "x\n"), File(f"{root}/etc/b/b.conf", "y\n")),
        services=(
            Service("a.service", (f"{root}/etc/a/*",), "reload"),
            Service("a.service", (f"{root}/etc/a/main.conf",), "restart"),
            Service("b.service", (f"{root}/etc/b/*",), "reload"),
            Service("c.service", (f"{root}/etc/c/*",), "reload"),
        ),
    )
    step = stage(spec, tmp_path / "build")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    first = subprocess.run(
        [sys.executable, str(step / "sams-apply"), str(step)], capture_output=True, text=True, env=env
    )
    assert first.returncode == 0, first.stderr
    assert sorted(calls.read_text().splitlines()) == ["reload b.service", "restart a.service"]
    calls.unlink()
    subprocess.run([sys.executable, str(step / "sams-apply"), str(step)], check=True, capture_output=True, env=env)
    assert not calls.exists(), "nothing changed, nothing restarted"


def _apply_module() -> object:
    import importlib.util

    from components.remote.steps import APPLY_SCRIPT

    loader = importlib.machinery.SourceFileLoader("sams_apply", str(APPLY_SCRIPT))
    spec = importlib.util.spec_from_loader("sams_apply", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_waits_for_apt_locks_held_by_another_process(tmp_path: Path) -> None:
    """A step starting while first boot's apt (or unattended-upgrades) holds a lock waits, then runs;
    a lock held past the timeout stops the step with the lock's path."""
    lock = tmp_path / "lock-frontend"
    lock.touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl,time; f=open({str(lock)!r},'w'); fcntl.lockf(f, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(2)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    module = _apply_module()
    module.APT_LOCKS = (str(lock), str(tmp_path / "absent"))  # type: ignore[attr-defined]
    with pytest.raises(SystemExit, match="lock-frontend still locked"):
        module._wait_for_apt(timeout=0.5)  # type: ignore[attr-defined]
    waited = module._wait_for_apt(timeout=30)  # type: ignore[attr-defined]
    holder.wait()
    assert 0.5 < waited < 10


def _fake_systemctl(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose systemctl only records its arguments (one call per line)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"), calls


def _run(step: Path, env: dict[str, str], stdin: dict[str, str] | None = None) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, str(step / "sams-apply"), str(step)],
        input=json.dumps(stdin) if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout)
    return out


def test_a_file_no_longer_declared_is_removed_and_its_service_reloaded(tmp_path: Path) -> None:
    """A feature turned off: the step stops declaring its secret file. The next apply deletes it
    (secret and all), reloads the unit watching it, tells the script, and says so in the summary."""
    from components.remote.steps import Service

    env, calls = _fake_systemctl(tmp_path)
    root = tmp_path / "host"
    main, secret = f"{root}/etc/demo/main.conf", f"{root}/etc/demo/relay_password"
    service = (Service("demo.service", (f"{root}/etc/demo/*",), "reload"),)
    script = 'printf "%s" "$SAMS_CHANGED" > "$SAMS_STEP_DIR/changed"\n'
    on = StepSpec(
        "demo",
        files=(File(main, "relay = yes\n"), File(secret, f"{late('pw')}\n", mode="0600")),
        services=service,
        script=script,
        late_values=("pw",),
    )
    first = _run(stage(on, tmp_path / "build"), env, {"pw": "s3cret"})
    assert first["removed"] == [] and Path(secret).read_text() == "s3cret\n"
    calls.unlink()

    off = StepSpec("demo", files=(File(main, "relay = no\n"),), services=service, script=script)
    step = stage(off, tmp_path / "build")
    second = _run(step, env)
    assert second["changed"] == [main] and second["removed"] == [secret], second
    assert not Path(secret).exists()
    assert calls.read_text().splitlines() == ["reload demo.service"]
    assert sorted((step / "changed").read_text().splitlines()) == [main, secret]
    # Applied again unchanged: nothing to remove, nothing to reload.
    calls.unlink()
    assert _run(step, env)["removed"] == [] and not calls.exists()


def test_a_removal_alone_reloads_the_watching_service(tmp_path: Path) -> None:
    from components.remote.steps import Service

    env, calls = _fake_systemctl(tmp_path)
    root = tmp_path / "host"
    keep, drop = File(f"{root}/etc/a/keep.conf", "k\n"), File(f"{root}/etc/a/drop.conf", "d\n")
    service = (Service("a.service", (f"{root}/etc/a/drop.conf",), "restart"),)
    _run(stage(StepSpec("a", files=(keep, drop), services=service), tmp_path / "build"), env)
    calls.unlink()
    out = _run(stage(StepSpec("a", files=(keep,), services=service), tmp_path / "build"), env)
    assert out["changed"] == [] and out["removed"] == [drop.path]
    assert calls.read_text().splitlines() == ["restart a.service"]


def test_a_file_another_step_now_declares_is_kept(tmp_path: Path) -> None:
    """A file that moved from step a to step b (b applied first) stays when a stops declaring it."""
    env, _ = _fake_systemctl(tmp_path)
    moved = f"{tmp_path}/host/etc/shared.conf"
    build = tmp_path / "build"
    _run(stage(StepSpec("a", files=(File(moved, "from a\n"),)), build), env)
    _run(stage(StepSpec("b", files=(File(moved, "from b\n"),)), build), env)
    out = _run(stage(StepSpec("a"), build), env)
    assert out["removed"] == [] and Path(moved).read_text() == "from b\n"


def test_files_the_step_never_installed_are_left_alone(tmp_path: Path) -> None:
    """Without a record (a host whose steps ran before records existed) nothing is removed; the
    record written then lists exactly the declared files, root-only."""
    env, _ = _fake_systemctl(tmp_path)
    root = tmp_path / "host"
    other = root / "etc/demo/admin-made.conf"
    other.parent.mkdir(parents=True)
    other.write_text("mine\n")
    build = tmp_path / "build"
    out = _run(stage(StepSpec("demo", files=(File(f"{root}/etc/demo/a.conf", "a\n"),)), build), env)
    assert out["removed"] == [] and other.exists()
    record = build / ".applied" / "demo.json"
    assert json.loads(record.read_text())["files"] == [f"{root}/etc/demo/a.conf"]
    assert oct(record.parent.stat().st_mode & 0o777) == "0o700"
    # Declared nowhere, recorded nowhere: a later apply of an emptier step leaves it too.
    _run(stage(StepSpec("demo"), build), env)
    assert other.exists() and not (root / "etc/demo/a.conf").exists()
