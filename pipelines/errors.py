"""How labelbeam's commands fail: exit codes for schedulers, user errors and Ctrl-C as one line.

Importing this module also drops one line of import-time noise from apache_beam (see
`hide_apitools_warning`), so entry points import it before apache_beam.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from labelbeam.pipelines import logs

EXIT_OK = 0
EXIT_FAILED = 1          # the job failed: a bug or the runner; the traceback is kept
EXIT_USAGE = 2           # bad arguments or inputs: one line, no traceback
EXIT_PUBLISH_GATE = 3    # a publish gate refused the version: nothing published
EXIT_VERIFY_FAILED = 4   # `verify` found a file that does not match its manifest
EXIT_INTERRUPTED = 130   # Ctrl-C (128 + SIGINT)
EXIT_BROKEN_PIPE = 141   # the reader of stdout went away (`| head`): 128 + SIGPIPE, as shell tools exit

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK:<4} done (an up-to-date build included)
  {EXIT_FAILED:<4} job failed (traceback kept)
  {EXIT_USAGE:<4} usage or input error (one line, no traceback)
  {EXIT_PUBLISH_GATE:<4} publish gate failed (nothing published)
  {EXIT_VERIFY_FAILED:<4} verify found files that do not match their manifest
  {EXIT_INTERRUPTED:<4} interrupted (Ctrl-C)
  {EXIT_BROKEN_PIPE:<4} stdout closed by its reader (e.g. piped into head); the command itself ran"""


class UserError(Exception):
    """Bad arguments or inputs: reported as one line, exit code 2, no traceback."""


class _ApitoolsNotFound(logging.Filter):
    """Drops apache_beam's "apitools not found, and bigquery client libraries are not available ..." line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


_APITOOLS_FILTER = _ApitoolsNotFound()


def hide_apitools_warning() -> None:
    """Silence the one warning apache_beam logs while it loads without the gcp extra (apitools).

    apache_beam.io.gcp.internal.clients.bigquery logs it with `logging.warning`, on the root logger, so
    the filter sits there and must be in place before apache_beam is imported. Local builds never use
    BigQuery; every other record, warnings included, passes. Idempotent.
    """
    logging.getLogger().addFilter(_APITOOLS_FILTER)


hide_apitools_warning()  # at import: build.py imports this module before apache_beam for that reason


def guarded(command: Callable[[], int]) -> int:
    """Run a command; user errors become one line on stderr and exit code 2, Ctrl-C one line and 130.

    Beam logs a KeyboardInterrupt that hits a DoFn with its traceback and re-raises it as another exception
    type, so a SIGINT is recorded when it arrives, logging stops, and any exception after it counts as the
    interrupt. Bugs keep their traceback.
    """
    interrupted = threading.Event()

    def on_sigint(signum, frame):
        interrupted.set()
        logging.disable(logging.CRITICAL)  # the user asked to stop: no runner tracebacks on the way out
        raise KeyboardInterrupt

    # Only where Python's own handler is in place: a SIGINT the caller ignores (nohup, cron) stays ignored.
    watch = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if watch:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        return command()
    except BrokenPipeError:
        # Python's recipe: point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        pass
    except UserError as err:
        if not interrupted.is_set():
            logs.error(f"labelbeam: error: {err}")
            return EXIT_USAGE
    except Exception:
        if not interrupted.is_set():
            raise
    finally:
        if watch:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if interrupted.is_set():
            logging.disable(logging.NOTSET)
    logs.error("labelbeam: interrupted (Ctrl-C)", logging.WARNING)
    return EXIT_INTERRUPTED


def exit_process(code: int) -> NoReturn:
    """End the process with `code`. After Ctrl-C, at once (streams flushed, no interpreter shutdown): the
    interrupted runner's threads may still be in a bundle, and the exit must not wait for them. Once in
    about thirty CI runs the shutdown ended the process by SIGINT (-2) after the one line had been printed
    and 130 returned; skipping it makes 130 the exit code, always."""
    if code == EXIT_INTERRUPTED:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):   # closed by its reader: nothing more to say
                pass
        os._exit(code)
    sys.exit(code)
