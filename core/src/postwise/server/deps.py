"""Dependencies route handlers receive by name: ``runtime`` and ``session``."""

from __future__ import annotations

from collections.abc import Generator

from litestar.datastructures import State
from sqlmodel import Session  # imported at run time: Litestar resolves handler signatures

from postwise.runtime import Runtime

__all__ = ["provide_runtime", "provide_session"]


def provide_runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


def provide_session(state: State) -> Generator[Session, None, None]:
    """A session per request: committed when the handler returns, rolled back when it raises."""
    runtime: Runtime = state.runtime
    with runtime.session() as session:
        yield session
