-- 0002: users change their own password (components/webmail's sams-passwd). The role sams_password
-- (roles.sql) may run this one function and nothing else: it cannot read a hash, list the users or
-- touch another column. sams-passwd calls it only after Dovecot accepted the user's current password.

CREATE OR REPLACE FUNCTION sams_set_password(login text, new_hash text) RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    -- A definer's function runs with a fixed search path: nobody's objects can stand in for ours.
    SET search_path = pg_catalog, public
AS $$
    WITH changed AS (
        UPDATE public.users u SET password_hash = new_hash
         WHERE u.local_part || '@' || u.domain = lower(login)
           AND u.active
           -- A mailbox without a password (receive-only, or offboarded) stays without one.
           AND u.password_hash IS NOT NULL
           AND new_hash ~ '^\{(ARGON2ID|SHA512-CRYPT)\}\S+$'
        RETURNING 1
    )
    SELECT count(*) = 1 FROM changed
$$;

REVOKE ALL ON FUNCTION sams_set_password(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sams_set_password(text, text) TO sams_password;
