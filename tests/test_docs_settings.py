"""docs/settings.md is generated from the models; it must match them."""

from pathlib import Path

from settings.reference import reference

PROJECT = Path(__file__).resolve().parents[1]


def test_settings_reference_is_current() -> None:
    committed = (PROJECT / "docs" / "settings.md").read_text()
    assert committed == reference(), "run: python -m settings.reference > docs/settings.md"


def test_reference_lists_every_key() -> None:
    text = reference()
    for key in ("sams:wireguard.hubPublicKey", "sams:clientAccess.pop3", "domains.users.quota", "sams:sshPrivateKey"):
        assert key in text, key
