"""The rendered mail configuration, checked by the daemons' own checkers in a Debian 13 tree.

Every step is rendered for the lab stack, installed into a scratch copy of the trixie tree the
way sams-apply installs it (late values replaced by dummies) and its script run (systemctl is a
recording stub); then postfix, postconf, doveconf, opendkim and rspamadm must accept it.

    sudo .venv/bin/python -m pytest -m chroot tests/mailcore
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

import mockrun
import settings
from components.mail import services
from lab.trixie_chroot import run_in
from settings import Settings
from tests.mailcore.conftest import DUMMY_LATE, PROJECT, SYSTEMCTL_LOG

pytestmark = pytest.mark.chroot


def _ok(root: Path, *argv: str) -> str:
    result = run_in(root, list(argv))
    assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(r"warning|obsolete|deprecated", line, re.I)]


# --- Postfix ---------------------------------------------------------------------------------------


def test_postfix_check_passes_without_warnings(mail_root: Path) -> None:
    out = _ok(mail_root, "postfix", "check")
    assert _warnings(out) == []


def test_postconf_n_has_the_settings_that_matter(mail_root: Path, lab_settings) -> None:
    result = run_in(mail_root, ["postconf", "-n"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # unknown or unused parameters are warned about here
    conf = dict(line.split(" = ", 1) for line in result.stdout.splitlines())
    assert conf["myhostname"] == lab_settings.config.hostname
    assert conf["smtpd_tls_auth_only"] == "yes"
    for key in ("smtpd_tls_protocols", "smtpd_tls_mandatory_protocols", "smtp_tls_protocols"):
        assert conf[key] == ">=TLSv1.2"
    assert conf["virtual_transport"] == "lmtp:unix:private/dovecot-lmtp"
    assert conf["virtual_mailbox_domains"].startswith("proxy:pgsql:")
    assert conf["smtpd_sasl_type"] == "dovecot"
    # A milter down means 4xx (the sender retries), never mail accepted unscanned or unsigned.
    assert conf["milter_default_action"] == "tempfail"
    assert "smtpd_sasl_auth_enable" not in conf  # default no: AUTH only where master.cf enables it
    assert "relayhost" not in conf  # the lab stack has no relay


def test_postfix_offers_auth_only_on_the_submission_ports(mail_root: Path) -> None:
    # postconf -P prints the master.cf -o overrides as Postfix itself parses them.
    overrides = _ok(mail_root, "postconf", "-P").splitlines()
    auth_on = {
        line.split("/")[0] + "/" + line.split("/")[1] for line in overrides if "smtpd_sasl_auth_enable = yes" in line
    }
    assert auth_on == {"submission/inet", "submissions/inet"}
    services_out = _ok(mail_root, "postconf", "-M")
    assert re.search(r"^smtp\s+inet\s.*postscreen", services_out, re.M), "port 25 is not behind postscreen"
    assert "submissions/inet/smtpd_tls_wrappermode = yes" in overrides
    assert "submission/inet/smtpd_tls_security_level = encrypt" in overrides
    for svc in ("submission/inet", "submissions/inet"):
        assert any(
            line.startswith(f"{svc}/smtpd_sender_restrictions = reject_sender_login_mismatch") for line in overrides
        )


def test_postfix_reads_the_tls_key_and_certificate(mail_root: Path) -> None:
    # tlsproxy/smtpd load these at start; here openssl proves they exist and belong together.
    key = _ok(mail_root, "openssl", "pkey", "-in", services.TLS_KEY, "-pubout")
    cert = _ok(mail_root, "openssl", "x509", "-in", services.TLS_FULLCHAIN, "-noout", "-pubkey")
    assert key.strip() == cert.strip()
    assert (mail_root / services.TLS_KEY.lstrip("/")).stat().st_mode & 0o077 == 0


def test_aliases_database_was_built(mail_root: Path) -> None:
    out = _ok(mail_root, "postmap", "-q", "root", "hash:/etc/aliases")
    assert out.strip().startswith("postmaster@")


# --- Dovecot ---------------------------------------------------------------------------------------


def test_doveconf_accepts_the_config_without_warnings(mail_root: Path) -> None:
    result = run_in(mail_root, ["doveconf", "-n"])
    assert result.returncode == 0, result.stderr
    assert _warnings(result.stderr) == [], result.stderr
    out = result.stdout
    assert "ssl = required" in out
    assert "auth_allow_cleartext" not in out or "auth_allow_cleartext = no" in out
    assert re.search(r"^protocols = imap pop3 lmtp sieve$", out, re.M)
    # Debian's PAM passdb and mbox defaults must not have slipped in.
    assert "passdb pam" not in out and "mail_driver = maildir" in out


def test_doveconf_accepts_the_metric_blocks_of_monitoring(mail_root: Path) -> None:
    """With sams:monitoring on, dovecot.conf adds the metric blocks and the stats service's OpenMetrics
    listener on loopback (components/monitoring/daemons.py); Debian 13's doveconf takes them."""
    config = {**mockrun.stack_config("lab"), "sams:monitoring": json.dumps({"enabled": True})}
    monitored = settings.load("lab", config, PROJECT)
    conf = next(f for f in services.dovecot_step(monitored).files if f.path == "/etc/dovecot/dovecot.conf")
    (mail_root / "etc/dovecot/dovecot-monitored.conf").write_text(conf.content)
    result = run_in(mail_root, ["doveconf", "-n", "-c", "/etc/dovecot/dovecot-monitored.conf"])
    assert result.returncode == 0, result.stderr
    assert _warnings(result.stderr) == [], result.stderr
    for name, event_filter in services.DOVECOT_METRICS.items():
        assert re.search(rf"^metric {name} {{\n  filter = {re.escape(event_filter)}\n}}$", result.stdout, re.M), name
    listener = "service/stats/inet_listener/http"
    assert _ok(
        mail_root, "doveconf", "-c", "/etc/dovecot/dovecot-monitored.conf", "-h", f"{listener}/port"
    ).strip() == (str(services.DOVECOT_STATS_PORT))
    assert _ok(
        mail_root, "doveconf", "-c", "/etc/dovecot/dovecot-monitored.conf", "-h", f"{listener}/listen"
    ).strip() == ("127.0.0.1")
    # Off (the lab's default here): no metric, no listener.
    assert "metric " not in _ok(mail_root, "doveconf", "-n") and "inet_listener http" not in _ok(
        mail_root, "doveconf", "-n"
    )


