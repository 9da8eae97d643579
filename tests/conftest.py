"""Shared fixtures: the real program, run under Pulumi's mocks once per stack variant."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

import mockrun  # noqa: E402

# Stack variants every program-level test runs against: both clouds, the lab, and options.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "dev": ("dev", {}),  # Oracle Cloud, relay, POP3 VPN-only
    "prod": ("prod", {}),  # Vultr, IPv6, DMARC quarantine, backups
    "lab": ("lab", {}),  # existing host
    "prod-bastion": (
        "prod",
        {
            "sams:wireguard": {
                "network": "10.100.0.0/24",
                "address": "10.100.0.2",
                "hubAddress": "10.100.0.1",
                "hubPublicKey": "fb3dHqmVtX0RZKX/D1ku1XHZSyDfmmdcU6EMSh60DH4=",
                "bastion": {"host": "bastion.example.org", "user": "jump"},
            },
            "sams:clientAccess": {"imap": "vpn", "pop3": "vpn"},
            "sams:publicWeb": False,
            # No port 80 for HTTP-01: certificates through Cloudflare DNS-01 instead.
            "sams:acme": {"challenge": "dns-01-cloudflare"},
        },
    ),
}

_cache: dict[str, mockrun.Run] = {}


def run_variant(name: str) -> mockrun.Run:
    if name not in _cache:
        stack, overrides = VARIANTS[name]
        _cache[name] = mockrun.run(stack, overrides=overrides, secret_config=mockrun.TEST_SECRETS)
    return _cache[name]


@pytest.fixture(params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(variant: str) -> mockrun.Run:
    return run_variant(variant)


@pytest.fixture
def runner() -> Callable[[str], mockrun.Run]:
    return run_variant
