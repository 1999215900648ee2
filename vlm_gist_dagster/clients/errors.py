"""The clients' exceptions, and the redaction every message that could hold request data goes through.

Hierarchy (like httpx's, so callers can catch as broadly as they need)::

    ClientError
    ├── ConfigurationError        a missing key variable, an unknown endpoint, a bad URL override
    ├── AuthenticationError       HTTP 401/403: a bad or missing key; fatal, never retried
    ├── TransportError            one retryable failure: 429, 5xx, connection error
    │   └── TransportRetriesExhausted   the retry budget is spent (the endpoint is down or throttled)
    └── ResponseError             a non-retryable HTTP status or an unusable body (vision, embeddings)

Model-side failures of a chat completion (bad finish reason, invalid JSON, timeouts, a truncated
stream …) are *not* client errors: they are :class:`vlm_gist_dagster.protocol.completions.CompletionError`
and count as failed attempts (docs/protocol/pipeline.md §1.4–1.6).

**Secrets.** Keys are read from environment variables by the clients, which register them here
(:func:`register_secret`). :func:`redact` removes every registered secret, any ``Bearer <token>`` and
anything shaped like a provider key (``sk-…``) from a string. Every exception message of this package
is built through it, and :class:`RedactingFilter` does the same for log records.

>>> register_secret("sk-test-1234567890")
>>> redact("Authorization: Bearer sk-test-1234567890 failed")
'Authorization: Bearer *** failed'
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConfigurationError",
    "RedactingFilter",
    "ResponseError",
    "TransportError",
    "TransportRetriesExhausted",
    "redact",
    "register_secret",
]

REDACTED = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
# ``Bearer <token>`` in any header dump or message, and strings shaped like provider keys
# (OpenAI/OpenRouter ``sk-…``, Anthropic ``sk-ant-…``) even when we never registered them.
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",;]+")
_KEY_SHAPED = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")
#: Shorter values are not registered: replacing e.g. "1" everywhere would mangle messages.
_MIN_SECRET_LENGTH = 4


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that :func:`redact` removes it from every later message."""
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(value)


def redact(text: object) -> str:
    """``str(text)`` with registered secrets, bearer tokens and key-shaped strings replaced by ``***``."""
    out = str(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, REDACTED)
    out = _BEARER.sub(lambda m: m.group(1) + REDACTED, out)
    return _KEY_SHAPED.sub(REDACTED, out)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message (and drops the args it was built from)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must not kill logging
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        return True


def get_logger(name: str) -> logging.Logger:
    """A logger of this package with the redacting filter installed (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger


class ClientError(Exception):
    """Base class of the clients' errors; the message is redacted on construction."""

    def __init__(self, message: str) -> None:
        self.message = redact(message)
        super().__init__(self.message)


class ConfigurationError(ClientError):
    """The client cannot be used as configured (missing key variable, unknown endpoint, bad URL)."""


class AuthenticationError(ClientError):
    """HTTP 401 or 403: the key is missing, wrong or lacks permission. Never retried: retrying burns
    calls (and, for some providers, gets the key locked). The Dagster side stops the partition at once
    (``Failure(allow_retries=False)``)."""

    def __init__(self, message: str, *, status: int, service: str) -> None:
        self.status = status
        self.service = service
        super().__init__(message)


class TransportError(ClientError):
    """One retryable failure below the model: HTTP 429 (``retry_after_s`` from its header), 5xx, or a
    connection error. Not a failed attempt of the model (docs/protocol/pipeline.md §1.6 counts model failures only)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        self.status = status
        self.retry_after_s = retry_after_s
        super().__init__(message)


class TransportRetriesExhausted(TransportError):
    """Every allowed try failed with a :class:`TransportError`; ``tries`` requests were sent."""

    def __init__(self, message: str, *, tries: int, last: TransportError) -> None:
        self.tries = tries
        self.last = last
        super().__init__(message, status=last.status, retry_after_s=last.retry_after_s)


class ResponseError(ClientError):
    """A non-retryable HTTP status (other than 401/403) or a body the client cannot use."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)
