variable "name" {
  description = "Base name of every resource: lowercase letters and digits, 3 to 12 characters. The function app is `<name>-<suffix>`, storage accounts `<name><role><suffix>`."
  type        = string
  default     = "vaultfn"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{2,11}$", var.name))
    error_message = "name must be 3 to 12 lowercase letters and digits, starting with a letter (storage account names allow nothing else)."
  }
}

variable "location" {
  description = "Azure region of the app, Vault's storage, the Key Vault and monitoring. For plan = \"flex\", a region that offers Flex Consumption with a maximum of one instance."
  type        = string
  default     = "westeurope"
}

variable "backup_location" {
  description = "Azure region of the backup storage account; null means the same as location. Another region keeps backups through a regional outage."
  type        = string
  default     = null
}

variable "resource_group_name" {
  description = "Name of the resource group to create; null means `rg-<name>`."
  type        = string
  default     = null

  validation {
    condition     = var.resource_group_name == null || can(regex("^[-\\w.()]{1,89}[-\\w()]$", var.resource_group_name))
    error_message = "resource_group_name must be 1 to 90 letters, digits, '-', '_', '.', '(' or ')', not ending in '.'."
  }
}

variable "plan" {
  description = "Hosting plan: \"consumption\" (Linux Consumption, Y1, app_scale_limit = 1; retires 2028-09-30) or \"flex\" (Flex Consumption, maximum_instance_count = 1)."
  type        = string
  default     = "consumption"

  validation {
    condition     = contains(["consumption", "flex"], var.plan)
    error_message = "plan must be \"consumption\" or \"flex\"."
  }
}

variable "vault_flavor" {
  description = "\"vault\": HashiCorp Vault with seal \"azurekeyvault\" (an RSA key in Key Vault). \"openbao\": OpenBao with a static seal key kept as a Key Vault secret and passed as a Key Vault reference app setting."
  type        = string
  default     = "vault"

  validation {
    condition     = contains(["vault", "openbao"], var.vault_flavor)
    error_message = "vault_flavor must be \"vault\" or \"openbao\"."
  }
}

variable "vault_container" {
  description = "Blob container holding Vault's data (AZURE_BLOB_CONTAINER)."
  type        = string
  default     = "vault"

  validation {
    condition     = can(regex("^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}$", var.vault_container))
    error_message = "vault_container must be a valid container name: 3 to 63 lowercase letters, digits and single hyphens."
  }
}

variable "backup_container" {
  description = "Blob container in the backup account holding the backup repository (BACKUP_CONTAINER)."
  type        = string
  default     = "vault-backups"

  validation {
    condition     = can(regex("^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}$", var.backup_container))
    error_message = "backup_container must be a valid container name: 3 to 63 lowercase letters, digits and single hyphens."
  }
}

variable "unseal_key_name" {
  description = "Name of the Key Vault key for seal \"azurekeyvault\" (VAULT_AZUREKEYVAULT_KEY_NAME), or of the secret holding OpenBao's static seal key."
  type        = string
  default     = "vault-unseal"

  validation {
    condition     = can(regex("^[0-9A-Za-z-]{1,127}$", var.unseal_key_name))
    error_message = "unseal_key_name must be 1 to 127 letters, digits and hyphens."
  }
}

variable "key_vault_sku" {
  description = "Key Vault SKU: \"premium\" makes the unseal key HSM-backed (RSA-HSM), \"standard\" software-protected (RSA)."
  type        = string
  default     = "premium"

  validation {
    condition     = contains(["standard", "premium"], var.key_vault_sku)
    error_message = "key_vault_sku must be \"standard\" or \"premium\"."
  }
}

variable "unseal_key_rotation_days" {
  description = "Rotate the unseal key automatically every this many days (Vault unwraps with the version it wrapped with); 0 turns automatic rotation off."
  type        = number
  default     = 365

  validation {
    condition     = var.unseal_key_rotation_days == 0 || (var.unseal_key_rotation_days >= 7 && var.unseal_key_rotation_days <= 3650)
    error_message = "unseal_key_rotation_days must be 0 (off) or 7 to 3650."
  }
}

variable "openbao_seal_key" {
  description = "vault_flavor = \"openbao\" only: the static seal key, 64 hex digits (32 bytes, e.g. `openssl rand -hex 32`). Stored as a Key Vault secret; it also lands in the Terraform state, so keep the state private."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.openbao_seal_key == null ? var.vault_flavor == "vault" : can(regex("^[0-9a-f]{64}$", var.openbao_seal_key))
    error_message = "openbao_seal_key must be 64 lowercase hex digits, and is required when vault_flavor = \"openbao\"."
  }
}

variable "vault_storage_replication" {
  description = "Replication of Vault's storage account."
  type        = string
  default     = "GZRS"

  validation {
    condition     = contains(["LRS", "ZRS", "GRS", "RAGRS", "GZRS", "RAGZRS"], var.vault_storage_replication)
    error_message = "vault_storage_replication must be one of LRS, ZRS, GRS, RAGRS, GZRS, RAGZRS."
  }
}

variable "backup_storage_replication" {
  description = "Replication of the backup storage account."
  type        = string
  default     = "GRS"

  validation {
    condition     = contains(["LRS", "ZRS", "GRS", "RAGRS", "GZRS", "RAGZRS"], var.backup_storage_replication)
    error_message = "backup_storage_replication must be one of LRS, ZRS, GRS, RAGRS, GZRS, RAGZRS."
  }
}

