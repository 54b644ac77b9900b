"""Unit tests of vault_handler.template: the config template renderer and listener checks."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from shared.settings import LOCAL_TEMPLATE, PRODUCTION_TEMPLATE
from vault_handler.template import (
    TemplateError,
    check_listener,
    listener_ports,
    private_directory,
    render,
    write_private,
)

CWD = Path("/home/site/wwwroot")


def render_text(tmp_path: Path, text: str, env: dict[str, str] | None = None, name: str = "test.hcl.tpl") -> str:
    template = tmp_path / name
    template.write_text(text, encoding="utf-8")
    return render(template, env or {}, CWD)


def render_error(tmp_path: Path, text: str, env: dict[str, str] | None = None, name: str = "test.hcl.tpl") -> str:
    with pytest.raises(TemplateError) as caught:
        render_text(tmp_path, text, env, name)
    return str(caught.value)


def normalized_lines(config: str) -> set[str]:
    return {" ".join(line.split()) for line in config.splitlines()}


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


# -- functions and pipes -----------------------------------------------------------


def test_text_without_actions_is_unchanged(tmp_path: Path):
    text = 'ui = true\nlistener "tcp" {\n  address = "127.0.0.1:8200"\n}\n'
    assert render_text(tmp_path, text) == text


def test_env(tmp_path: Path):
    assert render_text(tmp_path, 'a = "{{ env "NAME" }}"\n', {"NAME": "value-1"}) == 'a = "value-1"\n'


def test_env_without_spaces_and_with_newlines_inside_the_action(tmp_path: Path):
    assert render_text(tmp_path, '{{env "A"}}|{{\n  env "B"\n}}', {"A": "x", "B": "y"}) == "x|y"


def test_several_actions_on_one_line(tmp_path: Path):
    assert render_text(tmp_path, '{{ env "H" }}:{{ env "P" }}', {"H": "127.0.0.1", "P": "8201"}) == "127.0.0.1:8201"


def test_cwd(tmp_path: Path):
    assert render_text(tmp_path, '{{ cwd "plugins" }}') == "/home/site/wwwroot/plugins"
    assert render_text(tmp_path, '{{ cwd "a" "b" }}') == "/home/site/wwwroot/a/b"
    assert render_text(tmp_path, "{{ cwd }}") == "/home/site/wwwroot"


def test_default_when_unset(tmp_path: Path):
    assert render_text(tmp_path, '{{ env "LEVEL" | default "info" }}') == "info"


def test_default_when_set(tmp_path: Path):
    assert render_text(tmp_path, '{{ env "LEVEL" | default "info" }}', {"LEVEL": "debug"}) == "debug"


def test_default_when_set_but_empty(tmp_path: Path):
    assert render_text(tmp_path, '{{ env "LEVEL" | default "info" }}', {"LEVEL": ""}) == "info"


def test_default_to_empty_string(tmp_path: Path):
    assert render_text(tmp_path, 'k = "{{ env "KEY" | default "" }}"') == 'k = ""'


def test_chained_defaults(tmp_path: Path):
    assert render_text(tmp_path, '{{ env "A" | default "" | default "second" }}') == "second"


def test_set_but_empty_variable_renders_empty(tmp_path: Path):
    # Set (even to "") counts as set; only unset variables are errors.
    assert render_text(tmp_path, 'x = "{{ env "EMPTY" }}"', {"EMPTY": ""}) == 'x = ""'


def test_escaped_quote_in_a_literal_is_refused(tmp_path: Path):
    message = render_error(tmp_path, '{{ env "A" | default "a\\"b" }}')
    assert "quote" in message


# -- errors ------------------------------------------------------------------------


def test_missing_variable_names_variable_line_and_file(tmp_path: Path):
    text = 'ui = true\n\nseal "x" {\n  tenant_id = "{{ env "AZURE_TENANT_ID" }}"\n}\n'
    message = render_error(tmp_path, text, {"OTHER": "1"}, name="prod.hcl.tpl")
    assert message.startswith('prod.hcl.tpl:4: {{ env "AZURE_TENANT_ID" }}: ')
    assert "AZURE_TENANT_ID is not set" in message
    assert "default" in message  # says how to give a default


def test_line_number_counts_lines_before_the_action(tmp_path: Path):
    text = '{{ env "A" }}\n{{ env "B" }}\n\n\n{{ env "MISSING" }}\n'
    message = render_error(tmp_path, text, {"A": "1", "B": "2"})
    assert message.startswith("test.hcl.tpl:5:")
    assert "MISSING" in message


def test_unknown_function(tmp_path: Path):
    message = render_error(tmp_path, 'a\n{{ upper "x" }}')
    assert message.startswith("test.hcl.tpl:2:")
    assert "unknown function 'upper'" in message


@pytest.mark.parametrize(
    ("action", "fragment"),
    [
        ("{{ }}", "empty action"),
        ('{{ | default "x" }}', "empty action or pipe stage"),
        ('{{ env "A" | }}', "empty action or pipe stage"),
        ("{{ env NAME }}", "unexpected 'NAME'"),
        ('{{ env "A }}', "cannot parse"),
        ("{{ env 'A' }}", "cannot parse"),
        ('{{ env "A" = 1 }}', "cannot parse"),
        ('{{ env "A" "B" }}', "env takes one variable name"),
        ("{{ env }}", "env takes one variable name"),
        ('{{ env "A" | default }}', "default takes one value"),
        ('{{ env "A" | default "x" "y" }}', "default takes one value"),
        ('{{ default "x" }}', "default takes one value"),
        ('{{ env "A" | cwd }}', "cwd takes path parts"),
    ],
)
def test_syntax_and_call_errors(tmp_path: Path, action: str, fragment: str):
    message = render_error(tmp_path, "x = 1\n" + action + "\n")
    assert message.startswith(f"test.hcl.tpl:2: {action}: ")
    assert fragment in message


def test_unclosed_action(tmp_path: Path):
    message = render_error(tmp_path, 'a = "{{ env "A" }}"\nb = "{{ env "B" \n', {"A": "1", "B": "2"})
    assert message.startswith("test.hcl.tpl:2: unclosed '{{'")


def test_stray_closing_braces_are_left_alone(tmp_path: Path):
    assert render_text(tmp_path, "a }} b") == "a }} b"


@pytest.mark.parametrize(
    "secret",
    [
        'S3cr3t"Quote',
        "S3cr3t\nNewline",
        "S3cr3t\\Backslash",
        "S3cr3t\rCarriageReturn",
        "S3cr3t\tTab",
        "S3cr3t\x00Nul",
        "S3cr3t${Interpolation}",
        "S3cr3t%{Directive}",
    ],
)
def test_unsafe_values_are_refused_without_echoing_them(tmp_path: Path, secret: str):
    message = render_error(tmp_path, 'accountKey = "{{ env "AZURE_STORAGE_KEY" }}"\n', {"AZURE_STORAGE_KEY": secret})
    assert "quote, backslash, control character" in message
    assert "AZURE_STORAGE_KEY" in message  # the action names the variable...
    assert "S3cr3t" not in message  # ...but the value is never echoed


def test_unsafe_value_through_default_is_refused(tmp_path: Path):
    message = render_error(tmp_path, '{{ env "K" | default "x" }}', {"K": 'Sec"ret'})
    assert "Sec" not in message


def test_safe_punctuation_is_allowed(tmp_path: Path):
    value = "abc+/=;:,.-_~!@#$%^&*()[]'<>? é"
    assert render_text(tmp_path, '{{ env "K" }}', {"K": value}) == value


def test_value_containing_braces_renders_verbatim(tmp_path: Path):
    assert render_text(tmp_path, 'p = "{{ env "P" }}"', {"P": "pa{{ss"}) == 'p = "pa{{ss"'


# -- listeners ---------------------------------------------------------------------


def test_listener_ports():
    config = """
