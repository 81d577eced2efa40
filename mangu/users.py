"""Operator command for user accounts, on the server's database and settings:

    python -m mangu.users [--env-file PATH] create USERNAME [--role ROLE ...]
    python -m mangu.users [--env-file PATH] passwd USERNAME
    python -m mangu.users [--env-file PATH] delete USERNAME
    python -m mangu.users [--env-file PATH] list

Passwords are asked for twice on a terminal, or read from the first line of standard input
when it is not one (``echo "$PW" | python -m mangu.users create alice``); never from the
command line, where every user of the machine could read them in the process list. With
the embedded development database, the command uses the one a running server keeps in
``DATA_DIR``, or starts it itself when no server runs.

Exit status: 0 done, 2 malformed command line, 65 invalid input, 67 no such user, 69 database
unavailable, 73 username taken, 78 configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

from mangu import __version__
from mangu.cli import (
    EX_CANTCREAT, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE, add_env_file_option, fail, load_settings_or_report,
)
from mangu.config import EX_CONFIG, Settings
from mangu.db import Database, DatabaseUnavailable
from mangu.embedded_mongo import EmbeddedMongo, EmbeddedMongoError, running_url
from mangu.metrics import Metrics
from mangu.store.errors import Conflict, NotFound, ValidationError
from mangu.store.users import ROLES, UserStore

PROGRAM = "mangu.users"


class _Mismatch(Exception):
    """The two passwords typed differ."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {PROGRAM}", description="Manage user accounts.")
    add_env_file_option(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create an account (password from the prompt or stdin)")
    create.add_argument("username")
    create.add_argument("--role", action="append", choices=ROLES, dest="roles",
                        help="a role; repeat for several (default: reader)")
    commands.add_parser("passwd", help="set an account's password").add_argument("username")
    commands.add_parser("delete", help="delete an account").add_argument("username")
    commands.add_parser("list", help="list the accounts: username, roles, created, id")
    return parser.parse_args(argv)


def read_password(stdin: TextIO) -> str:
    """From the terminal (asked twice), else the first line of standard input."""
    if stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("password again: ") != first:
            raise _Mismatch()
        return first
    return stdin.readline().removesuffix("\n").removesuffix("\r")


@asynccontextmanager
async def user_store(settings: Settings) -> AsyncIterator[UserStore]:
    """The accounts of the server's database, for the length of one command."""
    db = Database(settings, Metrics(version=__version__))
    users = UserStore(db)
    embedded = None
    url: str | None = settings.mongodb_url
    if settings.embedded_mongodb:
        directory = Path(settings.data_dir) / "mongo"
        url = running_url(directory)
        if url is None:
            embedded = EmbeddedMongo(directory)
            url = await embedded.start()
    await db.start(url)
    try:
        yield users
    finally:
        await db.close()
        if embedded is not None:
            await embedded.stop()


def _row(user: dict[str, Any]) -> str:
    return f"{user['username']}\t{','.join(user['roles'])}\t{user['created_at']}\t{user['id']}"


async def run(args: argparse.Namespace, settings: Settings) -> int:
    password = read_password(sys.stdin) if args.command in ("create", "passwd") else ""
    async with user_store(settings) as users:
        if args.command == "create":
            print(_row(await users.create(args.username, password, args.roles)))
        elif args.command == "passwd":
            user = await users.get_by_username(args.username)
            await users.set_password(user["id"], password)
            print(f"password of {user['username']} changed")
        elif args.command == "delete":
            user = await users.get_by_username(args.username)
            await users.delete(user["id"])
            print(f"{user['username']} deleted")
        else:
            cursor = None
            while True:
                page = await users.list(cursor=cursor, limit=100)
                for user in page.items:
                    print(_row(user))
                cursor = page.next_cursor
                if cursor is None:
                    break
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings_or_report(PROGRAM, args.env_file)
    if settings is None:
        return EX_CONFIG
    try:
        return asyncio.run(run(args, settings))
    except _Mismatch:
        return fail(PROGRAM, "the passwords do not match", EX_DATAERR)
    except ValidationError as exc:
        return fail(PROGRAM, f"invalid {exc}", EX_DATAERR)
    except NotFound:
        return fail(PROGRAM, f"no such user: {args.username}", EX_NOUSER)
    except Conflict as exc:
        return fail(PROGRAM, str(exc), EX_CANTCREAT)
    except (DatabaseUnavailable, EmbeddedMongoError) as exc:
        return fail(PROGRAM, f"database unavailable: {exc}", EX_UNAVAILABLE)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