variable "soft_delete_days" {
  description = "Days deleted blobs and containers stay recoverable (blob and container soft delete), in Vault's and the backup account."
  type        = number
  default     = 30

  validation {
    condition     = var.soft_delete_days >= 1 && var.soft_delete_days <= 365
    error_message = "soft_delete_days must be 1 to 365."
  }
}

variable "backup_immutability_enabled" {
  description = "Put a container-level time-based retention (WORM) policy on the backup container, so not even the app's identity can delete or rewrite committed snapshots for backup_immutability_days. Left unlocked; lock it by hand once tested."
  type        = bool
  default     = false
}

variable "backup_immutability_days" {
  description = "Retention period of the backup container's immutability policy, in days. Keep it within what the backup retention keeps anyway (14 days with the defaults and a daily schedule), or prune cannot delete what it forgets."
  type        = number
  default     = 7

  validation {
    condition     = var.backup_immutability_days >= 1 && var.backup_immutability_days <= 146000
    error_message = "backup_immutability_days must be 1 to 146000."
  }
}

variable "keepwarm_schedule" {
  description = "KEEPWARM_SCHEDULE: the keep-warm timer's six-field NCRONTAB schedule (seconds first)."
  type        = string
  default     = "0 */5 * * * *"

  validation {
    condition     = length(split(" ", trimspace(var.keepwarm_schedule))) == 6
    error_message = "keepwarm_schedule must be a six-field NCRONTAB expression, seconds first, e.g. \"0 */5 * * * *\"."
  }
}

variable "backup_schedule" {
  description = "BACKUP_SCHEDULE: the backup timer's six-field NCRONTAB schedule (seconds first, UTC)."
  type        = string
  default     = "0 0 3 * * *"

  validation {
    condition     = length(split(" ", trimspace(var.backup_schedule))) == 6
    error_message = "backup_schedule must be a six-field NCRONTAB expression, seconds first, e.g. \"0 0 3 * * *\"."
  }
}

variable "init_token" {
  description = "VAULTFN_INIT_TOKEN: set it (at least 16 characters, e.g. `openssl rand -hex 32`) for the first `sys/init`, apply, initialize, then set it back to null and apply again. Null: sys/init is refused."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.init_token == null || length(coalesce(var.init_token, "")) >= 16
    error_message = "init_token must be at least 16 characters (or null)."
  }
}

variable "extra_app_settings" {
  description = "More app settings (e.g. BACKUP_KEEP_DAILY, VAULT_LOG_LEVEL). They cannot replace the settings this configuration derives."
  type        = map(string)
  default     = {}
}

variable "flex_instance_memory_mb" {
  description = "plan = \"flex\" only: instance memory, 2048 or 4096 MB."
  type        = number
  default     = 2048

  validation {
    condition     = contains([2048, 4096], var.flex_instance_memory_mb)
    error_message = "flex_instance_memory_mb must be 2048 or 4096."
  }
}

variable "log_retention_days" {
  description = "Retention of the Log Analytics workspace (and so of Application Insights data), in days."
  type        = number
  default     = 90

  validation {
    condition     = var.log_retention_days >= 30 && var.log_retention_days <= 730
    error_message = "log_retention_days must be 30 to 730."
  }
}

variable "alert_email" {
  description = "Email address the alert rules notify (through an action group); null: the rules fire without notifying anyone."
  type        = string
  default     = null

  validation {
    condition     = var.alert_email == null || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", coalesce(var.alert_email, "x")))
    error_message = "alert_email must be an email address (or null)."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes tags."
  type        = map(string)
  default     = {}
}

variable "oidc_enabled" {
  description = "Create an Entra ID app registration (with service principal and client secret) for Vault's OIDC sign-in from the UI and the CLI (infra/auth.tf, docs/auth.md). Needs an Entra ID role that may create applications (e.g. Application Developer)."
  type        = bool
  default     = false
}

variable "oidc_display_name" {
  description = "oidc_enabled only: display name of the Entra ID app registration; null means `Vault (<app>)`."
  type        = string
  default     = null
}

variable "oidc_client_secret_rotation_days" {
  description = "oidc_enabled only: the first apply after this many days creates a new OIDC client secret; each secret stays valid 30 days past that date."
  type        = number
  default     = 180

  validation {
    condition     = var.oidc_client_secret_rotation_days >= 30 && var.oidc_client_secret_rotation_days <= 700
    error_message = "oidc_client_secret_rotation_days must be 30 to 700 (Entra ID allows secrets of at most two years)."
  }
}

variable "azure_auth_enabled" {
  description = "Give the app's identity a custom read-only role so Vault's azure auth method can check the VM, scale set or resource (vm_name, vmss_name, resource_id) of a login to a role that binds subscriptions, resource groups, locations or scale sets (infra/auth.tf)."
  type        = bool
  default     = false
}

variable "azure_auth_scope" {
  description = "azure_auth_enabled only: scope of that role and its assignment, a subscription or resource group id; null means this subscription. resource_id logins need the subscription (they read its resource providers)."
  type        = string
  default     = null

  validation {
    condition     = var.azure_auth_scope == null || can(regex("^/subscriptions/[0-9a-fA-F-]{36}(/resourceGroups/[-\\w.()]+)?$", coalesce(var.azure_auth_scope, "x")))
    error_message = "azure_auth_scope must be /subscriptions/<id> or /subscriptions/<id>/resourceGroups/<name> (or null)."
  }
}
