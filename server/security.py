"""A server's edge security, built from its config: TLS (tls.py), the token store (tokens.py),
the rate limiter (rate_limit.py) and the call guard that applies them (auth.py).

`load_security` reads and checks every file before any model loads, so a wrong path or a bad
token file fails the start at once with a ConfigError naming the field. README "Security".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from detserve.server.auth import CallGuard
from detserve.server.catalog import Catalog
from detserve.server.config import ConfigError, ServerConfig
from detserve.server.metrics import ServerMetrics
from detserve.server.rate_limit import RateLimiter
from detserve.server.tls import server_credentials
from detserve.server.tokens import EventSink, TokenFormatError, TokenStore

TOKENS_ENV = "DETSERVE_AUTH_TOKENS"


@dataclass
class EdgeSecurity:
    credentials: grpc.ServerCredentials | None = None  # None: plaintext
    tokens: TokenStore | None = None  # None: no auth
    limiter: RateLimiter | None = None  # None: no rate limit

    @property
    def tls(self) -> bool:
        return self.credentials is not None

    def summary(self, config: ServerConfig) -> dict[str, Any]:
        """What the `listening` log line says is exposed, token fingerprints at most."""
        mutual = config.tls_client_ca_file is not None
        tls = "off" if self.credentials is None else "mutual" if mutual else "on"
        return {
            "tls": tls,
            "auth": "off" if self.tokens is None else _count(len(self.tokens.fingerprints),
                                                              f"from {self.tokens.source}"),
            "rate_limit_rps": self.limiter.rate if self.limiter is not None else None,
            "reflection": config.reflection,
        }

    def interceptors(self, models: Catalog, metrics: ServerMetrics,
                     logger: Any | None) -> list[grpc.aio.ServerInterceptor]:
        """The call guard, or nothing at all when neither auth nor a rate limit is on."""
        if self.tokens is None and self.limiter is None:
            return []
        return [CallGuard(self.tokens, self.limiter, models, metrics, logger)]

    def bind(self, server: grpc.aio.Server, address: str) -> int:
        """Add the one gRPC port: TLS when configured (no plaintext port then), else plaintext."""
        if self.credentials is not None:
            port: int = server.add_secure_port(address, self.credentials)
        else:
            port = server.add_insecure_port(address)
        return port


def _count(n: int, where: str) -> str:
    return f"{n} token{'' if n == 1 else 's'} {where}"


def token_events(logger: Any) -> EventSink:
    def emit(name: str, **fields: Any) -> None:
        level = (logger.error if name.endswith("_failed") else
                 logger.warning if name.endswith("_by_others") else logger.info)
        level(name, **fields)

    return emit


def load_tokens(config: ServerConfig, events: EventSink) -> TokenStore | None:
    path, text = config.auth_token_file, config.auth_tokens
    if path is not None and text is not None:
        raise ConfigError(f"config fields 'auth_token_file' and 'auth_tokens' ({TOKENS_ENV}) "
                          f"are both set; use one (only the file can be rotated)")
    try:
        if path is not None:
            store = TokenStore.from_file(path, events)
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:  # secrets others on the host can read
                events("auth_token_file_readable_by_others", source=str(path), mode=oct(mode),
                       fix=f"chmod 600 {path}")
            return store
        if text is not None:
            store = TokenStore.from_text(text, f"auth_tokens ({TOKENS_ENV})", events)
            if not store.fingerprints:
                raise ConfigError(f"config field 'auth_tokens' ({TOKENS_ENV}) holds no token")
            return store
    except OSError as exc:
        raise ConfigError(f"config field 'auth_token_file': cannot read {str(path)!r}: "
                          f"{exc.strerror or exc}") from exc
    except TokenFormatError as exc:
        field = "auth_token_file" if path is not None else "auth_tokens"
        raise ConfigError(f"config field '{field}': {exc}") from exc
    return None


def load_limiter(config: ServerConfig) -> RateLimiter | None:
    if not config.rate_limit_rps:
        if config.rate_limit_burst is not None:
            raise ConfigError("config field 'rate_limit_burst' is set but 'rate_limit_rps' is 0 "
                              "(rate limits off); set rate_limit_rps too")
        return None
    return RateLimiter(config.rate_limit_rps, config.rate_limit_burst)


def load_security(config: ServerConfig, logger: Any) -> EdgeSecurity:
    """ConfigError for any file or field that cannot be used."""
    return EdgeSecurity(server_credentials(config), load_tokens(config, token_events(logger)),
                        load_limiter(config))
