"""``casparian plugin ...``: commands about one plugin file (trust: keygen, sign, verify;
contracts: schema)."""

from __future__ import annotations

import click

from .schema import schema
from .trust import keygen, sign, verify

__all__ = ["plugin"]


@click.group(short_help="Sign, verify and inspect plugins.")
def plugin() -> None:
    """Sign plugins and check them against the home's trust policy."""


for command in (keygen, sign, verify, schema):
    plugin.add_command(command)
