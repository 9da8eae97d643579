"""The database's roles (pure constants): read by the schema, the steps, the component and backups."""

# The owner role the program migrates with, then read-only lookup roles for the mail daemons.
ROLES = ("sams_owner", "postfix", "dovecot")
# The container's superuser: creates the roles, nothing else uses it.
SUPERUSER = "postgres"
