locals {
  # Storage account and Key Vault names are global: a short suffix derived from the subscription
  # and the base name keeps them unique and stable across applies.
  suffix          = substr(sha1("${data.azurerm_client_config.current.subscription_id}/${var.name}"), 0, 6)
  app_name        = "${var.name}-${local.suffix}"
  backup_location = coalesce(var.backup_location, var.location)
  tags            = merge({ app = "vaultfn", managed-by = "terraform" }, var.tags)
  # The app's public address: Vault's api_addr and the keep-warm check's base URL.
  api_addr = "https://${local.app_name}.azurewebsites.net"
}

resource "azurerm_resource_group" "main" {
  name     = coalesce(var.resource_group_name, "rg-${var.name}")
  location = var.location
  tags     = local.tags
}
