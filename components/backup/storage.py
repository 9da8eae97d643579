"""Where the snapshots go when `sams:backup.repository` is unset: object storage the program creates.

  * provider oci: an Object Storage bucket in the stack's compartment (no versioning, no public
    access, no lifecycle rule) and a Customer Secret Key, OCI's S3-compatible credential, of the
    user the OCI provider signs in as (`oci:userOcid`; OCI allows two such keys per user). restic
    reaches it at `s3:https://<namespace>.compat.objectstorage.<oci:region>.oraclecloud.com/<bucket>`,
    signing for that region (`Storage.region`: restic's AWS_DEFAULT_REGION).
  * provider vultr: an Object Storage subscription (the Standard tier) in the cluster of the host's
    region (looked up by region: a region without Object Storage fails the preview with Vultr's
    "no results were found"; set `sams:backup.repository` to a bucket elsewhere then). Its S3 keys
    are the credential; the bucket itself restic creates on `init` (its S3 backend makes a missing
    bucket): `s3:https://<s3_hostname>/<bucket>`. A subscription is billed monthly whether used or not.

The bucket is `bucket_name()`: sams-<stack>-<hostname>. Vultr's bucket names are shared by all of
its customers, so `sams-<stack>` alone would meet another SAMS's `sams-prod`.

The bucket and the subscription are kept when Pulumi deletes them (retain_on_delete): turning
backups off, destroying the stack or a replacement leaves the snapshots where they are (the backups
off step does not touch the repository either). Taking one back into a stack is `pulumi import`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pulumi

from settings import Settings

# OCI's and S3's limit on a bucket name.
BUCKET_NAME_MAX = 63
# Vultr's tier for general storage (its API's `sales_name`); the others cost 2-5 times as much.
VULTR_TIER = "Standard"


@dataclass(frozen=True)
class Storage:
    repository: pulumi.Output[str]  # restic's URL, s3:https://<endpoint>/<bucket>: no credential in it
    key_id: pulumi.Output[str]  # the S3 access key id
    key_secret: pulumi.Output[str]  # the S3 secret key
    # The signing region restic must be told (AWS_DEFAULT_REGION or -o s3.region): OCI refuses requests
    # signed for another region than the tenancy's home one. None: the endpoint accepts restic's default.
    region: str | None = None


class StorageConfigError(ValueError):
    """A provider setting the bucket needs is missing (a Pulumi provider key, not a `sams:` setting)."""


def bucket_name(settings: Settings) -> str:
    """sams-<stack>-<hostname, dots as dashes>, lowercase; over 63 characters, cut and made unique by a hash."""
    raw = f"sams-{pulumi.get_stack()}-{settings.config.hostname}".lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")
    if len(name) <= BUCKET_NAME_MAX:
        return name
    tag = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: BUCKET_NAME_MAX - len(tag) - 1].rstrip('-')}-{tag}"


def create_storage(name: str, settings: Settings, parent: pulumi.Resource) -> Storage:
    """The bucket (or subscription) and its credential, as children of `parent` (the Backup component)."""
    provider = settings.config.provider
    if provider == "oci":
        return _oci(name, settings, parent)
    if provider == "vultr":
        return _vultr(name, settings, parent)
    # settings/checks.py refuses this before any resource exists; kept as a guard for other callers.
    raise StorageConfigError(
        f"provider {provider} has no object storage the program can create: set sams:backup.repository"
    )


def _required(namespace: str, key: str, why: str) -> str:
    value = pulumi.Config(namespace).get(key)
    if not value:
        raise StorageConfigError(
            f"backups to a program-created bucket need {namespace}:{key} ({why}): "
            f"pulumi config set {namespace}:{key} ..."
        )
    return value


def _oci(name: str, settings: Settings, parent: pulumi.Resource) -> Storage:
    import pulumi_oci as oci  # here, not at the top: importing every provider's SDK costs seconds

    o = settings.config.oci
    assert o is not None
    # Read before any resource exists, so a missing key stops the run with nothing half-created.
    region = _required("oci", "region", "the region of the S3-compatible endpoint")
    user = _required("oci", "userOcid", "the user whose S3 Customer Secret Key restic uses")
    bucket = bucket_name(settings)
    namespace = oci.objectstorage.get_namespace_output(
        compartment_id=o.compartment_id, opts=pulumi.InvokeOutputOptions(parent=parent)
    ).namespace
    # No lifecycle policy on purpose: restic's prune deletes exactly the packs no snapshot references
    # any more, while an expiry rule would delete old packs that the oldest snapshots (and, through
    # deduplication, every later one) still reference, silently breaking them. Versioning would keep
    # every pruned pack as a billed old version. Retention is restic's `keep`, nothing else.
    oci.objectstorage.Bucket(
        f"{name}-bucket",
        compartment_id=o.compartment_id,
        namespace=namespace,
        name=bucket,
        access_type="NoPublicAccess",
        versioning="Disabled",
        storage_tier="Standard",  # Archive would make every restic read wait hours for a restore
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=True),
    )
    key = oci.identity.CustomerSecretKey(
        f"{name}-s3-key",
        display_name=f"sams {pulumi.get_stack()} restic backups",
        user_id=user,
        # The SDK does not mark the secret half as secret: it would sit in plain text in state.
        opts=pulumi.ResourceOptions(parent=parent, additional_secret_outputs=["key"]),
    )
    repository = pulumi.Output.concat(
        "s3:https://", namespace, f".compat.objectstorage.{region}.oraclecloud.com/{bucket}"
    )
    # A Customer Secret Key's id is its access key; `key` (returned once, on create) is the secret.
    return Storage(repository, key.id, key.key, region=region)


def _vultr(name: str, settings: Settings, parent: pulumi.Resource) -> Storage:
    import ediri_vultr as vultr  # here, not at the top: importing every provider's SDK costs seconds

    v = settings.config.vultr
    assert v is not None
    invoke = pulumi.InvokeOutputOptions(parent=parent)
    cluster = vultr.get_object_storage_cluster_output(
        filters=[
            vultr.GetObjectStorageClusterFilterArgs(name="region", values=[v.region]),
            vultr.GetObjectStorageClusterFilterArgs(name="deploy", values=["yes"]),  # open to new subscriptions
        ],
        opts=invoke,
    )
    tier = vultr.get_object_storage_tier_output(
        filters=[vultr.GetObjectStorageTierFilterArgs(name="sales_name", values=[VULTR_TIER])], opts=invoke
    )
    subscription = vultr.ObjectStorage(
        f"{name}-object-storage",
        cluster_id=cluster.id,
        tier_id=tier.id,
        label=f"sams-{pulumi.get_stack()}",
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=True),
    )
    bucket = bucket_name(settings)
    repository = subscription.s3_hostname.apply(lambda host: f"s3:https://{host}/{bucket}")
    return Storage(repository, subscription.s3_access_key, subscription.s3_secret_key)


__all__ = ["Storage", "StorageConfigError", "bucket_name", "create_storage"]
