"""The server's log lines: text (the default) or JSON lines (`log_format = "json"`).

A JSON line is one object: `ts` (UTC, ISO 8601 with milliseconds), `level`, `logger`,
`msg`, `node_id` and `term` (the node's current Raft term; null before the node has
started), and `exc` with the traceback when there is one. Every line has every key, so
that a log pipeline can index them without guessing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with this node's id and current term."""

    def __init__(self, node_id: int) -> None:
        super().__init__()
        self.node_id = node_id
        self.term: Callable[[], int] | None = None  # set once the node runs

    def format(self, record: logging.LogRecord) -> str:
        term = None
        if self.term is not None:
            try:
                term = self.term()
            except Exception:  # a log line must never fail for this
                term = None
        seconds = int(record.created)
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
                  + f".{int((record.created - seconds) * 1000):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "node_id": self.node_id,
            "term": term,
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: int, log_format: str, node_id: int) -> JsonFormatter | None:
    """Set up the root logger for a server process; the JSON formatter (to give it the
    node's term once it runs), or None for text."""
    if log_format != "json":
        logging.basicConfig(level=level, format=TEXT_FORMAT)
        return None
    formatter = JsonFormatter(node_id)
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler])
    return formatter


def json_formatter() -> JsonFormatter | None:
    """The JSON formatter `configure` installed on the root logger, if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return handler.formatter
    return None
