"""`--log-format json`: a run's log records as one JSON object per line on stderr, for log collectors.

Every record (labelbeam's and Beam's, at `--log-level` and above) becomes
{"time", "level", "logger", "message", ...}; a run's outcome is one more record, event "build" or
"ingest", carrying its structured fields (dataset, version, counts, stage metrics, dead letters by
reason). Those fields are counts and paths: no annotator id or event content is ever put in them.
The human summary still goes to stdout. `--log-format text` (the default) leaves logging as Beam sets it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

LOG_FORMATS = ("text", "json")
LOGGER = logging.getLogger("labelbeam")
_FIELDS = "labelbeam_fields"  # the LogRecord attribute that carries a record's structured fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        entry.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="json: log records and the run's outcome as JSON lines on stderr (default: text)")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="WARNING",
                        help="the least severe log record shown (default: WARNING; the outcome record is always "
                             "shown with --log-format json)")


def configure(args: argparse.Namespace) -> None:
    """Install the JSON handler on the root logger when asked; labelbeam's own records pass at INFO."""
    if getattr(args, "log_format", "text") != "json":
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(args.log_level)
    LOGGER.setLevel(min(logging.INFO, logging.getLevelName(args.log_level)))


def json_enabled() -> bool:
    return any(isinstance(handler.formatter, JsonFormatter) for handler in logging.getLogger().handlers)


def outcome(event: str, message: str, fields: Mapping[str, Any]) -> None:
    """The run's outcome as one structured record (only with --log-format json: text runs print a summary)."""
    if json_enabled():
        LOGGER.info(message, extra={_FIELDS: {"event": event, **fields}})


def error(message: str, level: int = logging.ERROR) -> None:
    """A one-line error: a JSON record with --log-format json, else a line on stderr."""
    if json_enabled():
        LOGGER.log(level, message, extra={_FIELDS: {"event": "error"}})
    else:
        print(message, file=sys.stderr)
