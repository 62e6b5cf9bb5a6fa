"""Structured logging: JSON lines (console on a TTY), context per trio task, redaction.

Context (``request_id``, ``actor``) is bound with :func:`bind` and lives in
contextvars; trio copies the context into each child task, so a value bound in a
request handler or an actor's ``run`` follows everything it starts.

Redaction runs last, after exceptions are rendered to text, so a secret inside
an exception message or a traceback is caught too. Three nets:

* by key: any field whose name looks secret (``password``, ``token``,
  ``credentials``, ``authorization``, ``api_key`` …) has its value replaced,
  at any depth of nested dicts and lists;
* by value: every string registered with :func:`register_secret` (admin and
  gateway tokens, Fernet keys, decrypted credentials) is replaced wherever it
  appears inside any string;
* by shape: ``Bearer …`` and well-known provider key prefixes (``sk-…``,
  ``sk-ant-…``, ``AIza…``) are replaced inside any string.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any

import msgspec
import structlog

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"(pass(word)?|secret|token|credential|authorization|api[_-]?key|private[_-]?key|"
    r"cookie|session[_-]?key|fernet|dsn)",
    re.IGNORECASE,
)
# Keys that match the pattern above but carry no secret.
_NOT_SECRET = frozenset(
    {"token_count", "tokens_used", "max_tokens", "input_tokens", "output_tokens"}
)
_SECRET_SHAPES = re.compile(
    r"(Bearer\s+[A-Za-z0-9._~+/=-]+|sk-ant-[A-Za-z0-9_-]{8,}|sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{20,})"
)
# Short strings would redact ordinary words; real secrets are longer than this.
_MIN_SECRET_LEN = 8


class _SecretRegistry:
    """Strings never to print. Thread-safe, append-only.

    Indexed by their last :data:`_MIN_SECRET_LEN` characters (the random end of a
    key; their starts are shared: ``sk-proj-…``, ``{"api_key":"…``); :meth:`scrub`
    looks every window of that size of the text up in the index and redacts every
    occurrence of every secret (overlaps merged). Not one regular expression of
    every secret: with 10,000 accounts' decrypted credentials registered (20,000
    strings), compiling it took 3.8 s of the event loop on the first log line after
    each newly seen account, and held 13 MB (bench/rss.py). The lookup costs a dict
    probe per character of the text (~12 us per 100 characters).
    """

    def __init__(self) -> None:
        # Last characters -> the secret ending with them (a tuple when several do, which
        # is rare: a str alone saves ~1 MB at 20,000 secrets). Entries are replaced,
        # never mutated, so readers take no lock.
        self._by_suffix: dict[str, str | tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            index = self._by_suffix
            for value in values:
                if not isinstance(value, str) or len(value) < _MIN_SECRET_LEN:
                    continue
                suffix = value[-_MIN_SECRET_LEN:]
                group = index.get(suffix)
                if group is None:
                    index[suffix] = value
                elif isinstance(group, str):
                    if group != value:
                        index[suffix] = (group, value)
                elif value not in group:
                    index[suffix] = (*group, value)

    def scrub(self, text: str) -> str:
        index = self._by_suffix
        if index and len(text) >= _MIN_SECRET_LEN:
            text = self._replace(text, index)
        return _SECRET_SHAPES.sub(REDACTED, text)

    @staticmethod
    def _replace(text: str, index: dict[str, str | tuple[str, ...]]) -> str:
        size = _MIN_SECRET_LEN
        spans: list[tuple[int, int]] = []
        for end in range(size, len(text) + 1):
            group = index.get(text[end - size : end])
            if group is not None:
                for secret in (group,) if isinstance(group, str) else group:
                    start = end - len(secret)
                    if start >= 0 and text.startswith(secret, start):
                        spans.append((start, end))
        if not spans:
            return text
        spans.sort()
        parts: list[str] = []
        done = 0
        for start, end in spans:
            if start >= done:
                parts += (text[done:start], REDACTED)
            elif end <= done:
                continue  # inside a span already redacted
            done = max(done, end)
        parts.append(text[done:])
        return "".join(parts)


_registry = _SecretRegistry()


def register_secret(*values: str) -> None:
    """Never print these strings, in any field, message or traceback."""
    _registry.add(values)


def scrub(value: Any, *, key: str | None = None) -> Any:
    """Return ``value`` with secrets replaced (recursively for dicts, lists, tuples)."""
    if key is not None and key not in _NOT_SECRET and _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return _registry.scrub(value)
    if isinstance(value, dict):
        return {k: scrub(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [scrub(v) for v in value]
    if isinstance(value, BaseException):
        return _registry.scrub(f"{type(value).__name__}: {value}")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, msgspec.Struct):
        # A struct (an Account, a request body) is scrubbed field by field, so a
        # ``credentials`` field is caught by its name like a dict key would be.
        return scrub({f: getattr(value, f) for f in value.__struct_fields__})
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return scrub({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    # Anything else would reach the renderer as str(value): scrub that text.
    return _registry.scrub(str(value))


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: scrub every field (the ``event`` text included)."""
    for k in list(event_dict):
        event_dict[k] = scrub(event_dict[k], key=None if k in ("event", "exception") else k)
    return event_dict


def configure_logging(*, level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Set up structlog for the process. Safe to call again (tests, CLI re-entry)."""
    stream = stream if stream is not None else sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer(serializer=_json_dumps)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def _json_dumps(obj: Any, **_kw: Any) -> str:
    import json

    return json.dumps(obj, default=str, separators=(",", ":"))


def bind(**values: Any) -> None:
    """Bind context for the current trio task and the tasks it starts."""
    structlog.contextvars.bind_contextvars(**values)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()
