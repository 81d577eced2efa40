"""What the operator commands (``python -m mangu.users``, ``python -m mangu.token``) share:
the server's settings, from the same environment and ``--env-file``, checked the same way."""

from __future__ import annotations

import argparse
import os
import sys

from mangu.config import ConfigError, Settings, load_settings
from mangu.log import configure_logging

EX_DATAERR = os.EX_DATAERR  # 65: the input given is invalid
EX_NOUSER = os.EX_NOUSER  # 67: no such user
EX_UNAVAILABLE = os.EX_UNAVAILABLE  # 69: a service needed (the database) is down
EX_CANTCREAT = os.EX_CANTCREAT  # 73: it cannot be created (the name is taken)


def add_env_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", metavar="PATH", help="read settings from this env file (also MANGU_ENV_FILE)")


def load_settings_or_report(program: str, env_file: str | None) -> Settings | None:
    """The settings, or None after printing every problem (the caller exits 78); warnings
    of the libraries used go to standard error, leaving standard output to the result."""
    try:
        settings = load_settings(env_file=env_file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{program}: configuration error: {problem}", file=sys.stderr)
        return None
    configure_logging("WARNING", "pretty", stream=sys.stderr)
    return settings


def fail(program: str, message: str, status: int) -> int:
    print(f"{program}: {message}", file=sys.stderr)
    return status
