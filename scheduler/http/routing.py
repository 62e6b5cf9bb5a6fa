"""Matching a method and a path against route templates, without a framework.

The lean data-plane server (:mod:`scheduler.http.wire`) has no router of its own;
this one takes the same templates the Endpoint table declares
(``/v1/leases/{lease_id}/release``) with starlette's meaning: a ``{name}`` is one
non-empty path segment, percent-decoded; a trailing slash is another path.
Literal routes are one dict lookup;
templated ones are tried in declaration order among those with the same number
of segments, so a literal segment declared first wins, as in starlette.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    target: T
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class NoRoute:
    """No route has this path (404), or some do but not for this method (405 with
    ``allowed``, sorted, for the Allow header). HEAD is a method like any other: a
    route answers it only when declared (as the control plane does)."""

    allowed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Template(Generic[T]):
    method: str
    # Per segment: the literal text, or None for a parameter named in ``names``.
    parts: tuple[str | None, ...]
    names: tuple[str, ...]
    target: T


class Router(Generic[T]):
    """Routes ``(method, template, target)``; :meth:`match` gives a Match or a NoRoute."""

    def __init__(self, routes: Iterable[tuple[str, str, T]]) -> None:
        self._literal: dict[str, dict[str, T]] = {}
        self._templated: dict[int, list[_Template[T]]] = {}
        for method, template, target in routes:
            segments = _segments(template)
            if not any(_is_param(s) for s in segments):
                by_method = self._literal.setdefault(template, {})
                if method in by_method:
                    raise ValueError(f"{method} {template} is declared twice")
                by_method[method] = target
                continue
            parts = tuple(None if _is_param(s) else s for s in segments)
            names = tuple(s[1:-1] for s in segments if _is_param(s))
            if any(not n.isidentifier() for n in names):
                raise ValueError(f"{template}: a parameter name must be an identifier")
            self._templated.setdefault(len(parts), []).append(
                _Template(method, parts, names, target)
            )

    def match(self, method: str, path: str) -> Match[T] | NoRoute:
        literal = self._literal.get(path)
        if literal is not None:
            found = literal.get(method)
            if found is not None:
                return Match(found, {})
        segments = _segments(path)
        allowed: list[str] = list(literal) if literal else []
        for template in self._templated.get(len(segments), ()):
            params = _bind(template, segments)
            if params is None:
                continue
            if template.method == method:
                return Match(template.target, params)
            allowed.append(template.method)
        return NoRoute(tuple(sorted(set(allowed))))


def _segments(path: str) -> list[str]:
    return path.split("/")[1:] if path.startswith("/") else [path]


def _is_param(segment: str) -> bool:
    return len(segment) > 2 and segment[0] == "{" and segment[-1] == "}"


def _bind(template: _Template[T], segments: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    names = iter(template.names)
    for part, segment in zip(template.parts, segments, strict=True):
        if part is None:
            if not segment:
                return None
            params[next(names)] = unquote(segment)
        elif part != segment:
            return None
    return params
