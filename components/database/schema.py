"""The mail database, the pure half: schema migrations, roles, the mail list as rows, and the
lookup queries Postfix and Dovecot run against it.

Everything here is text for psql or for a daemon's config; nothing connects to a database.
The queries live beside the schema they read so that one change updates both, and the
mailcore tests run each of them against a real PostgreSQL 17 with this schema applied.

Order on the host (all psql, ON_ERROR_STOP):
  1. roles.sql     as the postgres superuser: roles, passwords, the database;
  2. migrate.sql   as sams_owner in `sams`: pending migrations, each once (schema_version);
  3. mail_list.sql as sams_owner in `sams`: domains, mailboxes and aliases from the mail list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.database.roles import PASSWORD_CHANGER, ROLES
from components.remote.steps import File, late
from settings.mail_list import MailList

DB_NAME = "sams"
# TCP on loopback, never a unix socket: Postfix's chrooted daemons and the container's socket
# directory would both need bind mounts otherwise.
DB_HOST = "127.0.0.1"
DB_PORT = 5432
OWNER = ROLES[0]  # sams_owner: owns the tables, runs migrations and the mail list sync
READERS = ROLES[1:]  # postfix, dovecot: SELECT on the columns they need, nothing else

SQL_DIR = "/etc/sams/postgres"  # where the step installs the SQL files on the host
_HERE = Path(__file__).resolve().parent
MIGRATIONS_DIR = _HERE / "files" / "migrations"


def password_late_name(role: str) -> str:
    """The late value carrying a role's password: db_postfix_password, db_dovecot_password, ..."""
    return f"db_{role}_password"


# --- lookup queries ---------------------------------------------------------------------------
# Postfix (pgsql_table(5)): %s is the whole key, %u its local part, %d its domain. A key without
# a domain (or with an empty local part) suppresses %u/%d queries, so bare names never match.
# Results from several rows are joined with commas by Postfix.

POSTFIX_QUERIES: dict[str, str] = {
    # Domains we receive mail for (the value is not used, only that a row exists).
    "virtual_mailbox_domains": "SELECT name FROM domains WHERE name = '%s' AND active",
    # Mailboxes: the value is informational (delivery goes over LMTP, which finds the Maildir).
    "virtual_mailbox_maps": (
        "SELECT u.domain || '/' || u.local_part || '/' FROM users u JOIN domains d ON d.name = u.domain "
        "WHERE u.local_part = '%u' AND u.domain = '%d' AND u.active AND d.active"
    ),
    # Aliases: one row per destination; Postfix expands aliases of aliases itself.
    "virtual_alias_maps": (
        "SELECT a.destination FROM aliases a JOIN domains d ON d.name = a.domain "
        "WHERE a.local_part = '%u' AND a.domain = '%d' AND a.active AND d.active"
    ),
    # Who may use an envelope sender: the mailbox itself, and every active mailbox an alias
    # delivers to (alice may send as postmaster@ when postmaster -> alice).
    "sender_login_maps": (
        "SELECT u.local_part || '@' || u.domain FROM users u JOIN domains d ON d.name = u.domain "
        "WHERE u.local_part = '%u' AND u.domain = '%d' AND u.active AND d.active "
        "UNION "
        "SELECT u.local_part || '@' || u.domain FROM aliases a "
        "JOIN domains d ON d.name = a.domain "
        "JOIN users u ON a.destination = u.local_part || '@' || u.domain "
        "WHERE a.local_part = '%u' AND a.domain = '%d' AND a.active AND d.active AND u.active"
    ),
}

