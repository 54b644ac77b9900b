# The unseal key: without it every copy of Vault's data, backups included, is unreadable. RBAC mode,
# soft delete and purge protection; the app's identity gets a role on the one key (or secret) only.

resource "azurerm_key_vault" "main" {
  #checkov:skip=CKV_AZURE_109:Vault's seal calls Key Vault from the Consumption plan's shared outbound addresses, which are neither fixed nor a trusted Azure service; access is by Entra ID and a role on the one key.
  #checkov:skip=CKV_AZURE_189:Public network access stays on: the Consumption plan has no VNet and no fixed outbound address to allow; every call needs Entra ID and a role on the one key or secret.
  #checkov:skip=CKV2_AZURE_32:Private endpoints need VNet integration, which Linux Consumption does not have.
  name                          = "kv-${var.name}-${local.suffix}"
  resource_group_name           = azurerm_resource_group.main.name
  location                      = azurerm_resource_group.main.location
  tenant_id                     = data.azurerm_client_config.current.tenant_id
  sku_name                      = var.key_vault_sku
  enable_rbac_authorization     = true
  purge_protection_enabled      = true
  soft_delete_retention_days    = 90
  public_network_access_enabled = true
  tags                          = local.tags

  network_acls {
    bypass         = "AzureServices"
    default_action = "Allow"
  }
}

# Whoever runs Terraform needs data-plane rights to create the key or the secret in an RBAC vault.
resource "azurerm_role_assignment" "deployer_keys" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = var.vault_flavor == "vault" ? "Key Vault Crypto Officer" : "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

# HashiCorp Vault: seal "azurekeyvault" wraps Vault's root key with this RSA key.
resource "azurerm_key_vault_key" "unseal" {
  #checkov:skip=CKV_AZURE_40:An expiry date would stop Vault from wrapping with the key after that date and so from starting; the rotation policy below renews the key instead, and Vault unwraps with the version it wrapped with.
  count        = var.vault_flavor == "vault" ? 1 : 0
  name         = var.unseal_key_name
  key_vault_id = azurerm_key_vault.main.id
  key_type     = var.key_vault_sku == "premium" ? "RSA-HSM" : "RSA"
  key_size     = 2048
  key_opts     = ["wrapKey", "unwrapKey"]
  tags         = local.tags

  dynamic "rotation_policy" {
    for_each = var.unseal_key_rotation_days > 0 ? [1] : []
    content {
      automatic {
        time_after_creation = "P${var.unseal_key_rotation_days}D"
      }
    }
  }

  depends_on = [azurerm_role_assignment.deployer_keys]
}

# OpenBao: a static seal key, referenced from the app settings as @Microsoft.KeyVault(SecretUri=...).
resource "azurerm_key_vault_secret" "seal" {
  #checkov:skip=CKV_AZURE_41:An expiry date would make the Key Vault reference, and so OpenBao's unseal, fail after that date; the static seal key is rotated through OpenBao's seal key rotation, not by expiry.
  count        = var.vault_flavor == "openbao" ? 1 : 0
  name         = var.unseal_key_name
  key_vault_id = azurerm_key_vault.main.id
  value        = var.openbao_seal_key
  content_type = "text/plain; openbao static seal key, hex"
  tags         = local.tags

  depends_on = [azurerm_role_assignment.deployer_keys]
}
