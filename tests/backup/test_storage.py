"""Backups with no sams:backup.repository: the program creates the storage (components/backup/storage.py),
and the backup step's stdin carries its URL and credential, the credential nowhere else in plain text."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any, cast

import pytest

import mockrun
from components.backup.storage import BUCKET_NAME_MAX, StorageConfigError, bucket_name

ON = {"sams:backup": {"enabled": True}}
OCI_PROVIDER = {"oci:region": "eu-frankfurt-1", "oci:userOcid": "ocid1.user.oc1..aaaaaaaasamsbackups"}


def late_values(run: mockrun.Run) -> dict[str, str]:
    (cmd,) = [c for c in run.of_type("command:remote:Command") if c.name == "backup-backup-apply"]
    assert cmd.is_secret("stdin") and cmd.inputs["logging"] == "none"
    return dict(json.loads(cmd.inputs["stdin"]))


def child_of_backup(run: mockrun.Run, type_: str) -> mockrun.Captured:
    (backup,) = run.of_type("sams:backup:Backup")
    (resource,) = run.of_type(type_)
    assert resource.parent == backup.urn
    return resource


def plain_strings(value: Any, path: str, r: mockrun.Captured) -> list[str]:
    if path and r.is_secret(path):
        return []
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in plain_strings(v, f"{path}.{k}" if path else k, r)]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in plain_strings(v, f"{path}[{i}]", r)]
    return [value] if isinstance(value, str) else []


def assert_only_on_stdin(run: mockrun.Run, secret: str) -> None:
    for r in run.resources:
        assert not [s for s in plain_strings(r.inputs, "", r) if secret in s], f"{r.type} {r.name} carries it"
    assert secret not in json.dumps(run.outputs["backup"])


def test_oci_bucket_and_s3_key_become_the_repository() -> None:
    store = mockrun.KeyStore()
    run = mockrun.run("dev", overrides={**ON, **OCI_PROVIDER}, secret_config=mockrun.TEST_SECRETS, store=store)
    bucket = child_of_backup(run, "oci:ObjectStorage/bucket:Bucket")
    assert bucket.inputs["name"] == "sams-dev-mail-dev-example-org"
    assert bucket.inputs["compartmentId"] == "ocid1.compartment.oc1..aaaaaaaaexampledevcompartment"
    assert bucket.inputs["namespace"] == mockrun.MOCK_OCI_NAMESPACE
    assert bucket.inputs["accessType"] == "NoPublicAccess" and bucket.inputs["versioning"] == "Disabled"
    assert "retentionRules" not in bucket.inputs
    # No lifecycle policy: an expiry would delete packs that old snapshots still reference.
    assert not [r for r in run.resources if "lifecycle" in r.type.lower()]
    key = child_of_backup(run, "oci:Identity/customerSecretKey:CustomerSecretKey")
    assert key.inputs["userId"] == OCI_PROVIDER["oci:userOcid"]
    namespaces = [a for t, a in run.invokes if t == "oci:ObjectStorage/getNamespace:getNamespace"]
    assert [a.get("compartmentId") for a in namespaces] == [bucket.inputs["compartmentId"]]

    late = late_values(run)
    assert late["backup_repository"] == (
        f"s3:https://{mockrun.MOCK_OCI_NAMESPACE}.compat.objectstorage.eu-frankfurt-1.oraclecloud.com/"
        "sams-dev-mail-dev-example-org"
    )
    # A Customer Secret Key's id is its access key, `key` its secret half.
    assert late["backup_key_id"] == store.values[f"{key.type}::{key.name}"]["id"]
    assert late["backup_key_secret"] == key.outputs["key"]
    assert run.outputs["backup"]["repository"] == late["backup_repository"]  # no credential in the URL to redact
    assert_only_on_stdin(run, key.outputs["key"])


def test_oci_storage_names_its_signing_region(monkeypatch: pytest.MonkeyPatch) -> None:
    """OCI refuses S3 requests signed for another region than the tenancy's home: restic must be told."""
    import pulumi

    from components.backup import storage

    made: list[storage.Storage] = []
    original = storage.create_storage

    def recording(*args: Any) -> storage.Storage:
        made.append(original(*args))
        return made[-1]

    monkeypatch.setattr(storage, "create_storage", recording)
    mockrun.run("dev", overrides={**ON, **OCI_PROVIDER}, secret_config=mockrun.TEST_SECRETS)
    mockrun.run("prod", overrides=ON, secret_config=mockrun.TEST_SECRETS)
    assert [m.region for m in made] == ["eu-frankfurt-1", None]
    assert all(isinstance(m.repository, pulumi.Output) for m in made)


