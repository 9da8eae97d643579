"""DKIM rotation with two selectors: the pure phase function at its boundaries, the settings it
accepts and refuses, and the whole program under mocks in every phase (keys kept in one store, as
Pulumi state keeps them between runs)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import mockrun
from components.dns.plan import dkim_ref, plan
from components.dns.records import Ref
from components.keys.derive import dkim_public_key_b64, dkim_record_value
from components.keys.rotation import DkimPhase, dkim_phase, now, phase_without_clock
from components.mail import dkim_late_name
from components.mail.services import mail_steps
from settings import SettingsError, load
from settings.stack import DkimSettings

PROJECT = Path(__file__).resolve().parents[1]
START = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
ROTATION: dict[str, Any] = {
    "selector": "s1",
    "rotation": {"to": "s2", "started": "2026-05-04T09:00:00Z", "switchAfter": "48h", "withdrawAfter": "7d"},
}
US = timedelta(microseconds=1)


def dkim_settings(data: dict[str, Any]) -> DkimSettings:
    return DkimSettings.model_validate(data)


# --- the phase function ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "phase", "published", "signing", "next_change"),
    [
        (START - US, "scheduled", ("s1",), "s1", START),
        (START, "publishing", ("s1", "s2"), "s1", START + timedelta(hours=48)),
        (START + timedelta(hours=48) - US, "publishing", ("s1", "s2"), "s1", START + timedelta(hours=48)),
        (START + timedelta(hours=48), "switched", ("s1", "s2"), "s2", START + timedelta(days=7)),
        (START + timedelta(days=7) - US, "switched", ("s1", "s2"), "s2", START + timedelta(days=7)),
        (START + timedelta(days=7), "withdrawn", ("s2",), "s2", None),
        (START + timedelta(days=400), "withdrawn", ("s2",), "s2", None),
    ],
)
def test_phase_boundaries(at: datetime, phase: str, published: tuple[str, ...], signing: str, next_change: Any) -> None:
    got = dkim_phase(dkim_settings(ROTATION), at)
    assert (got.phase, got.published, got.signing, got.next_change) == (phase, published, signing, next_change)
    assert got.signing in got.published


def test_phase_is_the_same_in_any_time_zone() -> None:
    cfg = dkim_settings(ROTATION)
    switch = START + timedelta(hours=48)
    in_tokyo = switch.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    assert dkim_phase(cfg, in_tokyo) == dkim_phase(cfg, switch)
    assert dkim_phase(cfg, in_tokyo - US).signing == "s1"


def test_no_rotation_is_steady_at_any_time() -> None:
    cfg = dkim_settings({"selector": "k2026"})
    for at in (START, START + timedelta(days=3650)):
        assert dkim_phase(cfg, at) == DkimPhase("steady", ("k2026",), "k2026")
    assert phase_without_clock(cfg) == dkim_phase(cfg, START)


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        dkim_phase(dkim_settings(ROTATION), datetime(2026, 5, 5, 9, 0))


def test_a_phase_never_signs_with_an_unpublished_selector() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        DkimPhase("switched", ("s1",), "s2")


def test_renderers_need_the_phase_when_a_rotation_is_set() -> None:
    s = settings_with(ROTATION)
    for call in (lambda: plan(s, has_ipv6=False), lambda: mail_steps(s), lambda: phase_without_clock(s.config.dkim)):
        with pytest.raises(ValueError, match=r"sams:dkim.rotation is set"):
            call()


def test_the_clock_reads_sams_now_or_the_real_time() -> None:
    assert now({"SAMS_NOW": "2026-05-06T11:00:00+02:00"}) == START + timedelta(hours=48)
    assert now({"SAMS_NOW": "2026-05-06"}) == datetime(2026, 5, 6, tzinfo=UTC)
    real = now({})
    assert real.tzinfo is not None and abs(real - datetime.now(UTC)) < timedelta(seconds=5)
    with pytest.raises(ValueError, match=r"SAMS_NOW='2026-05-06T11:00'.*zone"):
        now({"SAMS_NOW": "2026-05-06T11:00"})


# --- the settings ----------------------------------------------------------------------------------


def settings_with(dkim: dict[str, Any]) -> Any:
    cfg = {**mockrun.stack_config("prod"), **mockrun.TEST_SECRETS, "sams:dkim": json.dumps(dkim)}
    return load("prod", cfg, PROJECT)


def problems(dkim: dict[str, Any]) -> list[str]:
    with pytest.raises(SettingsError) as info:
        settings_with(dkim)
    return [str(p) for p in info.value.problems]


def rotation(**changes: Any) -> dict[str, Any]:
    return {"selector": "s1", "rotation": {**ROTATION["rotation"], **changes}}


def test_rotation_settings_are_parsed() -> None:
    cfg = settings_with(rotation(started="2026-05-04", switchAfter="1d12h", withdrawAfter="2w")).config.dkim
    assert cfg.rotation is not None
    assert cfg.rotation.started == datetime(2026, 5, 4, tzinfo=UTC)
    assert (cfg.rotation.switch_after, cfg.rotation.withdraw_after) == (timedelta(hours=36), timedelta(days=14))
    defaults = settings_with({"rotation": {"to": "s2", "started": "2026-05-04T11:00:00+02:00"}}).config.dkim
    assert defaults.rotation is not None and defaults.rotation.started == START
    assert (defaults.rotation.switch_after, defaults.rotation.withdraw_after) == (timedelta(hours=48), timedelta(7))


@pytest.mark.parametrize(
    ("dkim", "expected"),
    [
        (rotation(to="s1"), "sams:dkim.rotation.to = 's1': must differ from dkim.selector"),
        (rotation(withdrawAfter="24h"), "sams:dkim.rotation.withdrawAfter = '1d': must be later than switchAfter (2d)"),
        (rotation(withdrawAfter="48h"), "sams:dkim.rotation.withdrawAfter = '2d': must be later than switchAfter"),
        (rotation(switchAfter="10m"), "sams:dkim.rotation.switchAfter = '10m': must be at least 1h"),
        (rotation(switchAfter="48"), "sams:dkim.rotation.switchAfter = '48': not a duration"),
        (rotation(switchAfter="2 days"), "sams:dkim.rotation.switchAfter = '2 days': not a duration"),
        (rotation(started="2026-05-04T09:00"), "sams:dkim.rotation.started = '2026-05-04T09:00': a date-time needs"),
        (rotation(started="next monday"), "sams:dkim.rotation.started = 'next monday': not an ISO 8601 date"),
        (rotation(to="S2"), "sams:dkim.rotation.to = 'S2': String should match pattern"),
        (rotation(switchAftr="48h"), "sams:dkim.rotation.switchAftr = '48h': unknown key"),
        ({"selector": "s1", "rotation": {"started": "2026-05-04"}}, "sams:dkim.rotation.to = <missing>"),
    ],
)
def test_bad_rotation_settings_name_file_key_and_value(dkim: dict[str, Any], expected: str) -> None:
    found = problems(dkim)
    assert len(found) == 1, found
    assert found[0].startswith("Pulumi.prod.yaml"), found
    assert expected in found[0], found


# --- the program under mocks, phase by phase -------------------------------------------------------

# (sams:dkim, SAMS_NOW, expected phase, published selectors, signing selector). `finished` is the
# user's last edit: `selector: s2` and no rotation.
PHASES: dict[str, tuple[dict[str, Any], str, str, tuple[str, ...], str]] = {
    "scheduled": (ROTATION, "2026-05-04T08:59:59Z", "scheduled", ("s1",), "s1"),
    "publishing": (ROTATION, "2026-05-04T09:00:00Z", "publishing", ("s1", "s2"), "s1"),
    "switched": (ROTATION, "2026-05-06T09:00:00Z", "switched", ("s1", "s2"), "s2"),
    "withdrawn": (ROTATION, "2026-05-11T09:00:00Z", "withdrawn", ("s2",), "s2"),
    "finished": ({"selector": "s2"}, "2026-05-12T00:00:00Z", "steady", ("s2",), "s2"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[mockrun.Run, Path]]]:
    """Every phase in order against one key store (what Pulumi state is between runs)."""
    store = mockrun.KeyStore()
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, (dkim, at, *_) in PHASES.items():
            build = tmp_path_factory.mktemp(f"build-{name}")
            mp.setenv("SAMS_NOW", at)
            mp.setenv("SAMS_BUILD_DIR", str(build))
            run = mockrun.run("prod", overrides={"sams:dkim": dkim}, secret_config=mockrun.TEST_SECRETS, store=store)
            out[name] = (run, build / "prod")
    yield out


def domains() -> list[str]:
    return [d.name for d in settings_with({}).mail.domains]


def dkim_keys(run: mockrun.Run) -> dict[tuple[str, str], mockrun.Captured]:
    out = {}
    for r in run.of_type("tls:index/privateKey:PrivateKey"):
        m = re.fullmatch(r"keys-dkim-(.+)-([a-z0-9][a-z0-9-]*)", r.name)
        if m:
            out[(m.group(1), m.group(2))] = r
    return out


def txt_strings(content: str) -> list[str]:
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', content)
    assert " ".join(f'"{p}"' for p in parts) == content, content
    return parts


@pytest.mark.parametrize("name", PHASES)
def test_stack_output_names_the_phase(runs: Any, name: str) -> None:
    run, _ = runs[name]
    _, _, phase, published, signing = PHASES[name]
    out = run.outputs["dkimRotation"]
    assert (out["phase"], tuple(out["published"]), out["signing"]) == (phase, published, signing)
    assert "dkimRotation" not in run.secret_outputs


@pytest.mark.parametrize("name", PHASES)
def test_one_secret_key_per_domain_and_published_selector(runs: Any, name: str) -> None:
    run, _ = runs[name]
    published = PHASES[name][3]
    keys = dkim_keys(run)
    assert set(keys) == {(d, s) for d in domains() for s in published}
    for key in keys.values():
        assert (key.inputs["algorithm"], int(key.inputs["rsaBits"])) == ("RSA", 2048)


@pytest.mark.parametrize("name", PHASES)
def test_dns_publishes_every_published_selector(runs: Any, name: str) -> None:
    run, _ = runs[name]
    published = PHASES[name][3]
    keys = dkim_keys(run)
    records = {
        r.inputs["name"]: r
        for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord")
        if "._domainkey." in r.inputs["name"]
    }
    assert set(records) == {f"{s}._domainkey.{d}" for d in domains() for s in published}
    for d in domains():
        for s in published:
            record = records[f"{s}._domainkey.{d}"]
            assert not record.is_secret("content"), "a public key is public"
            parts = txt_strings(record.inputs["content"])
            assert len(parts) == 2 and all(len(p.encode()) <= 255 for p in parts)
            pem = keys[(d, s)].outputs["privateKeyPem"]
            assert "".join(parts) == dkim_record_value(dkim_public_key_b64(pem))
            assert record.inputs["ttl"] == 300 and record.inputs["proxied"] is False


@pytest.mark.parametrize("name", PHASES)
def test_opendkim_signs_with_the_signing_selector(runs: Any, name: str) -> None:
    _, build = runs[name]
    signing = PHASES[name][4]
    table = (build / "opendkim/files/etc/opendkim/key.table").read_text()
    rows = [line.split() for line in table.splitlines() if line and not line.startswith("#")]
    assert rows == [[d, f"{d}:{signing}:/etc/dkimkeys/{d}/{signing}.private"] for d in domains()]
    signing_rows = (build / "opendkim/files/etc/opendkim/signing.table").read_text()
    assert [line.split() for line in signing_rows.splitlines() if line and not line.startswith("#")] == [
        [d, d] for d in domains()
    ]


@pytest.mark.parametrize("name", PHASES)
def test_host_gets_the_key_of_every_published_selector_on_stdin_only(runs: Any, name: str) -> None:
    run, build = runs[name]
    published, signing = PHASES[name][3], PHASES[name][4]
    keys = dkim_keys(run)
    manifest = json.loads((build / "dkim-keys/manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} == {
        f"/etc/dkimkeys/{d}/{s}.private" for d in domains() for s in published
    }
    assert {f["mode"] for f in manifest["files"]} == {"0600"}
    (cmd,) = [r for r in run.of_type("command:remote:Command") if r.name == "mail-dkim-keys-apply"]
    assert cmd.is_secret("stdin") and cmd.inputs["logging"] == "none"
    late = json.loads(cmd.inputs["stdin"])
    for d in domains():
        for s in published:
            pem = keys[(d, s)].outputs["privateKeyPem"]
            assert late[dkim_late_name(d, None if s == signing else s)] == pem
            body = "".join(pem.splitlines()[1:-1])
            for f in (build / "dkim-keys/files").rglob("*"):
                assert not f.is_file() or body[:64] not in f.read_text().replace("\n", "")
    # The cleanup keeps exactly the published key files.
    script = (build / "opendkim/script.sh").read_text()
    kept = re.search(r"^\s+(\S+)\) ;;$", script, re.M)
    assert kept and set(kept.group(1).split("|")) == {
        f"/etc/dkimkeys/{d}/{s}.private" for d in domains() for s in published
    }


def test_no_dkim_private_key_in_any_plain_input(runs: Any) -> None:
    for run, _ in runs.values():
        bodies: set[str] = set()
        for key in dkim_keys(run).values():
            pem = key.outputs["privateKeyPem"]
            # The private key's encoding also holds the public modulus: only the other lines are secret.
            public = key.outputs["publicKeyPem"].replace("\n", "") + dkim_public_key_b64(pem)
            bodies.update(line for line in pem.splitlines()[1:-1] if line not in public)
        assert len(bodies) > 20
        for r in run.resources:
            if r.type == "tls:index/privateKey:PrivateKey":
                continue
            text = json.dumps({k: v for k, v in r.inputs.items() if not r.is_secret(k)})
            assert not [b for b in bodies if b in text], f"{r.type} {r.name} carries a DKIM private key in the clear"


def test_the_new_key_keeps_its_urn_and_value_to_the_end(runs: Any) -> None:
    """s2 is made once when the rotation starts and never replaced; s1 goes exactly when withdrawn."""
    for d in domains():
        s2 = {n: dkim_keys(runs[n][0]).get((d, "s2")) for n in PHASES}
        assert s2["scheduled"] is None
        later = [s2[n] for n in ("publishing", "switched", "withdrawn", "finished")]
        assert all(k is not None for k in later)
        assert len({k.urn for k in later if k}) == 1
        assert len({k.outputs["privateKeyPem"] for k in later if k}) == 1
        records = {
            n: [
                r.urn
                for r in runs[n][0].of_type("cloudflare:index/dnsRecord:DnsRecord")
                if r.inputs["name"] == f"s2._domainkey.{d}"
            ]
            for n in ("publishing", "switched", "withdrawn", "finished")
        }
        assert len({tuple(v) for v in records.values()}) == 1 and len(records["finished"]) == 1
        s1 = {n: dkim_keys(runs[n][0]).get((d, "s1")) for n in PHASES}
        assert len({k.urn for n, k in s1.items() if n in ("scheduled", "publishing", "switched") and k}) == 1
        assert s1["withdrawn"] is None and s1["finished"] is None


def test_the_plan_refs_resolve_to_each_selectors_key() -> None:
    """plan() names one Ref per (domain, selector); the Dns component resolves exactly those."""
    s = settings_with(ROTATION)
    phase = dkim_phase(s.config.dkim, START)
    refs = {r.data.key for r in plan(s, has_ipv6=False, dkim=phase) if isinstance(r.data, Ref)}
    refs -= {"ipv4", "ipv6"}
    assert refs == {dkim_ref(d, sel).key for d in domains() for sel in ("s1", "s2")}
