"""The whole program under mocks, for every stack variant: properties a user relies on."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import mockrun
from components.firewall.policy import NEVER_PUBLIC
from components.keys.derive import dkim_public_key_b64, wireguard_public_key

PROJECT = Path(__file__).resolve().parents[1]


def settings_of(variant: str) -> Any:
    from settings import load
    from tests.conftest import VARIANTS

    stack, overrides = VARIANTS[variant]
    cfg = {**mockrun.stack_config(stack), **mockrun.TEST_SECRETS}
    cfg.update({k: mockrun.encode_config(v) for k, v in overrides.items()})
    return load(stack, cfg, PROJECT)


def user_data(run: mockrun.Run) -> dict[str, Any]:
    text = run.outputs["hostUserData"]
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def written(run: mockrun.Run, path: str) -> str:
    return next(f["content"] for f in user_data(run)["write_files"] if f["path"] == path)


# --- what is open to the internet -------------------------------------------------------------


def test_cloud_firewall_opens_only_the_policy(run: mockrun.Run, variant: str) -> None:
    from components.firewall.policy import public_ports

    allowed = {(p.number, p.proto) for p in public_ports(settings_of(variant).config)}
    opened: set[tuple[int, str]] = set()
    for rule in run.of_type("vultr:index/firewallRule:FirewallRule"):
        opened.add((int(rule.inputs["port"]), rule.inputs["protocol"]))
        assert rule.inputs["subnetSize"] == 0
    for sl in run.of_type("oci:Core/securityList:SecurityList"):
        for rule in sl.inputs["ingressSecurityRules"]:
            if rule["protocol"] == "1":
                assert rule["icmpOptions"] == {"type": 3, "code": 4}
                continue
            opts = rule.get("tcpOptions") or rule.get("udpOptions")
            assert opts["min"] == opts["max"]
            opened.add((opts["min"], "tcp" if rule["protocol"] == "6" else "udp"))
    if settings_of(variant).config.provider == "existing":
        assert opened == set()  # no cloud firewall: nftables is the only layer
    else:
        assert opened == allowed
    assert not {n for n, _ in opened} & NEVER_PUBLIC


def _nft_public(conf: str) -> tuple[set[int], set[int]]:
    tcp: set[int] = set()
    udp: set[int] = set()
    for line in conf.splitlines():
        m = re.match(r"\s*(tcp|udp) dport \{ ([\d, ]+) \} accept$", line)
        if m:  # no iifname: reachable from every interface, the public one included
            (tcp if m.group(1) == "tcp" else udp).update(int(x) for x in m.group(2).split(","))
    return tcp, udp


def test_host_firewall_matches_the_cloud_firewall(run: mockrun.Run, variant: str) -> None:
    from components.firewall.policy import public_ports

    tcp, udp = _nft_public(written(run, "/etc/nftables.conf"))
    policy = public_ports(settings_of(variant).config)
    assert tcp == {p.number for p in policy if p.proto == "tcp"}
    assert udp == {p.number for p in policy if p.proto == "udp"}
    assert not (tcp | udp) & NEVER_PUBLIC
    assert "policy drop;" in written(run, "/etc/nftables.conf")


def test_nftables_conf_parses(run: mockrun.Run, tmp_path: Path) -> None:
    conf = tmp_path / "nftables.conf"
    conf.write_text(written(run, "/etc/nftables.conf"))
    result = subprocess.run(["nft", "-c", "-f", str(conf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sshd_listens_only_on_the_tunnel(run: mockrun.Run, tmp_path: Path) -> None:
    """The real sshd accepts the drop-in, and its effective config has no public listener."""
    dropin = tmp_path / "10-sams.conf"
    dropin.write_text(written(run, "/etc/ssh/sshd_config.d/10-sams.conf"))
    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    main = tmp_path / "sshd_config"
    text = dropin.read_text().replace("/etc/ssh/ssh_host_ed25519_key", str(key))
    main.write_text(text + "\nUsePAM no\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    result = subprocess.run(["/usr/sbin/sshd", "-T", "-f", str(main)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    effective = result.stdout.lower().splitlines()
    listens = [line.split()[1] for line in effective if line.startswith("listenaddress ")]
    assert listens == [f"{run.outputs['wireguardAddress']}:22"]
    assert "permitrootlogin no" in effective
    assert "passwordauthentication no" in effective
    assert "kbdinteractiveauthentication no" in effective


def test_cloud_init_schema(run: mockrun.Run, tmp_path: Path) -> None:
    f = tmp_path / "user-data"
    f.write_text(run.outputs["hostUserData"])
    result = subprocess.run(["cloud-init", "schema", "--config-file", str(f)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_cloud_init_bootstrap_shape(run: mockrun.Run, variant: str) -> None:
    cfg = settings_of(variant).config
    ud = user_data(run)
    assert ud["disable_root"] is True and "ssh_pwauth" not in ud
    (admin,) = ud["users"]
    assert admin["name"] == cfg.admin_user and admin["lock_passwd"] is True
    assert admin["ssh_authorized_keys"] == list(cfg.admin_ssh_keys)
    wg = written(run, "/etc/wireguard/wg0.conf")
    private = re.search(r"^PrivateKey = (\S+)$", wg, re.M)
    assert private, wg
    assert wireguard_public_key(private.group(1)) == run.outputs["wireguardPublicKey"]
    assert f"PublicKey = {cfg.wireguard.hub_public_key}" in wg
    assert ud["ssh_keys"]["ed25519_public"] == run.outputs["sshHostPublicKey"]
    script = written(run, "/usr/local/sbin/sams-bootstrap")
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    assert ud["runcmd"] == [["/usr/local/sbin/sams-bootstrap"]]


# --- how changes reach the host --------------------------------------------------------------


def remote_resources(run: mockrun.Run) -> Iterator[mockrun.Captured]:
    for r in run.resources:
        if r.type.startswith("command:remote:"):
            yield r


def test_every_remote_step_goes_through_the_tunnel(run: mockrun.Run, variant: str) -> None:
    cfg = settings_of(variant).config
    found = list(remote_resources(run))
    assert len(found) >= 4
    for r in found:
        conn = r.inputs["connection"]
        assert conn["host"] == str(cfg.wireguard.address), r.name
        assert conn["user"] == cfg.admin_user
        assert conn["hostKey"] == run.outputs["sshHostPublicKey"], "host key pinned"
        if cfg.wireguard.bastion:
            assert conn["proxy"]["host"] == cfg.wireguard.bastion.host
        else:
            assert "proxy" not in conn


def _ancestors(run: mockrun.Run, urn: str) -> set[str]:
    urns, seen, todo = run.by_urn(), set(), [urn]
    while todo:
        for dep in urns[todo.pop()].dependencies:
            if dep not in seen and dep in urns:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_remote_steps_run_after_bootstrap_in_order(run: mockrun.Run) -> None:
    urns = run.by_urn()
    commands = run.of_type("command:remote:Command")
    ready = next(r.urn for r in commands if r.name == "host-ready-apply")
    for r in run.of_type("command:remote:CopyToRemote"):
        if r.name != "host-ready-copy":
            assert ready in _ancestors(run, r.urn), r.name
    for r in commands:
        copy = r.name.removesuffix("-apply") + "-copy"
        assert any(urns[d].name == copy for d in r.dependencies), r.name
    # database before mail; the mail steps in the order their configs need each other
    order = [r.name.removesuffix("-apply") for r in commands]
    expected = ["database-postgres", "mail-mail-packages", "mail-dkim-keys", "mail-mail-base", "mail-opendkim",
                "mail-antivirus", "mail-rspamd", "mail-dovecot", "mail-postfix"]  # fmt: skip
    for before, after in itertools.pairwise(expected):
        b = next(r.urn for r in commands if r.name == f"{before}-apply")
        a = next(r.urn for r in run.of_type("command:remote:CopyToRemote") if r.name == f"{after}-copy")
        assert b in _ancestors(run, a), f"{after} must run after {before}"
    assert order.index("host-ready") == 0


def test_steps_carry_their_content_hash(run: mockrun.Run) -> None:
    copies = {r.name.removesuffix("-copy"): r for r in run.of_type("command:remote:CopyToRemote")}
    for cmd in run.of_type("command:remote:Command"):
        step = cmd.name.removesuffix("-apply")
        digest = copies[step].inputs["triggers"][0]
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        assert cmd.inputs["triggers"][0] == digest
        assert cmd.inputs["create"].startswith("sudo -n /usr/bin/python3 /var/lib/sams/stage/")
        # That the hash is of exactly what is shipped: tests/test_step_invariants.py.


def _systemd_units(run: mockrun.Run) -> Iterator[tuple[str, str]]:
    """(host path, content) of every unit and drop-in the program installs: staged or cloud-init."""
    is_unit = re.compile(r"^/etc/systemd/system/.+\.(service|timer|socket|path|mount|conf)$")
    for copy in run.of_type("command:remote:CopyToRemote"):
        source = Path(copy.inputs["source"]["path"])
        manifest = json.loads((source / "manifest.json").read_text())
        for f in manifest["files"]:
            if is_unit.match(f["path"]):
                yield f["path"], (source / f["src"]).read_text()
    for f in user_data(run)["write_files"]:
        if is_unit.match(f["path"]):
            yield f["path"], f["content"]


def test_systemd_units_escape_every_literal_percent(run: mockrun.Run) -> None:
    """systemd expands %-specifiers in unit files (%f is the unit's path, %p its prefix): a literal %
    must be written %%. PostgreSQL's archive_command once lost its %f and %p this way, and every
    WAL segment failed to archive."""
    units = dict(_systemd_units(run))
    assert "/etc/systemd/system/sams-postgres.service" in units, sorted(units)
    for path, text in units.items():
        for line in text.splitlines():
            if not line.lstrip().startswith(("#", ";")):  # comments are not expanded
                assert "%" not in line.replace("%%", ""), f"{path}: unescaped % in {line!r}"
    # What systemd hands PostgreSQL after unescaping: its own %f and %p.
    postgres = units["/etc/systemd/system/sams-postgres.service"].replace("%%", "%")
    archive = re.search(r'"archive_command=([^"]+)"', postgres)
    assert archive and "cp %p " in archive.group(1) and "/%f" in archive.group(1), postgres


# --- what is secret --------------------------------------------------------------------------


def _secret_material(run: mockrun.Run) -> set[str]:
    values: set[str] = set()
    for r in run.resources:
        if r.type == "tls:index/privateKey:PrivateKey":
            # A private key's encoding also holds its public half: only the other lines are secret.
            public = r.outputs["publicKeyPem"] + r.outputs["publicKeyOpenssh"]
            if r.inputs["algorithm"] == "RSA":
                public += dkim_public_key_b64(r.outputs["privateKeyPem"])
            public = public.replace("\n", "")
            for k in ("privateKeyPem", "privateKeyOpenssh"):
                body = [ln for ln in r.outputs[k].splitlines() if ln and not ln.startswith("-----")]
                values.update(ln for ln in body if ln not in public)
        elif r.type == "random:index/randomBytes:RandomBytes":
            values.update({r.outputs["base64"], r.outputs["hex"]})
        elif r.type == "random:index/randomPassword:RandomPassword":
            values.add(r.outputs["result"])
    return values


def _plain_strings(value: Any, path: str, r: mockrun.Captured | None) -> Iterator[tuple[str, str]]:
    if r is not None and path and r.is_secret(path):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _plain_strings(v, f"{path}.{k}" if path else k, r)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _plain_strings(v, f"{path}[{i}]", r)
    elif isinstance(value, str):
        yield path, value


def test_no_secret_in_any_plain_input_or_output(run: mockrun.Run) -> None:
    material = _secret_material(run)
    assert len(material) > 10
    for r in run.resources:
        for path, text in _plain_strings(r.inputs, "", r):
            leaked = [m for m in material if m in text]
            assert not leaked, f"{r.type} {r.name}: {path} carries secret material unmarked"
    for name, value in run.outputs.items():
        if name in run.secret_outputs:
            continue
        for path, text in _plain_strings(value, name, None):
            assert not [m for m in material if m in text], f"stack output {path} leaks a secret"


def test_connections_stdin_and_user_data_are_secret(run: mockrun.Run, variant: str) -> None:
    for r in remote_resources(run):
        assert r.is_secret("connection"), r.name
        if r.type == "command:remote:Command" and "stdin" in r.inputs:
            assert r.is_secret("stdin"), r.name
            assert r.inputs["logging"] == "none", "a step that carries secrets logs nothing"
    assert "hostUserData" in run.secret_outputs
    for inst in run.of_type("vultr:index/instance:Instance"):
        assert inst.is_secret("userData")
    for inst in run.of_type("oci:Core/instance:Instance"):
        assert inst.is_secret("metadata.user_data") or inst.is_secret("metadata")


def test_dkim_private_keys_reach_the_host_only_on_stdin(run: mockrun.Run) -> None:
    import json

    (cmd,) = [r for r in run.of_type("command:remote:Command") if r.name == "mail-dkim-keys-apply"]
    late = json.loads(cmd.inputs["stdin"])
    keys = {r.name: r.outputs["privateKeyPem"] for r in run.of_type("tls:index/privateKey:PrivateKey")}
    for domain in {k.split("-dkim-")[1].rsplit("-", 1)[0] for k in keys if "-dkim-" in k}:
        name = "dkim_" + domain.replace(".", "_").replace("-", "_")
        assert late[name].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert "PRIVATE" not in cmd.inputs["create"]


# --- what a receiver sees in DNS -------------------------------------------------------------


def dns_records(run: mockrun.Run) -> list[dict[str, Any]]:
    return [r.inputs for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord")]


def txt_strings(content: str) -> list[str]:
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', content)
    assert " ".join(f'"{p}"' for p in parts) == content, content
    return [p.replace('\\"', '"').replace("\\\\", "\\") for p in parts]


def test_mx_spf_dmarc(run: mockrun.Run, variant: str) -> None:
    s = settings_of(variant)
    records = dns_records(run)
    for domain in s.mail.domains:
        d = domain.name
        mx = [r for r in records if r["type"] == "MX" and r["name"] == d]
        assert mx == [mx[0]] and mx[0]["content"] == s.config.hostname and mx[0]["priority"] == 10
        spf = [txt_strings(r["content"])[0] for r in records if r["type"] == "TXT" and r["name"] == d]
        assert len(spf) == 1 and spf[0].startswith("v=spf1 mx")
        assert spf[0].endswith("~all" if s.config.dmarc.policy == "none" else "-all")
        if s.config.relay and s.config.relay.spf_include:
            assert f"include:{s.config.relay.spf_include}" in spf[0]
        (dmarc,) = [txt_strings(r["content"])[0] for r in records if r["name"] == f"_dmarc.{d}"]
        assert dmarc.startswith(f"v=DMARC1; p={s.config.dmarc.policy}")
        assert "rua=mailto:" in dmarc
    for r in records:
        assert r["proxied"] is False, "mail records are never proxied"


def test_caa_names_the_acme_ca_and_web_records_only_with_the_web_host(run: mockrun.Run, variant: str) -> None:
    s = settings_of(variant)
    records = dns_records(run)
    for domain in s.mail.domains:
        d = domain.name
        caa = sorted((r["data"]["tag"], r["data"]["value"]) for r in records if r["type"] == "CAA" and r["name"] == d)
        assert caa == sorted([("issuewild", ";"), *(("issue", ca) for ca in s.config.acme.caa_issuers)])
        web = [f"_autodiscover._tcp.{d}", f"_mta-sts.{d}", f"autoconfig.{d}", f"autodiscover.{d}", f"mta-sts.{d}"]
        served = sorted(r["name"] for r in records if r["name"] in web)
        assert served == (web if s.config.public_web else [])
    # The lab names Pebble; the real stacks keep Let's Encrypt.
    assert s.config.acme.caa_issuers == (["pebble.lab.example"] if variant == "lab" else ["letsencrypt.org"])


def test_dkim_txt_split_into_255_byte_strings(run: mockrun.Run, variant: str) -> None:
    s = settings_of(variant)
    keys = {r.name: r.outputs["privateKeyPem"] for r in run.of_type("tls:index/privateKey:PrivateKey")}
    for domain in s.mail.domains:
        name = f"{s.config.dkim.selector}._domainkey.{domain.name}"
        (rec,) = [r for r in dns_records(run) if r["name"] == name]
        parts = txt_strings(rec["content"])
        assert len(parts) == 2 and all(len(p.encode()) <= 255 for p in parts)
        pem = keys[f"keys-dkim-{domain.name}-{s.config.dkim.selector}"]
        assert "".join(parts) == f"v=DKIM1; k=rsa; p={dkim_public_key_b64(pem)}"


def test_dev_and_prod_dmarc_differ(runner: Any) -> None:
    def policy(run: mockrun.Run) -> set[str]:
        return {
            txt_strings(r["content"])[0].split(";")[1].strip()
            for r in dns_records(run)
            if r["name"].startswith("_dmarc.")
        }

    assert policy(runner("dev")) == {"p=none"}
    assert policy(runner("prod")) == {"p=quarantine"}


def test_ptr_is_the_mail_hostname(runner: Any) -> None:
    run = runner("prod")
    for t in ("vultr:index/reverseIpv4:ReverseIpv4", "vultr:index/reverseIpv6:ReverseIpv6"):
        (ptr,) = run.of_type(t)
        assert ptr.inputs["reverse"] == "mail.example.org"


# --- outputs and structure -------------------------------------------------------------------


def test_stack_outputs(run: mockrun.Run, variant: str) -> None:
    s = settings_of(variant)
    out = run.outputs
    assert out["wireguardAddress"] == str(s.config.wireguard.address)
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", out["publicIpv4"])
    assert set(out["clientSettings"]) == {d.name for d in s.mail.domains}
    # One JSON object per record: every domain's MX to the host, every record in one of its zones.
    records = out["dnsRecords"]
    assert {(r["name"], r["type"], r["data"]) for r in records if r["type"] == "MX"} == {
        (d.name, "MX", f"10 {s.config.hostname}.") for d in s.mail.domains
    }
    assert all(set(r) == {"zone", "name", "type", "ttl", "data", "purpose"} for r in records)
    assert all(r["ttl"] == s.config.dns.ttl and r["purpose"] for r in records)
    peer = out["hubPeerConfig"]
    assert f"PublicKey = {out['wireguardPublicKey']}" in peer
    assert f"AllowedIPs = {s.config.wireguard.address}/32" in peer
    assert f"Endpoint = {out['publicIpv4']}:{s.config.wireguard.port}" in peer


def test_components_parent_their_children(run: mockrun.Run) -> None:
    for r in run.resources:
        assert r.parent, f"{r.type} {r.name} has no parent"
        if not r.type.startswith("sams:"):
            assert "::sams:" in r.parent, f"{r.type} {r.name} is not inside a SAMS component"


@pytest.mark.parametrize(
    "stack,absent", [("lab", {"ediri_vultr", "pulumi_oci"}), ("prod", {"pulumi_oci"}), ("dev", {"ediri_vultr"})]
)
def test_only_the_chosen_provider_is_imported(stack: str, absent: set[str]) -> None:
    probe = f"print(sorted(m for m in {sorted(absent)!r} if m in sys.modules))"
    code = f"import sys, mockrun; mockrun.run({stack!r}, secret_config=mockrun.TEST_SECRETS); {probe}"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_preview_registers_the_same_resources(runner: Any) -> None:
    up = runner("prod")
    preview = mockrun.run("prod", preview=True, secret_config=mockrun.TEST_SECRETS)
    assert {(r.type, r.name) for r in preview.resources} == {(r.type, r.name) for r in up.resources}
