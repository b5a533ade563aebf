"""`detserve-server`'s TLS, token and rate-limit flags (README "Security").

There is no flag for the tokens themselves: a flag's value shows in `ps` to every user of the
host. Give a file (--auth-token-file, rotated by rewriting it) or $DETSERVE_AUTH_TOKENS.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_security_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security (default: plaintext, no auth, no rate limit)")
    g.add_argument("--tls-cert-file", metavar="PEM",
                   help="server certificate chain: serve TLS only (no plaintext port)")
    g.add_argument("--tls-key-file", metavar="PEM", help="the certificate's private key")
    g.add_argument("--tls-client-ca-file", metavar="PEM",
                   help="mutual TLS: require client certificates signed by this CA")
    g.add_argument("--auth-token-file", metavar="PATH",
                   help="require bearer tokens from this file (one per line, optionally "
                        "'TOKEN model,model'); re-read when it changes; or $DETSERVE_AUTH_TOKENS")
    g.add_argument("--rate-limit-rps", type=float, metavar="RPS",
                   help="requests/s per token (per client address without auth); 0 = off")
    g.add_argument("--rate-limit-burst", type=int, metavar="N",
                   help="requests a caller may send at once above the rate (default: one "
                        "second's worth)")
    g.add_argument("--no-reflection", action="store_true", help="turn gRPC reflection off")


def security_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the flags; None for a flag not given (the file or env decides)."""
    return {
        "tls_cert_file": args.tls_cert_file,
        "tls_key_file": args.tls_key_file,
        "tls_client_ca_file": args.tls_client_ca_file,
        "auth_token_file": args.auth_token_file,
        "rate_limit_rps": args.rate_limit_rps,
        "rate_limit_burst": args.rate_limit_burst,
        "reflection": False if args.no_reflection else None,
    }
