"""The docs: generated ones are up to date and carry the stack's real values; hand-written ones
name only settings, paths and workflows that exist."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

PROJECT = Path(__file__).resolve().parents[1]
DOCS = PROJECT / "docs"
sys.path.insert(0, str(DOCS))

import generate  # noqa: E402

from components.firewall.policy import public_ports  # noqa: E402
from components.mail.clients import client_settings  # noqa: E402
from settings.loader import SECRET_KEYS  # noqa: E402
from settings.stack import StackConfig  # noqa: E402

OWNED = [
    DOCS / "gmail_setup_guide.md",
    DOCS / "rollback.md",
    DOCS / "performance.md",
    *sorted((DOCS / "runbooks").glob("*.md")),
]
RUNBOOKS = {"dkim_rotation.md", "queue_triage.md", "blocklist_delisting.md", "user_lifecycle.md"}


# --- generated --------------------------------------------------------------------------------


def test_generated_docs_are_up_to_date() -> None:
    for path, text in generate.render_all().items():
        assert path.exists(), f"{path.name} missing: run python docs/generate.py"
        assert path.read_text() == text, f"{path.name} is stale: run python docs/generate.py"
    assert generate.main(["--check"]) == 0


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_gmail_guide_has_each_domains_real_servers_and_ports() -> None:
    settings = generate.stack_settings(generate.GUIDE_STACK)
    text = (DOCS / "gmail_setup_guide.md").read_text()
    by_domain = sections(text)
    assert set(by_domain) == {d.name for d in settings.mail.domains}
    public = {(p.number, p.proto) for p in public_ports(settings.config)}
    for domain in settings.mail.domains:
        body = by_domain[domain.name]
        clients = client_settings(settings)[domain.name]
        host = settings.config.hostname
        assert clients["imap"]["port"] == 993 and clients["pop3"]["port"] == 995
        assert f"| Read (IMAP) | `{host}` | 993 | SSL/TLS |" in body
        assert f"| Fetch (POP3) | `{host}` | 995 | SSL/TLS |" in body
        assert f"| Send as (SMTP) | `{host}` | 587 | STARTTLS |" in body
        assert "Port: **587**" in body and "port **993**" in body and "Port: **995**" in body
        for user in domain.users:
            assert f"`{user.name}@{domain.name}`" in body
        # What the guide tells Gmail to use is open to the internet on this stack.
        assert {(993, "tcp"), (995, "tcp"), (587, "tcp")} <= public


def test_gmail_guide_follows_the_stack_vpn_only_pop3() -> None:
    dev = generate.stack_settings("dev")
    assert dev.config.client_access.pop3 == "vpn"
    text = generate.gmail_setup_guide(dev)
    assert f"**{dev.config.hostname}**" in text
    for body in sections(text).values():
        assert "POP3 is reachable **only over the WireGuard VPN**" in body
        assert "Check mail from other accounts → Add a mail account" not in body
        assert "port **993**" in body  # IMAP stays public on dev


# --- hand-written -----------------------------------------------------------------------------


def test_runbooks_exist() -> None:
    assert {p.name for p in (DOCS / "runbooks").glob("*.md")} >= RUNBOOKS
    for path in OWNED:
        assert path.read_text().startswith("# "), path


def _resolves(model: type[BaseModel], path: list[str]) -> bool:
    head, rest = path[0], path[1:]
    for field in model.model_fields.values():
        if field.alias == head:
            if not rest:
                return True
            inner = _model_of(field.annotation)
            return inner is not None and _resolves(inner, rest)
    return False


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


@pytest.mark.parametrize("path", OWNED, ids=lambda p: str(p.relative_to(DOCS)))
def test_config_keys_named_in_docs_exist(path: Path) -> None:
    keys = set(re.findall(r"sams:([A-Za-z][A-Za-z0-9.]*[A-Za-z0-9])", path.read_text()))
    for key in keys:
        assert key in SECRET_KEYS or _resolves(StackConfig, key.split(".")), f"{path.name}: no such key sams:{key}"


@pytest.mark.parametrize("path", OWNED, ids=lambda p: str(p.relative_to(DOCS)))
def test_links_and_repo_paths_exist(path: Path) -> None:
    text = path.read_text()
    for target in re.findall(r"\]\(([^)#]+\.md)\)", text):
        assert (path.parent / target).exists(), f"{path.name}: broken link {target}"
    for workflow in re.findall(r"\.github/workflows/[a-z_-]+\.yml", text):
        assert (PROJECT / workflow).exists(), f"{path.name}: {workflow} does not exist"


def test_dkim_runbook_names_the_real_key_path() -> None:
    from components.keys.resources import DkimKey
    from components.mail import dkim_step

    text = (DOCS / "runbooks" / "dkim_rotation.md").read_text()
    assert "/etc/dkimkeys/<domain>/<selector>.private" in text
    key = DkimKey("s9", None, None)  # type: ignore[arg-type]  # only the selector is read
    (file,) = dkim_step({"example.org": key}).files
    assert file.path == "/etc/dkimkeys/example.org/s9.private"
    assert StackConfig.model_fields["dkim"].default_factory().selector == "s1"  # type: ignore[call-arg,misc]
    assert "default `s1`" in text


def test_rollback_covers_revert_and_state_recovery() -> None:
    text = (DOCS / "rollback.md").read_text()
    for phrase in ("git revert -m 1", "pulumi up", "pulumi stack export", "pulumi stack import", "pulumi refresh"):
        assert phrase in text
