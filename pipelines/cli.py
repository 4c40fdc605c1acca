"""The `labelbeam` console script: argparse subcommands, lazy imports so --help is fast.

Exit codes: 0 done (an up-to-date build included), 1 the job failed (traceback kept), 2 usage or
input error (one line, no traceback), 3 a publish gate failed (nothing published).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from labelbeam.pipelines.options import UserError

EXIT_USAGE = 2


def guarded(command: Callable[[], int]) -> int:
    """Run a command; user errors become one line on stderr and exit code 2."""
    try:
        return command()
    except UserError as err:
        print(f"labelbeam: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    from labelbeam.pipelines import build, catalog, generate

    parser = argparse.ArgumentParser(prog="labelbeam", description="Raw annotation events -> versioned "
                                     "consensus datasets, on Apache Beam.")
    commands = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")

    build_cmd = commands.add_parser("build", help="build the next dataset version (no args: embedded sample)",
                                    epilog="Other flags (--runner, ...) pass through to Beam.")
    build.build_parser(build_cmd)
    build_cmd.set_defaults(command=build.run, passes_beam_args=True)

    generate_cmd = commands.add_parser("generate", help="write synthetic events with known truth")
    generate.build_parser(generate_cmd)
    generate_cmd.set_defaults(command=lambda args, _: generate.run(args))

    versions_cmd = commands.add_parser("versions", help="list published versions with counts")
    catalog.add_catalog_arguments(versions_cmd, with_version=False)
    versions_cmd.set_defaults(command=catalog.run_versions)

    show_cmd = commands.add_parser("show", help="summarize one version's manifest")
    catalog.add_catalog_arguments(show_cmd, with_version=True)
    show_cmd.set_defaults(command=catalog.run_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_beam_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return guarded(lambda: args.command(args, extra))


if __name__ == "__main__":
    sys.exit(main())
