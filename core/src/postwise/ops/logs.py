"""Logs: plain text for a terminal or one JSON object per line, never secrets or addresses.

Every record carries the process kind and, inside a server request, the request id (taken from
an ``X-Request-ID`` header that looks like one, else made up, and sent back in the answer).
Email addresses in a message or its arguments are masked (``j***@example.org``), and values of
settings marked secret never reach a log: postwise logs settings only through
``Settings.public_dict``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["REQUEST_ID", "configure_logging", "mask_addresses"]

#: The id of the request being handled, for every log line it causes.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "postwise_request_id", default=None
)

_ADDRESS: Final = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_NOISY: Final = ("alembic", "httpx", "rq.worker")
_PLAIN: Final = logging.Formatter()


def mask_addresses(text: str) -> str:
    """``jane.doe@example.org`` → ``j***@example.org``: the domain helps, the person is hidden."""
    return _ADDRESS.sub(r"\1***@\2", text)


class _Privacy(logging.Filter):
    """Masks email addresses in every record's message before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
            except (TypeError, ValueError):
                record.msg = str(record.msg)
            record.args = None
        if isinstance(record.msg, str):
            record.msg = mask_addresses(record.msg)
        if record.exc_info and not record.exc_text:
            # Formatters print the cached exc_text: an SMTP answer or a bad-input error in a
            # traceback names the recipient as often as a message does.
            record.exc_text = mask_addresses(_PLAIN.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = mask_addresses(record.stack_info)
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, process, request id, error."""

    def __init__(self, process: str | None) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.process:
            entry["process"] = self.process
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["error"] = mask_addresses(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, fmt: str, *, process: str | None = None) -> None:
    """Set up the root logger once per process: text or JSON, the privacy filter, quiet deps."""
    root = logging.getLogger()
    root.setLevel(level)
    if root.handlers:
        # A host (a test runner, an application embedding postwise) set logging up: keep its
        # handlers, and still keep addresses out of what they write.
        for existing in root.handlers:
            if not any(isinstance(f, _Privacy) for f in existing.filters):
                existing.addFilter(_Privacy())
    else:
        handler = logging.StreamHandler(sys.stderr)
        if fmt == "json":
            handler.setFormatter(JsonFormatter(process))
        else:
            prefix = f"{process} " if process else ""
            handler.setFormatter(
                logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
            )
        handler.addFilter(_Privacy())
        root.addHandler(handler)
    # Migrations and HTTP clients narrate at INFO; postwise's own INFO lines are the story.
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
