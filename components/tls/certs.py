"""TLS for the mail host (pure): certbot, its deploy hook, nginx for ACME and MTA-STS.

The daemons (Postfix, Dovecot, nginx) read their certificate from two stable paths,
TLS_FULLCHAIN and TLS_KEY, which are symlinks:

  first boot     mail-base (bootstrap_script) makes a self-signed pair under BOOTSTRAP_DIR and
                 links the stable paths to it, so every daemon starts before any certificate exists;
  tls-web        nginx answers ACME HTTP-01 challenges on port 80 and serves the MTA-STS policy and
                 the mail clients' autoconfiguration (components/tls/autoconfig.py);
  tls-certbot    certbot gets one certificate (lineage CERT_NAME) for the hostname and every
                 mta-sts.<domain>, autoconfig.<domain> and autodiscover.<domain>; the deploy hook
                 points the stable paths at certbot's live files, deletes the bootstrap pair (no
                 self-signed certificate remains) and reloads, never restarts, Postfix, Dovecot and nginx.
                 Debian's certbot.timer renews; the same hook runs after every renewal.
"""

from __future__ import annotations

import posixpath
import shlex

from components.dns.plan import mta_sts_policy
from components.remote.steps import File, StepSpec, late
from components.render import render
from components.tls.autoconfig import (
    ADDRESS,
    APPLE_PROFILE_ADDRESS_PATH,
    APPLE_PROFILE_PATH,
    APPLE_PROFILE_TYPE,
    AUTODISCOVER_LOCAL,
    CLIENTS_ROOT,
    client_files,
)
from settings import Settings

# Debian 13 packages (installed with the mail stack's, so the lab bakes them into its tree).
TLS_PACKAGES: tuple[str, ...] = ("nginx", "certbot", "python3-certbot-dns-cloudflare", "ca-certificates")

# --- the stable paths every TLS daemon reads --------------------------------------------------------
TLS_DIR = "/etc/ssl/sams"
TLS_FULLCHAIN = f"{TLS_DIR}/fullchain.pem"  # symlink: bootstrap pair, then certbot's live file
TLS_KEY = f"{TLS_DIR}/privkey.pem"
BOOTSTRAP_DIR = f"{TLS_DIR}/bootstrap"  # deleted by the deploy hook once certbot's certificate exists

# --- what TLS 1.2 offers mail clients and browsers -----------------------------------------------------
# Submission (587/465), IMAP, POP3, ManageSieve and HTTPS: AEAD suites with forward secrecy only, in
# this order, the server choosing (Mozilla's "intermediate" profile less its DHE suites: no daemon
# here is given DH parameters). No CBC suite, so no Lucky13-style padding oracle; every client of
# the last decade has one of these. TLS 1.3 suites are all AEAD: OpenSSL's defaults stay. Port 25
# keeps Postfix's broader default (main.cf says why).
CLIENT_TLS12_CIPHERS: tuple[str, ...] = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
CLIENT_CIPHER_LIST = ":".join(CLIENT_TLS12_CIPHERS)  # OpenSSL's syntax, read by all three daemons

# --- certbot ------------------------------------------------------------------------------------------
CERT_NAME = "sams"
LETSENCRYPT = "/etc/letsencrypt"
LIVE_DIR = f"{LETSENCRYPT}/live/{CERT_NAME}"
CLI_INI = f"{LETSENCRYPT}/cli.ini"  # read by every certbot run, the timer's renewals included
DEPLOY_HOOK = f"{LETSENCRYPT}/renewal-hooks/deploy/sams"
CLOUDFLARE_INI = f"{LETSENCRYPT}/sams-cloudflare.ini"
ACME_WEBROOT = "/var/lib/sams/acme"
# Debian's update-ca-certificates adds *.crt from here to /etc/ssl/certs, which certbot trusts.
SERVER_CA = "/usr/local/share/ca-certificates/sams-acme-server.crt"
RELOADED_UNITS: tuple[str, ...] = ("postfix", "dovecot", "nginx")

# Late value: the Cloudflare token for DNS-01 (secret sams:acmeCloudflareToken), stdin only.
CLOUDFLARE_TOKEN = "acme_cloudflare_token"

# --- nginx ----------------------------------------------------------------------------------------------
NGINX_SITE = "/etc/nginx/sites-available/sams"
NGINX_ENABLED = "/etc/nginx/sites-enabled/sams"
# Debian's default site: it claims default_server on port 80 on every address; SAMS removes it.
NGINX_DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
MTA_STS_ROOT = "/var/www/sams/mta-sts"
MTA_STS_FILE = f"{MTA_STS_ROOT}/.well-known/mta-sts.txt"


def _render(template: str, **context: object) -> str:
    return render("tls", template, **context)


def mta_sts_hosts(settings: Settings) -> list[str]:
    return [f"mta-sts.{d.name}" for d in settings.mail.domains]


