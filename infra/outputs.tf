output "function_app_name" {
  description = "The function app's name (for `func azure functionapp publish`)."
  value       = local.function_app_name
}

output "default_hostname" {
  description = "The function app's default host name: Vault's API and UI."
  value       = local.default_hostname
}

output "vault_addr" {
  description = "VAULT_ADDR for Vault clients (the app's VAULT_API_ADDR)."
  value       = local.api_addr
}

output "health_url" {
  description = "Vault's health endpoint through the app."
  value       = "https://${local.default_hostname}/v1/sys/health"
}

output "vault_storage_account" {
  description = "Storage account holding Vault's data (AZURE_ACCOUNT_NAME)."
  value       = azurerm_storage_account.data["vault"].name
}

output "vault_container" {
  description = "Container holding Vault's data (AZURE_BLOB_CONTAINER)."
  value       = azurerm_storage_container.data["vault"].name
}

output "backup_storage_account" {
  description = "Storage account holding the backup repository (BACKUP_ACCOUNT_NAME)."
  value       = azurerm_storage_account.data["backup"].name
}

output "backup_container" {
  description = "Container holding the backup repository (BACKUP_CONTAINER)."
  value       = azurerm_storage_container.data["backup"].name
}

output "key_vault_name" {
  description = "Key Vault holding the unseal key (VAULT_AZUREKEYVAULT_VAULT_NAME) or OpenBao's seal secret."
  value       = azurerm_key_vault.main.name
}

output "application_insights_name" {
  description = "Application Insights resource the app reports to."
  value       = azurerm_application_insights.main.name
}

output "application_insights_connection_string" {
  description = "APPLICATIONINSIGHTS_CONNECTION_STRING, e.g. for running the backup commands locally."
  value       = azurerm_application_insights.main.connection_string
  sensitive   = true
}

output "principal_id" {
  description = "Object id of the function app's system-assigned identity."
  value       = local.principal_id
}

output "resource_group_name" {
  description = "The resource group holding everything."
  value       = azurerm_resource_group.main.name
}

output "tenant_id" {
  description = "Entra ID tenant: tenant_id of the oidc and azure sections of auth.json."
  value       = data.azurerm_client_config.current.tenant_id
}

output "oidc_client_id" {
  description = "oidc_enabled only: the Entra ID application (client) id for Vault's oidc auth method."
  value       = one(azuread_application.vault_oidc[*].client_id)
}

output "oidc_client_secret" {
  description = "oidc_enabled only: the client secret (`terraform output -raw oidc_client_secret` into the environment variable auth.json names)."
  value       = one(azuread_application_password.vault_oidc[*].value)
  sensitive   = true
}

output "oidc_ui_redirect_uri" {
  description = "The UI's OIDC callback on the function's host name (an allowed redirect URI of the oidc role)."
  value       = local.oidc_ui_redirect_uri
}

output "oidc_cli_redirect_uri" {
  description = "The CLI's OIDC callback (`vault login -method=oidc` listens on localhost:8250)."
  value       = local.oidc_cli_redirect_uri
}
