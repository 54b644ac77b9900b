"""The keep-warm timer: ping Vault's health URL, keep the app warm, record the state."""
