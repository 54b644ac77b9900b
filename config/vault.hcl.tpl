# Production config: HashiCorp Vault on Azure Functions.
# Rendered by the handler at start (see README, "Config templates"); the handler
# sets VAULT_LISTEN_PORT to a free loopback port and proxies its own port to it.
default_max_request_duration = "90s"
disable_clustering           = true
disable_mlock                = true
ui                           = true

api_addr = "{{ env "VAULT_API_ADDR" }}"

default_lease_ttl = "24h"
max_lease_ttl     = "168h"

plugin_directory = "{{ cwd "plugins" }}"

log_format = "json"
log_level  = "{{ env "VAULT_LOG_LEVEL" | default "info" }}"

listener "tcp" {
  address                          = "127.0.0.1:{{ env "VAULT_LISTEN_PORT" }}"
  tls_disable                      = "true"
  x_forwarded_for_authorized_addrs = ["127.0.0.1"]
  # The handler forwards X-Forwarded-For, or nothing for a loopback client.
  x_forwarded_for_reject_not_present = false
  max_request_duration             = "90s"
}

seal "azurekeyvault" {
  tenant_id = "{{ env "AZURE_TENANT_ID" }}"
  key_name  = "{{ env "VAULT_AZUREKEYVAULT_KEY_NAME" | default "vault-unseal" }}"
}

storage "azure" {
  accountName = "{{ env "AZURE_ACCOUNT_NAME" }}"
  # Empty: Vault signs in with the app's managed identity instead of a key.
  accountKey  = "{{ env "AZURE_STORAGE_KEY" | default "" }}"
  container   = "{{ env "AZURE_BLOB_CONTAINER" }}"
}
