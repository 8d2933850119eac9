"""The Flask class Trellis runs on: Flask, minus one repeated check per hook and request.

Flask asks ``inspect.iscoroutinefunction`` about every hook and view on every request (ten
times for a decision request, ~8 µs of ~140 µs in process) to run ``async def`` ones through
an event loop. The hooks and views registered by ``create_app`` are checked once; anything
registered later (or added for one request) still goes through Flask's own check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from inspect import iscoroutinefunction
from typing import Any

from flask import Flask


class Portal(Flask):
    known_sync: frozenset = frozenset()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            if func in self.known_sync:
                return func
        except TypeError:  # an unhashable callable: let Flask decide
            pass
        return super().ensure_sync(func)

    def remember_sync_callables(self) -> None:
        """Record the plain (not ``async def``) hooks and views registered so far."""
        registered: list[Iterable[Callable]] = [self.view_functions.values(),
                                                self.teardown_appcontext_funcs]
        for registry in (self.before_request_funcs, self.after_request_funcs,
                         self.teardown_request_funcs):
            registered.extend(registry.values())
        known = set()
        for functions in registered:
            for func in functions:
                try:
                    if not iscoroutinefunction(func):
                        known.add(func)
                except TypeError:
                    continue
        self.known_sync = frozenset(known)
