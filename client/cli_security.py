"""TLS and token flags, shared by `detserve-client` and `detserve-bench run`.

The token comes from --token-file, else --token, else $DETSERVE_TOKEN. A flag's value shows in
`ps` to every user of the host; the variable or a file does not.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from detserve.client.cli_output import UsageError
from detserve.client.security import ChannelSecurity, ChannelSecurityError

TOKEN_ENV = "DETSERVE_TOKEN"


class SecurityFlagError(UsageError, ValueError):
    """A TLS or token flag that cannot be used: a usage error to either CLI."""


def add_security_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TLS and tokens (a server started with TLS or auth)")
    g.add_argument("--tls", action="store_true",
                   help="connect with TLS, trusting the system's CAs (implied by the flags below)")
    g.add_argument("--ca-file", default=None, metavar="PEM",
                   help="CA certificate(s) the server's certificate must chain to")
    g.add_argument("--cert-file", default=None, metavar="PEM",
                   help="client certificate, for a server that requires mutual TLS")
    g.add_argument("--key-file", default=None, metavar="PEM", help="the client certificate's key")
    g.add_argument("--server-name", default=None, metavar="NAME",
                   help="name to expect on the server's certificate (default: --target's host)")
    g.add_argument("--token", default=None,
                   help=f"bearer token (default: ${TOKEN_ENV}); visible in ps, prefer the "
                        f"variable or --token-file on a shared host")
    g.add_argument("--token-file", default=None, metavar="PATH",
                   help="read the bearer token from this file (its first line)")


def _token(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    if args.token_file is not None:
        try:
            lines = Path(args.token_file).expanduser().read_text().split()
        except OSError as exc:
            raise SecurityFlagError(f"--token-file {args.token_file!r}: cannot read it: "
                                    f"{exc.strerror or exc}") from exc
        if not lines:
            raise SecurityFlagError(f"--token-file {args.token_file!r} is empty")
        return lines[0]
    token = args.token if args.token is not None else env.get(TOKEN_ENV) or None
    return token.strip() if token is not None else None


def security_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> ChannelSecurity:
    """The flags as a ChannelSecurity, TLS files read once to check them."""
    try:
        security = ChannelSecurity(tls=args.tls, ca_file=args.ca_file, cert_file=args.cert_file,
                                   key_file=args.key_file, server_name=args.server_name,
                                   token=_token(args, env))
        security.check()
    except ChannelSecurityError as exc:
        raise SecurityFlagError(str(exc)) from exc
    return security
