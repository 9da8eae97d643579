-- 0001: the mail directory Postfix and Dovecot read: domains, mailboxes (users) and aliases.
-- Runs as sams_owner (who then owns every table) inside the migration wrapper, which records it
-- in schema_version; every statement is also safe to run twice on its own.

CREATE TABLE IF NOT EXISTS domains (
    name   text PRIMARY KEY CHECK (name = lower(name) AND name <> ''),
    active boolean NOT NULL DEFAULT true
);

CREATE TABLE IF NOT EXISTS users (
    local_part    text NOT NULL CHECK (local_part = lower(local_part) AND local_part <> ''),
    domain        text NOT NULL REFERENCES domains (name) ON UPDATE CASCADE ON DELETE CASCADE,
    -- Dovecot's "{SCHEME}hash" form; NULL means the mailbox receives mail but nobody can log in.
    -- Only schemes Dovecot verifies and that are slow by design are accepted.
    password_hash text CHECK (password_hash ~ '^\{(ARGON2ID|BLF-CRYPT|SHA512-CRYPT)\}'),
    -- Bytes; 0 means unlimited.
    quota_bytes   bigint NOT NULL DEFAULT 0 CHECK (quota_bytes >= 0),
    display_name  text,
    active        boolean NOT NULL DEFAULT true,
    PRIMARY KEY (local_part, domain)
);

CREATE TABLE IF NOT EXISTS aliases (
    local_part  text NOT NULL CHECK (local_part = lower(local_part) AND local_part <> ''),
    domain      text NOT NULL REFERENCES domains (name) ON UPDATE CASCADE ON DELETE CASCADE,
    -- Always a full address (the mail list's bare local parts are qualified when loaded).
    destination text NOT NULL CHECK (destination ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    active      boolean NOT NULL DEFAULT true,
    PRIMARY KEY (local_part, domain, destination)
);

-- smtpd_sender_login_maps looks aliases up by their destination (who may send as the alias).
CREATE INDEX IF NOT EXISTS aliases_destination ON aliases (destination);

-- The daemons read through column grants: Postfix never sees a password hash.
GRANT SELECT (name, active) ON domains TO postfix, dovecot;
GRANT SELECT (local_part, domain, active) ON users TO postfix;
GRANT SELECT (local_part, domain, password_hash, quota_bytes, active) ON users TO dovecot;
GRANT SELECT (local_part, domain, destination, active) ON aliases TO postfix;
