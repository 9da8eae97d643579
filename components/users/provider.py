"""The mailbox-secrets dynamic provider: ONE resource for the whole mail list.

Why a dynamic provider and not a remote step: Vault sits beside the admin (laptop or CI runner),
not on the mail host, and the token should never reach the host; hvac runs where Pulumi runs.
Why one resource: a resource per mailbox costs ~4 ms of engine time, 40 s for 10,000 users.

The engine calls only `check` and `diff` during `pulumi preview` (dynamic providers do not
support preview updates), and neither touches Vault: writes happen in create/update/delete only.

On create/update, for the mailboxes in the list:
  * a mailbox without a hash in state gets a random password written with cas=0 (only if no
    secret exists: an existing, possibly changed, password is read instead, never overwritten),
    and its hash (scheme: the `scheme` input, sams:users.passwordScheme) is kept in the `hashes`
    output (a secret); a scheme change alone changes nothing: it applies to the next new or rotated
    password, and Dovecot keeps verifying every stored hash by its own prefix;
  * a mailbox that left the list loses its secret, every version and the metadata, and is named
    in `removed` so the users step disables it and archives its Maildir.
Delete (the resource leaving the program, or a stack destroy) does NOT delete the secrets:
offboarding is removing users from the list, never a side effect of tearing down state.
"""

from __future__ import annotations

from typing import Any, cast

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ResourceProvider, UpdateResult

from components.users.hashing import SCHEMES, Scheme
from components.users.vault import Store, VaultTarget, onboard, parallel
from settings.stack import DEFAULT_PASSWORD_SCHEME

RESOURCE_ID = "sams-mailbox-secrets"


def addresses(mailboxes: dict[str, list[str]] | None) -> set[str]:
    return {f"{u}@{d}" for d, users in (mailboxes or {}).items() for u in users}


def plan(olds: dict[str, Any], news: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(to onboard, to offboard): pure, shared by diff, update and the tests."""
    known = set(olds.get("hashes") or {})
    old, new = addresses(olds.get("mailboxes")), addresses(news.get("mailboxes"))
    return sorted(new - known), sorted(old - new)


def target(props: dict[str, Any]) -> VaultTarget:
    import os

    vault = props.get("vault") or {}
    address = vault.get("address") or os.environ.get("VAULT_ADDR")
    token = props.get("token") or os.environ.get("VAULT_TOKEN")
    if not address or not token:
        raise RuntimeError(
            "no Vault to write mailbox passwords to: set sams:vault.address and the secret sams:vaultToken "
            "(or VAULT_ADDR / VAULT_TOKEN)"
        )
    return VaultTarget(address, token, vault.get("mount") or "secret", vault.get("prefix") or "mail/users")


class MailboxSecretsProvider(ResourceProvider):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        if not isinstance(news.get("mailboxes"), dict):
            failures.append(CheckFailure("mailboxes", "must be a map of domain -> list of local parts"))
        if news.get("scheme", DEFAULT_PASSWORD_SCHEME) not in SCHEMES:
            failures.append(CheckFailure("scheme", f"must be one of {', '.join(SCHEMES)}, not {news.get('scheme')!r}"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        onboard_, offboard = plan(olds, news)
        changed = bool(onboard_ or offboard) or olds.get("vault") != news.get("vault")
        # Never a replacement: replacing would mean deleting every secret and making new ones.
        return DiffResult(changes=changed, replaces=[], delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(RESOURCE_ID, self._apply({}, props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._apply(olds, news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None  # see the module docstring: secrets outlive the resource

    def _apply(self, olds: dict[str, Any], news: dict[str, Any]) -> dict[str, Any]:
        to_onboard, to_offboard = plan(olds, news)
        store = Store(target(news))
        parallel(store.delete, to_offboard)
        scheme = cast(Scheme, news.get("scheme", DEFAULT_PASSWORD_SCHEME))
        fresh = dict(zip(to_onboard, parallel(lambda a: onboard(store, a, scheme), to_onboard), strict=True))
        listed = addresses(news.get("mailboxes"))
        kept = {a: h for a, h in (olds.get("hashes") or {}).items() if a in listed}
        return {**news, "hashes": {**kept, **fresh}, "removed": to_offboard}
