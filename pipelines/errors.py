"""How labelbeam's commands fail: exit codes for schedulers, and user errors as one line."""
from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILED = 1          # the job failed: a bug or the runner; the traceback is kept
EXIT_USAGE = 2           # bad arguments or inputs: one line, no traceback
EXIT_PUBLISH_GATE = 3    # a publish gate refused the version: nothing published
EXIT_INTERRUPTED = 130   # Ctrl-C (128 + SIGINT)


class UserError(Exception):
    """Bad arguments or inputs: reported as one line, exit code 2, no traceback."""


def guarded(command: Callable[[], int]) -> int:
    """Run a command; user errors become one line on stderr and exit code 2."""
    try:
        return command()
    except UserError as err:
        print(f"labelbeam: error: {err}", file=sys.stderr)
        return EXIT_USAGE
