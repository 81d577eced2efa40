"""Mint a token with the server's key, for systems that keep their own login and only need
this server to accept their users:

    python -m mangu.token --sub alice --role admin --ttl 3600 [--env-file PATH]

The token goes to standard output, alone on its line. It is signed exactly as the tokens of
``POST /api/auth/login`` (algorithm, ``iss``, ``aud`` from the settings).
"""

from __future__ import annotations

import argparse
import re
import sys

from mangu.auth import ROLES, AuthError, TokenAuthority
from mangu.cli import EX_DATAERR, add_env_file_option, fail, load_settings_or_report
from mangu.config import EX_CONFIG

PROGRAM = "mangu.token"
MAX_TTL = 30 * 86_400
# What the realtime side accepts as a user id (it names rooms' senders and conversations).
SUBJECT = re.compile(r"[A-Za-z0-9_.@\-]{1,64}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {PROGRAM}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sub", required=True, help="the user id (the token's subject)")
    parser.add_argument("--role", action="append", choices=ROLES, dest="roles",
                        help="a role of the user; repeat for several (default: reader)")
    parser.add_argument("--ttl", type=int, metavar="SECONDS", help=f"lifetime, 1 to {MAX_TTL} (default: JWT_TTL)")
    add_env_file_option(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not SUBJECT.fullmatch(args.sub):
        return fail(PROGRAM, f"--sub {args.sub[:80]!r}: expected 1-64 characters [A-Za-z0-9_.@-]", EX_DATAERR)
    if args.ttl is not None and not 1 <= args.ttl <= MAX_TTL:
        return fail(PROGRAM, f"--ttl {args.ttl}: expected 1 to {MAX_TTL} seconds", EX_DATAERR)
    settings = load_settings_or_report(PROGRAM, args.env_file)
    if settings is None:
        return EX_CONFIG
    try:
        token, _ = TokenAuthority(settings).issue(args.sub, args.roles or ["reader"], ttl=args.ttl)
    except AuthError as exc:
        return fail(PROGRAM, exc.message, EX_CONFIG)
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
