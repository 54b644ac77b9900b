# Three accounts with three jobs:
# - host: the Functions host's own storage (AzureWebJobsStorage: function keys, timer leases, Flex
#   deployment packages); nothing of Vault's.
# - vault: Vault's data, one blob per key in one container, and the single-writer lock blob.
# - backup: the backup repository, in a separate account (optionally another region), so that
#   whatever happens to Vault's account does not take the backups with it.

resource "azurerm_storage_account" "host" {
  #checkov:skip=CKV_AZURE_43:The name is var.name (validated: 3 to 12 lowercase letters and digits) plus a fixed role word and 6 hex digits, so always 3 to 24 lowercase letters and digits; checkov cannot evaluate the suffix, which hashes the subscription id.
  #checkov:skip=CKV2_AZURE_41:The SAS expiration policy is set (sas_policy below); checkov cannot evaluate shared_access_key_enabled, which depends on var.plan.
  #checkov:skip=CKV2_AZURE_40:Linux Consumption content share and remote build need an account-key connection string (see function.tf); on plan = "flex" shared keys are off.
  #checkov:skip=CKV_AZURE_206:Host storage holds only function keys (unused: the one HTTP function is anonymous), timer leases and deployment packages, all re-created by a deploy; LRS is enough.
  #checkov:skip=CKV_AZURE_59:Consumption plans have no VNet integration (Y1) or none configured here (Flex), so the host must reach its storage over the public endpoint; access needs the key or Entra ID.
  #checkov:skip=CKV2_AZURE_33:Private endpoints need VNet integration, which Linux Consumption does not have.
  #checkov:skip=CKV2_AZURE_1:Microsoft-managed keys: the host account holds no secrets of Vault's; a customer-managed key would add a Key Vault dependency to the host's start.
  #checkov:skip=CKV_AZURE_33:Queue service logging is configured through diagnostic settings (monitoring.tf), not the deprecated classic queue_properties logging.
  name                             = "${var.name}host${local.suffix}"
  resource_group_name              = azurerm_resource_group.main.name
  location                         = azurerm_resource_group.main.location
  account_kind                     = "StorageV2"
  account_tier                     = "Standard"
  account_replication_type         = "LRS"
  min_tls_version                  = "TLS1_2"
  https_traffic_only_enabled       = true
  allow_nested_items_to_be_public  = false
  cross_tenant_replication_enabled = false
  local_user_enabled               = false
  shared_access_key_enabled        = var.plan == "consumption"
  default_to_oauth_authentication  = true
  tags                             = local.tags

  sas_policy {
    expiration_period = "01.00:00:00"
  }

  blob_properties {
    delete_retention_policy {
      days = 7
    }
    container_delete_retention_policy {
      days = 7
    }
  }
}

# Flex Consumption deploys from a blob container in the host account.
resource "azurerm_storage_container" "deployments" {
  #checkov:skip=CKV2_AZURE_21:Blob logging is enabled for the account's blob service through diagnostic settings (monitoring.tf).
  count                 = var.plan == "flex" ? 1 : 0
  name                  = "app-package"
  storage_account_id    = azurerm_storage_account.host.id
  container_access_type = "private"
}

# Vault's data and the backups: two accounts alike but for region, replication and versioning.
locals {
  data_accounts = {
    vault = {
      name        = "${var.name}data${local.suffix}"
      location    = var.location
      replication = var.vault_storage_replication
      container   = var.vault_container
      # Off here: Vault rewrites lease and token blobs constantly, and versions would grow
      # without bound. The backup account keeps the history.
      versioning = false
    }
    backup = {
      name        = "${var.name}bkp${local.suffix}"
      location    = local.backup_location
      replication = var.backup_storage_replication
      container   = var.backup_container
      versioning  = true
    }
  }
}

resource "azurerm_storage_account" "data" {
  #checkov:skip=CKV_AZURE_43:The name is var.name (validated: 3 to 12 lowercase letters and digits) plus a fixed role word and 6 hex digits, so always 3 to 24 lowercase letters and digits; checkov cannot evaluate the suffix, which hashes the subscription id.
  #checkov:skip=CKV_AZURE_59:The app reaches these accounts from the Consumption plan's shared outbound addresses (no VNet); access needs an Entra ID token with a data role on the one container, shared keys are off.
  #checkov:skip=CKV2_AZURE_33:Private endpoints need VNet integration, which Linux Consumption does not have.
  #checkov:skip=CKV_AZURE_206:Geo-redundant by default (GZRS for Vault's data, GRS for the backups, from the variables); checkov cannot evaluate a for_each value.
  #checkov:skip=CKV2_AZURE_1:Vault's data and its backups are already encrypted by Vault's barrier (keyring wrapped by the Key Vault seal); a customer-managed storage key adds a second Key Vault dependency without protecting anything more.
  #checkov:skip=CKV_AZURE_33:No queues are used in these accounts; logging goes through diagnostic settings (monitoring.tf).
  for_each                         = local.data_accounts
  name                             = each.value.name
  resource_group_name              = azurerm_resource_group.main.name
  location                         = each.value.location
  account_kind                     = "StorageV2"
  account_tier                     = "Standard"
  account_replication_type         = each.value.replication
  min_tls_version                  = "TLS1_2"
  https_traffic_only_enabled       = true
  allow_nested_items_to_be_public  = false
  cross_tenant_replication_enabled = false
  local_user_enabled               = false
  # Vault's azure backend (empty accountKey), the lock and the backup all sign in with the app's
  # managed identity; the backup's copy SAS is a user delegation SAS. No account key is needed.
  shared_access_key_enabled       = false
  default_to_oauth_authentication = true
  tags                            = local.tags

  sas_policy {
    expiration_period = "01.00:00:00"
  }

  blob_properties {
    versioning_enabled = each.value.versioning
    delete_retention_policy {
      days = var.soft_delete_days
    }
    container_delete_retention_policy {
      days = var.soft_delete_days
    }
  }
}

resource "azurerm_storage_container" "data" {
  #checkov:skip=CKV2_AZURE_21:Blob logging is enabled for the account's blob service through diagnostic settings (monitoring.tf).
  for_each              = local.data_accounts
  name                  = each.value.container
  storage_account_id    = azurerm_storage_account.data[each.key].id
  container_access_type = "private"

  lifecycle {
    # Vault's data and the backups: a changed name would replace (delete) the container, so
    # Terraform refuses instead. Switch Vault to a restored container as docs/deploy.md says.
    prevent_destroy = true
  }
}

# Container-level time-based retention (WORM). Created unlocked: a locked policy can never be
# shortened or removed, so lock it by hand (`az storage container immutability-policy lock`) once
# the period is right. Uncertain: Azure documents version-level WORM as the form that goes with
# blob versioning; if the service refuses a container-level policy next to versioning in your
# region, turn versioning off on this account or use version-level immutability instead.
resource "azurerm_storage_container_immutability_policy" "backup" {
  count                                 = var.backup_immutability_enabled ? 1 : 0
  storage_container_resource_manager_id = azurerm_storage_container.data["backup"].id
  immutability_period_in_days           = var.backup_immutability_days
  protected_append_writes_all_enabled   = false
  protected_append_writes_enabled       = false
}
