"""The database's roles (pure constants): read by the schema, the steps, the component and backups."""

# The owner role the program migrates with, then read-only lookup roles for the mail daemons.
ROLES = ("sams_owner", "postfix", "dovecot")
# The container's superuser: creates the roles, nothing else uses it.
SUPERUSER = "postgres"
# The password changer (components/webmail's sams-passwd): may only call sams_set_password(). It has no
# password, so it cannot log in over TCP; only a root process on the host reaches it (docker exec).
PASSWORD_CHANGER = "sams_password"
