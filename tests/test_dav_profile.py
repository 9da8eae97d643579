"""Apple's configuration profile (components/tls/autoconfig.py, pure): what an iPhone installs from
https://autoconfig.<domain>/apple.mobileconfig. nginx serves it in tests/mailcore/test_dav_profile.py."""

from __future__ import annotations

import json
import plistlib
from pathlib import Path
from typing import Any

import pytest

import mockrun
from components.firewall.policy import port_policy
from components.tls.autoconfig import (
    ADDRESS,
    APPLE_PROFILE_ADDRESS_PATH,
    APPLE_PROFILE_PATH,
    CLIENTS_ROOT,
    client_files,
)
from settings import load

PROJECT = Path(__file__).resolve().parents[1]


def settings_with(stack: str, **extra: Any) -> Any:
    cfg = {**mockrun.stack_config(stack), **mockrun.TEST_SECRETS}
    cfg.update({k: json.dumps(v) for k, v in extra.items()})
    return load(stack, cfg, PROJECT)


def profiles(settings: Any) -> dict[tuple[str, bool], dict[str, Any]]:
    """(domain, named) -> the parsed profile."""
    files = {f.path: f.content for f in client_files(settings)}
    out = {}
    for domain in settings.mail.domains:
        for path, named in ((APPLE_PROFILE_PATH, False), (APPLE_PROFILE_ADDRESS_PATH, True)):
            out[(domain.name, named)] = plistlib.loads(files[f"{CLIENTS_ROOT}/{domain.name}{path}"].encode())
    return out


def by_type(profile: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["PayloadType"]: p for p in profile["PayloadContent"]}


def test_mail_calendars_and_contacts_when_calendars_are_public() -> None:
    s = settings_with("prod", **{"sams:webmail": {"exposure": "public"}})
    public = {p.number for p in port_policy(s.config) if p.exposure == "public" and p.proto == "tcp"}
    host = str(s.config.hostname)
    for (domain, named), profile in profiles(s).items():
        assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
        payloads = by_type(profile)
        assert set(payloads) == {"com.apple.mail.managed", "com.apple.caldav.account", "com.apple.carddav.account"}
        mail = payloads["com.apple.mail.managed"]
        assert mail["EmailAccountType"] == "EmailTypeIMAP"
        assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"]) == (host, 993)
        assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"]) == (host, 465)
        assert {mail["IncomingMailServerPortNumber"], mail["OutgoingMailServerPortNumber"], 443} <= public
        assert mail["IncomingMailServerUseSSL"] is True and mail["OutgoingMailServerUseSSL"] is True
        for kind, prefix in (("caldav", "CalDAV"), ("carddav", "CardDAV")):
            dav = payloads[f"com.apple.{kind}.account"]
            assert (dav[f"{prefix}HostName"], dav[f"{prefix}Port"], dav[f"{prefix}UseSSL"]) == (host, 443, True)
            assert dav[f"{prefix}PrincipalURL"] == f"https://{host}/dav/"
            assert dav.get(f"{prefix}Username") == (ADDRESS if named else None)
        # Named: nginx puts the address in; unnamed: no account named, the device asks.
        if named:
            assert mail["EmailAddress"] == mail["IncomingMailServerUsername"] == ADDRESS
        else:
            assert not {"EmailAddress", "IncomingMailServerUsername", "OutgoingMailServerUsername"} & set(mail)
        # No password in any profile: the device asks for it.
        assert "Password" not in json.dumps(profile["PayloadContent"]).replace("EmailAuthPassword", "").replace(
            "OutgoingPasswordSameAsIncomingPassword", ""
        ), domain


def test_identifiers_are_stable_and_unique() -> None:
    s = settings_with("prod", **{"sams:webmail": {"exposure": "public"}})
    first, again = profiles(s), profiles(s)
    assert first == again  # installing again replaces the profile (same identifiers and UUIDs)
    ids = [p["PayloadUUID"] for (d, named), prof in first.items() if named for p in prof["PayloadContent"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    "webmail", [{}, {"exposure": "public", "calendars": False}, {"enabled": False, "exposure": "public"}]
)
def test_no_dav_payloads_unless_calendars_are_public(webmail: dict[str, Any]) -> None:
    s = settings_with("prod", **{"sams:webmail": webmail})
    for profile in profiles(s).values():
        assert set(by_type(profile)) == {"com.apple.mail.managed"}


def test_imap_vpn_only_is_left_out_like_thunderbirds() -> None:
    """With IMAP and POP3 VPN-only no incoming server is public: the profile carries no mail account."""
    s = settings_with("prod", **{"sams:clientAccess": {"imap": "vpn", "pop3": "vpn"}})
    for profile in profiles(s).values():
        assert profile["PayloadContent"] == []
