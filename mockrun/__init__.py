"""Run the real SAMS program in-process against Pulumi's mock engine.

There is no Pulumi CLI here: tests, the lab and the benchmarks run `__main__.py` exactly as the
CLI would, with `pulumi.runtime.set_mocks`, and read back every registered resource (type, name,
parent, dependencies, inputs with their secret markers) and the stack outputs.

The mocks return realistic outputs keyed on resource type: real RSA/Ed25519 keys for
tls:PrivateKey, real random bytes and passwords, addresses and ids for instances, object storage
endpoints and S3 keys, and they honour
`additional_secret_outputs` (the stock mock engine ignores it). With a `KeyStore`, generated
values survive between runs, which is what the lab needs to behave like persisted state.
"""

from __future__ import annotations

import base64
import json
import os
import runpy
import secrets
import string
import sys
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pmocks
from pulumi.runtime import rpc
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.settings import SETTINGS, set_root_resource
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

from settings.stackfile import encode_config, stack_file_config

PROJECT_DIR = Path(__file__).resolve().parents[1]

# Stand-ins for the secrets `pulumi config set --secret` keeps encrypted in the stack files.
TEST_SECRETS: dict[str, str] = {
    "sams:relayPassword": "relay-password-for-tests",
    "sams:acmeCloudflareToken": "acme-cloudflare-token-for-tests",
}

# Addresses the mocks hand out for cloud instances: documentation ranges, never routed here.
MOCK_IPV4 = "198.51.100.25"
MOCK_IPV6 = "2001:db8::25"
# Object storage as the clouds answer for it: OCI's tenancy namespace (12 lowercase letters and
# digits), and Vultr's Standard tier and clusters (one per region, <region>1.vultrobjects.com).
MOCK_OCI_NAMESPACE = "axsamsmock25"
MOCK_VULTR_TIER_ID = 2


def _unwrap(value: Any, path: str, secret_paths: set[str]) -> Any:
    """Plain data from deserialized RPC values, remembering where the secrets were."""
    if rpc.is_rpc_secret(value):
        secret_paths.add(path)
        return _unwrap(rpc.unwrap_rpc_secret(value), path, secret_paths)
    if isinstance(value, dict):
        return {k: _unwrap(v, f"{path}.{k}" if path else k, secret_paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v, f"{path}[{i}]", secret_paths) for i, v in enumerate(value)]
    if isinstance(value, (pulumi.FileArchive, pulumi.FileAsset)):
        return {"kind": type(value).__name__, "path": value.path}
    return value


@dataclass
class Captured:
    urn: str
    type: str
    name: str
    parent: str
    dependencies: list[str]
    inputs: dict[str, Any]
    secret_inputs: set[str]  # dotted paths of inputs that were secret
    outputs: dict[str, Any]
    custom: bool

    def is_secret(self, path: str) -> bool:
        """True if the input at `path` (or any enclosing value) was a secret."""
        return any(path == p or path.startswith(p + ".") or path.startswith(p + "[") for p in self.secret_inputs)


@dataclass
class Run:
    stack: str
    resources: list[Captured]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    invokes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Captured]:
        return [r for r in self.resources if r.type == type_]

    def by_urn(self) -> dict[str, Captured]:
        return {r.urn: r for r in self.resources}


