"""Registers the ``lab`` marker (tests that boot the real lab: root, nspawn, ~10-90 s)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lab: boots the local nspawn/WireGuard lab (needs root and host tools)",
    )
