# Least privilege for the SAMS program's Vault token (the dynamic provider, the preview's
# offboarding listing, and the rotation command). Written for the defaults
# sams:vault.mount = "secret" and sams:vault.prefix = "mail/users": change both paths together.
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
