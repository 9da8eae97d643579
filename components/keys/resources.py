"""Keys the program generates once and keeps in Pulumi state as secrets."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_random as random
import pulumi_tls as tls

from components.keys.derive import dkim_public_key_b64, wireguard_public_key
from components.keys.rotation import DkimPhase, phase_without_clock
from settings import Settings


@dataclass(frozen=True)
class DkimKey:
    selector: str
    private_pem: pulumi.Output[str]
    public_b64: pulumi.Output[str]


class HostKeys(pulumi.ComponentResource):
    """The host's WireGuard key pair, its SSH host key, and one DKIM RSA-2048 key per domain and
    published selector (two while a rotation overlaps, see components/keys/rotation.py)."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        dkim: DkimPhase | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("sams:keys:HostKeys", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # 32 random bytes are a valid X25519 private key (WireGuard clamps them itself).
        wg = random.RandomBytes(f"{name}-wireguard", length=32, opts=child)
        self.wireguard_private_key: pulumi.Output[str] = pulumi.Output.secret(wg.base64)
        self.wireguard_public_key: pulumi.Output[str] = pulumi.Output.unsecret(
            self.wireguard_private_key.apply(wireguard_public_key)
        )

        ssh = tls.PrivateKey(f"{name}-ssh-host", algorithm="ED25519", opts=child)
        self.ssh_host_private_key: pulumi.Output[str] = pulumi.Output.secret(ssh.private_key_openssh)
        self.ssh_host_public_key: pulumi.Output[str] = ssh.public_key_openssh.apply(str.strip)

        # One key per (domain, selector) the phase publishes, named after both: the new selector's
        # key keeps its URN from the start of a rotation to its end (components/keys/rotation.py).
        phase = dkim or phase_without_clock(settings.config.dkim)
        self.dkim_phase = phase
        self.dkim_published: dict[str, tuple[DkimKey, ...]] = {}
        for domain in settings.mail.domains:
            keys = []
            for selector in phase.published:
                key = tls.PrivateKey(
                    f"{name}-dkim-{domain.name}-{selector}", algorithm="RSA", rsa_bits=2048, opts=child
                )
                private: pulumi.Output[str] = pulumi.Output.secret(key.private_key_pem)
                keys.append(DkimKey(selector, private, pulumi.Output.unsecret(private.apply(dkim_public_key_b64))))
            self.dkim_published[domain.name] = tuple(keys)
        # The key OpenDKIM signs with, per domain.
        self.dkim: dict[str, DkimKey] = {
            d: next(k for k in ks if k.selector == phase.signing) for d, ks in self.dkim_published.items()
        }

        self.register_outputs(
            {
                "wireguardPublicKey": self.wireguard_public_key,
                "sshHostPublicKey": self.ssh_host_public_key,
            }
        )
