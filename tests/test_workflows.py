"""The CI/CD pipeline in .github/: actionlint- and yamllint-clean, and keeping its promises.

Preview on pull requests for dev and prod (commented on the PR, checked by the policy pack), `up`
on main for dev then prod behind an approval environment, a nightly drift check per stack that
names what drifted, and a lint job running every linter the project uses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
GITHUB = PROJECT / ".github"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.yml"))
ACTIONS = sorted((GITHUB / "actions").glob("*/action.yml"))
DRIFT_SCRIPT = GITHUB / "scripts" / "drift_summary.py"
USES = re.compile(r"^(\./\.github/actions/[a-z0-9-]+|[\w.-]+/[\w.-]+@v\d+)$")


def tool(name: str) -> str:
    """A linter from the venv (requirements-dev.txt), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -r requirements-dev.txt"
    return found


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def workflow(name: str) -> dict[str, Any]:
    return load(GITHUB / "workflows" / name)


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps") or [])


def pulumi_steps(job: dict[str, Any], command: str) -> list[dict[str, Any]]:
    return [
        s
        for s in steps(job)
        if str(s.get("uses", "")).startswith("pulumi/actions@") and s["with"].get("command") == command
    ]


def all_jobs() -> list[tuple[str, str, dict[str, Any]]]:
    return [(p.name, name, job) for p in WORKFLOWS for name, job in load(p)["jobs"].items()]


# --- linters ----------------------------------------------------------------------------------


def test_there_are_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"preview.yml", "deploy.yml", "drift.yml", "lint.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint(path: Path) -> None:
    args = [tool("actionlint"), "-no-color"]
    shellcheck = shutil.which("shellcheck")
    args += ["-shellcheck", shellcheck] if shellcheck else ["-shellcheck="]
    proc = subprocess.run([*args, str(path.relative_to(PROJECT))], cwd=PROJECT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint() -> None:
    proc = subprocess.run(
        [tool("yamllint"), "-c", ".github/yamllint.yml", "--strict", "."], cwd=PROJECT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- hygiene ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS + ACTIONS, ids=lambda p: str(p.relative_to(GITHUB)))
def test_actions_pinned_to_a_major_version(path: Path) -> None:
    text = path.read_text()
    for uses in re.findall(r"uses:\s*(\S+)", text):
        assert USES.match(uses), f"{uses}: pin third-party actions to a major version (owner/repo@vN)"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_minimal_permissions(path: Path) -> None:
    wf = load(path)
    perms = wf.get("permissions")
    assert isinstance(perms, dict), "set top-level `permissions:` explicitly"
    assert "write-all" not in path.read_text()
    allowed = {"contents": "read", "pull-requests": "write", "id-token": "write"}
    for scope, level in perms.items():
        assert allowed.get(scope) == level, f"{scope}: {level} is more than the pipeline needs"
    if "pull-requests" in perms:
        assert "pull_request" in wf["on"], "only the PR workflow writes PR comments"


@pytest.mark.parametrize("path", WORKFLOWS + ACTIONS, ids=lambda p: str(p.relative_to(GITHUB)))
def test_no_secret_is_interpolated_into_a_script(path: Path) -> None:
    """Secrets reach commands through `env:`/`with:`, never spliced into `run:` text (and so never echoed)."""

    def runs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "run"] + [r for v in node.values() for r in runs(v)]
        if isinstance(node, list):
            return [r for v in node for r in runs(v)]
        return []

    for script in runs(load(path)):
        assert "${{" not in script, f"expression in a run: script:\n{script}"
        assert not re.search(r"\b(echo|printf)\b[^\n]*\$\{?(PULUMI_ACCESS_TOKEN|CLOUDFLARE|VULTR|OCI_)", script)


# --- the promises -----------------------------------------------------------------------------


def test_pull_requests_preview_dev_and_prod_with_a_comment() -> None:
    wf = workflow("preview.yml")
    assert "pull_request" in wf["on"]
    assert wf["permissions"]["pull-requests"] == "write"
    (job,) = wf["jobs"].values()
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    (step,) = pulumi_steps(job, "preview")
    assert step["uses"].startswith("pulumi/actions@v")
    assert step["with"]["stack-name"] == "${{ matrix.stack }}"
    assert step["with"]["comment-on-pr"] is True
    assert step["with"]["policyPacks"] == "policy"


