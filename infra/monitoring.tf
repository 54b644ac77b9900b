resource "azurerm_log_analytics_workspace" "main" {
  name                = "log-${local.app_name}"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = local.tags
}

resource "azurerm_application_insights" "main" {
  name                = "appi-${local.app_name}"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  workspace_id        = azurerm_log_analytics_workspace.main.id
  application_type    = "other"
  retention_in_days   = var.log_retention_days
  tags                = local.tags
}

# Blob service logs of the three accounts (who read, wrote or deleted what) go to the workspace.
resource "azurerm_monitor_diagnostic_setting" "blob" {
  for_each = {
    host   = azurerm_storage_account.host.id
    vault  = azurerm_storage_account.data["vault"].id
    backup = azurerm_storage_account.data["backup"].id
  }
  name                       = "blob-to-log-analytics"
  target_resource_id         = "${each.value}/blobServices/default"
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  # Writes and deletes only: Vault reads on every request, and the lock renews every 20 s.
  enabled_log {
    category = "StorageWrite"
  }

  enabled_log {
    category = "StorageDelete"
  }
}

resource "azurerm_monitor_diagnostic_setting" "key_vault" {
  name                       = "audit-to-log-analytics"
  target_resource_id         = azurerm_key_vault.main.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_log {
    category_group = "audit"
  }
}

# dashboards/vault-workbook.json, as is. A workbook's name must be a GUID: derive a stable one.
resource "azurerm_application_insights_workbook" "vault" {
  name                = uuidv5("url", "https://vaultfn.invalid/${local.app_name}/workbook")
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  display_name        = "Vault on Azure Functions (${local.app_name})"
  source_id           = lower(azurerm_application_insights.main.id)
  category            = "workbook"
  data_json           = file("${path.module}/../dashboards/vault-workbook.json")
  tags                = local.tags
}

resource "azurerm_monitor_action_group" "alerts" {
  count               = var.alert_email == null ? 0 : 1
  name                = "ag-${local.app_name}"
  resource_group_name = azurerm_resource_group.main.name
  short_name          = "vaultfn"
  tags                = local.tags

  email_receiver {
    name                    = "operator"
    email_address           = var.alert_email
    use_common_alert_schema = true
  }
}

locals {
  # dashboards/alerts.json: {"rules": [{name, severity, evaluationFrequency, windowSize, description,
  # query}]}; each query returns rows exactly when the alert should fire.
  alert_rules = { for rule in jsondecode(file("${path.module}/../dashboards/alerts.json")).rules : rule.name => rule }
}

resource "azurerm_monitor_scheduled_query_rules_alert_v2" "rules" {
  for_each                = local.alert_rules
  name                    = "${each.key}-${local.app_name}"
  display_name            = each.key
  description             = each.value.description
  resource_group_name     = azurerm_resource_group.main.name
  location                = azurerm_resource_group.main.location
  scopes                  = [azurerm_application_insights.main.id]
  severity                = each.value.severity
  evaluation_frequency    = each.value.evaluationFrequency
  window_duration         = each.value.windowSize
  enabled                 = true
  auto_mitigation_enabled = true
  # A new Application Insights resource has no customMetrics or availabilityResults rows yet, and
  # validation would refuse the queries until the app has reported once.
  skip_query_validation = true
  tags                  = local.tags

  criteria {
    query                   = each.value.query
    time_aggregation_method = "Count"
    operator                = "GreaterThan"
    threshold               = 0

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  dynamic "action" {
    for_each = var.alert_email == null ? [] : [1]
    content {
      action_groups = [azurerm_monitor_action_group.alerts[0].id]
    }
  }
}
