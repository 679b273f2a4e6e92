"""Fixtures of the web interface tests: users of each role and a browser-like client."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from postwise.runtime import Runtime
from postwise.server.app import create_app
from postwise.ui.users import create_user

PASSWORD = "correct horse battery staple"


@pytest.fixture
def users(runtime: Runtime) -> dict[str, str]:
    """One user of each role: role -> address."""
    made = {}
    with runtime.session() as session:
        for role in ("viewer", "editor", "admin"):
            made[role] = create_user(
                session, email=f"{role}@example.org", password=PASSWORD, role=role
            ).email
        session.commit()
    return made


@pytest.fixture
def browser(runtime: Runtime) -> Iterator[Callable[[str | None], Any]]:
    """``browser(role)``: a client signed in as that role's user (None: not signed in)."""
    clients: list[TestClient[Any]] = []

    def open_as(role: str | None) -> Any:
        client: TestClient[Any] = TestClient(app=create_app(runtime=runtime))
        client.__enter__()
        clients.append(client)
        if role is not None:
            answer = client.post(
                "/ui/login",
                data={"email": f"{role}@example.org", "password": PASSWORD, "next": "/ui/"},
                follow_redirects=False,
            )
            assert answer.status_code == 303, answer.text
        return client

    yield open_as
    for client in clients:
        client.__exit__(None, None, None)


def csrf(page_html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', page_html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)
