terraform {
  # 1.9: input validations may refer to other variables (vault_flavor and openbao_seal_key).
  required_version = ">= 1.9"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # 4.21 added azurerm_function_app_flex_consumption; stay below 5.0.
      version = ">= 4.21, < 5.0"
    }
  }
}

provider "azurerm" {
  # Every account here turns shared keys off where it can: data-plane calls go through Entra ID.
  storage_use_azuread = true

  features {
    key_vault {
      # Never purge the unseal key or the seal secret on `terraform destroy`: without them every copy
      # of Vault's data, backups included, is unreadable. Purge protection forbids it anyway.
      purge_soft_delete_on_destroy    = false
      recover_soft_deleted_key_vaults = true
      recover_soft_deleted_keys       = true
      recover_soft_deleted_secrets    = true
    }
    resource_group {
      prevent_deletion_if_contains_resources = true
    }
  }
}

data "azurerm_client_config" "current" {}
