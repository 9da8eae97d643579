"""Pure checks of the rendered mail configuration (no chroot, no root): secrets, AUTH exposure,
TLS floor, reload scoping, and the SQL the database step runs."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import mockrun
import settings
from components.database import schema
from components.mail import services
from components.remote.steps import StepSpec
from components.tls import certs
from settings.mail_list import MailList

PROJECT = Path(__file__).resolve().parents[2]
TOKEN = re.compile(r"@@SAMS_LATE:([A-Za-z0-9_]+)@@")


def _files(steps: tuple[StepSpec, ...]) -> dict[str, str]:
    return {f.path: f.content for spec in steps for f in spec.files}


@pytest.fixture(scope="module")
def relay_settings() -> settings.Settings:
    """The dev stack: the one with a smarthost (username + password)."""
    s = settings.load("dev", {**mockrun.stack_config("dev"), **mockrun.TEST_SECRETS}, PROJECT)
    assert s.config.relay is not None and s.config.relay.username
    return s


@pytest.fixture(scope="module")
def clamav_settings() -> settings.Settings:
    """The lab stack with sams:antivirus.clamav on (an existing host: no memory to check)."""
    return settings.load("lab", {**mockrun.stack_config("lab"), "sams:antivirus": '{"clamav": true}'}, PROJECT)


@pytest.fixture(scope="module")
def all_steps(lab_settings: settings.Settings, relay_settings: settings.Settings) -> list[tuple[StepSpec, ...]]:
    return [services.mail_steps(lab_settings), services.mail_steps(relay_settings)]


# --- secrets ---------------------------------------------------------------------------------------

# Any key that *is* a password (password, *_password, passwd), in any of the files' syntaxes.
_SECRET_LINE = re.compile(r"^\s*((?:[a-z_]*_)?(?:password|passwd))\s*[=:]\s*(.+?)\s*;?$", re.I | re.M)


def test_no_literal_password_in_any_rendered_file(all_steps) -> None:
    for steps in all_steps:
        for path, text in _files(steps).items():
            for match in _SECRET_LINE.finditer(text):
                value = match.group(2).strip("'\"")
                assert TOKEN.fullmatch(value), f"{path}: {match.group(0)!r} is not a late value"
    assert any(_SECRET_LINE.search(t) for t in _files(all_steps[0]).values())  # the pattern does match
    # The one file that embeds a secret in a longer line: the relay's user:password.
    relay = _files(all_steps[1])[services.RELAY_PASSWORD_FILE]
    assert TOKEN.search(relay.splitlines()[-1])


def test_database_passwords_are_the_database_components_late_values(lab_settings) -> None:
    files = _files(services.mail_steps(lab_settings))
    for path in (f"{services.PGSQL_DIR}/virtual_alias_maps.cf", services.DOVECOT_SQL_CONF):
        names = set(TOKEN.findall(files[path]))
        assert names <= {schema.password_late_name(r) for r in schema.READERS}
    assert "@@SAMS_LATE:db_postfix_password@@" in files[f"{services.PGSQL_DIR}/sender_login_maps.cf"]
    assert "@@SAMS_LATE:db_dovecot_password@@" in files[services.DOVECOT_SQL_CONF]


# --- Postfix: AUTH exposure and TLS ----------------------------------------------------------------


def _master_services(master_cf: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """'name/type' -> (fields, -o overrides), parsed the way master(5) reads the file."""
    out: dict[str, tuple[list[str], dict[str, str]]] = {}
    current = None
    for line in master_cf.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            assert current is not None
            words = line.split()
            if words[0] == "-o":
                key, _, value = words[1].partition("=")
                out[current][1][key] = value
            continue
        fields = line.split()
        current = f"{fields[0]}/{fields[1]}"
        out[current] = (fields, {})
    return out


def _main_cf(text: str) -> dict[str, str]:
    """main.cf as postconf(5) reads it: a line starting with white space continues the one before."""
    logical: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            assert logical, f"a continuation line with nothing to continue: {line!r}"
            logical[-1] += " " + line.strip()
        else:
            logical.append(line.strip())
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in logical)}


def test_main_cf_reader_joins_continuation_lines() -> None:
    text = "# c\nsmtpd_recipient_restrictions =\n    permit_mynetworks,\n    reject_unauth_destination\nx = 1\n"
    assert _main_cf(text) == {
        "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
        "x": "1",
    }


def test_auth_is_never_offered_on_port_25(lab_settings) -> None:
    files = _files(services.mail_steps(lab_settings))
    master = _master_services(files["/etc/postfix/master.cf"])
    main = _main_cf(files["/etc/postfix/main.cf"])
    assert main.get("smtpd_sasl_auth_enable", "no") == "no"
    assert main["smtpd_tls_auth_only"] == "yes"  # and nowhere before STARTTLS
    # Port 25 is the smtp/inet service (postscreen) and the smtpd it passes connections to.
    assert master["smtp/inet"][0][-1] == "postscreen"
    for svc in ("smtp/inet", "smtpd/pass"):
        assert master[svc][1].get("smtpd_sasl_auth_enable", "no") == "no"
    enabled = {name for name, (_, opts) in master.items() if opts.get("smtpd_sasl_auth_enable") == "yes"}
    assert enabled == {"submission/inet", "submissions/inet"}
    assert master["submission/inet"][1]["smtpd_tls_security_level"] == "encrypt"
    assert master["submissions/inet"][1]["smtpd_tls_wrappermode"] == "yes"
    for svc in enabled:
        assert master[svc][1]["smtpd_sender_restrictions"].startswith("reject_sender_login_mismatch,")


def test_postfix_sasl_jail_reads_exactly_the_auth_smtpds_lines(lab_settings) -> None:
    """The jail's narrowed journal match follows master.cf: every service offering AUTH logs its
    failures (and its sessions' ends) as <syslog_name>/smtpd, and no other Postfix line is read
    (fail2ban's CPU per message)."""
    files = _files(services.mail_steps(lab_settings))
    master = _master_services(files["/etc/postfix/master.cf"])
    auth_idents = {
        f"{opts['syslog_name']}/smtpd"
        for fields, opts in master.values()
        if opts.get("smtpd_sasl_auth_enable") == "yes" and fields[-1] == "smtpd"
    }
    jail = files[services.FAIL2BAN_JAIL]
    section = jail.split("[postfix-sasl]", 1)[1].split("\n[", 1)[0]
    assert re.search(r"^filter = sams-postfix-sasl$", section, re.M), section
    match = re.search(r"^journalmatch = (.+)$", files[services.FAIL2BAN_POSTFIX_SASL_FILTER], re.M)
    assert match, files[services.FAIL2BAN_POSTFIX_SASL_FILTER]
    terms: dict[str, set[str]] = {}
    for term in match.group(1).split():
        field, _, value = term.partition("=")
        terms.setdefault(field, set()).add(value)
    assert terms == {
        "_SYSTEMD_UNIT": {"postfix.service", "postfix@-.service"},
        "SYSLOG_IDENTIFIER": auth_idents,
    }
    assert auth_idents == {"postfix/submission/smtpd", "postfix/submissions/smtpd"}


def test_tls_protocols_exclude_tls1_and_tls11(all_steps) -> None:
    for steps in all_steps:
        files = _files(steps)
        main = _main_cf(files["/etc/postfix/main.cf"])
        for key in (
            "smtpd_tls_protocols",
            "smtpd_tls_mandatory_protocols",
            "smtp_tls_protocols",
            "smtp_tls_mandatory_protocols",
        ):
            assert main[key] == ">=TLSv1.2", key
        assert re.search(r"^ssl_min_protocol = TLSv1\.2$", files["/etc/dovecot/dovecot.conf"], re.M)
        assert re.search(r"^ssl = required$", files["/etc/dovecot/dovecot.conf"], re.M)
        assert re.search(r"^auth_allow_cleartext = no$", files["/etc/dovecot/dovecot.conf"], re.M)


def test_relay_is_used_only_when_configured(lab_settings, relay_settings) -> None:
    lab_main = _main_cf(_files(services.mail_steps(lab_settings))["/etc/postfix/main.cf"])
    assert "relayhost" not in lab_main and lab_main["smtp_tls_security_level"] == "may"
    step = services.postfix_step(relay_settings)
    main = _main_cf(next(f.content for f in step.files if f.path == "/etc/postfix/main.cf"))
    relay = relay_settings.config.relay
    assert main["relayhost"] == f"[{relay.host}]:{relay.port}"
    assert main["smtp_sasl_password_maps"] == f"texthash:{services.RELAY_PASSWORD_FILE}"
    # The relay password goes only to a server whose certificate verifies for the relay's name.
    assert main["smtp_tls_security_level"] == "secure"
    assert services.RELAY_PASSWORD in step.late_values


def test_every_postfix_setting_says_why(lab_settings, relay_settings) -> None:
    for s in (lab_settings, relay_settings):
        lines = _files(services.mail_steps(s))["/etc/postfix/main.cf"].splitlines()
        for i, line in enumerate(lines):
            if not line or line.startswith("#"):
                continue
            j = i - 1  # walk up over the settings of the same block to its comment
            while j >= 0 and lines[j] and not lines[j].startswith("#"):
                j -= 1
            assert j >= 0 and lines[j].startswith("#"), f"main.cf: {line!r} has no comment"


def test_milters_and_lmtp_are_spool_relative(lab_settings) -> None:
    files = _files(services.mail_steps(lab_settings))
    main = _main_cf(files["/etc/postfix/main.cf"])
    both = f"unix:{services.RSPAMD_MILTER}, unix:{services.OPENDKIM_MILTER}"
    assert main["originating_milters"] == both
    assert main["non_smtpd_milters"] == "$originating_milters"
    # Port 25 scans only; OpenDKIM (sign-only) sits on the submission services.
    assert main["smtpd_milters"] == f"unix:{services.RSPAMD_MILTER}"
    master = _master_services(files["/etc/postfix/master.cf"])
    for svc in ("submission/inet", "submissions/inet"):
        assert master[svc][1]["smtpd_milters"] == "$originating_milters", svc
    for svc in ("smtp/inet", "smtpd/pass"):
        assert "smtpd_milters" not in master[svc][1], svc
    assert main["virtual_transport"] == f"lmtp:unix:{services.LMTP_SOCKET}"
    # Postfix names a unix-socket destination for connection caching by its path, without "unix:".
    assert main["lmtp_connection_cache_destinations"] == services.LMTP_SOCKET
    assert main["smtpd_sasl_path"] == services.AUTH_SOCKET


# --- reload scoping --------------------------------------------------------------------------------


def _units_touched(steps: tuple[StepSpec, ...], paths: list[str]) -> set[str]:
    """The units sams-apply would reload or restart if exactly *paths* changed."""
    return {
        s.unit for spec in steps for s in spec.services if any(fnmatch.fnmatch(p, w) for p in paths for w in s.watches)
    }


def test_a_config_change_reloads_only_its_own_daemon(lab_settings) -> None:
    steps = services.mail_steps(lab_settings)
    expected = {
        "/etc/postfix/main.cf": {"postfix"},
        f"{services.PGSQL_DIR}/virtual_alias_maps.cf": {"postfix"},
        "/etc/dovecot/dovecot.conf": {"dovecot"},
        services.DOVECOT_SQL_CONF: {"dovecot"},
        "/etc/opendkim.conf": {"opendkim"},
        "/etc/opendkim/key.table": {"opendkim"},
        "/etc/rspamd/local.d/greylist.conf": {"rspamd"},
        "/etc/rspamd/override.d/worker-proxy.inc": {"rspamd"},
        "/etc/redis/redis.conf": {"redis-server"},
        "/etc/aliases": set(),  # newaliases, no reload
        services.FAIL2BAN_JAIL: {"fail2ban.service"},
        services.FAIL2BAN_DOVECOT_FILTER: {"fail2ban.service"},
        services.FAIL2BAN_POSTFIX_SASL_FILTER: {"fail2ban.service"},
    }
    for path, units in expected.items():
        assert _units_touched(steps, [path]) == units, path
    actions = {(s.unit, s.action) for spec in steps for s in spec.services}
    assert ("opendkim", "restart") in actions and ("opendkim", "reload") in actions


def test_step_order_puts_prerequisites_first(lab_settings) -> None:
    names = [s.name for s in services.mail_steps(lab_settings)]
    assert names == ["mail-base", "opendkim", "antivirus", "rspamd", "dovecot", "postfix"]


# --- step scripts and Dovecot's CPU share ----------------------------------------------------------


def test_dovecot_cpu_share_is_one_ratio_in_both_forms(lab_settings) -> None:
    """The drop-in's cgroup weight and its session nice give Dovecot the same share: the kernel weighs
    each nice step 1.25x, and CPUWeight is relative to the default of 100."""
    dropin = _files(services.mail_steps(lab_settings))[services.DOVECOT_CPU_DROPIN]
    weights = re.findall(r"^CPUWeight=(\d+)$", dropin, re.M)
    nices = re.findall(r"^ExecStartPost=-/bin/sh -c 'echo (-?\d+) > \"/proc/\$MAINPID/autogroup\"'$", dropin, re.M)
    assert len(weights) == len(nices) == 1, dropin
    weight, nice = int(weights[0]), int(nices[0])
    assert (weight, nice) == (services.DOVECOT_CPU_WEIGHT, services.DOVECOT_AUTOGROUP_NICE)
    assert weight / 100 == pytest.approx(1.25**-nice, rel=0.05)


def test_postfix_starts_after_what_its_queue_delivers_through(lab_settings) -> None:
    """At boot, mail accepted before a power cut is delivered at once, not 5 minutes later: Postfix's
    unit is ordered after PostgreSQL's (its lookups) and Dovecot's (LMTP), and only ordered."""
    dropin = _files(services.mail_steps(lab_settings))[services.POSTFIX_ORDER_DROPIN]
    directives = [line for line in dropin.splitlines() if line and not line.startswith("#")]
    assert directives == ["[Unit]", f"After={services.DB_UNIT} {services.DOVECOT_UNIT}"]
    assert services.POSTFIX_ORDER_DROPIN.startswith(f"/etc/systemd/system/{services.POSTFIX_UNITS[0]}.d/")


# --- ClamAV ----------------------------------------------------------------------------------------


def test_a_relay_login_brings_the_sasl_mechanisms(lab_settings, relay_settings) -> None:
    """Postfix logs in to the relay through Cyrus SASL, whose PLAIN/LOGIN are a separate package."""
    assert set(services.RELAY_SASL_PACKAGES) <= set(services.mail_packages(relay_settings))
    assert not set(services.RELAY_SASL_PACKAGES) & set(services.mail_packages(lab_settings))


def test_clamav_off_installs_nothing_and_stops_what_an_earlier_setting_started(
    lab_settings: settings.Settings,
) -> None:
    assert not lab_settings.config.antivirus.clamav
    assert not set(services.CLAMAV_PACKAGES) & set(services.mail_packages(lab_settings))
    (step,) = [s for s in services.mail_steps(lab_settings) if s.name == "antivirus"]
    assert step.files == () and "systemctl disable --now" in step.script
    conf = _files(services.mail_steps(lab_settings))["/etc/rspamd/local.d/antivirus.conf"]
    assert "enabled = false;" in conf and "clamav {" not in conf


def test_clamav_on_is_asked_by_rspamd_on_clamds_socket_for_every_accepted_size(
    clamav_settings: settings.Settings,
) -> None:
    assert set(services.CLAMAV_PACKAGES) <= set(services.mail_packages(clamav_settings))
    files = _files(services.mail_steps(clamav_settings))
    clamd = dict(line.split(" ", 1) for line in files[services.CLAMD_CONF].splitlines() if line[:1].isalpha())
    rspamd = files["/etc/rspamd/local.d/antivirus.conf"]
    main_cf = _main_cf(files["/etc/postfix/main.cf"])
    # The socket Rspamd asks is the one clamd (and Debian's clamav-daemon.socket) listens on.
    assert clamd["LocalSocket"] == services.CLAMD_SOCKET and f'servers = "{services.CLAMD_SOCKET}";' in rspamd
    # Whatever size Postfix accepts, Rspamd sends and clamd reads: no part goes unscanned for its size.
    size = main_cf["message_size_limit"]
    assert clamd["StreamMaxLength"] == size and f"max_size = {size};" in rspamd
    assert 'action = "reject";' in rspamd and clamd["User"] == "clamav"


# --- SQL -------------------------------------------------------------------------------------------


def test_dovecot_queries_follow_the_24_rules() -> None:
    for query in (schema.DOVECOT_PASSDB_QUERY, schema.DOVECOT_USERDB_QUERY, schema.DOVECOT_ITERATE_QUERY):
        assert "--" not in query and "/*" not in query and "?" not in query and "$" not in query
        # each %{...} is one whole value: alone or in its own quotes, never inside other text
        for m in re.finditer(r"%\{[^}]*\}", query):
            before, after = query[m.start() - 1], query[m.end()]
            assert (before, after) == ("'", "'"), query
            assert query[m.start() - 2] == " " and query[m.end() + 1] == " ", query
        assert "%u" not in query and "%d" not in query and "%n" not in query  # 2.3 variables


def test_postfix_queries_use_only_pgsql_table_escapes() -> None:
    for name, query in schema.POSTFIX_QUERIES.items():
        assert set(re.findall(r"%.", query)) <= {"%s", "%u", "%d"}, name
        assert "'%" in query, name  # every expansion is quoted (pgsql_table escapes the value)


def test_mail_list_sql_quotes_values() -> None:
    mail = MailList.model_validate(
        {"domains": [{"name": "example.org", "users": [{"name": "o.brien", "display_name": "Miles O'Brien"}]}]}
    )
    sql = schema.mail_list_sql(mail)
    assert "'Miles O''Brien'" in sql
    assert "DELETE FROM aliases;" in sql and "INSERT INTO aliases" not in sql


def test_mail_list_sql_qualifies_alias_targets(lab_settings) -> None:
    sql = schema.mail_list_sql(lab_settings.mail)
    assert "('team', 'sams.test', 'bob@sams.test')" in sql
    assert "('postmaster', 'other.test', 'alice@sams.test')" in sql


def test_migrate_sql_runs_each_migration_once() -> None:
    sql = schema.migrate_sql()
    for m in schema.migrations():
        assert sql.count(f"WHERE version = {m.version})") == 1
        assert f"VALUES ({m.version}, '{m.name}')" in sql
    assert "CREATE TABLE IF NOT EXISTS schema_version" in sql


def test_roles_sql_takes_every_password_late() -> None:
    sql = schema.roles_sql()
    assert set(TOKEN.findall(sql)) == {schema.password_late_name(r) for r in schema.READERS + (schema.OWNER,)}
    assert "CREATE DATABASE sams OWNER sams_owner" in sql


def test_resolver_unblocks_special_use_zones_only_where_asked(lab_settings, relay_settings) -> None:
    """The lab resolves its .test domains through the lab DNS; other stacks keep Unbound's defaults."""
    lab = _files(services.mail_steps(lab_settings))[services.UNBOUND_CONF]
    assert re.search(r'(?m)^    local-zone: "test\." nodefault$', lab), lab
    assert "local-zone" not in _files(services.mail_steps(relay_settings))[services.UNBOUND_CONF]


def test_signing_and_the_from_rules_name_the_same_domains(lab_settings) -> None:
    """OpenDKIM signs by the From: header only; the From: rules know every hosted domain."""
    files = _files(services.mail_steps(lab_settings))
    assert re.search(r"(?m)^SenderHeaders\s+From$", files["/etc/opendkim.conf"])
    lua = files[f"{services.RSPAMD_LOCAL}/rspamd.local.lua"]
    hosted = set(re.findall(r'^  \["([^"]+)"\] = true,$', lua, re.M))
    assert hosted == {d.name for d in lab_settings.mail.domains}


# --- TLS suites and a filling disk (issue 21, items 9 and 7) ---------------------------------------


def test_clients_get_the_one_aead_list_and_the_server_picks(lab_settings: settings.Settings) -> None:
    # No CBC suite: every entry is GCM or ChaCha20-Poly1305 with an ECDHE key exchange.
    assert all(re.fullmatch(r"ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)", c)
               for c in certs.CLIENT_TLS12_CIPHERS)  # fmt: skip
    files = _files(services.mail_steps(lab_settings))
    main_cf, dovecot = files["/etc/postfix/main.cf"], files["/etc/dovecot/dovecot.conf"]
    assert f"tls_high_cipherlist = {certs.CLIENT_CIPHER_LIST}\n" in main_cf
    assert "smtpd_tls_mandatory_ciphers = high\n" in main_cf and "tls_preempt_cipherlist = yes\n" in main_cf
    assert "smtpd_tls_ciphers" not in main_cf  # port 25 keeps Postfix's broad default
    assert f"ssl_cipher_list = {certs.CLIENT_CIPHER_LIST}\n" in dovecot
    assert "ssl_server_prefer_ciphers = server\n" in dovecot
    nginx = certs.nginx_site(lab_settings)
    assert nginx.count(f"ssl_ciphers {certs.CLIENT_CIPHER_LIST};") == nginx.count("listen 443 ssl")
    assert nginx.count("ssl_prefer_server_ciphers on;") == nginx.count("listen 443 ssl")


def test_mail_space_tool_passes_shellcheck_and_warns_before_postfix_refuses(lab_settings: settings.Settings) -> None:
    files = _files(services.mail_steps(lab_settings))
    tool = files[services.MAIL_SPACE_TOOL]
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is part of the test tools (see ./run)"
    result = subprocess.run([shellcheck, "-s", "sh", "-"], input=tool, text=True, capture_output=True)
    assert result.returncode == 0, result.stdout
    assert f"queue_minfree = {services.QUEUE_MINFREE}\n" in files["/etc/postfix/main.cf"]
    assert services.QUEUE_MINFREE >= 1.5 * services.MESSAGE_SIZE_LIMIT  # Postfix's own floor
    assert (
        f"OnUnitActiveSec={services.MAIL_SPACE_INTERVAL}"
        in files[f"/etc/systemd/system/{services.MAIL_SPACE_UNIT}.timer"]
    )