def test_dovecot_listeners(mail_root: Path) -> None:
    ports = {}
    for service, name in (
        ("imap-login", "imap"),
        ("imap-login", "imaps"),
        ("pop3-login", "pop3"),
        ("pop3-login", "pop3s"),
        ("managesieve-login", "sieve"),
    ):
        ports[name] = _ok(mail_root, "doveconf", "-h", f"service/{service}/inet_listener/{name}/port").strip()
    assert ports == {"imap": "143", "imaps": "993", "pop3": "0", "pop3s": "995", "sieve": "4190"}


def test_dovecot_tls_floor_and_sockets(mail_root: Path) -> None:
    assert _ok(mail_root, "doveconf", "-h", "ssl_min_protocol").strip() == "TLSv1.2"
    out = _ok(mail_root, "doveconf", "-n")
    assert "unix_listener /var/spool/postfix/private/dovecot-lmtp" in out
    assert "unix_listener /var/spool/postfix/private/auth" in out


def test_dovecot_takes_every_lmtp_session_postfix_opens(mail_root: Path) -> None:
    """Dovecot's per-user LMTP limit is not below Postfix's concurrency (else bursts are deferred)."""
    dovecot = int(_ok(mail_root, "doveconf", "-h", "lmtp_user_concurrency_limit"))
    postfix = int(_ok(mail_root, "postconf", "-h", "lmtp_destination_concurrency_limit"))
    assert dovecot >= postfix == services.LMTP_CONCURRENCY
    # 2.4 files maildir_* settings under the `maildir` filter (applied where mail_driver = maildir).
    assert re.search(r"^maildir \{\n(  .*\n)*  very_dirty_syncs = yes$", _ok(mail_root, "doveconf", "-n"), re.M)


def test_dovecot_caches_users_and_checks_cached_passwords_in_workers(mail_root: Path) -> None:
    """The auth cache is on (each flush is tested in the lab), and a cached hash is checked in an
    auth worker: in the auth process itself each check would hold up every other login."""
    assert _ok(mail_root, "doveconf", "-h", "auth_cache_size").strip() == services.AUTH_CACHE_SIZE == "10M"
    assert _ok(mail_root, "doveconf", "-h", "auth_cache_verify_password_with_worker").strip() == "yes"


