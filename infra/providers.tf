terraform {
  # 1.9: input validations may refer to other variables (vault_flavor and openbao_seal_key).
  required_version = ">= 1.9"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # 4.21 added azurerm_function_app_flex_consumption; stay below 5.0.
      version = ">= 4.21, < 5.0"
    }
    # auth.tf, only with oidc_enabled: the Entra ID app for Vault's OIDC sign-in. 3.0 made
    # azuread_application_password take application_id (the resource id).
    azuread = {
      source  = "hashicorp/azuread"
      version = ">= 3.0, < 4.0"
    }
    # auth.tf: time_rotating renews the OIDC client secret.
    time = {
      source  = "hashicorp/time"
      version = ">= 0.9, < 1.0"
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
