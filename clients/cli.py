"""The ``legato`` command line: argparse subcommands.

Only subcommands that work are registered; each lives in its own module and
exposes ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import sys

from legato import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="legato",
        description="legato: streaming, real-time audio and speech runtime.",
    )
    parser.add_argument("--version", action="version", version=f"legato {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from legato.clients import info_cmd, mic_cmd, say_cmd, serve_cmd, transcribe_cmd

    serve_cmd.register(sub)
    transcribe_cmd.register(sub)
    mic_cmd.register(sub)
    say_cmd.register(sub)
    info_cmd.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