def test_oci_additional_secret_output_marks_the_key() -> None:
    """The SDK does not mark CustomerSecretKey.key secret; the program does (additional_secret_outputs)."""
    captured: list[Any] = []
    original = mockrun.RecordingMonitor.RegisterResource

    def spy(self: Any, request: Any) -> Any:
        if request.type == "oci:Identity/customerSecretKey:CustomerSecretKey":
            captured.append(list(request.additionalSecretOutputs))
        return original(self, request)

    mockrun.RecordingMonitor.RegisterResource = spy  # type: ignore[method-assign]
    try:
        mockrun.run("dev", overrides={**ON, **OCI_PROVIDER}, secret_config=mockrun.TEST_SECRETS)
    finally:
        mockrun.RecordingMonitor.RegisterResource = original  # type: ignore[method-assign]
    assert captured == [["key"]]


@pytest.mark.parametrize("missing", sorted(OCI_PROVIDER))
def test_oci_without_provider_config_names_the_key(missing: str) -> None:
    given = {k: v for k, v in OCI_PROVIDER.items() if k != missing}
    with pytest.raises(StorageConfigError, match=f"need {missing} .*pulumi config set {missing} "):
        mockrun.run("dev", overrides={**ON, **given}, secret_config=mockrun.TEST_SECRETS)


def test_vultr_object_storage_in_the_hosts_region_becomes_the_repository() -> None:
    run = mockrun.run("prod", overrides=ON, secret_config=mockrun.TEST_SECRETS)
    storage = child_of_backup(run, "vultr:index/objectStorage:ObjectStorage")
    cluster = mockrun.mock_vultr_cluster("fra")  # the host's region, sams:vultr.region
    assert storage.inputs["clusterId"] == cluster["id"] and storage.inputs["tierId"] == mockrun.MOCK_VULTR_TIER_ID
    lookups = {t: a["filters"] for t, a in run.invokes if t.startswith("vultr:index/getObjectStorage")}
    assert {"name": "region", "values": ["fra"]} in lookups[
        "vultr:index/getObjectStorageCluster:getObjectStorageCluster"
    ]
    assert lookups["vultr:index/getObjectStorageTier:getObjectStorageTier"] == [
        {"name": "sales_name", "values": ["Standard"]}
    ]

    late = late_values(run)
    # restic's S3 backend creates the bucket on `init`: only the URL names it.
    assert late["backup_repository"] == f"s3:https://{cluster['hostname']}/sams-prod-mail-example-org"
    assert late["backup_key_id"] == storage.outputs["s3AccessKey"]
    assert late["backup_key_secret"] == storage.outputs["s3SecretKey"]
    assert run.outputs["backup"]["repository"] == late["backup_repository"]
    assert_only_on_stdin(run, storage.outputs["s3SecretKey"])


def test_a_configured_repository_creates_no_storage(runner: Any) -> None:
    run = runner("prod")  # sams:backup.repository is set in Pulumi.prod.yaml
    assert not run.of_type("vultr:index/objectStorage:ObjectStorage")
    assert not [t for t, _ in run.invokes if "ObjectStorage" in t]
    assert late_values(run)["backup_repository"] == "rest:https://backup.example.org:8000/sams-prod/"


def test_the_storage_outlives_the_stack() -> None:
    """Backups off, a destroy or a replacement must not delete the snapshots: retain_on_delete."""
    seen: dict[str, bool] = {}
    original = mockrun.RecordingMonitor.RegisterResource

    def spy(self: Any, request: Any) -> Any:
        seen[request.type] = bool(request.retainOnDelete)
        return original(self, request)

    mockrun.RecordingMonitor.RegisterResource = spy  # type: ignore[method-assign]
    try:
        mockrun.run("prod", overrides=ON, secret_config=mockrun.TEST_SECRETS)
        mockrun.run("dev", overrides={**ON, **OCI_PROVIDER}, secret_config=mockrun.TEST_SECRETS)
    finally:
        mockrun.RecordingMonitor.RegisterResource = original  # type: ignore[method-assign]
    assert seen["vultr:index/objectStorage:ObjectStorage"] and seen["oci:ObjectStorage/bucket:Bucket"]
    assert not seen["oci:Identity/customerSecretKey:CustomerSecretKey"]  # a credential may go with the stack


def test_bucket_names_are_valid_and_this_deployments_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Vultr's bucket names are global: the host's name, not just the stack's, makes ours unique."""
    import pulumi

    def named(hostname: str) -> str:
        return bucket_name(cast(Any, SimpleNamespace(config=SimpleNamespace(hostname=hostname))))

    monkeypatch.setattr(pulumi, "get_stack", lambda: "Prod_EU.1")
    assert named("mail.example.org") == "sams-prod-eu-1-mail-example-org"
    assert named("mail.example.org") != named("mail.example.net")
    monkeypatch.setattr(pulumi, "get_stack", lambda: "prod")
    long_a, long_b = named("mail." + "a" * 60 + ".org"), named("mail." + "a" * 60 + ".net")
    assert len(long_a) == len(long_b) == BUCKET_NAME_MAX and long_a != long_b
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*-[0-9a-f]{8}", long_a)
