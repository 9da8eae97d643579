"""Pure key derivations: what the program computes from the keys it keeps in state."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


def wireguard_public_key(private_b64: str) -> str:
    """`wg pubkey` in Python: X25519 public key of a base64 private key (32 random bytes)."""
    raw = base64.b64decode(private_b64)
    if len(raw) != 32:
        raise ValueError("a WireGuard private key is 32 bytes")
    public = X25519PrivateKey.from_private_bytes(raw).public_key()
    return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def dkim_public_key_b64(private_pem: str) -> str:
    """The p= value of a DKIM record: base64 DER SubjectPublicKeyInfo of the RSA key."""
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("DKIM keys are RSA")
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def dkim_record_value(public_b64: str) -> str:
    return f"v=DKIM1; k=rsa; p={public_b64}"