def test_dovecot_sql_conf_is_root_only_and_has_the_password(mail_root: Path) -> None:
    path = mail_root / services.DOVECOT_SQL_CONF.lstrip("/")
    assert path.stat().st_mode & 0o077 == 0
    assert DUMMY_LATE["db_dovecot_password"] in path.read_text()


# --- OpenDKIM --------------------------------------------------------------------------------------


def test_opendkim_accepts_the_config(mail_root: Path) -> None:
    out = _ok(mail_root, "opendkim", "-n")
    assert _warnings(out) == []


def test_opendkim_tables_name_every_domain(mail_root: Path, lab_settings) -> None:
    keys = (mail_root / "etc/opendkim/key.table").read_text()
    for domain in lab_settings.mail.domains:
        line = f"{domain.name} {domain.name}:{lab_settings.config.dkim.selector}:/etc/dkimkeys/{domain.name}/"
        assert line in keys


# --- Rspamd + Redis --------------------------------------------------------------------------------


def test_rspamadm_configtest(mail_root: Path) -> None:
    out = _ok(mail_root, "rspamadm", "configtest")
    assert "syntax OK" in out


def test_rspamd_effective_config(mail_root: Path) -> None:
    dump = _ok(mail_root, "rspamadm", "configdump", "-c", "/etc/rspamd/rspamd.conf", "worker")
    assert services.POSTFIX_SPOOL + "/" + services.RSPAMD_MILTER in dump
    assert "localhost:11332" not in dump  # the default TCP proxy socket was replaced, not extended
    # The proxy scans by itself; the normal worker (and its port 11333) is off.
    assert re.search(r"rspamd_proxy \{.*?self_scan = true;", dump, re.S), dump
    assert re.search(r"normal \{[^}]*enabled = false;", dump, re.S), dump
    assert '"127.0.0.1:11334"' in dump or "127.0.0.1:11334" in dump
    # Both passwords are rspamadm pw hashes: the read-only one (monitoring's) and the controller's.
    assert re.search(r'\bpassword = "\$2\$', dump), "the read-only password is not a rspamadm pw hash"
    assert re.search(r'enable_password = "\$2\$', dump), "the controller password is not a rspamadm pw hash"
    assert DUMMY_LATE["rspamd_controller_password"] not in dump
    assert DUMMY_LATE["rspamd_metrics_password"] not in dump
    greylist = _ok(mail_root, "rspamadm", "configdump", "greylist")
    assert "check_authed = false" in greylist
    assert "enabled = false" in _ok(mail_root, "rspamadm", "configdump", "dkim_signing")
    # No neural network (local.d/neural.conf): Debian's default section has no "enabled" at all.
    assert re.search(r"^enabled = false;$", _ok(mail_root, "rspamadm", "configdump", "neural"), re.M)
    # One log line per message (local.d/logging.inc) instead of Debian's "info".
    logging = _ok(mail_root, "rspamadm", "configdump", "logging")
    assert re.search(r'^level = "notice";$', logging, re.M) and re.search(r"^log_re_cache = false;$", logging, re.M)


def test_redis_config_is_loopback(mail_root: Path) -> None:
    conf = (mail_root / "etc/redis/redis.conf").read_text()
    assert re.search(r"^bind 127\.0\.0\.1 -::1$", conf, re.M)
    # redis-server has no check mode: start it from the file with TCP off (port 0, so nothing
    # listens on the host's loopback), ask it what it loaded, stop it.
    sock = "/run/redis-test.sock"
    _ok(
        mail_root,
        "redis-server",
        "/etc/redis/redis.conf",
        "--port",
        "0",
        "--unixsocket",
        sock,
        "--daemonize",
        "yes",
        "--pidfile",
        "/run/redis-test.pid",
        "--logfile",
        "/tmp/redis-test.log",
        "--dir",
        "/tmp",
    )
    try:
        for _ in range(50):
            if (mail_root / sock.lstrip("/")).exists():
                break
            time.sleep(0.1)
        policy = _ok(mail_root, "redis-cli", "-s", sock, "config", "get", "maxmemory-policy").split()
        maxmemory = _ok(mail_root, "redis-cli", "-s", sock, "config", "get", "maxmemory").split()
    finally:
        run_in(mail_root, ["redis-cli", "-s", sock, "shutdown", "nosave"])
    assert policy == ["maxmemory-policy", "volatile-ttl"]
    assert maxmemory == ["maxmemory", str(256 * 1024 * 1024)]


# --- what the scripts did --------------------------------------------------------------------------