def test_main_deploys_dev_then_prod_behind_an_environment() -> None:
    wf = workflow("deploy.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    jobs = wf["jobs"]
    dev, prod = jobs["dev"], jobs["prod"]
    assert [s["with"]["stack-name"] for s in pulumi_steps(dev, "up")] == ["dev"]
    assert [s["with"]["stack-name"] for s in pulumi_steps(prod, "up")] == ["prod"]
    assert prod["needs"] == "dev"
    assert prod["environment"] == "production"
    for job, stack in ((dev, "dev"), (prod, "prod")):
        assert job["concurrency"]["group"] == f"pulumi-{stack}" and job["concurrency"]["cancel-in-progress"] is False
        assert all(s["with"].get("policyPacks") == "policy" for s in pulumi_steps(job, "up"))
        # The runner joins the VPN before `up` (remote steps SSH to the WireGuard address).
        order = [s.get("uses", "") + ":" + str((s.get("with") or {}).get("command", "")) for s in steps(job)]
        assert order.index("./.github/actions/wireguard:") < order.index(f"{pulumi_steps(job, 'up')[0]['uses']}:up")


def test_a_daily_up_advances_a_dkim_rotation_gated_like_a_push() -> None:
    """Rotation phases change with the clock: the deploy workflow also runs on a schedule, with the
    same jobs (policy pack, prod behind its reviewers), after the nightly drift check."""
    wf = workflow("deploy.yml")
    (cron,) = [c["cron"] for c in wf["on"]["schedule"]]
    minute, hour, *every_day = cron.split()
    assert every_day == ["*", "*", "*"], cron  # daily: no phase waits more than a day past its time
    drift = workflow("drift.yml")["on"]["schedule"][0]["cron"].split()
    assert (int(hour), int(minute)) > (int(drift[1]), int(drift[0]))
    jobs = wf["jobs"]
    assert jobs["prod"]["environment"] == "production" and jobs["prod"]["needs"] == "dev"
    assert "if" not in jobs["dev"] and "if" not in jobs["prod"]  # no path skips the gate or the policy pack
    assert all(s["with"]["policyPacks"] == "policy" for job in jobs.values() for s in pulumi_steps(job, "up"))


def test_nightly_drift_check_per_stack() -> None:
    wf = workflow("drift.yml")
    assert wf["on"]["schedule"][0]["cron"]
    (job,) = wf["jobs"].values()
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    assert job["concurrency"]["group"] == "pulumi-${{ matrix.stack }}"
    script = "\n".join(s.get("run", "") for s in steps(job))
    for flag in ("pulumi refresh", "--preview-only", "--expect-no-changes", "--json"):
        assert flag in script
    assert str(DRIFT_SCRIPT.relative_to(PROJECT)) in script


def test_lint_job_runs_every_linter() -> None:
    job = workflow("lint.yml")["jobs"]["lint"]
    script = "\n".join(s.get("run", "") for s in steps(job))
    for linter in ("ruff check", "ruff format --check", "mypy", "yamllint", "shellcheck", "actionlint"):
        assert linter in script


def test_every_stack_job_serialises_per_stack() -> None:
    for wf_name, job_name, job in all_jobs():
        touches = [s for s in steps(job) if "pulumi/actions" in str(s.get("uses", "")) and s.get("with")]
        if any(s["with"].get("command") in ("up", "refresh", "destroy") for s in touches):
            assert "concurrency" in job, f"{wf_name}:{job_name} changes a stack without a concurrency group"


# --- the drift report -------------------------------------------------------------------------

SECRET = "s3cr3t-value-never-shown"
REFRESH: dict[str, Any] = {
    "steps": [
        {"op": "same", "urn": "urn:pulumi:prod::sams::pulumi:pulumi:Stack::sams-prod"},
        {
            "op": "update",
            "urn": "urn:pulumi:prod::sams::sams:host:Host$sams:firewall:Firewall$vultr:index/firewallRule:FirewallRule"
            "::host-firewall-tcp-22-v4",
            "diffReasons": ["subnet", "subnetSize"],
            "oldState": {"outputs": {"subnet": "10.0.0.0"}},
            "newState": {"outputs": {"subnet": "0.0.0.0", "notes": SECRET}},
        },
        {
            "op": "delete",
            "urn": "urn:pulumi:prod::sams::sams:dns:Dns$cloudflare:index/dnsRecord:DnsRecord"
            "::dns-txt-_dmarc.example.org",
        },
        {"op": "refresh", "urn": "urn:pulumi:prod::sams::sams:host:Host$vultr:index/instance:Instance::host-instance"},
    ],
    "changeSummary": {"same": 2, "update": 1, "delete": 1},
}


def drift_report(tmp_path: Path, report: Any, rc: int) -> tuple[int, str, str]:
    path = tmp_path / "refresh.json"
    path.write_text(report if isinstance(report, str) else json.dumps(report))
    summary = tmp_path / "summary.md"
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}
    proc = subprocess.run(
        [sys.executable, str(DRIFT_SCRIPT), "--stack", "prod", "--exit-code", str(rc), str(path)],
        capture_output=True,
        text=True,
        env=env,
    )
    return proc.returncode, proc.stdout, summary.read_text() if summary.exists() else ""


def test_drift_report_names_what_drifted(tmp_path: Path) -> None:
    code, log, summary = drift_report(tmp_path, REFRESH, 255)
    assert code == 1
    assert "2 resource(s) drifted" in summary
    assert (
        "| `host-firewall-tcp-22-v4` | `vultr:index/firewallRule:FirewallRule` | update | subnet, subnetSize |"
        in summary
    )
    assert "`dns-txt-_dmarc.example.org`" in summary and "| delete |" in summary
    assert "host-instance" not in summary and "sams-prod" not in summary
    assert "::error title=Drift in prod::vultr:index/firewallRule:FirewallRule host-firewall-tcp-22-v4" in log
    assert SECRET not in summary + log and "0.0.0.0" not in summary + log


def test_drift_report_in_sync(tmp_path: Path) -> None:
    code, log, summary = drift_report(tmp_path, {"steps": [REFRESH["steps"][0], REFRESH["steps"][3]]}, 0)
    assert code == 0 and "No drift" in summary and "::error" not in log


def test_drift_report_keeps_the_cli_failure(tmp_path: Path) -> None:
    code, _, summary = drift_report(tmp_path, "error: no stack named 'prod' found", 255)
    assert code == 255 and "did not produce a JSON report" in summary
