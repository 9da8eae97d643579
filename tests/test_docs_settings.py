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


def test_reference_renders_the_backup_types() -> None:
    """A duration, a weekday among seven and a nested section, as a reader of docs/settings.md needs them."""
    text = reference()
    assert "| `sams:backup.randomizedDelay` | duration (`48h`, `7d`) | `1h` |" in text
    assert (
        "| `sams:backup.readDataOn` | `Mon` \\| `Tue` \\| `Wed` \\| `Thu` \\| `Fri` \\| `Sat` \\| `Sun` | `Sun` |"
        in text
    )
    assert (
        "| `sams:backup.keep.daily` | int | `7` |" in text
        and "| `sams:backup.schedule` | str | `*-*-* 02:30:00` |" in text
    )
    assert "sams:backup.target" not in text and "retentionDays" not in text
