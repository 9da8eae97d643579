# Least privilege for the SAMS program's Vault token (the dynamic providers, the preview's
# offboarding listing, and the rotation command). Written for the defaults
# sams:vault.mount = "secret" and sams:vault.prefix = "mail/users": change the paths together
# (a different mount changes all three; the backup keys' sams/backup is fixed).
# Installed by docs/vault_setup_guide.md:  bao|vault policy write sams policy/vault/sams.hcl

# Mailbox passwords, KV v2 data: create (first password, cas=0), read (an existing secret is
# read instead of overwritten), update (rotation writes a new version). No delete here: offboarding
# removes versions and metadata together, below.
path "secret/data/mail/users/*" {
  capabilities = ["create", "read", "update"]
}

# KV v2 metadata: list (the preview names who will be offboarded) and delete (offboarding deletes
# the secret with every version and its metadata). The glob also matches the prefix itself.
path "secret/metadata/mail/users/*" {
  capabilities = ["list", "delete"]
}

# The restic repository password of each mail host (components/backup/vault.py): create (cas=0),
# read (check-and-set compares what is stored), update (a new version when sams:backupPassword or
# the repository changes). No delete and no metadata access: the key outlives the stack.
path "secret/data/sams/backup/*" {
  capabilities = ["create", "read", "update"]
}
