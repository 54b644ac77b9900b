# What Vault's auth methods need from Azure (docs/auth.md). Both parts are off by default, so an
# existing deployment plans no resource change; `python -m vault_handler.auth apply --file
# auth.json` then configures Vault itself from the operator's machine, with the outputs below.
#
# 1. oidc_enabled: an Entra ID app registration for Vault's OIDC sign-in (UI and CLI), with the
#    security groups in its tokens, a service principal and a client secret. The secret is an
#    output (sensitive), not an app setting: the function never needs it, the auth command does.
# 2. azure_auth_enabled: a custom role with the read actions Vault's azure auth method calls on
#    Azure Resource Manager for roles that bind subscriptions, resource groups, locations or scale
#    sets (the login then names vm_name, vmss_name or resource_id), assigned to the function's
#    identity (Vault runs as that identity, so configure auth/azure without client_id
#    and client_secret).

locals {
  # Vault's redirect URIs for an oidc mount at auth/oidc: the UI's callback on the function's own
  # host name (a route the HTTP function admits: /ui/...), and the CLI's local listener
  # (`vault login -method=oidc` listens on localhost:8250 by default).
  oidc_ui_redirect_uri  = "https://${local.default_hostname}/ui/vault/auth/oidc/oidc/callback"
  oidc_cli_redirect_uri = "http://localhost:8250/oidc/callback"

  # The subscription by default: logins with resource_id look up the resource provider's API
  # versions at the subscription (Microsoft.Resources/subscriptions/providers/read).
  azure_auth_scope = coalesce(var.azure_auth_scope, "/subscriptions/${data.azurerm_client_config.current.subscription_id}")
}

data "azuread_client_config" "current" {
  count = var.oidc_enabled ? 1 : 0
}

resource "azuread_application" "vault_oidc" {
  count            = var.oidc_enabled ? 1 : 0
  display_name     = coalesce(var.oidc_display_name, "Vault (${local.app_name})")
  owners           = [data.azuread_client_config.current[0].object_id]
  sign_in_audience = "AzureADMyOrg"
  # Security groups' object ids in the `groups` claim: Vault's oidc role reads them
  # (groups_claim = "groups") and maps them to external groups by group alias.
  group_membership_claims = ["SecurityGroup"]

  # "Web" platform for both URIs, as Vault's Entra ID guide says: Vault is a confidential client
  # that redeems the code with the client secret, also for the CLI (the CLI only receives the
  # code on localhost and hands it to Vault). Entra ID accepts http:// for localhost URIs.
  web {
    redirect_uris = [local.oidc_ui_redirect_uri, local.oidc_cli_redirect_uri]

    implicit_grant {
      access_token_issuance_enabled = false
      id_token_issuance_enabled     = false
    }
  }

  optional_claims {
    id_token {
      name = "groups"
    }
  }

  # Microsoft Graph User.Read (delegated): sign-in and profile. Vault's provider_config "azure",
  # which fetches the groups of a user in more than 200 groups from Graph, needs it with admin
  # consent (docs/auth.md).
  required_resource_access {
    resource_app_id = "00000003-0000-0000-c000-000000000000" # Microsoft Graph

    resource_access {
      id   = "e1fe6dd8-ba31-4d61-89e7-88639da4683d" # User.Read
      type = "Scope"
    }
  }
}

resource "azuread_service_principal" "vault_oidc" {
  count     = var.oidc_enabled ? 1 : 0
  client_id = azuread_application.vault_oidc[0].client_id
  owners    = [data.azuread_client_config.current[0].object_id]
}

# A new secret every oidc_client_secret_rotation_days (at the first apply after that date); it
# stays valid 30 days longer, so an apply a little late does not break sign-in. After an apply
# that replaced it, run the auth command with --rotate-client-secret.
resource "time_rotating" "oidc_client_secret" {
  count         = var.oidc_enabled ? 1 : 0
  rotation_days = var.oidc_client_secret_rotation_days
}

resource "azuread_application_password" "vault_oidc" {
  count               = var.oidc_enabled ? 1 : 0
  application_id      = azuread_application.vault_oidc[0].id
  display_name        = "vault-oidc (terraform)"
  end_date            = timeadd(time_rotating.oidc_client_secret[0].rotation_rfc3339, "720h")
  rotate_when_changed = { rotation = time_rotating.oidc_client_secret[0].id }
}

# Exactly the Azure Resource Manager reads of Vault's azure auth plugin (path_login.go) at login:
# vm_name: the VM with its instance view; vmss_name: the scale set, and for Flexible orchestration
# its user-assigned identities; resource_id: the provider's API versions, then the resource itself
# (Microsoft.Web/sites/read covers function apps and App Service; add the read action of any other
# resource type your workloads log in from). Roles bound only by bound_service_principal_ids or
# bound_group_ids are checked against the token alone and need no role at all.
resource "azurerm_role_definition" "vault_azure_auth" {
  count       = var.azure_auth_enabled ? 1 : 0
  name        = "Vault azure auth reader (${local.app_name})"
  scope       = local.azure_auth_scope
  description = "Read-only: what Vault's azure auth method reads to verify a managed identity's VM, scale set or resource at login."

  permissions {
    actions = [
      "Microsoft.Compute/virtualMachines/read",
      "Microsoft.Compute/virtualMachines/instanceView/read",
      "Microsoft.Compute/virtualMachineScaleSets/read",
      "Microsoft.ManagedIdentity/userAssignedIdentities/read",
      "Microsoft.Resources/subscriptions/providers/read",
      "Microsoft.Web/sites/read",
    ]
    not_actions = []
  }

  assignable_scopes = [local.azure_auth_scope]
}

resource "azurerm_role_assignment" "vault_azure_auth" {
  count              = var.azure_auth_enabled ? 1 : 0
  scope              = local.azure_auth_scope
  role_definition_id = azurerm_role_definition.vault_azure_auth[0].role_definition_resource_id
  principal_id       = local.principal_id
  principal_type     = "ServicePrincipal"
}
