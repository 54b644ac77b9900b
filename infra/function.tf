# The function app: one of two resources, chosen by var.plan. Both run the Python stack, whose
# host.json customHandler block starts `python -m vault_handler`, on one instance at most:
# Vault's azure storage backend has no HA lock (the handler's blob lease guards it as well).

locals {
  is_flex = var.plan == "flex"

  # App settings every production deployment sets (shared.settings.PRODUCTION_SETTINGS; the test
  # tests/test_infra.py checks they are all here or derived by the provider, see below).
  common_settings = {
    KEEPWARM_SCHEDULE    = var.keepwarm_schedule
    BACKUP_SCHEDULE      = var.backup_schedule
    VAULT_API_ADDR       = local.api_addr
    AZURE_TENANT_ID      = data.azurerm_client_config.current.tenant_id
    AZURE_ACCOUNT_NAME   = azurerm_storage_account.data["vault"].name
    AZURE_BLOB_CONTAINER = azurerm_storage_container.data["vault"].name
    # No AZURE_STORAGE_KEY: Vault, the lock and the backup use the app's managed identity.
    VAULTFN_LOCK        = "on"
    BACKUP_SOURCE       = "blob"
    BACKUP_ACCOUNT_NAME = azurerm_storage_account.data["backup"].name
    BACKUP_CONTAINER    = azurerm_storage_container.data["backup"].name
  }

  # Per flavor: where the seal key lives. Vault reads VAULT_AZUREKEYVAULT_VAULT_NAME itself.
  seal_settings = {
    vault = {
      VAULT_AZUREKEYVAULT_VAULT_NAME = azurerm_key_vault.main.name
      VAULT_AZUREKEYVAULT_KEY_NAME   = var.unseal_key_name
    }
    # For an OpenBao template's `seal "static" { current_key = "env://VAULT_STATIC_SEAL_KEY" }`;
    # resolved by App Service with the app's identity (Key Vault Secrets User on this secret).
    openbao = {
      VAULT_STATIC_SEAL_KEY = "@Microsoft.KeyVault(SecretUri=${try(azurerm_key_vault_secret.seal[0].versionless_id, "")})"
    }
  }

  # Set for the first `sys/init` only, then removed (var.init_token = null and apply again).
  init_settings = var.init_token == null ? {} : { VAULTFN_INIT_TOKEN = var.init_token }

  app_settings = merge(var.extra_app_settings, local.common_settings, local.seal_settings[var.vault_flavor], local.init_settings)
}

resource "azurerm_service_plan" "main" {
  #checkov:skip=CKV_AZURE_212:One instance is the design (Vault's azure storage has no HA lock); zone redundancy needs several.
  #checkov:skip=CKV_AZURE_225:Zone redundancy is not offered for Y1 and needs several instances on Flex; this app runs one.
  #checkov:skip=CKV_AZURE_211:A consumption plan (Y1 or FC1) on purpose: pay per use, scale to zero.
  name                = "asp-${local.app_name}"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  os_type             = "Linux"
  sku_name            = local.is_flex ? "FC1" : "Y1"
  tags                = local.tags
}

# Linux Consumption. Host storage by connection string, not identity: the Consumption plan keeps
# the app's content on an Azure Files share (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING), and Azure
# Files over SMB does not accept managed identities, and remote build (`func azure functionapp
# publish --build remote`) stores the package behind an account-key SAS URL. The host account
# holds no Vault data; Vault's and the backup's accounts have shared keys off.
resource "azurerm_linux_function_app" "consumption" {
  #checkov:skip=CKV_AZURE_221:Vault's API is meant to be reachable by its clients; restrict with ip_restriction or a private endpoint where clients are known.
  # No App Service authentication: clients reach Vault's API with Vault tokens and could not send
  # the Entra ID tokens it would demand. Vault's own auth is the access control (docs/security.md).
  count                         = local.is_flex ? 0 : 1
  name                          = local.app_name
  resource_group_name           = azurerm_resource_group.main.name
  location                      = azurerm_resource_group.main.location
  service_plan_id               = azurerm_service_plan.main.id
  storage_account_name          = azurerm_storage_account.host.name
  storage_account_access_key    = azurerm_storage_account.host.primary_access_key
  functions_extension_version   = "~4"
  https_only                    = true
  public_network_access_enabled = true
  client_certificate_enabled    = false
  builtin_logging_enabled       = false
  # No basic-auth publishing credentials: deploy with an Entra ID sign-in (`func ... publish`, az).
  ftp_publish_basic_authentication_enabled       = false
  webdeploy_publish_basic_authentication_enabled = false
  app_settings                                   = local.app_settings
  tags                                           = local.tags

  identity {
    type = "SystemAssigned"
  }

  site_config {
    app_scale_limit                        = 1
    minimum_tls_version                    = "1.2"
    scm_minimum_tls_version                = "1.2"
    ftps_state                             = "Disabled"
    application_insights_connection_string = azurerm_application_insights.main.connection_string

    application_stack {
      python_version = "3.11"
    }
  }

  lifecycle {
    # The deploy (func publish) sets these; Terraform must not take them back.
    ignore_changes = [app_settings["WEBSITE_RUN_FROM_PACKAGE"], app_settings["WEBSITE_ENABLE_SYNC_UPDATE_SITE"]]
  }
}

# Flex Consumption: identity-based host storage (AzureWebJobsStorage__accountName) and deployment
# container; the runtime is set by runtime_name/runtime_version (FUNCTIONS_WORKER_RUNTIME is not an
# allowed app setting there).
resource "azurerm_function_app_flex_consumption" "flex" {
  # No App Service authentication: clients reach Vault's API with Vault tokens and could not send
  # the Entra ID tokens it would demand. Vault's own auth is the access control (docs/security.md).
  count                       = local.is_flex ? 1 : 0
  name                        = local.app_name
  resource_group_name         = azurerm_resource_group.main.name
  location                    = azurerm_resource_group.main.location
  service_plan_id             = azurerm_service_plan.main.id
  storage_container_type      = "blobContainer"
  storage_container_endpoint  = "${azurerm_storage_account.host.primary_blob_endpoint}${azurerm_storage_container.deployments[0].name}"
  storage_authentication_type = "SystemAssignedIdentity"
  runtime_name                = "python"
  runtime_version             = "3.11"
  # One instance per function group. A maximum of 1 is allowed only in some regions; the
  # handler's single-writer lock covers the instances Flex has been seen to add beyond it.
  maximum_instance_count                         = 1
  instance_memory_in_mb                          = var.flex_instance_memory_mb
  https_only                                     = true
  public_network_access_enabled                  = true
  client_certificate_enabled                     = false
  webdeploy_publish_basic_authentication_enabled = false
  app_settings = merge(local.app_settings, {
    AzureWebJobsStorage__accountName = azurerm_storage_account.host.name
  })
  tags = local.tags

  identity {
    type = "SystemAssigned"
  }

  site_config {
    minimum_tls_version                    = "1.2"
    scm_minimum_tls_version                = "1.2"
    application_insights_connection_string = azurerm_application_insights.main.connection_string
  }
}

locals {
  # Whichever of the two exists.
  function_app_name = one(concat(azurerm_linux_function_app.consumption[*].name, azurerm_function_app_flex_consumption.flex[*].name))
  default_hostname  = one(concat(azurerm_linux_function_app.consumption[*].default_hostname, azurerm_function_app_flex_consumption.flex[*].default_hostname))
  principal_id = one(concat(
    azurerm_linux_function_app.consumption[*].identity[0].principal_id,
    azurerm_function_app_flex_consumption.flex[*].identity[0].principal_id,
  ))
}
