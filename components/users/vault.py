"""Mailbox passwords: generation, Dovecot-verifiable hashes, and their KV v2 secrets in Vault.

One secret per mailbox at <mount>/data/<prefix>/<domain>/<user>, holding {"password": ...}.
Writers use check-and-set: a first password is written with cas=0 (only if no secret exists), so a
run can never overwrite a password someone changed or rotated since.
"""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from components.users.hashing import Scheme, hash_password

PASSWORD_LENGTH = 16
# Letters and digits only: nothing a mail client, shell or URL could mangle; 16 of 62 ≈ 95 bits.
ALPHABET = string.ascii_letters + string.digits
WORKERS = 8  # argon2-cffi and hvac's HTTP release the GIL (SHA512-CRYPT's rounds mostly do not)


def generate_password() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(PASSWORD_LENGTH))


def parallel(fn: Any, items: Iterable[Any]) -> list[Any]:
    items = list(items)
    if len(items) < 2:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(fn, items))


@dataclass(frozen=True)
class VaultTarget:
    """Where and how: address and token resolved by the caller (config first, then environment)."""

    address: str
    token: str
    mount: str = "secret"
    prefix: str = "mail/users"

    def path(self, address: str) -> str:
        local, _, domain = address.partition("@")
        return f"{self.prefix}/{domain}/{local}"

    def client(self) -> Any:
        import hvac

        client = hvac.Client(url=self.address, token=self.token, timeout=30)
        return client


def resolve_address(configured: str | None) -> str | None:
    return configured or os.environ.get("VAULT_ADDR") or None


def resolve_token(configured: str | None) -> str | None:
    return configured or os.environ.get("VAULT_TOKEN") or None


class Store:
    """The KV v2 operations the program, the provider and the rotation command use."""

    def __init__(self, target: VaultTarget):
        self.target = target
        self._client = target.client()
        self._kv = self._client.secrets.kv.v2

    def read(self, address: str) -> str | None:
        import hvac.exceptions

        try:
            data = self._kv.read_secret_version(
                path=self.target.path(address), mount_point=self.target.mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return None
        value = data["data"]["data"].get("password")
        return str(value) if value is not None else None

    def create_if_absent(self, address: str, password: str) -> bool:
        """Write only if no secret exists (cas=0). False if one exists: it is left untouched."""
        import hvac.exceptions

        try:
            self._kv.create_or_update_secret(
                path=self.target.path(address), secret={"password": password}, cas=0, mount_point=self.target.mount
            )
        except hvac.exceptions.InvalidRequest as exc:
            if "check-and-set" in str(exc):
                return False
            raise
        return True

    def write(self, address: str, password: str) -> None:
        """Overwrite (rotation): a new version; KV v2 keeps the previous ones."""
        self._kv.create_or_update_secret(
            path=self.target.path(address), secret={"password": password}, mount_point=self.target.mount
        )

    def delete(self, address: str) -> None:
        """The secret, every version and its metadata."""
        self._kv.delete_metadata_and_all_versions(path=self.target.path(address), mount_point=self.target.mount)

    def addresses(self) -> list[str]:
        """Every mailbox with a secret under the prefix (LIST: read-only, safe in a preview)."""
        import hvac.exceptions

        def keys(path: str) -> list[str]:
            try:
                resp = self._kv.list_secrets(path=path, mount_point=self.target.mount)
            except hvac.exceptions.InvalidPath:
                return []
            return [str(k) for k in resp["data"]["keys"]]

        out = []
        for domain in keys(self.target.prefix):
            if not domain.endswith("/"):
                continue
            out += [f"{user}@{domain[:-1]}" for user in keys(f"{self.target.prefix}/{domain[:-1]}") if "/" not in user]
        return sorted(out)


def onboard(store: Store, address: str, scheme: Scheme) -> str:
    """The hash of the mailbox's password: a new random one if it has no secret yet, else the stored one."""
    password = generate_password()
    if not store.create_if_absent(address, password):
        existing = store.read(address)
        if existing is None:
            raise RuntimeError(f"Vault secret for {address} exists but holds no password")
        password = existing
    return hash_password(password, scheme)
