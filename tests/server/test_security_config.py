"""Security config: fields from file, env and flags; token lists; mistakes named clearly."""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from detserve.server.cli import build_parser
from detserve.server.cli_security import security_overrides
from detserve.server.config import ConfigError, ServerConfig, load_config
from detserve.server.logs import configure_logging, get_logger
from detserve.server.security import load_security, token_events
from detserve.server.tokens import (
    CHECK_INTERVAL_S,
    TokenFormatError,
    TokenStore,
    fingerprint,
    parse_tokens,
)

TOKEN = "tok-" + "a" * 28
OTHER = "tok-" + "b" * 28


def test_fields_come_from_file_env_and_flags(tmp_path: Path, tiny_package: Path) -> None:
    config_file = tmp_path / "server.yaml"
    config_file.write_text(f"""
tls_cert_file: /etc/detserve/server.pem
tls_key_file: /etc/detserve/server.key
reflection: false
rate_limit_rps: 50
models: [{{package: {tiny_package}}}]
""")
    env = {"DETSERVE_AUTH_TOKENS": f"{TOKEN};{OTHER}", "DETSERVE_RATE_LIMIT_BURST": "80"}
    args = build_parser().parse_args(["--tls-client-ca-file", "clients.pem",
                                      "--rate-limit-rps", "25"])
    config = load_config(config_file, env, security_overrides(args))
    assert config.tls_cert_file == Path("/etc/detserve/server.pem")
    assert config.tls_client_ca_file == Path("clients.pem")
    assert (config.reflection, config.rate_limit_rps, config.rate_limit_burst) == (False, 25.0,
                                                                                   80)
    assert config.auth_tokens == f"{TOKEN};{OTHER}"
    assert TOKEN not in repr(config)  # a logged or printed config shows no token
    defaults = load_config(None, {})
    assert (defaults.tls_cert_file, defaults.auth_token_file, defaults.auth_tokens,
            defaults.reflection, defaults.rate_limit_rps) == (None, None, None, True, 0.0)


def test_token_lines_parse_to_grants_with_scopes() -> None:
    entries = parse_tokens(f"# fleet\n\n{TOKEN}\n  {OTHER} shapes,blocks@64  \n", "tokens")
    grants = [e.grant for e in entries]
    assert [g.fingerprint for g in grants] == [fingerprint(TOKEN), fingerprint(OTHER)]
    assert grants[0].models is None and grants[0].allows("any@1", "any")
    assert grants[1].models == frozenset({"shapes", "blocks@64"})
    assert grants[1].allows("shapes@640", "shapes") and grants[1].allows("blocks@64", "blocks")
    assert not grants[1].allows("blocks@b", "blocks")
    assert len(parse_tokens(f"{TOKEN};{OTHER} shapes", "env", separators="\n;")) == 2


@pytest.mark.parametrize(("text", "message"), [
    ("short", "entry 1: the token has 5 characters, fewer than 16"),
    (f"{TOKEN} a b", "entry 1: expected 'TOKEN' or 'TOKEN MODEL[,MODEL...]', got 3"),
    (f"{TOKEN}\n{TOKEN}", "entry 2 repeats the token of entry 1"),
    (f"{TOKEN} ,", "entry 1: the model list is empty"),
])
def test_bad_token_lists_name_the_entry_never_the_token(text: str, message: str) -> None:
    with pytest.raises(TokenFormatError) as info:
        parse_tokens(text, "tokens")
    assert message in str(info.value)
    assert TOKEN not in str(info.value) and "short" not in str(info.value).split(":")[0]


def test_security_mistakes_are_config_errors(tmp_path: Path) -> None:
    base = ServerConfig()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} x y\n")
    cases = [
        (replace(base, auth_tokens=TOKEN, auth_token_file=tokens), "are both set; use one"),
        (replace(base, auth_token_file=tmp_path / "missing"), "'auth_token_file': cannot read"),
        (replace(base, auth_token_file=tokens), "tokens entry 1: expected 'TOKEN' or"),
        (replace(base, auth_tokens=" ; "), "holds no token"),
        (replace(base, rate_limit_burst=5), "'rate_limit_burst' is set but 'rate_limit_rps' is 0"),
    ]
    for config, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            load_security(config, get_logger())
    with pytest.raises(ConfigError, match="rate_limit_rps"):
        load_config(None, {"DETSERVE_RATE_LIMIT_RPS": "-1"})


def test_the_file_is_looked_at_once_per_interval_at_most(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN}\n")
    now = [0.0]
    store = TokenStore.from_file(path, clock=lambda: now[0])
    path.write_text(f"{OTHER}\n")
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))
    now[0] = CHECK_INTERVAL_S / 2
    assert store.authenticate(OTHER) is None  # too soon to look again
    now[0] = CHECK_INTERVAL_S
    assert store.authenticate(OTHER) is not None  # looked, saw the change, re-read
    assert store.authenticate(TOKEN) is None


def test_token_events_log_fingerprints_never_tokens(tmp_path: Path) -> None:
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN}\n{OTHER} blocks\n")
    store = TokenStore.from_file(path, token_events(get_logger()))
    path.write_text(f"{TOKEN} one two\n")  # broken: kept, and an error logged
    os.utime(path, ns=(1, 1))
    assert store.check_now() is False
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines[0]["event"] == "auth_tokens_loaded"
    assert (lines[0]["tokens"], lines[0]["scoped"]) == (2, 1)
    assert lines[0]["fingerprints"] == [fingerprint(TOKEN), fingerprint(OTHER)]
    assert (lines[1]["event"], lines[1]["level"], lines[1]["kept"]) == (
        "auth_tokens_reload_failed", "error", 2)
    assert TOKEN not in buf.getvalue() and OTHER not in buf.getvalue()


def test_a_token_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN}\n")
    path.chmod(0o600)
    load_security(replace(ServerConfig(), auth_token_file=path), get_logger())
    assert "readable_by_others" not in buf.getvalue()
    path.chmod(0o644)
    load_security(replace(ServerConfig(), auth_token_file=path), get_logger())
    warning = json.loads(buf.getvalue().splitlines()[-1])
    assert (warning["event"], warning["level"], warning["mode"]) == (
        "auth_token_file_readable_by_others", "warning", "0o644")
    assert warning["fix"] == f"chmod 600 {path}"
