"""Issue 23 items 3 and 5 on the lab host: CalDAV and CardDAV (Radicale behind the webmail's nginx,
components/dav) with the lab's default webmail (on, exposure vpn, calendars on).

The admin's laptop (sams-admin, the WireGuard peer) reaches https://<hostname>/dav/ by the host's name
at its tunnel address, verifying the certificate against Pebble's issuing root; PyPI's caldav client
does what a phone does (the same client functions as tests/mailcore/test_dav.py). Radicale checks each
password with an IMAP LOGIN at the host's own Dovecot by the host's name, trusting Pebble's root as
the host trusts Let's Encrypt's (lab/control.py). The internet (sams-inet) meets no DAV at all.

    sudo .venv/bin/python -m pytest -p no:cacheprovider -q lab/tests/test_dav_lab.py
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from components.dav import plan
from lab.hostcmd import sh
from lab.netclient import in_netns
from lab.session import Lab
from lab.spec import NAMES
from lab.world import World, world
from tests.mailcore.test_dav import other_user, plain, read_back, write_event_and_contact

pytestmark = pytest.mark.lab

ALICE, BOB = "alice@sams.test", "bob@sams.test"


@pytest.fixture(scope="module")
def web(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    assert plan.calendars_on(lab.settings.config) and not plan.calendars_public(lab.settings.config)
    with world(lab, tmp_path_factory.mktemp("dav")) as w:
        yield w


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(), "Depth": "0"}


def test_radicale_runs_on_loopback_with_the_rendered_config(web: World) -> None:
    assert sh(web.lab, f"systemctl is-active {plan.UNIT}").strip() == "active"
    listeners = sh(web.lab, f"ss -Htlnp 'sport = :{plan.LISTEN_PORT}'")
    assert f"{plan.LISTEN_HOST}:{plan.LISTEN_PORT}" in listeners and "radicale" in listeners, listeners
    config = sh(web.lab, f"cat {plan.CONFIG}")
    assert f"imap_host = {web.host}:{plan.IMAPS_PORT}" in config and "type = owner_only" in config


def test_event_and_contact_round_trip_over_the_tunnel(web: World) -> None:
    base = f"https://{web.host}{plan.URL_PATH}"
    uid = uuid.uuid4().hex
    made = web.admin(write_event_and_contact, base, web.cafile, *web.login(ALICE), uid)
    assert made["principal"] == f"{base}{quote(ALICE)}/", made
    assert made["mkcol"] == 201 and made["put"] == 201, made
    back = web.admin(read_back, base, web.cafile, *web.login(ALICE), uid, made["book"])
    assert any(f"UID:{uid}" in e and "SAMS DAV test meeting" in e for e in back["events"]), back["events"]
    assert back["card_status"] == 200 and "FN:Carol Contact" in str(back["card"]), back
    # Another user, with his own good password: 403 on every one of Alice's collections and items.
    prefix = f"https://{web.host}"
    paths = [f"{plan.URL_PATH}{ALICE}/", str(made["calendar"]).removeprefix(prefix)]
    paths.append(f"{made['book']}{uid}.vcf".removeprefix(prefix))
    statuses = web.admin(other_user, web.cafile, web.host, *web.login(BOB), paths)
    assert statuses == [403, 403, 403, 403], statuses
    own = web.admin(other_user, web.cafile, web.host, *web.login(BOB), [f"{plan.URL_PATH}{BOB}/"])
    assert own[0] == 207, own
    # The collections are on the host where the backup takes them, Radicale's own.
    owners = sh(web.lab, f"find {plan.DAV_COLLECTIONS} -printf '%u\\n' | sort -u").split()
    assert owners == [plan.USER], owners


def test_a_wrong_password_is_refused(web: World) -> None:
    status, _ = web.admin(
        plain, web.cafile, web.host, "PROPFIND", f"{plan.URL_PATH}{ALICE}/", _basic(ALICE, "not-her-password")
    )
    assert status == 401


def test_well_known_redirects_to_the_dav_root(web: World) -> None:
    for path in plan.WELL_KNOWN:
        status, location = web.admin(plain, web.cafile, web.host, "GET", path, {})
        assert (status, location) == (301, f"https://{web.host}{plan.URL_PATH}"), path


def test_the_internet_meets_no_dav(web: World) -> None:
    """exposure vpn: the same name at the public address is nginx's default server (no /dav/)."""
    hosts = {web.host: web.lab.spec.public_ipv4}
    for path in (plan.URL_PATH, *plan.WELL_KNOWN):
        status, location = in_netns(
            NAMES.ns_inet, hosts, plain, web.cafile, web.host, "PROPFIND", path, _basic(*web.login(ALICE))
        )
        assert status == 404 and plan.URL_PATH not in location, (path, status, location)


def test_radicale_memory(web: World) -> None:
    """Radicale's PSS after the sessions above (the figure for docs/calendars.md)."""
    pid = sh(web.lab, f"systemctl show -p MainPID --value {plan.UNIT}").strip()
    pss = int(sh(web.lab, f"awk '/^Pss:/ {{print $2}}' /proc/{pid}/smaps_rollup").strip())
    print(f"\nRadicale after the DAV sessions: {pss / 1024:.1f} MiB PSS")
    assert 0 < pss < 60 * 1024, pss