class KeyStore:
    """Generated values (keys, passwords, ids) by resource type and name; optionally on disk."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.lock = threading.Lock()  # the SDK registers resources from a thread pool
        self.values: dict[str, dict[str, Any]] = {}
        if path and path.exists():
            self.values = json.loads(path.read_text())

    def get(self, key: str, make: Any) -> dict[str, Any]:
        with self.lock:
            if key not in self.values:
                self.values[key] = make()
                self._save()
            return self.values[key]

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self.lock:
            self.values[key] = value
            self._save()

    def save(self) -> None:
        with self.lock:
            self._save()

    def _save(self) -> None:
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.values, indent=1, sort_keys=True))
            os.chmod(tmp, 0o600)
            tmp.replace(self.path)


def _private_key(algorithm: str, rsa_bits: int | None) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key: Any
    if algorithm == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(rsa_bits or 2048))
    elif algorithm == "ED25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"mock tls:PrivateKey does not generate {algorithm}")
    pub = key.public_key()
    pkcs = ser.PrivateFormat.PKCS8 if algorithm == "ED25519" else ser.PrivateFormat.TraditionalOpenSSL
    return {
        "privateKeyPem": key.private_bytes(ser.Encoding.PEM, pkcs, ser.NoEncryption()).decode(),
        "privateKeyOpenssh": key.private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()
        ).decode(),
        "publicKeyPem": pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo).decode(),
        "publicKeyOpenssh": pub.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode() + "\n",
    }


def _password(length: int, special: bool) -> dict[str, Any]:
    alphabet = string.ascii_letters + string.digits + ("!#$%&*()-_=+[]{}<>:?" if special else "")
    return {"result": "".join(secrets.choice(alphabet) for _ in range(length))}


def _random_bytes(length: int) -> dict[str, Any]:
    raw = secrets.token_bytes(length)
    return {"base64": base64.b64encode(raw).decode(), "hex": raw.hex()}


def _token(length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def mock_vultr_cluster(region: str) -> dict[str, Any]:
    """The Object Storage cluster the mocks report for a Vultr region (ids stable across runs)."""
    return {"id": 100 + sum(region.encode()) % 900, "region": region, "hostname": f"{region}1.vultrobjects.com"}


DYNAMIC = "pulumi-python:dynamic:Resource"


class SamsMocks(pulumi.runtime.Mocks):
    def __init__(self, store: KeyStore, *, dynamic: bool = False, preview: bool = False):
        self.store = store
        self.invokes: list[tuple[str, dict[str, Any]]] = []
        # dynamic=True runs dynamic providers' real code the way the engine would: create or
        # update (state kept in the store) on `up`, nothing but diff on a preview.
        self.dynamic, self.preview = dynamic, preview
        self.vultr_clusters: dict[int, dict[str, Any]] = {}  # cluster id -> what its lookup returned

    def _dynamic(self, name: str, plain: dict[str, Any]) -> dict[str, Any]:
        import dill

        provider = dill.loads(base64.b64decode(plain["__provider"]))
        key = f"{DYNAMIC}::{name}"
        olds = self.store.values.get(key)
        news = dict(plain)
        if self.preview:
            if olds is not None:
                provider.diff(f"{name}-id", {**olds, "__provider": plain["__provider"]}, news)
            return {**news, **{k: v for k, v in (olds or {}).items() if k not in news or news[k] is None}}
        if olds is None:
            outs = provider.create(news).outs or {}
        else:
            outs = provider.update(f"{name}-id", {**olds, "__provider": plain["__provider"]}, news).outs or {}
        self.store.put(key, {k: v for k, v in outs.items() if k != "__provider"})
        return {**news, **outs}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        plain = _unwrap(inputs, "", set())
        key = f"{args.typ}::{args.name}"
        extra: dict[str, Any] = {}
        id_ = f"{args.name}-id"
        t = args.typ
        if t == "random:index/randomBytes:RandomBytes":
            extra = self.store.get(key, lambda: _random_bytes(int(plain["length"])))
        elif t == "random:index/randomPassword:RandomPassword":
            extra = self.store.get(key, lambda: _password(int(plain["length"]), bool(plain.get("special", True))))
        elif t == "tls:index/privateKey:PrivateKey":
            extra = self.store.get(key, lambda: _private_key(plain["algorithm"], plain.get("rsaBits")))
        elif t == "vultr:index/instance:Instance":
            # A new machine gets a new id (Vultr's are UUIDs); with a KeyStore it survives between runs.
            id_ = self.store.get(key, lambda: {"id": str(uuid.uuid4())})["id"]
            extra = {"mainIp": MOCK_IPV4, "v6MainIp": MOCK_IPV6 if plain.get("enableIpv6") else ""}
        elif t == "oci:Core/instance:Instance":
            id_ = self.store.get(key, lambda: {"id": f"ocid1.instance.oc1.mock.{secrets.token_hex(16)}"})["id"]
            extra = {"publicIp": MOCK_IPV4, "privateIp": "10.0.0.25"}
        elif t == "command:remote:Command":
            extra = {"stdout": "", "stderr": ""}
        elif t == "oci:ObjectStorage/bucket:Bucket":
            extra = {"bucketId": f"ocid1.bucket.oc1..{args.name}", "etag": "mock-etag", "isReadOnly": False}
        elif t == "oci:Identity/customerSecretKey:CustomerSecretKey":
            # The id is the access key (40 hex digits); `key`, the secret half, is returned on create.
            made = self.store.get(key, lambda: {"id": secrets.token_hex(20), "key": _token(44)})
            id_, extra = made["id"], {"key": made["key"], "state": "ACTIVE"}
        elif t == "vultr:index/objectStorage:ObjectStorage":
            cluster = self.vultr_clusters[int(plain["clusterId"])]
            made = self.store.get(
                key,
                lambda: {"s3AccessKey": _token(20, string.ascii_uppercase + string.digits), "s3SecretKey": _token(40)},
            )
            extra = {**made, "s3Hostname": cluster["hostname"], "region": cluster["region"], "status": "active"}
        elif t == DYNAMIC and self.dynamic:
            extra = self._dynamic(args.name, plain)
        return id_, {**inputs, **extra}

    def call(self, args: pulumi.runtime.MockCallArgs) -> Any:  # a dict: no check failures
        plain = _unwrap(dict(args.args), "", set())
        self.invokes.append((args.token, plain))
        if args.token == "cloudflare:index/getZone:getZone":
            name = plain["filter"]["name"]
            return {"id": f"zone-{name}", "zoneId": f"zone-{name}", "name": name}
        if args.token == "oci:ObjectStorage/getNamespace:getNamespace":
            namespace = {"id": MOCK_OCI_NAMESPACE, "namespace": MOCK_OCI_NAMESPACE}
            return {**namespace, "compartmentId": plain.get("compartmentId")}
        if args.token == "vultr:index/getObjectStorageCluster:getObjectStorageCluster":
            wanted = {f["name"]: f["values"] for f in plain["filters"]}
            cluster = {**mock_vultr_cluster(wanted["region"][0]), "deploy": "yes"}
            self.vultr_clusters[cluster["id"]] = cluster
            return {**cluster, "filters": plain["filters"]}
        if args.token == "vultr:index/getObjectStorageTier:getObjectStorageTier":
            # The one tier the filter names (the program asks for Standard); no locations: the mocks
            # sell it in every cluster.
            return {
                "id": MOCK_VULTR_TIER_ID,
                "slug": "mock-standard",
                "price": 18,
                "rateLimitBytes": 524288000,
                "rateLimitOperations": 1000,
                "locations": [],
                "filters": plain["filters"],
            }
        raise NotImplementedError(f"the program called {args.token}, which the mocks do not model")


class RecordingMonitor(pmocks.MockMonitor):
    """MockMonitor that records dependencies and parents and honours additional secret outputs."""

    def __init__(self, mocks: SamsMocks):
        super().__init__(mocks)
        self.captured: list[Captured] = []

    def RegisterResource(self, request: Any) -> Any:
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type == "pulumi:pulumi:Stack":
            return resource_pb2.RegisterResourceResponse(urn=urn)
        _ensure_event_loop()
        inputs = rpc.deserialize_properties(request.object)
        resource_args = pulumi.runtime.MockResourceArgs(
            typ=request.type,
            name=request.name,
            inputs=inputs,
            provider=request.provider,
            resource_id=request.importId,
            custom=request.custom or False,
        )
        id_, state = self.mocks.new_resource(resource_args)
        for name in request.additionalSecretOutputs:
            if name in state and not rpc.is_rpc_secret(state[name]):
                state[name] = rpc.wrap_rpc_secret(state[name])
        secret_inputs: set[str] = set()
        plain_inputs = _unwrap(dict(inputs), "", secret_inputs)
        self.captured.append(
            Captured(
                urn=urn,
                type=request.type,
                name=request.name,
                parent=request.parent,
                dependencies=list(request.dependencies),
                inputs=plain_inputs,
                secret_inputs=secret_inputs,
                outputs=_unwrap(dict(state), "", set()),
                custom=bool(request.custom),
            )
        )
        obj_proto = _sync_await(rpc.serialize_properties(state, {}))
        self.resources[urn] = pmocks.MockMonitor.ResourceRegistration(urn, id_ or "", state)
        return resource_pb2.RegisterResourceResponse(urn=urn, id=id_ or "", object=obj_proto)


def stack_config(stack: str, project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """The `config:` map of Pulumi.<stack>.yaml as the engine hands it over (settings/stackfile.py)."""
    return stack_file_config(stack, project_dir)


def run(
    stack: str,
    *,
    project_dir: Path = PROJECT_DIR,
    config: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    preview: bool = False,
    store: KeyStore | None = None,
    secret_config: Mapping[str, str] | None = None,
    dynamic: bool = False,
) -> Run:
    """Run __main__.py for `stack` under mocks and return what it registered and exported.

    `config` replaces the stack file's config map entirely; `overrides` patch it (values as in YAML);
    `secret_config` holds config values marked secret, as `pulumi config set --secret` would store them
    (the stack files' encrypted values cannot be decrypted without the CLI); `dynamic` runs dynamic
    providers' real create/update/diff (see SamsMocks), with their state in `store`.
    """
    cfg = dict(stack_config(stack, project_dir) if config is None else config)
    cfg.update({k: encode_config(v) for k, v in (overrides or {}).items()})
    if str(project_dir) not in sys.path:
        sys.path.insert(0, str(project_dir))

    mocks = SamsMocks(store or KeyStore(), dynamic=dynamic, preview=preview)
    monitor = RecordingMonitor(mocks)
    cfg.update(secret_config or {})
    pulumi.runtime.set_all_config(cfg, secret_keys=sorted(secret_config or {}))
    set_root_resource(None)  # type: ignore[arg-type]  # a fresh Stack for this run
    pulumi.runtime.set_mocks(mocks, project="sams", stack=stack, preview=preview, monitor=monitor)
    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()

    outputs: dict[str, Any] = {}
    secret: set[str] = set()

    async def program() -> None:
        runpy.run_path(str(project_dir / "__main__.py"), run_name="__main__")
        root = pulumi.runtime.settings.get_root_resource()
        for name, value in getattr(root, "outputs", {}).items():
            out = pulumi.Output.from_input(value)
            outputs[name] = _unwrap(await out.future(), name, set())
            if await out.is_secret():
                secret.add(name)

    _sync_await(run_pulumi_func(program))
    if store:
        store.save()
    return Run(stack, monitor.captured, outputs, secret, mocks.invokes)
