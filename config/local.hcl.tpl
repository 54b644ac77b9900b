# Local config: OpenBao with raft storage in the data dir and a static seal key
# that the handler generates at first start (0600). For `make run` and tests.
ui            = true
log_format    = "json"
log_level     = "{{ env "VAULT_LOG_LEVEL" | default "info" }}"
api_addr      = "{{ env "VAULT_API_ADDR" | default "http://127.0.0.1:8200" }}"
cluster_addr  = "https://127.0.0.1:{{ env "VAULT_CLUSTER_PORT" }}"
default_max_request_duration = "90s"

storage "raft" {
  path                   = "{{ env "VAULTFN_DATA_DIR" }}/raft"
  node_id                = "vaultfn-local"
  performance_multiplier = 1
  # Values up to 4 MiB, like Vault's azure storage backend (one blob per key).
  max_entry_size         = 4194304
}

listener "tcp" {
  address                          = "127.0.0.1:{{ env "VAULT_LISTEN_PORT" }}"
  cluster_address                  = "127.0.0.1:{{ env "VAULT_CLUSTER_PORT" }}"
  tls_disable                      = true
  x_forwarded_for_authorized_addrs = ["127.0.0.1"]
  # The handler forwards X-Forwarded-For, or nothing for a loopback client.
  x_forwarded_for_reject_not_present = false
}

seal "static" {
  current_key_id = "vaultfn-local-1"
  current_key    = "file://{{ env "VAULTFN_SEAL_KEY_FILE" }}"
}
