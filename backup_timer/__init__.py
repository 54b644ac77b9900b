"""The backup timer: incremental, verified, restorable backups of Vault's storage."""