# Dovecot 2.4 (auth sql): each %{...} must stand alone as one whole value, optionally in single
# quotes (newer 2.4 releases bind it as a parameter), and no SQL comments inside a query.
_DOVECOT_USER = (
    "FROM users u JOIN domains d ON d.name = u.domain "
    "WHERE u.local_part = '%{user | username}' AND u.domain = '%{user | domain}' AND u.active AND d.active"
)
# Returning username + domain (not "user") normalises the login name to the stored, lowercase form.
DOVECOT_PASSDB_QUERY = (
    "SELECT u.local_part AS username, u.domain AS domain, u.password_hash AS password "
    + _DOVECOT_USER
    + " AND u.password_hash IS NOT NULL"
)
# userdb fields are setting overrides in 2.4: quota_storage_size replaces the global default.
DOVECOT_USERDB_QUERY = (
    "SELECT u.local_part AS username, u.domain AS domain, "
    "CASE WHEN u.quota_bytes = 0 THEN 'unlimited' ELSE u.quota_bytes::text || 'B' END AS quota_storage_size "
    + _DOVECOT_USER
)
DOVECOT_ITERATE_QUERY = (
    "SELECT u.local_part AS username, u.domain AS domain FROM users u "
    "JOIN domains d ON d.name = u.domain WHERE u.active AND d.active"
)