def web_hosts(settings: Settings) -> list[str]:
    """Every name nginx answers on 443, per domain: the MTA-STS policy host, Thunderbird's
    autoconfig host and Outlook's autodiscover host."""
    return [f"{prefix}.{d.name}" for d in settings.mail.domains for prefix in ("mta-sts", "autoconfig", "autodiscover")]


def certificate_names(settings: Settings) -> list[str]:
    """The hostname first (the certificate's subject), then the web hosts when nginx serves them."""
    names = [settings.config.hostname]
    if settings.config.public_web:
        names += [n for n in web_hosts(settings) if n not in names]
    return names


def _rel(target: str, tls_dir: str = TLS_DIR) -> str:
    """`target` as seen from the directory of the stable paths."""
    return posixpath.relpath(target, tls_dir)


def bootstrap_script(settings: Settings) -> str:
    """Shell for the mail-base step: a self-signed pair behind the stable paths, only if none exists.

    `-e` follows the symlinks, so once certbot's files are linked (or an older host's plain files
    exist) nothing is made; the deploy hook deletes the bootstrap pair when certbot's arrives.
    """
    names = certificate_names(settings)
    san = ",".join(f"DNS:{n}" for n in names)
    return f"""\
# Bootstrap self-signed certificate so the daemons start before certbot's exists.
install -d -o root -g root -m 0755 {TLS_DIR}
if [ ! -e {TLS_KEY} ] || [ ! -e {TLS_FULLCHAIN} ]; then
    install -d -o root -g root -m 0700 {BOOTSTRAP_DIR}
    (
        umask 077
        openssl req -x509 -newkey rsa:2048 -sha256 -days 90 -nodes -batch \\
            -subj "/CN={names[0]}" -addext "subjectAltName={san}" \\
            -keyout {BOOTSTRAP_DIR}/privkey.pem -out {BOOTSTRAP_DIR}/fullchain.pem 2>/dev/null
    )
    chmod 0644 {BOOTSTRAP_DIR}/fullchain.pem
    # Relative links (like certbot's own in live/): they resolve inside a chroot too.
    ln -sfn {_rel(BOOTSTRAP_DIR)}/privkey.pem {TLS_KEY}
    ln -sfn {_rel(BOOTSTRAP_DIR)}/fullchain.pem {TLS_FULLCHAIN}
fi
"""


def deploy_hook(live_dir: str = LIVE_DIR, tls_dir: str = TLS_DIR) -> str:
    """The renewal hook; other directories only for tests that run it outside a host."""
    return _render(
        "etc/letsencrypt/renewal-hooks/deploy/sams.j2",
        live_dir=live_dir,
        live_rel=_rel(live_dir, tls_dir),
        tls_dir=tls_dir,
        tls_fullchain=f"{tls_dir}/fullchain.pem",
        tls_key=f"{tls_dir}/privkey.pem",
        bootstrap_dir=f"{tls_dir}/bootstrap",
        units=RELOADED_UNITS,
    )


def cli_ini(settings: Settings) -> str:
    acme = settings.config.acme
    return _render(
        "etc/letsencrypt/cli.ini.j2",
        acme=acme,
        webroot=ACME_WEBROOT,
        cloudflare_ini=CLOUDFLARE_INI,
    )


def nginx_site(settings: Settings) -> str:
    return _render(
        "etc/nginx/sites-available/sams.j2",
        mta_sts_hosts=mta_sts_hosts(settings),
        acme_webroot=ACME_WEBROOT,
        mta_sts_root=MTA_STS_ROOT,
        client_domains=[d.name for d in settings.mail.domains],
        clients_root=CLIENTS_ROOT,
        address_placeholder=ADDRESS,
        profile_path=APPLE_PROFILE_PATH,
        profile_address_path=APPLE_PROFILE_ADDRESS_PATH,
        profile_type=APPLE_PROFILE_TYPE,
        autodiscover_local=AUTODISCOVER_LOCAL,
        tls_fullchain=TLS_FULLCHAIN,
        tls_key=TLS_KEY,
        client_ciphers=CLIENT_CIPHER_LIST,
    )


