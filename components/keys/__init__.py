"""Program-generated keys, kept in Pulumi state as secrets (see components/keys/resources.py)."""
