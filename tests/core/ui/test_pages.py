"""The web interface: sign-in, every page, every permission rule, CSRF, and hostile input."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

import pytest
from conftest import PASSWORD, csrf
from sqlmodel import select

from postwise.db.models import Campaign, Contact, Segment, Template
from postwise.runtime import Runtime

PAGES = {
    "/ui/": "Overview",
    "/ui/campaigns": "Campaigns",
    "/ui/templates": "Templates",
    "/ui/segments": "Segments",
    "/ui/triggers": "Triggers",
    "/ui/experiments": "Experiments",
    "/ui/contacts": "Contacts",
    "/ui/deliverability": "Deliverability",
    "/ui/crm": "CRM",
}
HTML = (
    '<p>Hi {{ first_name }}</p><a href="{{ unsubscribe_url }}">unsubscribe</a> {{ postal_address }}'
)
Browser = Callable[[str | None], Any]


@pytest.mark.parametrize("path", [*PAGES, "/ui/users", "/ui/campaigns/1", "/ui/contacts/1"])
def test_every_page_without_a_session_redirects_to_sign_in(browser: Browser, path: str) -> None:
    answer = browser(None).get(path, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/ui/login?next=/ui")


@pytest.mark.parametrize(("path", "title"), PAGES.items())
def test_every_page_renders_with_its_own_title(
    browser: Browser, users: dict[str, str], path: str, title: str
) -> None:
    page = browser("viewer").get(path)
    assert page.status_code == 200, page.text
    assert f"<title>{title} · postwise</title>" in page.text
    assert 'aria-current="page"' in page.text


def test_a_wrong_password_and_an_unknown_address_get_the_same_answer(
    browser: Browser, users: dict[str, str]
) -> None:
    client = browser(None)
    wrong = client.post("/ui/login", data={"email": "viewer@example.org", "password": "nope"})
    unknown = client.post("/ui/login", data={"email": "who@example.org", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 400
    assert "do not match" in wrong.text and "do not match" in unknown.text


def test_sign_in_is_throttled_after_five_failures(browser: Browser, users: dict[str, str]) -> None:
    client = browser(None)
    for _ in range(5):
        client.post("/ui/login", data={"email": "editor@example.org", "password": "wrong"})
    right = client.post(
        "/ui/login",
        data={"email": "editor@example.org", "password": PASSWORD},
        follow_redirects=False,
    )
    assert right.status_code == 400
    assert "too many failed sign-ins" in right.text


def test_sign_in_never_redirects_off_site(browser: Browser, users: dict[str, str]) -> None:
    answer = browser(None).post(
        "/ui/login",
        data={"email": "viewer@example.org", "password": PASSWORD, "next": "//evil.example/x"},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/ui/"


def test_a_tampered_session_cookie_is_no_session(browser: Browser, users: dict[str, str]) -> None:
    client = browser("viewer")
    cookie = client.cookies.get("postwise_session")
    client.cookies.clear()
    client.cookies.set("postwise_session", cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB"))
    assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_a_session_cookie_is_worthless_after_signing_out(
    browser: Browser, users: dict[str, str]
) -> None:
    client = browser("admin")
    cookie = client.cookies.get("postwise_session")
    token = csrf(client.get("/ui/").text)
    other = browser("admin")  # the same user on another device stays signed in
    assert client.post("/ui/logout", data={"csrf_token": token}).status_code == 200
    # A copy of the cookie (a shared computer, a stolen one) no longer opens a page.
    client.cookies.clear()
    client.cookies.set("postwise_session", cookie)
    assert client.get("/ui/users", follow_redirects=False).status_code == 303
    assert other.get("/ui/users", follow_redirects=False).status_code == 200


def test_the_session_cookie_is_http_only_and_same_site(
    browser: Browser, users: dict[str, str]
) -> None:
    answer = browser(None).post(
        "/ui/login",
        data={"email": "viewer@example.org", "password": PASSWORD},
        follow_redirects=False,
    )
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=43200" in cookie


def test_a_role_change_signs_the_user_out(
    browser: Browser, users: dict[str, str], runtime: Runtime
) -> None:
    from postwise.ui.users import set_role

    editor = browser("editor")
    assert editor.get("/ui/").status_code == 200
    with runtime.session() as session:
        from postwise.db.models import UiUser

        user = session.exec(select(UiUser).where(UiUser.email == "editor@example.org")).one()
        set_role(session, int(user.id or 0), "viewer")
        session.commit()
    assert editor.get("/ui/", follow_redirects=False).status_code == 303


def _new_template(client: Any, name: str = "weekly") -> Any:
    token = csrf(client.get("/ui/templates").text)
    return client.post(
        "/ui/templates",
        data={
            "csrf_token": token,
            "name": name,
            "subject": "Hello {{ first_name }}",
            "html": HTML,
            "kind": "marketing",
            "action": "save",
        },
        follow_redirects=False,
    )


def test_a_viewer_cannot_edit_send_erase_or_manage_users(
    browser: Browser, users: dict[str, str], runtime: Runtime
) -> None:
    viewer = browser("viewer")
    token = csrf(viewer.get("/ui/").text)  # the sign-out form's token: a valid one
    attempts = {
        "/ui/templates": {"name": "x", "subject": "s", "html": HTML, "action": "save"},
        "/ui/campaigns": {"name": "c", "template_id": "1"},
        "/ui/segments": {"name": "s", "field": "attributes.plan", "op": "eq", "value": "pro"},
        "/ui/campaigns/1/send": {"confirm": "yes"},
        "/ui/contacts/1/erase": {"confirm": "a@example.org"},
        "/ui/users": {"email": "new@example.org", "password": PASSWORD, "role": "admin"},
        "/ui/deliverability/resume": {"stream": "provider:smtp"},
    }
    for path, form in attempts.items():
        answer = viewer.post(path, data={"csrf_token": token, **form}, follow_redirects=False)
        assert answer.status_code == 403, path
        assert "needs the" in answer.text
    assert viewer.get("/ui/users").status_code == 403
    with runtime.session() as session:
        assert session.exec(select(Template)).first() is None
        assert session.exec(select(Segment)).first() is None


def test_an_editor_creates_and_sends_but_cannot_erase(
    browser: Browser, users: dict[str, str], runtime: Runtime
) -> None:
    editor = browser("editor")
    saved = _new_template(editor)
    assert saved.status_code == 303, saved.text
    with runtime.session() as session:
        template = session.exec(select(Template)).one()
        session.add(Contact(email="zoe@example.org", first_name="Zoe"))
        session.commit()
        contact_id = session.exec(select(Contact)).one().id
    token = csrf(editor.get("/ui/campaigns").text)
    made = editor.post(
        "/ui/campaigns",
        data={"csrf_token": token, "name": "launch", "template_id": str(template.id)},
        follow_redirects=False,
    )
    assert made.status_code == 303, made.text
    page = editor.get(made.headers["location"])
    assert "This sends to <strong>1</strong> contacts" in page.text
    erase = editor.post(
        f"/ui/contacts/{contact_id}/erase",
        data={"csrf_token": token, "confirm": "zoe@example.org"},
    )
    assert erase.status_code == 403


def test_forms_without_this_sessions_csrf_token_change_nothing(
    browser: Browser, users: dict[str, str], runtime: Runtime
) -> None:
    admin, other = browser("admin"), browser("editor")
    foreign = csrf(other.get("/ui/templates").text)
    for token in ("", foreign):
        answer = admin.post(
            "/ui/templates",
            data={"csrf_token": token, "name": "x", "subject": "s", "html": HTML, "action": "save"},
        )
        assert answer.status_code == 403
        assert "reload and try again" in answer.text
    with runtime.session() as session:
        assert session.exec(select(Template)).first() is None


def test_template_errors_are_shown_inline_and_nothing_is_saved(
    browser: Browser, users: dict[str, str], runtime: Runtime
) -> None:
    editor = browser("editor")
    token = csrf(editor.get("/ui/templates").text)
    answer = editor.post(
        "/ui/templates",
        data={
            "csrf_token": token,
            "name": "broken",
            "subject": "Hi",
            "html": "<p>{{ first_name </p>",
            "action": "save",
        },
    )
    assert answer.status_code == 422
    assert 'aria-invalid="true"' in answer.text
    assert "Not saved" in answer.text
    assert "{{ first_name </p>" in html.unescape(answer.text)  # the author's text is kept
    with runtime.session() as session:
        assert session.exec(select(Template)).first() is None


def test_a_preview_renders_in_a_sandboxed_frame(browser: Browser, users: dict[str, str]) -> None:
    editor = browser("editor")
    token = csrf(editor.get("/ui/templates").text)
    answer = editor.post(
        "/ui/templates",
        data={
            "csrf_token": token,
            "name": "p",
            "subject": "Hello {{ first_name }}",
            "html": HTML,
            "fields": '{"first_name": "Ada"}',
            "action": "preview",
        },
    )
    assert answer.status_code == 200, answer.text
    assert "<strong>Subject:</strong> Hello Ada" in answer.text
    assert '<iframe class="preview" title="HTML preview" sandbox srcdoc=' in answer.text


def test_two_editors_saving_one_template_do_not_overwrite_each_other(
    browser: Browser, users: dict[str, str], runtime: Runtime
) -> None:
    first, second = browser("editor"), browser("admin")
    assert _new_template(first).status_code == 303
    with runtime.session() as session:
        template_id = session.exec(select(Template)).one().id

    def save(client: Any, subject: str) -> Any:
        page = client.get(f"/ui/templates/{template_id}").text
        return client.post(
            "/ui/templates",
            data={
                "csrf_token": csrf(page),
                "template_id": str(template_id),
                "based_on": "1",
                "subject": subject,
                "html": HTML,
                "action": "save",
            },
            follow_redirects=False,
        )

    assert save(first, "First edit").status_code == 303
    clash = save(second, "Second edit")
    assert clash.status_code == 422
    assert "while you were editing version 1" in clash.text
    assert "Second edit" in clash.text


def test_html_in_every_text_field_is_escaped(
    browser: Browser, users: dict[str, str], runtime: Runtime
) -> None:
    probe = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    editor = browser("editor")
    assert _new_template(editor, name=probe).status_code == 303
    with runtime.session() as session:
        session.add(Contact(email="probe@example.org", first_name=probe, attributes={"p": probe}))
        session.commit()
        contact_id = session.exec(select(Contact)).one().id
    for path in ("/ui/templates", f"/ui/contacts/{contact_id}", "/ui/contacts?q=probe"):
        page = editor.get(path).text
        assert "<script>alert" not in page and "<img src=x" not in page, path
        assert "&lt;script&gt;" in page, path


def test_an_admin_erases_a_contact_only_with_the_typed_address(
    browser: Browser, users: dict[str, str], runtime: Runtime
) -> None:
    admin = browser("admin")
    with runtime.session() as session:
        session.add(Contact(email="gone@example.org"))
        session.commit()
        contact_id = session.exec(select(Contact)).one().id
    token = csrf(admin.get(f"/ui/contacts/{contact_id}").text)
    refused = admin.post(
        f"/ui/contacts/{contact_id}/erase", data={"csrf_token": token, "confirm": "nope"}
    )
    assert refused.status_code == 422
    done = admin.post(
        f"/ui/contacts/{contact_id}/erase",
        data={"csrf_token": token, "confirm": "gone@example.org"},
    )
    assert done.status_code == 200 and "erased" in done.text
    with runtime.session() as session:
        assert session.get(Contact, contact_id) is None


def test_an_admin_adds_users_and_bad_values_are_refused(
    browser: Browser, users: dict[str, str]
) -> None:
    admin = browser("admin")
    token = csrf(admin.get("/ui/users").text)
    short = admin.post(
        "/ui/users",
        data={
            "csrf_token": token,
            "email": "new@example.org",
            "password": "short",
            "role": "viewer",
        },
    )
    assert short.status_code == 422 and "at least 12 characters" in short.text
    absurd = admin.post(
        "/ui/users",
        data={"csrf_token": token, "email": "new@example.org", "password": PASSWORD, "role": "god"},
    )
    assert absurd.status_code == 422
    added = admin.post(
        "/ui/users",
        data={
            "csrf_token": token,
            "email": "new@example.org",
            "password": PASSWORD,
            "role": "viewer",
        },
        follow_redirects=False,
    )
    assert added.status_code == 303
    assert "new@example.org" in admin.get("/ui/users").text


def test_absurd_ids_and_values_get_a_page_not_a_500(
    browser: Browser, users: dict[str, str]
) -> None:
    editor = browser("editor")
    assert editor.get("/ui/campaigns/2147483648").status_code in (404, 422)
    assert editor.get("/ui/campaigns/999").status_code == 404
    token = csrf(editor.get("/ui/campaigns").text)
    bad = editor.post(
        "/ui/campaigns", data={"csrf_token": token, "name": "x", "template_id": "abc"}
    )
    assert bad.status_code == 422
    huge = editor.post(
        "/ui/templates",
        data={
            "csrf_token": token,
            "name": "big",
            "subject": "s",
            "html": "x" * 600_000,
            "action": "save",
        },
    )
    assert huge.status_code in (413, 422)


def test_campaign_progress_is_served_as_json(
    browser: Browser, users: dict[str, str], runtime: Runtime
) -> None:
    editor = browser("editor")
    _new_template(editor)
    with runtime.session() as session:
        template = session.exec(select(Template)).one()
        session.add(Campaign(name="c", template_id=template.id, template_version=1))
        session.commit()
        campaign_id = session.exec(select(Campaign)).one().id
    data = editor.get(f"/ui/campaigns/{campaign_id}/progress.json").json()
    assert set(data) >= {"percent", "done", "text", "sent", "failed"}
    assert re.match(r"\d+% · \d+ sent", data["text"])


def test_the_last_admin_cannot_give_up_the_role(
    browser: Browser, users: dict[str, str], runtime: Runtime
) -> None:
    from postwise.db.models import UiUser

    admin = browser("admin")
    with runtime.session() as session:
        me = session.exec(select(UiUser).where(UiUser.email == "admin@example.org")).one()
    token = csrf(admin.get("/ui/users").text)
    answer = admin.post(
        "/ui/users", data={"csrf_token": token, "user_id": str(me.id), "role": "viewer"}
    )
    assert answer.status_code == 422
    assert "last admin" in answer.text


def test_failed_sign_ins_elsewhere_do_not_lock_a_user_out(
    browser: Browser, users: dict[str, str], runtime: Runtime
) -> None:
    from postwise.ui.users import authenticate

    with runtime.session() as session:
        for _ in range(5):
            with pytest.raises(Exception, match="do not match"):
                authenticate(
                    session,
                    runtime.redis,
                    email="admin@example.org",
                    password="x",
                    remote="203.0.113.9",
                )
        user = authenticate(
            session,
            runtime.redis,
            email="admin@example.org",
            password=PASSWORD,
            remote="198.51.100.1",
        )
        assert user.email == "admin@example.org"
