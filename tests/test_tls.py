"""TLS under mocks and in plain processes: the port policy, what nginx and certbot are given, the
MTA-STS policy the host serves, and the deploy hook run for real against a scratch directory."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

import mockrun
from components.dns.plan import mta_sts_id, mta_sts_policy
from components.dns.records import txt
from components.firewall.policy import nftables_conf, public_ports
from components.remote.steps import StepSpec, digest
from components.tls import autoconfig, certs
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
    plain, https, local, *clients = _server_blocks(conf)
    assert f"listen {autoconfig.AUTODISCOVER_LOCAL};" in local
    assert len(clients) == len(settings.mail.domains)  # one autoconfig/autodiscover server each
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
        assert published[f"_mta-sts.{d.name}"] == txt(f"v=STSv1; id={mta_sts_id(settings)}").to_text()
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


# --- client autoconfiguration (Thunderbird, Outlook) ----------------------------------------------------

TB = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
SECURITY_WORDS = {"SSL/TLS": ("SSL", "SSL"), "STARTTLS": ("STARTTLS", "TLS")}  # (Thunderbird, Outlook)


def thunderbird_servers(text: str, domain: str) -> list[tuple[str, str, int, str, str]]:
    root = ET.fromstring(text.encode())
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    (provider,) = root.findall("emailProvider")
    assert provider.get("id") == domain and [d.text for d in provider.findall("domain")] == [domain]
    out = []
    for el in provider:
        if el.tag in ("incomingServer", "outgoingServer"):
            assert el.findtext("authentication") == "password-cleartext"
            out.append(
                (
                    str(el.get("type")),
                    str(el.findtext("hostname")),
                    int(str(el.findtext("port"))),
                    str(el.findtext("socketType")),
                    str(el.findtext("username")),
                )
            )
    return out


def outlook_protocols(text: str) -> list[tuple[str, str, int, str]]:
    root = ET.fromstring(text.encode())
    assert root.tag == "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}Autodiscover"
    (account,) = root.findall(f"{TB}Response/{TB}Account")
    assert account.findtext(f"{TB}AccountType") == "email" and account.findtext(f"{TB}Action") == "settings"
    out = []
    for p in account.findall(f"{TB}Protocol"):
        assert p.findtext(f"{TB}SSL") == "on" and p.findtext(f"{TB}AuthRequired") == "on"
        assert p.findtext(f"{TB}SPA") == "off"
        # The login name is the full address: nginx puts the requested one in place of the marker.
        assert p.findtext(f"{TB}LoginName") == autoconfig.ADDRESS == "%EMAILADDRESS%"
        out.append(
            (
                str(p.findtext(f"{TB}Type")),
                str(p.findtext(f"{TB}Server")),
                int(str(p.findtext(f"{TB}Port"))),
                str(p.findtext(f"{TB}Encryption")),
            )
        )
    return out


def expected_servers(client: dict[str, Any], public: set[int]) -> list[tuple[str, dict[str, Any]]]:
    """From the clientSettings output: what is reachable from the internet, IMAP first."""
    listed = [("imap", client["imap"]), ("pop3", client["pop3"]), *(("smtp", s) for s in client["smtp"])]
    return [(kind, e) for kind, e in listed if e["port"] in public]


def check_documents(thunderbird: str, outlook: str, domain: str, client: dict[str, Any], public: set[int]) -> None:
    """Both documents say exactly what clientSettings says, for the public servers only."""
    want = expected_servers(client, public)
    assert thunderbird_servers(thunderbird, domain) == [
        (kind, e["host"], e["port"], SECURITY_WORDS[e["security"]][0], "%EMAILADDRESS%") for kind, e in want
    ]
    first: dict[str, dict[str, Any]] = {}
    for kind, e in want:
        first.setdefault(kind, e)
    assert outlook_protocols(outlook) == [
        (kind.upper(), e["host"], e["port"], SECURITY_WORDS[e["security"]][1]) for kind, e in first.items()
    ]


def test_client_documents_follow_client_settings(run: mockrun.Run, variant: str) -> None:
    settings = settings_of(variant)
    public = {p.number for p in public_ports(settings.config) if p.proto == "tcp"}
    for d in settings.mail.domains:
        client = run.outputs["clientSettings"][d.name]
        thunderbird = autoconfig.thunderbird_config(d.name, client, public)
        outlook = autoconfig.outlook_autodiscover(d.name, client, public)
        check_documents(thunderbird, outlook, d.name, client, public)
        # Submission on 465 and 587 is always offered, implicit TLS first (RFC 8314).
        smtp = [s[2] for s in thunderbird_servers(thunderbird, d.name) if s[0] == "smtp"]
        assert smtp == [465, 587]
        assert ("SMTP", settings.config.hostname, 465, "SSL") in outlook_protocols(outlook)


@pytest.mark.parametrize(
    ("access", "offered"),
    [
        ({"imap": "public", "pop3": "public"}, {"imap", "pop3"}),
        ({"imap": "public", "pop3": "vpn"}, {"imap"}),
        ({"imap": "vpn", "pop3": "public"}, {"pop3"}),
        ({"imap": "vpn", "pop3": "vpn"}, set()),
    ],
)
def test_vpn_only_protocols_are_not_advertised(access: dict[str, str], offered: set[str]) -> None:
    settings = _load("prod", {"sams:clientAccess": access})
    files = {f.path: f.content for f in autoconfig.client_files(settings)}
    for d in settings.mail.domains:
        root = f"{autoconfig.CLIENTS_ROOT}/{d.name}"
        tb = thunderbird_servers(files[f"{root}/mail/config-v1.1.xml"], d.name)
        ol = outlook_protocols(files[f"{root}/autodiscover/autodiscover.xml"])
        assert {s[0] for s in tb} - {"smtp"} == offered
        assert {p[0].lower() for p in ol} - {"smtp"} == offered
        vpn_ports = {993: "imap", 995: "pop3", 143: "imap"}
        for port, proto in vpn_ports.items():
            if proto not in offered:
                assert port not in {s[2] for s in tb} | {p[2] for p in ol}


def test_web_step_ships_the_rendered_client_documents(run: mockrun.Run, variant: str) -> None:
    settings = settings_of(variant)
    if not settings.config.public_web:
        assert "tls-tls-web-copy" not in {r.name for r in run.of_type("command:remote:CopyToRemote")}
        return
    files = staged(run, variant, "web")
    public = {p.number for p in public_ports(settings.config) if p.proto == "tcp"}
    conf = files[certs.NGINX_SITE]
    blocks = _server_blocks(conf)
    local = next(b for b in blocks if f"listen {autoconfig.AUTODISCOVER_LOCAL};" in b)
    local_root = re.search(r"^    root (\S+);", local, re.M)
    assert local_root is not None and "listen 443" not in local and "listen 80" not in local
    assert f'sub_filter "{autoconfig.ADDRESS}" "$http_x_sams_address";' in local
    for d in settings.mail.domains:
        client = run.outputs["clientSettings"][d.name]
        block = next(b for b in blocks if f"server_name autoconfig.{d.name} autodiscover.{d.name};" in b)
        root = re.search(r"^    root (\S+);", block, re.M)
        assert root is not None
        assert "location = /mail/config-v1.1.xml" in block
        assert "location ~* ^/autodiscover/autodiscover\\.xml$" in block
        thunderbird = files[f"{root.group(1)}/mail/config-v1.1.xml"]
        # Outlook's answer comes from the local server (the address put in): its root plus the rewrite.
        rewrite = re.search(r"rewrite \^ (\S+) break;", block)
        assert rewrite is not None
        outlook = files[f"{local_root.group(1)}{rewrite.group(1)}"]
        assert outlook == files[f"{root.group(1)}/autodiscover/autodiscover.xml"]
        assert thunderbird == autoconfig.thunderbird_config(d.name, client, public)
        assert outlook == autoconfig.outlook_autodiscover(d.name, client, public)
        check_documents(thunderbird, outlook, d.name, client, public)
        assert f"proxy_pass http://{autoconfig.AUTODISCOVER_LOCAL};" in block
        assert "listen 443 ssl;" in block and f"ssl_certificate {certs.TLS_FULLCHAIN};" in block


# --- certbot -----------------------------------------------------------------------------------------


def test_certificate_names_are_the_hostname_and_every_web_host(runner: Any) -> None:
    settings = settings_of("lab")
    text = script(runner("lab"), "lab", "certbot")
    line = next(ln for ln in text.splitlines() if ln.startswith("certbot certonly"))
    assert re.findall(r"-d (\S+)", line) == [
        "mail.sams.test",
        "mta-sts.sams.test",
        "autoconfig.sams.test",
        "autodiscover.sams.test",
        "mta-sts.other.test",
        "autoconfig.other.test",
        "autodiscover.other.test",
    ]
    assert f"--cert-name {certs.CERT_NAME}" in line
    assert certs.certificate_names(settings)[0] == settings.config.hostname


def test_certificate_covers_the_web_hosts_only_when_nginx_serves_them(variant: str) -> None:
    settings = settings_of(variant)
    names = set(certs.certificate_names(settings))
    web = {f"{p}.{d.name}" for d in settings.mail.domains for p in ("mta-sts", "autoconfig", "autodiscover")}
    assert (web <= names) == settings.config.public_web
    assert names - web == {settings.config.hostname}


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
