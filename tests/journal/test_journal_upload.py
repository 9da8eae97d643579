"""Journal forwarding as the program renders it (sams:monitoring.journalUploadUrl): the setting
accepts only an http:// address on the tunnel, the step's drop-ins and script, and the step with
forwarding off. The lab proves it with real daemons (lab/tests/test_journal_upload_lab.py)."""

from __future__ import annotations

import configparser
import json
from typing import Any

import pytest

import mockrun
from components.journal.plan import CONFIG, DROPIN, PACKAGES, UNIT
from components.journal.steps import journal_step
from settings import SettingsError, load
from tests.conftest import PROJECT

HUB = "http://10.100.0.1:19532"


def settings_with(monitoring: dict[str, Any], extra: dict[str, Any] | None = None) -> Any:
    cfg = {**mockrun.stack_config("lab"), **mockrun.TEST_SECRETS, "sams:monitoring": json.dumps(monitoring)}
    cfg.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    return load("lab", cfg, PROJECT)


def ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd's keys are case-sensitive
    parser.read_string(text)
    return parser


# --- the setting ---------------------------------------------------------------------------------------


def test_nothing_is_forwarded_by_default() -> None:
    settings = load("lab", {**mockrun.stack_config("lab"), **mockrun.TEST_SECRETS}, PROJECT)
    assert settings.config.monitoring.journal_upload_url is None
    spec = journal_step(settings)
    assert spec.files == ()
    assert f"systemctl disable -q --now {UNIT}.service" in spec.script


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (HUB, HUB),
        ("http://10.100.0.1", HUB),  # systemd-journal-upload's own default port, written out
        ("http://10.100.0.1/", HUB),
        ("http://10.100.0.7:8080", "http://10.100.0.7:8080"),  # another peer on the tunnel
    ],
)
def test_an_http_address_on_the_tunnel_is_accepted(given: str, stored: str) -> None:
    settings = settings_with({"enabled": True, "journalUploadUrl": given})
    assert settings.config.monitoring.journal_upload_url == stored
    assert f"URL={stored}\n" in journal_step(settings).files[0].content


@pytest.mark.parametrize(
    ("monitoring", "why"),
    [
        ({"enabled": True, "journalUploadUrl": "https://10.100.0.1:19532"}, "give an http:// URL"),
        ({"enabled": True, "journalUploadUrl": "10.100.0.1:19532"}, "give an http:// URL"),
        ({"enabled": True, "journalUploadUrl": "http://logs.example.org:19532"}, "IPv4 address on the tunnel"),
        ({"enabled": True, "journalUploadUrl": "http://10.100.0.1:99999"}, "IPv4 address on the tunnel"),
        ({"enabled": True, "journalUploadUrl": "http://10.100.0.1:19532/upload"}, "adds its own path"),
        ({"enabled": True, "journalUploadUrl": "http://me:pw@10.100.0.1:19532"}, "only http://<address>"),
        ({"enabled": True, "journalUploadUrl": "http://192.0.2.10:19532"}, "not a host address of wireguard"),
        ({"enabled": True, "journalUploadUrl": "http://10.100.0.0:19532"}, "not a host address of wireguard"),
        ({"enabled": True, "journalUploadUrl": "http://10.100.0.255:19532"}, "not a host address of wireguard"),
        ({"enabled": True, "journalUploadUrl": "http://10.100.0.2:19532"}, "the mail host itself"),
        ({"enabled": False, "journalUploadUrl": HUB}, "set monitoring.enabled"),
    ],
)
def test_a_bad_url_names_the_key_and_value(monitoring: dict[str, Any], why: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_with(monitoring)
    text = str(caught.value)
    assert "Pulumi.lab.yaml" in text and "monitoring.journalUploadUrl" in text, text
    assert monitoring["journalUploadUrl"] in text and why in text, text


def test_the_tunnel_is_the_stacks_own_network() -> None:
    """The check follows sams:wireguard, not the default network."""
    wireguard = json.loads(mockrun.stack_config("lab")["sams:wireguard"])
    moved = {**wireguard, "network": "10.200.0.0/24", "address": "10.200.0.2", "hubAddress": "10.200.0.1"}
    assert settings_with({"enabled": True, "journalUploadUrl": "http://10.200.0.1"}, {"sams:wireguard": moved})
    with pytest.raises(SettingsError, match=r"not a host address of wireguard\.network 10\.200\.0\.0/24"):
        settings_with({"enabled": True, "journalUploadUrl": HUB}, {"sams:wireguard": moved})


# --- the step ------------------------------------------------------------------------------------------


def test_the_uploader_is_told_the_url_in_a_drop_in() -> None:
    """Its own journal-upload.conf (a package conffile) stays the package's: a drop-in beside it."""
    files = {f.path: f.content for f in journal_step(settings_with({"enabled": True, "journalUploadUrl": HUB})).files}
    assert set(files) == {CONFIG, DROPIN}
    assert CONFIG.startswith("/etc/systemd/journal-upload.conf.d/")
    upload = ini(files[CONFIG])
    assert dict(upload["Upload"]) == {"URL": HUB}


def test_the_uploader_starts_after_the_tunnel_and_never_gives_up() -> None:
    files = {f.path: f.content for f in journal_step(settings_with({"enabled": True, "journalUploadUrl": HUB})).files}
    unit = ini(files[DROPIN])["Unit"]
    assert unit["After"] == unit["Wants"] == "wg-quick@wg0.service"
    assert unit["StartLimitIntervalSec"] == "0"  # a collector down for minutes must not fail it for good


def test_the_script_installs_the_package_and_starts_the_uploader() -> None:
    script = journal_step(settings_with({"enabled": True, "journalUploadUrl": HUB})).script
    assert all(f"installed {p} ||" in script for p in PACKAGES)
    assert f"systemctl enable -q {UNIT}.service" in script
    # A changed URL or drop-in restarts it (it reads its configuration once, at start).
    assert f"if changed {CONFIG} || changed {DROPIN}; then\n    systemctl restart {UNIT}.service" in script
    assert script.index("apt-get install") < script.index("systemctl daemon-reload") < script.index("enable -q")


def test_monitoring_off_stops_the_uploader_and_withdraws_its_files() -> None:
    """Files the step no longer declares, sams-apply removes (components/remote); the script stops
    the unit, on a host that never had the package too."""
    spec = journal_step(settings_with({"enabled": False}))
    on = journal_step(settings_with({"enabled": True, "journalUploadUrl": HUB}))
    assert spec.files == () and spec.name == on.name
    assert spec.script.startswith(f"if systemctl list-unit-files -q {UNIT}.service")


def test_the_program_registers_the_step_after_monitoring() -> None:
    run = mockrun.run("lab", overrides={"sams:monitoring": {"enabled": True, "journalUploadUrl": HUB}})
    names = [c.name for c in run.of_type("command:remote:Command")]
    assert names[-1] == "journal-journal-upload-apply" and "monitoring-monitoring-apply" in names
