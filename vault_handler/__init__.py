"""Azure Functions custom handler that runs and proxies Vault."""
