"""TLS under mocks and in plain processes: the port policy, what nginx and certbot are given, the
MTA-STS policy the host serves, and the deploy hook run for real against a scratch directory."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import mockrun
from components.dns.plan import mta_sts_id, mta_sts_policy, txt_content
from components.firewall.policy import nftables_conf, public_ports
from components.remote.steps import StepSpec, digest
from components.tls import certs
from settings import SettingsError, load
from tests.conftest import VARIANTS
from tests.test_program import settings_of

PROJECT = Path(__file__).resolve().parents[1]


def shipped(run: mockrun.Run, variant: str, step: str) -> StepSpec:
    """The step the program ships for `variant`, checked against the content hash in its triggers."""
    spec = next(s for s in certs.tls_steps(settings_of(variant)) if s.name == f"tls-{step}")
    copy = next(r for r in run.of_type("command:remote:CopyToRemote") if r.name == f"tls-tls-{step}-copy")
    assert copy.inputs["triggers"][0] == digest(spec)
    return spec


def staged(run: mockrun.Run, variant: str, step: str) -> dict[str, str]:
    """Path on the host -> file content (late tokens unresolved) of a shipped step."""
    return {f.path: f.content for f in shipped(run, variant, step).files}


def script(run: mockrun.Run, variant: str, step: str) -> str:
    return shipped(run, variant, step).script


def ini(text: str) -> dict[str, str]:
    pairs = (ln.split("=", 1) for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


# --- what is open -------------------------------------------------------------------------------------


def test_web_ports_follow_public_web(variant: str) -> None:
    cfg = settings_of(variant).config
    web = {(p.number, p.proto) for p in public_ports(cfg)} & {(80, "tcp"), (443, "tcp")}
    assert web == ({(80, "tcp"), (443, "tcp")} if cfg.public_web else set())
    rule = re.search(r"tcp dport \{ ([0-9, ]+) \} accept", nftables_conf(cfg))
    assert rule is not None
    opened = {int(p) for p in rule.group(1).split(", ")}
    assert ({80, 443} <= opened) == cfg.public_web
    assert not ({80, 443} & opened) or cfg.public_web


def test_nginx_only_where_the_web_ports_are_public(run: mockrun.Run, variant: str) -> None:
    steps = [r.name.removesuffix("-apply") for r in run.of_type("command:remote:Command")]
    assert "tls-tls-certbot" in steps
    assert ("tls-tls-web" in steps) == settings_of(variant).config.public_web


# --- order ---------------------------------------------------------------------------------------------


def _ancestors(run: mockrun.Run, urn: str) -> set[str]:
    urns = run.by_urn()
    seen: set[str] = set()
    todo = [urn]
    while todo:
        r = urns[todo.pop()]
        for d in [*r.dependencies, *([r.parent] if r.parent else [])]:
            if d not in seen and d in urns:
                seen.add(d)
                todo.append(d)
    return seen


def test_certbot_runs_after_the_daemons_it_reloads_and_after_nginx(run: mockrun.Run, variant: str) -> None:
    commands = {r.name.removesuffix("-apply"): r for r in run.of_type("command:remote:Command")}
    copies = {r.name.removesuffix("-copy"): r for r in run.of_type("command:remote:CopyToRemote")}
    order = ["mail-mail-base", "mail-dovecot", "mail-postfix"]
    if settings_of(variant).config.public_web:
        order.append("tls-tls-web")
    for before, after in itertools.pairwise([*order, "tls-tls-certbot"]):
        assert commands[before].urn in _ancestors(run, copies[after].urn), f"{after} must run after {before}"
    # HTTP-01 and the MTA-STS names need the published records: certbot waits for the DNS component.
    records = run.of_type("cloudflare:index/dnsRecord:DnsRecord")
    if records:
        assert {r.urn for r in records} & _ancestors(run, copies["tls-tls-certbot"].urn)


# --- nginx and the MTA-STS policy -----------------------------------------------------------------------


def _server_blocks(conf: str) -> list[str]:
    return re.findall(r"^server \{\n(.*?)^\}", conf, re.S | re.M)


def test_nginx_serves_exactly_the_published_mta_sts_policy(runner: Any) -> None:
    run = runner("prod")
    settings = settings_of("prod")
    files = staged(run, "prod", "web")
    conf = files[certs.NGINX_SITE]
    plain, https = _server_blocks(conf)
    assert "listen 80 default_server;" in plain and "listen 443 ssl default_server;" in https
    names = re.search(r"server_name (.*);", https)
    assert names is not None
    assert names.group(1).split() == [f"mta-sts.{d.name}" for d in settings.mail.domains]
    # The file nginx serves for /.well-known/mta-sts.txt is the policy whose id DNS publishes.
    root = re.search(r"location = /\.well-known/mta-sts\.txt \{\s*root (\S+);", https)
    assert root is not None
    policy = files[f"{root.group(1)}/.well-known/mta-sts.txt"]
    assert policy == mta_sts_policy(settings)
    assert re.fullmatch(r"version: STSv1\nmode: enforce\nmx: mail\.example\.org\nmax_age: \d+\n", policy)
    published = {
        r.inputs["name"]: r.inputs["content"]
        for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord")
        if r.inputs["type"] == "TXT"
    }
    for d in settings.mail.domains:
        assert published[f"_mta-sts.{d.name}"] == txt_content(f"v=STSv1; id={mta_sts_id(settings)}")
    assert "default_type text/plain;" in https and "types { }" in https
    # Port 80: the ACME webroot certbot writes to, everything else to HTTPS.
    webroot = re.search(r"location /\.well-known/acme-challenge/ \{\s*root (\S+);", plain)
    assert (
        webroot is not None and webroot.group(1) == ini(staged(run, "prod", "certbot")[certs.CLI_INI])["webroot-path"]
    )
    assert "return 301 https://$host$request_uri;" in plain
    # TLS from the stable paths the deploy hook switches.
    assert f"ssl_certificate {certs.TLS_FULLCHAIN};" in https
    assert f"ssl_certificate_key {certs.TLS_KEY};" in https


def test_policy_mode_follows_dmarc(runner: Any) -> None:
    assert "mode: testing\n" in staged(runner("lab"), "lab", "web")[certs.MTA_STS_FILE]
    assert "mode: enforce\n" in staged(runner("prod"), "prod", "web")[certs.MTA_STS_FILE]


def test_web_step_enables_the_site_and_drops_debian_default(runner: Any) -> None:
    text = script(runner("lab"), "lab", "web")
    assert f"ln -sfn {certs.NGINX_SITE} {certs.NGINX_ENABLED}" in text
    assert "rm -f /etc/nginx/sites-enabled/default" in text
    assert text.index("nginx -t") < text.index("systemctl reload-or-restart nginx")


# --- certbot -----------------------------------------------------------------------------------------


def test_certificate_names_are_the_hostname_and_every_mta_sts_host(runner: Any) -> None:
    settings = settings_of("lab")
    text = script(runner("lab"), "lab", "certbot")
    line = next(ln for ln in text.splitlines() if ln.startswith("certbot certonly"))
    assert re.findall(r"-d (\S+)", line) == ["mail.sams.test", "mta-sts.sams.test", "mta-sts.other.test"]
    assert f"--cert-name {certs.CERT_NAME}" in line
    assert certs.certificate_names(settings)[0] == settings.config.hostname


def test_http01_cli_ini(runner: Any) -> None:
    files = staged(runner("prod"), "prod", "certbot")
    conf = ini(files[certs.CLI_INI])
    assert conf["server"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert conf["authenticator"] == "webroot"
    assert conf["webroot-path"] == certs.ACME_WEBROOT
    assert conf["non-interactive"] == conf["agree-tos"] == "true"
    assert certs.CLOUDFLARE_INI not in files
    assert certs.SERVER_CA not in files  # Let's Encrypt needs no extra trust


def test_lab_trusts_its_acme_server_ca_and_uses_its_directory(runner: Any) -> None:
    run = runner("lab")
    files = staged(run, "lab", "certbot")
    assert ini(files[certs.CLI_INI])["server"] == "https://198.18.0.1:14000/dir"
    # The stack file alone names no serverCa (the lab adds Pebble's as an override): none is
    # installed, and one an earlier configuration installed is removed.
    assert settings_of("lab").config.acme.server_ca is None
    assert certs.SERVER_CA not in files
    assert f"rm -f {certs.SERVER_CA}" in script(run, "lab", "certbot")


def test_server_ca_lands_in_the_system_store(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    acme = {"directory": "https://acme.internal/dir", "serverCa": pem, "caaIssuers": ["acme.internal"]}
    settings = _load("lab", {"sams:acme": acme})
    spec = certs.certbot_step(settings)
    files = {f.path: f.content for f in spec.files}
    assert files[certs.SERVER_CA] == pem
    assert certs.SERVER_CA.startswith("/usr/local/share/ca-certificates/") and certs.SERVER_CA.endswith(".crt")
    assert "update-ca-certificates" in spec.script


def test_dns01_token_reaches_the_host_only_on_stdin(runner: Any) -> None:
    run = runner("prod-bastion")
    files = staged(run, "prod-bastion", "certbot")
    conf = ini(files[certs.CLI_INI])
    assert conf["authenticator"] == "dns-cloudflare"
    assert conf["dns-cloudflare-credentials"] == certs.CLOUDFLARE_INI
    assert "webroot-path" not in conf
    token = mockrun.TEST_SECRETS["sams:acmeCloudflareToken"]
    assert ini(files[certs.CLOUDFLARE_INI])["dns_cloudflare_api_token"] == f"@@SAMS_LATE:{certs.CLOUDFLARE_TOKEN}@@"
    spec = certs.certbot_step(settings_of("prod-bastion"))
    assert next(f for f in spec.files if f.path == certs.CLOUDFLARE_INI).mode == "0600"
    cmd = next(r for r in run.of_type("command:remote:Command") if r.name == "tls-tls-certbot-apply")
    assert cmd.is_secret("stdin") and token in cmd.inputs["stdin"]
    for r in run.resources:
        if r is not cmd:
            assert token not in repr(r.inputs), r.name


def test_deploy_hook_is_a_clean_shell_script() -> None:
    hook = certs.deploy_hook()
    assert hook.startswith("#!/bin/sh\n")
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is part of the test tools (see ./run)"
    result = subprocess.run([shellcheck, "-s", "sh", "-"], input=hook, text=True, capture_output=True)
    assert result.returncode == 0, result.stdout


# --- the deploy hook, run ---------------------------------------------------------------------------


def _hook_world(tmp_path: Path, active: set[str]) -> tuple[Path, Path, Path, dict[str, str]]:
    """A tls dir with the bootstrap links, a certbot lineage, and a systemctl that logs its calls."""
    tls, live = tmp_path / "ssl", tmp_path / "live" / "sams"
    (tls / "bootstrap").mkdir(parents=True)
    live.mkdir(parents=True)
    for name in ("fullchain", "privkey"):
        (tls / "bootstrap" / f"{name}.pem").write_text(f"bootstrap {name}\n")
        (tls / f"{name}.pem").symlink_to(tls / "bootstrap" / f"{name}.pem")
        (live / f"{name}.pem").write_text(f"acme {name}\n")
    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    stub = bin_dir / "systemctl"
    units = " ".join(sorted(active))
    stub.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n'
        f'if [ "$1" = is-active ]; then for u in {units}; do [ "$3" = "$u" ] && exit 0; done; exit 3; fi\nexit 0\n'
    )
    stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return tls, live, log, env


def _run_hook(tmp_path: Path, tls: Path, live: Path, env: dict[str, str], lineage: str) -> None:
    hook = tmp_path / "hook"
    hook.write_text(certs.deploy_hook(live_dir=str(live), tls_dir=str(tls)))
    hook.chmod(0o755)
    subprocess.run([str(hook)], env={**env, "RENEWED_LINEAGE": lineage}, check=True)


def test_deploy_hook_switches_to_the_lineage_and_only_reloads(tmp_path: Path) -> None:
    tls, live, log, env = _hook_world(tmp_path, active={"postfix", "dovecot", "nginx"})
    _run_hook(tmp_path, tls, live, env, str(live))
    for name in ("fullchain", "privkey"):
        assert os.readlink(tls / f"{name}.pem") == f"../live/sams/{name}.pem"  # relative: chroot-safe
        assert (tls / f"{name}.pem").read_text() == f"acme {name}\n"
    assert not (tls / "bootstrap").exists()  # no self-signed certificate remains
    assert sorted(os.listdir(tls)) == ["fullchain.pem", "privkey.pem"]
    calls = log.read_text().splitlines()
    assert [c for c in calls if not c.startswith("is-active")] == [
        "reload postfix",
        "reload dovecot",
        "reload nginx",
    ]


def test_deploy_hook_leaves_stopped_daemons_and_other_lineages_alone(tmp_path: Path) -> None:
    tls, live, log, env = _hook_world(tmp_path, active={"postfix"})
    _run_hook(tmp_path, tls, live, env, str(tmp_path / "live" / "someone-else"))
    assert (tls / "fullchain.pem").read_text() == "bootstrap fullchain\n"
    assert not log.exists()
    _run_hook(tmp_path, tls, live, env, str(live))
    assert [c for c in log.read_text().splitlines() if not c.startswith("is-active")] == ["reload postfix"]


def test_deploy_hook_replaces_plain_files_of_an_older_host(tmp_path: Path) -> None:
    tls, live, _, env = _hook_world(tmp_path, active=set())
    for name in ("fullchain", "privkey"):
        (tls / f"{name}.pem").unlink()
        (tls / f"{name}.pem").write_text("old self-signed\n")
    _run_hook(tmp_path, tls, live, env, str(live))
    assert (tls / "fullchain.pem").is_symlink() and (tls / "fullchain.pem").read_text() == "acme fullchain\n"


# --- settings -----------------------------------------------------------------------------------------


def _load(stack: str, overrides: dict[str, Any], secrets: bool = True) -> Any:
    cfg = {**mockrun.stack_config(stack), **(mockrun.TEST_SECRETS if secrets else {})}
    cfg.update({k: mockrun.encode_config(v) for k, v in overrides.items()})
    return load(stack, cfg, PROJECT)


def test_http01_needs_the_web_ports() -> None:
    with pytest.raises(SettingsError, match=r"sams:acme\.challenge = 'http-01': http-01 needs port 80"):
        _load("prod", {"sams:publicWeb": False})
    assert _load("prod", {"sams:publicWeb": False, "sams:acme": {"challenge": "dns-01-cloudflare"}})


def test_dns01_needs_the_cloudflare_token() -> None:
    with pytest.raises(SettingsError, match=r"sams:acmeCloudflareToken.*required by acme\.challenge"):
        _load("prod", {"sams:acme": {"challenge": "dns-01-cloudflare"}}, secrets=False)


@pytest.mark.parametrize(
    ("acme", "key"),
    [
        ({"directory": "http://acme.example/dir"}, "sams:acme.directory"),
        ({"serverCa": "not a certificate"}, "sams:acme.serverCa"),
        ({"challenge": "tls-alpn-01"}, "sams:acme.challenge"),
        ({"email": "nobody"}, "sams:acme.email"),
    ],
)
def test_bad_acme_settings_name_their_key(acme: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(key)):
        _load("prod", {"sams:acme": acme})


def test_every_variant_is_covered() -> None:
    challenges = {settings_of(v).config.acme.challenge for v in VARIANTS}
    assert challenges == {"http-01", "dns-01-cloudflare"}


def test_certbot_waits_for_the_webroot_only_with_http01() -> None:
    http = certs.certbot_step(settings_of("prod")).script
    assert http.index("sams-ready") < http.index("certbot certonly")
    assert "sams-ready" not in certs.certbot_step(settings_of("prod-bastion")).script