def test_base_step_created_vmail_and_socket_dirs(mail_root: Path) -> None:
    out = _ok(mail_root, "getent", "passwd", services.VMAIL_USER)
    assert out.split(":")[2] == str(services.VMAIL_UID)
    for d, owner in (("opendkim", "opendkim"), ("rspamd", "_rspamd")):
        stat = _ok(mail_root, "stat", "-c", "%U:%G:%a", f"{services.POSTFIX_SPOOL}/{d}").strip()
        assert stat == f"{owner}:postfix:2750"


def test_scripts_reload_only_through_systemctl(mail_root: Path) -> None:
    calls = (mail_root / SYSTEMCTL_LOG.lstrip("/")).read_text().splitlines()
    # Rspamd is declared stopped here (no daemon runs in the chroot): its step only asks.
    # The Dovecot step reads its drop-in and finds Dovecot's main process, to set its CPU share live;
    # the Postfix step loads and starts the mail-space timer.
    timer = f"enable --quiet --now {services.MAIL_SPACE_UNIT}.timer"
    dovecot = "show -p MainPID --value dovecot"
    assert calls == ["is-active --quiet rspamd", "daemon-reload", dovecot, "daemon-reload", timer]


def _stack(name: str) -> Settings:
    """A committed stack's settings (Pulumi.<name>.yaml), with the tests' secrets."""
    import mockrun
    import settings
    from tests.mailcore.conftest import PROJECT

    return settings.load(name, {**mockrun.stack_config(name), **mockrun.TEST_SECRETS}, PROJECT)


def test_postfix_accepts_the_relay_variant(tmp_path: Path) -> None:
    """The dev stack's smarthost settings (SASL to the relay, texthash password file)."""
    from lab.trixie_chroot import mounted, scratch
    from tests.mailcore.conftest import install_step, run_step_script, stub_systemctl

    dev = _stack("dev")
    with scratch(tmp_path / "relay") as root, mounted(root):
        stub_systemctl(root)  # the step enables the mail-space timer
        for spec in (services.mail_base_step(dev), services.postfix_step(dev)):
            run_step_script(root, spec, DUMMY_LATE, install_step(root, spec, DUMMY_LATE))
        assert _warnings(_ok(root, "postfix", "check")) == []
        relay = dev.config.relay
        assert relay is not None
        assert _ok(root, "postconf", "-h", "relayhost").strip() == f"[{relay.host}]:{relay.port}"
        found = _ok(root, "postmap", "-q", f"[{relay.host}]:{relay.port}", f"texthash:{services.RELAY_PASSWORD_FILE}")
        assert found.strip() == f"{relay.username}:{DUMMY_LATE['relay_password']}"


def _unbound_conf(stack: str) -> str:
    (conf,) = [f for f in services.rspamd_step(_stack(stack)).files if f.path == services.UNBOUND_CONF]
    return conf.content


def test_unbound_accepts_the_lab_config(mail_root: Path) -> None:
    """The lab's variant: forward everything to the lab DNS, no DNSSEC validation (unsigned zones)."""
    assert "no errors" in _ok(mail_root, "unbound-checkconf")
    conf = (mail_root / services.UNBOUND_CONF.lstrip("/")).read_text()
    assert re.search(r'^forward-zone:\n    name: "\."\n    forward-addr: 198\.18\.0\.1$', conf, re.M), conf
    assert _ok(mail_root, "unbound-checkconf", "-o", "module-config").strip() == "iterator"
    assert _ok(mail_root, "unbound-checkconf", "-o", "interface").strip() == "127.0.0.1"


def test_unbound_accepts_the_production_config(tmp_path: Path) -> None:
    """prod: resolve from the root and validate DNSSEC (Debian's root trust anchor stays in force)."""
    from lab.trixie_chroot import mounted, scratch

    conf = _unbound_conf("prod")
    assert "forward-zone" not in conf and "module-config" not in conf
    with scratch(tmp_path / "unbound") as root, mounted(root):
        (root / services.UNBOUND_CONF.lstrip("/")).write_text(conf)
        # What the rspamd step does before its check: Debian's root anchor in place (dns-root-data).
        _ok(root, "/usr/libexec/unbound-helper", "root_trust_anchor_update")
        assert "no errors" in _ok(root, "unbound-checkconf")
        assert "validator" in _ok(root, "unbound-checkconf", "-o", "module-config")
        assert _ok(root, "unbound-checkconf", "-o", "interface").strip() == "127.0.0.1"