def web_step(settings: Settings) -> StepSpec:
    """nginx: the ACME webroot on port 80; on 443 https://mta-sts.<domain>/.well-known/mta-sts.txt
    and the mail clients' autoconfig.<domain> and autodiscover.<domain> documents."""
    files = (
        File(NGINX_SITE, nginx_site(settings)),
        # Exactly the policy whose id the _mta-sts TXT record carries (components/dns/plan.py).
        File(MTA_STS_FILE, mta_sts_policy(settings)),
        # Static files nginx reads per request: a change needs no reload.
        *client_files(settings),
    )
    # The enabled link and Debian's default site (it claims default_server on port 80 too) are
    # handled here rather than by a Service watch: the reload must come after the link exists.
    script = f"""\
install -d -o root -g root -m 0755 {ACME_WEBROOT}
linked=0
if [ "$(readlink {NGINX_ENABLED} || true)" != "{NGINX_SITE}" ]; then
    ln -sfn {NGINX_SITE} {NGINX_ENABLED}
    linked=1
fi
if [ -e {NGINX_DEFAULT_SITE} ] || [ -L {NGINX_DEFAULT_SITE} ]; then
    rm -f {NGINX_DEFAULT_SITE}
    linked=1
fi
nginx -t -q
systemctl enable --quiet nginx
case "$SAMS_CHANGED" in
    *{NGINX_SITE}*) linked=1 ;;
esac
if [ "$linked" = 1 ]; then
    systemctl reload-or-restart nginx
fi
"""
    return StepSpec(
        name="tls-web",
        files=files,
        script=script,
        description="nginx: ACME webroot on 80, MTA-STS policy and client autoconfiguration on 443",
    )


def certbot_command(settings: Settings) -> list[str]:
    """certonly for the one lineage; cli.ini holds the server, challenge and account options."""
    cmd = ["certbot", "certonly", "--cert-name", CERT_NAME, "--keep-until-expiring", "--expand"]
    for name in certificate_names(settings):
        cmd += ["-d", name]
    return cmd


# The CA may validate within milliseconds of the order: wait until nginx (just reloaded by the
# tls-web step, which is asynchronous) serves the webroot on port 80.
_WEBROOT_READY = """\
install -d -o root -g root -m 0755 {webroot}/.well-known/acme-challenge
echo ready > {webroot}/.well-known/acme-challenge/sams-ready
python3 - <<'PY'
import time, urllib.request
url = "http://127.0.0.1/.well-known/acme-challenge/sams-ready"
for _ in range(100):
    try:
        if urllib.request.urlopen(url, timeout=1).read() == b"ready\\n":
            break
    except OSError:
        pass
    time.sleep(0.1)
else:
    raise SystemExit("nginx does not serve the ACME webroot on port 80")
PY
rm -f {webroot}/.well-known/acme-challenge/sams-ready
"""


def certbot_step(settings: Settings) -> StepSpec:
    """certbot's configuration, the deploy hook, the first certificate (later runs are no-ops)."""
    acme = settings.config.acme
    files = [
        File(CLI_INI, cli_ini(settings)),
        File(DEPLOY_HOOK, deploy_hook(), mode="0755"),
    ]
    late_values: tuple[str, ...] = ()
    if acme.challenge == "dns-01-cloudflare":
        files.append(
            File(
                CLOUDFLARE_INI,
                _render("etc/letsencrypt/sams-cloudflare.ini.j2", token=late(CLOUDFLARE_TOKEN)),
                mode="0600",
            )
        )
        late_values = (CLOUDFLARE_TOKEN,)
    if acme.server_ca:
        files.append(File(SERVER_CA, acme.server_ca if acme.server_ca.endswith("\n") else acme.server_ca + "\n"))
        trust = """\
# The ACME server's private CA (sams:acme.serverCa) joins the system store certbot reads. Every
# run, not only when the file changed: idempotent, and it repairs a run interrupted after the copy.
update-ca-certificates >/dev/null
"""
    else:
        trust = f"""\
# No private ACME CA configured: drop one an earlier configuration installed.
if [ -e {SERVER_CA} ]; then rm -f {SERVER_CA}; update-ca-certificates --fresh >/dev/null; fi
"""
    ready = _WEBROOT_READY.format(webroot=ACME_WEBROOT) if acme.challenge == "http-01" else ""
    script = f"""\
{trust}install -d -o root -g root -m 0755 {ACME_WEBROOT}
{ready}before=$(readlink -f {LIVE_DIR}/fullchain.pem || true)
# A no-op while the certificate is valid for these names; a new domain expands it.
{shlex.join(certbot_command(settings))}
after=$(readlink -f {LIVE_DIR}/fullchain.pem)
# certbot runs the deploy hook only on renewals: run it for the first (or a re-)issuance, and
# for a host whose stable paths do not point at the lineage yet.
if [ "$before" != "$after" ] || [ "$(readlink -f {TLS_FULLCHAIN})" != "$after" ]; then
    RENEWED_LINEAGE={LIVE_DIR} {DEPLOY_HOOK}
fi
"""
    return StepSpec(
        name="tls-certbot",
        files=tuple(files),
        script=script,
        late_values=late_values,
        description="certbot: the ACME certificate for the hostname and the web hosts, renewal hook",
    )


def tls_steps(settings: Settings) -> tuple[StepSpec, ...]:
    """In order: nginx first (HTTP-01 needs the webroot served), then certbot."""
    web = (web_step(settings),) if settings.config.public_web else ()
    return (*web, certbot_step(settings))