# --- migrations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> tuple[Migration, ...]:
    """files/migrations/NNNN_name.sql in order; numbers are unique and never reused."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        number, _, name = path.stem.partition("_")
        found.append(Migration(int(number), name, path.read_text()))
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise ValueError(f"duplicate migration number in {MIGRATIONS_DIR}")
    return tuple(found)


def migrate_sql() -> str:
    """One psql script applying every pending migration once, each in its own transaction.

    schema_version records what ran; an advisory lock keeps two concurrent applies from racing.
    """
    out = [
        "-- Generated by components/database/schema.py: pending migrations, each applied once.",
        "\\set ON_ERROR_STOP on",
        "SELECT pg_advisory_lock(hashtext('sams-migrate'));",
        "CREATE TABLE IF NOT EXISTS schema_version (",
        "    version    integer PRIMARY KEY,",
        "    name       text NOT NULL,",
        "    applied_at timestamptz NOT NULL DEFAULT now()",
        ");",
    ]
    for m in migrations():
        out += [
            "",
            f"SELECT NOT EXISTS (SELECT FROM schema_version WHERE version = {m.version}) AS pending \\gset",
            "\\if :pending",
            "BEGIN;",
            m.sql.rstrip(),
            f"INSERT INTO schema_version (version, name) VALUES ({m.version}, {_lit(m.name)});",
            "COMMIT;",
            "\\endif",
        ]
    out += ["", "SELECT pg_advisory_unlock(hashtext('sams-migrate'));", ""]
    return "\n".join(out)


def roles_sql() -> str:
    """roles.sql with every password as a late token (the values arrive on stdin at apply time)."""
    from components.render import render

    return render(
        "database",
        "etc/sams/postgres/roles.sql.j2",
        roles=ROLES,
        owner=OWNER,
        readers=READERS,
        password_changer=PASSWORD_CHANGER,
        dbname=DB_NAME,
        passwords={role: late(password_late_name(role)) for role in ROLES},
    )


# --- the mail list as rows --------------------------------------------------------------------


def _lit(value: str) -> str:
    """A SQL string literal (standard_conforming_strings is on in every supported PostgreSQL)."""
    return "'" + value.replace("'", "''") + "'"


def _qualify(target: str, domain: str) -> str:
    return target if "@" in target else f"{target}@{domain}"


def mail_list_sql(mail: MailList) -> str:
    """Make the tables match the mail list, in one transaction.

    Domains and users missing from the list are deactivated, never deleted: their Maildirs stay
    on disk and re-adding them restores access. Aliases are pure routing and are replaced. Password
    hashes are never touched here (the list carries none).
    """
    domains = [d.name for d in mail.domains]
    users = [(u.name, d.name, mail.quota_of(u), u.display_name) for d, u in mail.mailboxes]
    aliases = sorted({(a.name, d.name, _qualify(t, d.name)) for d in mail.domains for a in d.aliases for t in a.to})

    def row(*values: object) -> str:
        parts = ["NULL" if v is None else str(v) if isinstance(v, int) else _lit(str(v)) for v in values]
        return "(" + ", ".join(parts) + ")"

    out = ["-- Generated from the mail list by components/database/schema.py.", "\\set ON_ERROR_STOP on", "BEGIN;"]
    out.append(
        "INSERT INTO domains (name) VALUES "
        + ", ".join(row(n) for n in domains)
        + " ON CONFLICT (name) DO UPDATE SET active = true;"
    )
    out.append(f"UPDATE domains SET active = false WHERE name NOT IN ({', '.join(_lit(n) for n in domains)});")
    if users:
        out.append(
            "INSERT INTO users (local_part, domain, quota_bytes, display_name) VALUES "
            + ", ".join(row(*u) for u in users)
            + " ON CONFLICT (local_part, domain) DO UPDATE SET quota_bytes = EXCLUDED.quota_bytes,"
            " display_name = EXCLUDED.display_name, active = true;"
        )
        keep = ", ".join(row(lp, dom) for lp, dom, _, _ in users)
        out.append(f"UPDATE users SET active = false WHERE (local_part, domain) NOT IN ({keep});")
    else:
        out.append("UPDATE users SET active = false;")
    out.append("DELETE FROM aliases;")
    if aliases:
        out.append(
            "INSERT INTO aliases (local_part, domain, destination) VALUES " + ", ".join(row(*a) for a in aliases) + ";"
        )
    out += ["COMMIT;", ""]
    return "\n".join(out)


def schema_files(mail: MailList) -> tuple[File, ...]:
    """The SQL the database step installs under /etc/sams/postgres (roles.sql holds passwords)."""
    return (
        File(f"{SQL_DIR}/roles.sql", roles_sql(), mode="0600"),
        File(f"{SQL_DIR}/migrate.sql", migrate_sql(), mode="0644"),
        File(f"{SQL_DIR}/mail_list.sql", mail_list_sql(mail), mode="0644"),
    )


# Dovecot caches what it reads from these tables (auth_cache_size in dovecot.conf). After the mail
# list changes, a removed user must be refused and a new quota count at once, not after the TTL.
# Dovecot is installed after the first run of this step: no Dovecot yet, nothing cached.
# doveadm 2.4.1 exits 0 even when it cannot reach the auth process (it prints "Error: ..." and
# "0 cache entries flushed"): an error line fails the step as a non-zero exit would.
FLUSH_DOVECOT_AUTH_CACHE = """\
if systemctl is-active --quiet dovecot; then
    # In a list, a failing doveadm does not end the script (sh -e) before the message below.
    err=$(doveadm auth cache flush 2>&1 >/dev/null) && rc=0 || rc=$?
    if [ "$rc" -ne 0 ] || printf '%s\\n' "$err" | grep -qE '^(Error|Fatal|Panic):'; then
        echo "sams: the mail list is applied, but doveadm auth cache flush failed (exit $rc): $err" >&2
        echo "sams: Dovecot may answer from its cache for up to an hour; run pulumi up again." >&2
        exit 1
    fi
fi"""


def apply_script(superuser_psql: str, owner_psql: str) -> str:
    """The step script: run the three files in order through the given psql command prefixes.

    The container that runs PostgreSQL belongs to the postgres step, so its caller says how to
    reach psql there, e.g. ``docker exec -i sams-postgres psql -U postgres`` and
    ``docker exec -i sams-postgres psql -U sams_owner -d sams``. Files are fed on stdin, so
    nothing has to be copied into the container and no password appears on a command line.
    """
    return "\n".join(
        [
            f"{superuser_psql} -v ON_ERROR_STOP=1 -q < {SQL_DIR}/roles.sql",
            f"{owner_psql} -v ON_ERROR_STOP=1 -q < {SQL_DIR}/migrate.sql",
            f"{owner_psql} -v ON_ERROR_STOP=1 -q < {SQL_DIR}/mail_list.sql",
            FLUSH_DOVECOT_AUTH_CACHE,
            "",
        ]
    )
