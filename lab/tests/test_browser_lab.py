"""The lab's real browser (lab/browser.py): Debian's Chromium, headless, driven by Selenium through
Debian's chromedriver, both inside sams-inet (the internet). It opens the MTA-STS policy of the
first mail domain the way a person would, over HTTPS verified against Pebble's roots only: the page
is the policy the program rendered, and the same URL without the CA, or a name the certificate does
not carry, gets Chromium's certificate error instead. Screenshots: lab/artifacts/<test>/ (or
$SAMS_ARTIFACTS/<test>/).
"""

from __future__ import annotations

import contextlib
import os
import socket

import pytest

from components.dns.plan import mta_sts_policy
from components.tls import certs
from lab import acme, browser
from lab.proc import netns_inode
from lab.session import Lab
from lab.spec import NAMES

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def issuers(lab: Lab) -> str:
    """Pebble's current root and intermediate: the only CA the browser is given."""
    return acme.issuer_pems(lab.paths, lab.spec.inet_ipv4)


def _net_namespaces(pids: list[int]) -> set[int]:
    """The network namespaces of those processes still alive: Chromium starts and ends utility
    processes all the time, so one listed a moment ago may be gone by now."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            inodes.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
    return inodes


def test_browser_reads_the_mta_sts_policy_over_verified_tls(
    lab: Lab, issuers: str, request: pytest.FixtureRequest
) -> None:
    domain = lab.settings.mail.domains[0].name
    name = f"mta-sts.{domain}"
    url = f"https://{name}/.well-known/mta-sts.txt"
    # A name that reaches the same nginx (its default server on 443) but is not in its certificate.
    stranger = f"not-in-the-certificate.{domain}"
    assert name in certs.certificate_names(lab.settings)
    assert stranger not in certs.certificate_names(lab.settings)
    host_map = {name: lab.spec.public_ipv4, stranger: lab.spec.public_ipv4}
    artifacts = browser.artifacts_dir(request.node.name)

    with browser.browser(NAMES.ns_inet, host_map=host_map, ca_pem=issuers, artifacts=artifacts) as b:
        # Chromium and its driver run in the internet's namespace, not in this one.
        pids = browser.browser_pids(b.pgid, b.workdir)
        assert pids and _net_namespaces(pids) == {netns_inode(NAMES.ns_inet)}
        # Its driver listens on the namespace's loopback: this namespace's 127.0.0.1 has nothing there.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", b.port), timeout=5).close()
        assert b.load(url) is None
        shot = b.shot("mta-sts-policy")
        assert b.driver.current_url == url
        assert b.text() == mta_sts_policy(lab.settings).rstrip("\n")
        assert "version: STSv1" in b.text()
        # The certificate is checked against the name: the same host under another name is refused.
        assert b.load(f"https://{stranger}/.well-known/mta-sts.txt") == "net::ERR_CERT_COMMON_NAME_INVALID"
        b.shot("name-not-in-certificate")
        # Names outside host_map resolve to nothing: no lookup leaves the namespace.
        assert b.load(f"https://www.{domain}/") == "net::ERR_NAME_NOT_RESOLVED"
        print(
            f"browser: start {b.start_s:.2f} s, PSS {b.pss_kib() / 1024:.0f} MiB after three pages, shots {artifacts}"
        )
    assert shot.stat().st_size > 1000 and shot.read_bytes().startswith(b"\x89PNG")
    assert browser.browser_pids(b.pgid, b.workdir) == [], "the browser outlived its context"

    # The same page, the lab's CA not given: Chromium does not trust the host's certificate.
    with browser.browser(NAMES.ns_inet, host_map=host_map, ca_pem=None, artifacts=artifacts) as b:
        assert b.load(url) == "net::ERR_CERT_AUTHORITY_INVALID"
        b.shot("no-ca")
        assert "version: STSv1" not in b.text()
