# Least privilege for the app's system-assigned identity: Vault's storage, the container only plus
# the right to ask for a user delegation key; the backup, its container only; the seal, one key (or
# one secret). Nothing at the account or resource-group level except the delegator role (and, on
# Flex, the host account, which holds nothing of Vault's).
locals {
  app_roles = merge(
    {
      # Vault's azure backend, the single-writer lock (a lease on vaultfn.lock) and the backup's
      # reads (List Blobs, Get Blob) all fall under Storage Blob Data Contributor on the container.
      vault_container = {
        role  = "Storage Blob Data Contributor"
        scope = azurerm_storage_container.data["vault"].id
      }
      # The backup copies blobs server-side with read-only user delegation SAS URLs. Get User
      # Delegation Key acts on the account's blob service, so its action
      # (Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action) must be
      # granted at the account (or a wider) scope: a data role scoped to a container does not carry
      # it. Storage Blob Delegator holds that action and nothing else; a SAS it signs still grants
      # only what the identity's container-scoped role allows.
      vault_delegator = {
        role  = "Storage Blob Delegator"
        scope = azurerm_storage_account.data["vault"].id
      }
      # The backup repository: write objects and manifests, read them back to verify, prune.
      backup_container = {
        role  = "Storage Blob Data Contributor"
        scope = azurerm_storage_container.data["backup"].id
      }
    },
    # HashiCorp Vault's seal "azurekeyvault" needs get, wrapKey and unwrapKey on its key: Key Vault
    # Crypto Service Encryption User is exactly that (narrower than Key Vault Crypto User, which
    # also allows encrypt, decrypt, sign and verify), scoped to the one key.
    var.vault_flavor == "vault" ? {
      unseal_key = {
        role  = "Key Vault Crypto Service Encryption User"
        scope = azurerm_key_vault_key.unseal[0].resource_versionless_id
      }
    } : {},
    # OpenBao: App Service resolves the Key Vault reference with the app's identity.
    var.vault_flavor == "openbao" ? {
      seal_secret = {
        role  = "Key Vault Secrets User"
        scope = azurerm_key_vault_secret.seal[0].resource_versionless_id
      }
    } : {},
    # Flex Consumption's identity-based host storage (AzureWebJobsStorage__accountName) and
    # deployment container: the host keeps function keys and timer leases in blobs (Storage Blob
    # Data Owner, the role Functions documents for identity-based host storage), queues and tables
    # serve its diagnostic events and retries. On Linux Consumption the host uses a connection
    # string instead (function.tf) and needs no role.
    local.is_flex ? {
      host_blob  = { role = "Storage Blob Data Owner", scope = azurerm_storage_account.host.id }
      host_queue = { role = "Storage Queue Data Contributor", scope = azurerm_storage_account.host.id }
      host_table = { role = "Storage Table Data Contributor", scope = azurerm_storage_account.host.id }
    } : {},
  )
}

resource "azurerm_role_assignment" "app" {
  for_each             = local.app_roles
  scope                = each.value.scope
  role_definition_name = each.value.role
  principal_id         = local.principal_id
  principal_type       = "ServicePrincipal"
}
