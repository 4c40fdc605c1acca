"""The `labelbeam` console script: argparse subcommands.

Exit codes (pipelines/errors.py): 0 done (an up-to-date build included), 1 the job failed
(traceback kept), 2 usage or input error (one line, no traceback), 3 a publish gate failed
(nothing published), 130 interrupted.
"""
from __future__ import annotations

import argparse
from typing import NoReturn

# before anything imports apache_beam (hide_apitools_warning)
from labelbeam.pipelines.errors import exit_process, guarded

# isort: split
from labelbeam.pipelines import catalog, generate, inspect, pull, report, webhook
from labelbeam.pipelines.errors import EXIT_CODES_HELP
from labelbeam.pipelines.options import BUILD_EPILOG, add_build_arguments, add_ingest_arguments, add_rebuild_arguments


# The commands that run a pipeline are imported on use: they import apache_beam (about 1 s here), which
# `labelbeam --help`, `versions`, `show` and the other inspection commands should not pay for.
def run_build(args: argparse.Namespace, beam_args: list[str]) -> int:
    from labelbeam.pipelines import build

    return build.run(args, beam_args)


def run_ingest(args: argparse.Namespace, beam_args: list[str]) -> int:
    from labelbeam.pipelines import ingest

    return ingest.run(args, beam_args)


def run_rebuild(args: argparse.Namespace, beam_args: list[str]) -> int:
    from labelbeam.pipelines import rebuild

    return rebuild.run(args, beam_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labelbeam", description="Raw annotation events -> versioned "
                                     "consensus datasets, on Apache Beam.")
    commands = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")

    build_cmd = commands.add_parser("build", help="build the next dataset version (no args: embedded sample)",
                                    description="Build the next version of a consensus dataset.",
                                    epilog=BUILD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_build_arguments(build_cmd)
    build_cmd.set_defaults(command=run_build, passes_beam_args=True)

    generate_cmd = commands.add_parser("generate", help="write synthetic events with known truth")
    generate.build_parser(generate_cmd)
    generate_cmd.set_defaults(command=lambda args, _: generate.run(args))

    versions_cmd = commands.add_parser("versions", help="list published versions with counts (* marks _latest)")
    catalog.add_catalog_arguments(versions_cmd, with_version=False)
    versions_cmd.set_defaults(command=catalog.run_versions)

    show_cmd = commands.add_parser("show", help="summarize one version's manifest")
    catalog.add_catalog_arguments(show_cmd, with_version=True)
    show_cmd.set_defaults(command=catalog.run_show)

    diff_cmd = commands.add_parser("diff", help="compare two versions: items, labels, confidence, counts")
    inspect.add_diff_arguments(diff_cmd)
    diff_cmd.set_defaults(command=inspect.run_diff)

    verify_cmd = commands.add_parser("verify", help="check sha256, bytes and rows of a version's files (exit 4: "
                                     "a mismatch)", epilog=EXIT_CODES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    inspect.add_verify_arguments(verify_cmd)
    verify_cmd.set_defaults(command=inspect.run_verify)

    rollback_cmd = commands.add_parser("rollback", help="point _latest back at an older complete version")
    inspect.add_move_arguments(rollback_cmd)
    rollback_cmd.set_defaults(command=inspect.run_rollback)

    promote_cmd = commands.add_parser("promote", help="point _latest at any complete version")
    inspect.add_move_arguments(promote_cmd)
    promote_cmd.set_defaults(command=inspect.run_promote)

    gc_cmd = commands.add_parser("gc", help="remove files under versions/ that no manifest references")
    inspect.add_gc_arguments(gc_cmd)
    gc_cmd.set_defaults(command=inspect.run_gc)

    ingest_cmd = commands.add_parser("ingest", help="stream events into the curated event log (a pattern or "
                                     "directory runs bounded and ends by itself)",
                                     epilog="Other flags (--runner, ...) pass through to Beam.")
    add_ingest_arguments(ingest_cmd)
    ingest_cmd.set_defaults(command=run_ingest, passes_beam_args=True)

    report_cmd = commands.add_parser("report", help="write one HTML page on a version's label quality and labelers")
    report.add_report_arguments(report_cmd)
    report_cmd.set_defaults(command=lambda args, _: report.run(args, []))

    pull_cmd = commands.add_parser("pull", help="write a labeling tool's annotations as event files (label-studio, "
                                   "labelbox, sagemaker-gt); again: what changed")
    pull.add_pull_arguments(pull_cmd)
    pull_cmd.set_defaults(command=lambda args, _: pull.run(args))

    webhook_cmd = commands.add_parser("webhook", help="receive a labeling tool's webhooks as event files "
                                      "(label-studio), until Ctrl-C")
    webhook.add_webhook_arguments(webhook_cmd)
    webhook_cmd.set_defaults(command=lambda args, _: webhook.run(args))

    rebuild_cmd = commands.add_parser("rebuild", help="recompute a version from its manifest and prove its files "
                                      "byte-identical (exit 4 if not)",
                                      epilog="Other flags (--runner, ...) pass through to Beam.")
    add_rebuild_arguments(rebuild_cmd)
    rebuild_cmd.set_defaults(command=run_rebuild, passes_beam_args=True)
    return parser


def console_main() -> NoReturn:
    """The `labelbeam` command (setup.py's console script): main(), then the process ends with its code."""
    exit_process(main())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_beam_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return guarded(lambda: args.command(args, extra))


if __name__ == "__main__":
    exit_process(main())