listener "tcp" {
  address         = "127.0.0.1:8201"
  cluster_address = "127.0.0.1:8301"
}
listener "tcp" {
  address = "[::1]:8202"
}
listener "unix" {
  address = "/run/vault.sock"
}
listener "tcp" {
  address = "localhost"
}
"""
    assert listener_ports(config) == [8201, 8202]


def test_listener_ports_without_listener():
    assert listener_ports('storage "raft" {\n  address = "127.0.0.1:8200"\n}\n') == []


def test_listener_ports_with_nested_block():
    config = 'listener "tcp" {\n  telemetry {\n    unauthenticated_metrics_access = true\n  }\n'
    config += '  address = "127.0.0.1:8201"\n}\n'
    assert listener_ports(config) == [8201]


def test_check_listener_accepts_the_vault_port():
    check_listener('listener "tcp" {\n  address = "127.0.0.1:41234"\n}\n', handler_port=8080, vault_port=41234)


def test_check_listener_refuses_the_handlers_own_port():
    config = 'listener "tcp" {\n  address = "0.0.0.0:34567"\n}\nlistener "tcp" {\n  address = "127.0.0.1:41234"\n}\n'
    with pytest.raises(TemplateError) as caught:
        check_listener(config, handler_port=34567, vault_port=41234)
    message = str(caught.value)
    assert "port 34567" in message
    assert "FUNCTIONS_CUSTOMHANDLER_PORT" in message
    assert "VAULT_LISTEN_PORT" in message


def test_check_listener_refuses_a_config_without_the_vault_port():
    with pytest.raises(TemplateError) as caught:
        check_listener('listener "tcp" {\n  address = "127.0.0.1:9999"\n}\n', handler_port=8080, vault_port=41234)
    assert "no tcp listener on VAULT_LISTEN_PORT (41234)" in str(caught.value)


def test_check_listener_refuses_a_config_without_any_listener():
    with pytest.raises(TemplateError, match=r"VAULT_LISTEN_PORT \(41234\)"):
        check_listener('ui = true\nstorage "inmem" {}\n', handler_port=8080, vault_port=41234)


# -- the real templates ------------------------------------------------------------

PRODUCTION_ENV = {
    "VAULT_API_ADDR": "https://vaultfn.azurewebsites.net",
    "VAULT_LISTEN_PORT": "41234",
    "AZURE_TENANT_ID": "00000000-1111-2222-3333-444444444444",
    "AZURE_ACCOUNT_NAME": "vaultfnstorage",
    "AZURE_BLOB_CONTAINER": "vault",
    "FUNCTIONS_CUSTOMHANDLER_PORT": "34567",
}


def test_production_template_renders():
    config = render(PRODUCTION_TEMPLATE, PRODUCTION_ENV, CWD)
    lines = normalized_lines(config)
    assert 'api_addr = "https://vaultfn.azurewebsites.net"' in lines
    assert 'plugin_directory = "/home/site/wwwroot/plugins"' in lines
    assert 'log_level = "info"' in lines
    assert 'log_format = "json"' in lines
    assert 'address = "127.0.0.1:41234"' in lines
    assert 'tenant_id = "00000000-1111-2222-3333-444444444444"' in lines
    assert 'key_name = "vault-unseal"' in lines
    assert 'accountName = "vaultfnstorage"' in lines
    assert 'accountKey = ""' in lines
    assert 'container = "vault"' in lines
    assert "{{" not in config and "}}" not in config
    assert listener_ports(config) == [41234]
    check_listener(config, handler_port=34567, vault_port=41234)


def test_production_template_takes_optional_settings():
    env = {
        **PRODUCTION_ENV,
        "VAULT_LOG_LEVEL": "debug",
        "VAULT_AZUREKEYVAULT_KEY_NAME": "my-key",
        "AZURE_STORAGE_KEY": "c2VjcmV0S2V5+/==",
    }
    lines = normalized_lines(render(PRODUCTION_TEMPLATE, env, CWD))
    assert 'log_level = "debug"' in lines
    assert 'key_name = "my-key"' in lines
    assert 'accountKey = "c2VjcmV0S2V5+/=="' in lines


@pytest.mark.parametrize(
    "variable", ["VAULT_API_ADDR", "AZURE_TENANT_ID", "AZURE_ACCOUNT_NAME", "AZURE_BLOB_CONTAINER"]
)
def test_production_template_requires(variable: str):
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != variable}
    with pytest.raises(TemplateError) as caught:
        render(PRODUCTION_TEMPLATE, env, CWD)
    line = line_of(PRODUCTION_TEMPLATE, f'env "{variable}"')
    assert str(caught.value).startswith(f"vault.hcl.tpl:{line}: ")
    assert f"{variable} is not set" in str(caught.value)


LOCAL_ENV = {
    "VAULT_LISTEN_PORT": "41234",
    "VAULT_CLUSTER_PORT": "41235",
    "VAULTFN_DATA_DIR": "/srv/vaultfn/.data",
    "VAULTFN_SEAL_KEY_FILE": "/srv/vaultfn/.data/seal.key",
}


def test_local_template_renders():
    config = render(LOCAL_TEMPLATE, LOCAL_ENV, CWD)
    lines = normalized_lines(config)
    assert 'log_level = "info"' in lines
    assert 'api_addr = "http://127.0.0.1:8200"' in lines
    assert 'cluster_addr = "https://127.0.0.1:41235"' in lines
    assert 'path = "/srv/vaultfn/.data/raft"' in lines
    assert 'address = "127.0.0.1:41234"' in lines
    assert 'cluster_address = "127.0.0.1:41235"' in lines
    assert 'current_key = "file:///srv/vaultfn/.data/seal.key"' in lines
    assert "{{" not in config
    # cluster_address is not a listener address.
    assert listener_ports(config) == [41234]
    check_listener(config, handler_port=8200, vault_port=41234)


def test_local_template_uses_vault_api_addr():
    env = {**LOCAL_ENV, "VAULT_API_ADDR": "http://127.0.0.1:9200"}
    assert 'api_addr = "http://127.0.0.1:9200"' in normalized_lines(render(LOCAL_TEMPLATE, env, CWD))


def test_local_template_requires_cluster_port():
    env = {k: v for k, v in LOCAL_ENV.items() if k != "VAULT_CLUSTER_PORT"}
    with pytest.raises(TemplateError, match="VAULT_CLUSTER_PORT is not set"):
        render(LOCAL_TEMPLATE, env, CWD)


def test_seed_style_template_on_the_handler_port_fails_check_listener(tmp_path: Path):
    # The seed launcher's template had Vault itself listen on the Functions host's port.
    seed = PRODUCTION_TEMPLATE.read_text(encoding="utf-8").replace(
        '"127.0.0.1:{{ env "VAULT_LISTEN_PORT" }}"', '"0.0.0.0:{{ env "FUNCTIONS_CUSTOMHANDLER_PORT" }}"'
    )
    assert "FUNCTIONS_CUSTOMHANDLER_PORT" in seed
    template = tmp_path / "seed.hcl.tpl"
    template.write_text(seed, encoding="utf-8")
    config = render(template, PRODUCTION_ENV, CWD)
    assert listener_ports(config) == [34567]
    with pytest.raises(TemplateError, match="port 34567"):
        check_listener(config, handler_port=34567, vault_port=41234)


# -- private files -----------------------------------------------------------------


def test_write_private_and_private_directory():
    directory = private_directory()
    try:
        assert directory.is_dir()
        assert directory.name.startswith("vaultfn-")
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        path = write_private('ui = true\naccountKey = "k"\n', directory)
        assert path == directory / "vault.hcl"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text(encoding="utf-8") == 'ui = true\naccountKey = "k"\n'
        # Rewriting truncates.
        write_private("short\n", directory)
        assert path.read_text(encoding="utf-8") == "short\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        shutil.rmtree(directory)


def test_private_directory_is_fresh_each_time():
    first, second = private_directory(), private_directory()
    try:
        assert first != second
    finally:
        shutil.rmtree(first)
        shutil.rmtree(second)
