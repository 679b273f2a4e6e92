"""The web interface under ``/ui``: server-rendered pages for the people who run the email.

Every page reads without JavaScript; ``ui.js`` adds live progress and live segment counts. Each
handler starts by finding who is signed in (a request without a session is sent to
``/ui/login``) and checks the role its action needs; every form carries the session's CSRF
token. The pages read through the same services as the API, never around them.
"""

from __future__ import annotations

import difflib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import jinja2
import sqlalchemy as sa
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from sqlmodel import col, select

from postwise.analytics.metrics import HealthKey, Scope, metrics_backend
from postwise.compliance.erasure import erase_contact, export_contact
from postwise.compliance.reputation import paused_streams, resume
from postwise.contacts.segments import count_segment, get_segment, validate_rules
from postwise.content import TemplateCache, TemplateSource
from postwise.content.limits import limits_from_settings
from postwise.crm.status import crm_status
from postwise.db.models import (
    Campaign,
    ConsentRecord,
    Contact,
    CrmLink,
    Event,
    Experiment,
    Message,
    Segment,
    Template,
    TemplateVersion,
    Trigger,
)
from postwise.delivery.campaigns import campaign_status, create_campaign
from postwise.delivery.compose import no_recommendations
from postwise.delivery.start import start_campaign_send
from postwise.delivery.templates import add_version, check_template, create_template
from postwise.errors import PostwiseError, ValidationError
from postwise.experiments.service import experiment_report
from postwise.ops.health import readiness
from postwise.runtime import Runtime
from postwise.triggers.cooldown import TriggerKeys
from postwise.triggers.dryrun import dry_run, event_from_json
from postwise.triggers.stats import COUNTERS, read_stats
from postwise.ui import charts
from postwise.ui.session import (
    COOKIE,
    CsrfError,
    Forbidden,
    SignedIn,
    current_user,
    end_session,
    new_session_cookie,
    require,
)
from postwise.ui.users import Role, authenticate, create_user, list_users, set_role

__all__ = ["UiController", "static_files"]

_ENV: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("postwise.ui", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
NAV: Final = (
    ("/ui/", "Overview"),
    ("/ui/campaigns", "Campaigns"),
    ("/ui/templates", "Templates"),
    ("/ui/segments", "Segments"),
    ("/ui/triggers", "Triggers"),
    ("/ui/experiments", "Experiments"),
    ("/ui/contacts", "Contacts"),
    ("/ui/deliverability", "Deliverability"),
    ("/ui/crm", "CRM"),
)
_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-src 'self' data:; form-action 'self'; frame-ancestors 'none'"
    ),
}
_PAGE: Final = 50
_Form = Body(media_type=RequestEncodingType.URL_ENCODED)


class SignInRequired(PostwiseError):
    """No valid session: the page sends the browser to the sign-in form."""

    def __init__(self, path: str) -> None:
        super().__init__("sign in first")
        self.path = path


def static_files() -> Any:
    """``/ui/static``: the stylesheet and the script, served from the installed package."""
    return create_static_files_router(
        path="/ui/static",
        directories=[Path(__file__).with_name("static")],
        include_in_schema=False,
        name="ui-static",
    )


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response[str]:
    return Response(
        body, status_code=status, media_type=MediaType.HTML, headers={**_HEADERS, **(headers or {})}
    )


def _page(
    template: str,
    *,
    me: SignedIn | None,
    title: str,
    section: str = "",
    status: int = 200,
    **context: Any,
) -> Response[str]:
    body = _ENV.get_template(template).render(
        me=me, title=title, section=section, nav=NAV, **context
    )
    return _html(body, status)


def _me(state: State, request: Request[Any, Any, Any]) -> tuple[Runtime, SignedIn]:
    runtime: Runtime = state.runtime
    signed_in = current_user(runtime, request)
    if signed_in is None:
        raise SignInRequired(request.url.path)
    return runtime, signed_in


def _sign_in_redirect(_request: Request[Any, Any, Any], exc: SignInRequired) -> Response[Any]:
    target = exc.path if exc.path.startswith("/ui") else "/ui/"
    return Redirect(f"/ui/login?next={quote(target)}", status_code=303)


def _refused(request: Request[Any, Any, Any], exc: PostwiseError) -> Response[str]:
    runtime: Runtime = request.app.state.runtime
    me = current_user(runtime, request)
    return _page("message.html", me=me, title="Not allowed", status=403, text=str(exc))


def _int(value: Any, field: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ValidationError("must be a whole number", field=field) from None
    if not 1 <= number <= 2**31 - 1:
        raise ValidationError("is out of range", field=field)
    return number


def _since(days: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


class UiController(Controller):
    path = "/ui"
    include_in_schema = False
    exception_handlers = {
        SignInRequired: _sign_in_redirect,
        Forbidden: _refused,
        CsrfError: _refused,
    }

    # Sign-in ---------------------------------------------------------------------------

    @get("/login", sync_to_thread=True)
    def login_form(self, state: State, request: Request[Any, Any, Any], next: str = "/ui/") -> Any:
        runtime: Runtime = state.runtime
        if current_user(runtime, request) is not None:
            return Redirect(_safe_next(next), status_code=303)
        return _page("login.html", me=None, title="Sign in", next=_safe_next(next), email="")

    @post("/login", sync_to_thread=True, status_code=303)
    def login(
        self, state: State, request: Request[Any, Any, Any], data: dict[str, str] = _Form
    ) -> Any:
        runtime: Runtime = state.runtime
        email, password = str(data.get("email", ""))[:320], str(data.get("password", ""))
        target = _safe_next(str(data.get("next", "/ui/")))
        remote = request.client.host if request.client else "unknown"
        try:
            with runtime.session() as session:
                user = authenticate(
                    session, runtime.redis, email=email, password=password, remote=remote
                )
                session.commit()
                cookie, ttl = new_session_cookie(runtime, user)
        except ValidationError as exc:
            return _page(
                "login.html",
                me=None,
                title="Sign in",
                status=400,
                error=str(exc.args[0]),
                next=target,
                email=email,
            )
        secure = "; Secure" if runtime.settings.base_url.startswith("https://") else ""
        return Redirect(
            target,
            status_code=303,
            headers={
                "Set-Cookie": f"{COOKIE}={cookie}; Max-Age={ttl}; Path=/ui; HttpOnly; "
                f"SameSite=Lax{secure}"
            },
        )

    @post("/logout", sync_to_thread=True, status_code=303)
    def logout(
        self, state: State, request: Request[Any, Any, Any], data: dict[str, str] = _Form
    ) -> Any:
        runtime, me = _me(state, request)
        require(me, Role.VIEWER, form=data)
        end_session(runtime, me)
        return Redirect(
            "/ui/login",
            status_code=303,
            headers={"Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/ui; HttpOnly; SameSite=Lax"},
        )

    # Overview --------------------------------------------------------------------------

    @get("/", sync_to_thread=True)
    def overview(self, state: State, request: Request[Any, Any, Any], days: int = 7) -> Any:
        runtime, me = _me(state, request)
        days = days if days in (1, 7, 30) else 7
        types = ("sent", "delivered", "open", "click", "conversion", "bounce", "complaint")
        since = _since(days)
        bucket_hours = 1 if days == 1 else 24
        counts = _event_counts(runtime, types, since, days, bucket_hours)
        labels = [
            (since + timedelta(hours=i * bucket_hours)).strftime(
                "%d %b %H:00" if days == 1 else "%d %b"
            )
            for i in range(days * 24 // bucket_hours)
        ]

        health = readiness(runtime)

        paused = paused_streams(runtime.redis)
        chart = charts.line_chart(
            labels,
            [charts.Series(t, counts[t]) for t in ("sent", "open", "click", "bounce")],
            title=f"Sends, opens, clicks and bounces over the last {days} days",
        )
        totals = {t: sum(v) for t, v in counts.items()}
        return _page(
            "overview.html",
            me=me,
            title="Overview",
            section="/ui/",
            days=days,
            chart=chart,
            labels=labels,
            counts=counts,
            totals=totals,
            health=health,
            paused=paused,
        )

    # Campaigns -------------------------------------------------------------------------

    @get("/campaigns", sync_to_thread=True)
    def campaigns(
        self, state: State, request: Request[Any, Any, Any], before: int | None = None
    ) -> Any:
        runtime, me = _me(state, request)
        with runtime.session() as session:
            query = select(Campaign).order_by(col(Campaign.id).desc()).limit(_PAGE)
            if before:
                query = query.where(col(Campaign.id) < before)
            rows = list(session.exec(query))
            templates = list(session.exec(select(Template).order_by(col(Template.name)).limit(500)))
            segments = list(session.exec(select(Segment).order_by(col(Segment.name)).limit(500)))
        return _page(
            "campaigns.html",
            me=me,
            title="Campaigns",
            section="/ui/campaigns",
            campaigns=rows,
            templates=templates,
            segments=segments,
            next_before=rows[-1].id if len(rows) == _PAGE else None,
        )

    @post("/campaigns", sync_to_thread=True, status_code=303)
    def create_campaign(
        self, state: State, request: Request[Any, Any, Any], data: dict[str, str] = _Form
    ) -> Any:
        runtime, me = _me(state, request)
        require(me, Role.EDITOR, form=data)

        try:
            with runtime.session() as session:
                campaign = create_campaign(
                    session,
                    name=str(data.get("name", "")).strip(),
                    template=_int(data.get("template_id"), "template_id"),
                    segment=str(data.get("segment") or "") or None,
                )
                session.commit()
                return Redirect(f"/ui/campaigns/{campaign.id}", status_code=303)
        except PostwiseError as exc:
            return self._campaign_error(runtime, me, exc)

    def _campaign_error(self, runtime: Runtime, me: SignedIn, exc: PostwiseError) -> Any:
        return _page(
            "message.html",
            me=me,
            title="Campaign not saved",
            section="/ui/campaigns",
            status=422,
            text=str(exc),
            back="/ui/campaigns",
        )

    @get("/campaigns/{campaign_id:int}", sync_to_thread=True)
    def campaign(self, state: State, request: Request[Any, Any, Any], campaign_id: int) -> Any:
        runtime, me = _me(state, request)

        try:
            with runtime.session() as session:
                status = campaign_status(session, _int(campaign_id, "campaign_id"))
                session.commit()
                audience = self._audience(session, status.get("segment_id"))
        except PostwiseError as exc:
            return _page(
                "message.html",
                me=me,
                title="No such campaign",
                status=404,
                text=str(exc),
                back="/ui/campaigns",
            )
        funnel = self._funnel(runtime, campaign_id)
        return _page(
            "campaign.html",
            me=me,
            title=f"Campaign {status['name']}",
            section="/ui/campaigns",
            c=status,
            audience=audience,
            funnel=funnel,
            progress=_progress(status),
        )

    def _audience(self, session: Any, segment_id: int | None) -> int | None:

        if segment_id is None:
            return int(
                session.execute(
                    sa.select(sa.func.count())
                    .select_from(Contact)
                    .where(col(Contact.status) == "active")
                ).scalar_one()
            )
        return count_segment(session, get_segment(session, segment_id))

    def _funnel(self, runtime: Runtime, campaign_id: int) -> list[tuple[str, int]]:
        steps = ("sent", "open", "click", "conversion", "bounce", "complaint", "unsubscribe")
        with runtime.engine.connect() as connection:
            rows = connection.execute(
                sa.select(col(Event.type), sa.func.count(sa.distinct(col(Event.message_id))))
                .where(col(Event.campaign_id) == campaign_id, col(Event.type).in_(steps))
                .group_by(col(Event.type))
            ).all()
        found = {str(t): int(n) for t, n in rows}
        return [(step, found.get(step, 0)) for step in steps]

    @get("/campaigns/{campaign_id:int}/progress.json", sync_to_thread=True)
    def campaign_progress(
        self, state: State, request: Request[Any, Any, Any], campaign_id: int
    ) -> dict[str, Any]:
        runtime, _ = _me(state, request)

        with runtime.session() as session:
            status = campaign_status(session, _int(campaign_id, "campaign_id"))
            session.commit()
        return _progress(status)

    @post("/campaigns/{campaign_id:int}/send", sync_to_thread=True, status_code=303)
    def send_campaign(
        self,
        state: State,
        request: Request[Any, Any, Any],
        campaign_id: int,
        data: dict[str, str] = _Form,
    ) -> Any:
        runtime, me = _me(state, request)
        require(me, Role.EDITOR, form=data)
        if data.get("confirm") != "yes":
            return self._campaign_error(
                runtime, me, ValidationError("confirm the audience before sending")
            )

        try:
            start_campaign_send(runtime, _int(campaign_id, "campaign_id"))
        except PostwiseError as exc:
            return self._campaign_error(runtime, me, exc)
        return Redirect(f"/ui/campaigns/{campaign_id}?sent=1", status_code=303)

    # Templates -------------------------------------------------------------------------

    @get("/templates", sync_to_thread=True)
    def templates(self, state: State, request: Request[Any, Any, Any]) -> Any:
        runtime, me = _me(state, request)
        with runtime.session() as session:
            rows = list(session.exec(select(Template).order_by(col(Template.name)).limit(500)))
        return _page(
            "templates.html",
            me=me,
            title="Templates",
            section="/ui/templates",
            templates=rows,
            form={},
            problems=None,
        )

    @post("/templates", sync_to_thread=True)
    def save_template(
        self, state: State, request: Request[Any, Any, Any], data: dict[str, str] = _Form
    ) -> Any:
        runtime, me = _me(state, request)
        require(me, Role.EDITOR, form=data)

        variables = [v.strip() for v in str(data.get("variables", "")).split(",") if v.strip()]
        action = data.get("action", "save")
        template_id = data.get("template_id")
        try:
            with runtime.session() as session:
                if action == "preview":
                    return self._preview(runtime, me, data, variables)
                if template_id:
                    tid = _int(template_id, "template_id")
                    current = session.get(Template, tid)
                    expected = data.get("based_on")
                    if (
                        current is not None
                        and expected
                        and str(current.current_version) != expected
                    ):
                        raise ValidationError(
                            f"someone saved version {current.current_version} while you were "
                            f"editing version {expected}; your text is below: compare and save "
                            "again",
                            field="html",
                        )
                    add_version(
                        session,
                        runtime.settings,
                        tid,
                        subject=data.get("subject", ""),
                        html=data.get("html", ""),
                        text=data.get("text") or None,
                        variables=variables,
                    )
                else:
                    created = create_template(
                        session,
                        runtime.settings,
                        name=data.get("name", ""),
                        subject=data.get("subject", ""),
                        html=data.get("html", ""),
                        text=data.get("text") or None,
                        kind=data.get("kind", "marketing"),
                        variables=variables,
                    )
                    tid = int(created.id or 0)
                session.commit()
            return Redirect(f"/ui/templates/{tid}", status_code=303)
        except PostwiseError as exc:
            return self._template_form(runtime, me, data, exc, status=422)

    def _template_form(
        self,
        runtime: Runtime,
        me: SignedIn,
        data: dict[str, str],
        exc: PostwiseError | None,
        *,
        status: int = 200,
        preview: dict[str, str] | None = None,
    ) -> Response[str]:
        field = getattr(exc, "field", None)
        with runtime.session() as session:
            rows = list(session.exec(select(Template).order_by(col(Template.name)).limit(500)))
        return _page(
            "templates.html",
            me=me,
            title="Templates",
            section="/ui/templates",
            status=status,
            templates=rows,
            form=data,
            problems=(field or "form", str(exc)) if exc else None,
            preview=preview,
        )

    def _preview(
        self, runtime: Runtime, me: SignedIn, data: dict[str, str], variables: list[str]
    ) -> Response[str]:

        try:
            check_template(
                runtime.settings,
                subject=data.get("subject", ""),
                html=data.get("html", ""),
                text=data.get("text") or None,
                kind=data.get("kind", "marketing"),
                variables=variables,
            )
            fields = json.loads(data.get("fields") or "{}")
            if not isinstance(fields, dict):
                raise ValidationError("must be a JSON object", field="fields")
            source = TemplateSource(
                id="preview",
                version=0,
                subject=data.get("subject", ""),
                html=data.get("html", ""),
                text=data.get("text") or None,
                kind=data.get("kind", "marketing"),
            )
            content = (
                TemplateCache(max_entries=1, limits=limits_from_settings(runtime.settings))
                .get(source)
                .render(
                    {"id": 0, "postal_address": runtime.settings.postal_address, **fields},
                    message_id="preview",
                    recommender=no_recommendations,
                    unsubscribe_url=f"{runtime.settings.base_url}/u/preview",
                )
            )
        except json.JSONDecodeError:
            return self._template_form(
                runtime,
                me,
                data,
                ValidationError('must be JSON such as {"first_name": "Ada"}', field="fields"),
                status=422,
            )
        except PostwiseError as exc:
            return self._template_form(runtime, me, data, exc, status=422)
        return self._template_form(
            runtime,
            me,
            data,
            None,
            preview={"subject": content.subject, "html": content.html, "text": content.text},
        )

    @get("/templates/{template_id:int}", sync_to_thread=True)
    def template(
        self,
        state: State,
        request: Request[Any, Any, Any],
        template_id: int,
        a: int | None = None,
        b: int | None = None,
    ) -> Any:
        runtime, me = _me(state, request)
        with runtime.session() as session:
            template = session.get(Template, _int(template_id, "template_id"))
            if template is None:
                return _page(
                    "message.html",
                    me=me,
                    title="No such template",
                    status=404,
                    text=f"template {template_id} does not exist",
                    back="/ui/templates",
                )
            versions = list(
                session.exec(
                    select(TemplateVersion)
                    .where(TemplateVersion.template_id == template.id)
                    .order_by(col(TemplateVersion.version).desc())
                )
            )
        by_number = {v.version: v for v in versions}
        diff = None
        if a in by_number and b in by_number:
            old, new = by_number[a], by_number[b]
            diff = list(
                difflib.unified_diff(
                    f"Subject: {old.subject}\n{old.html}\n{old.text or ''}".splitlines(),
                    f"Subject: {new.subject}\n{new.html}\n{new.text or ''}".splitlines(),
                    f"version {a}",
                    f"version {b}",
                    lineterm="",
                )
            )
        current = by_number.get(template.current_version)
        return _page(
            "template.html",
            me=me,
            title=f"Template {template.name}",
            section="/ui/templates",
            t=template,
            versions=versions,
            diff=diff,
            current=current,
            a=a,
            b=b,
        )

    # Segments --------------------------------------------------------------------------

    @get("/segments", sync_to_thread=True)
    def segments(self, state: State, request: Request[Any, Any, Any]) -> Any:
        runtime, me = _me(state, request)

        with runtime.session() as session:
            rows = list(session.exec(select(Segment).order_by(col(Segment.name)).limit(500)))
            counts: dict[int | None, int | None] = {}
            for segment in rows:
                try:
                    counts[segment.id] = count_segment(session, segment)
                except PostwiseError:
                    counts[segment.id] = None
        return _page(
            "segments.html",
            me=me,
            title="Segments",
            section="/ui/segments",
            segments=rows,
            counts=counts,
            form={},
            problems=None,
        )

    @post("/segments/count", sync_to_thread=True, status_code=200)
    def segment_count(
        self, state: State, request: Request[Any, Any, Any], data: dict[str, str] = _Form
    ) -> dict[str, Any]:
        runtime, me = _me(state, request)
        require(me, Role.VIEWER, form=data)

        try:
            rules = _rules(data)
            with runtime.session() as session:
                probe = Segment(name="(preview)", rules=rules)
                return {"count": count_segment(session, probe)}
        except (PostwiseError, ValueError) as exc:
            return {"error": str(exc)}

    @post("/segments", sync_to_thread=True)
    def save_segment(
        self, state: State, request: Request[Any, Any, Any], data: dict[str, str] = _Form
    ) -> Any:
        runtime, me = _me(state, request)
        require(me, Role.EDITOR, form=data)

        try:
            name = str(data.get("name", "")).strip()
            if not name or len(name) > 100:
                raise ValidationError("must be 1 to 100 characters", field="name")
            rules = _rules(data)
            with runtime.session() as session:
                validate_rules(rules, session=session)
                if session.exec(select(Segment).where(Segment.name == name)).first():
                    raise ValidationError(f"a segment called {name!r} exists", field="name")
                session.add(Segment(name=name, rules=rules))
                session.commit()
            return Redirect("/ui/segments", status_code=303)
        except (PostwiseError, ValueError) as exc:
            with runtime.session() as session:
                rows = list(session.exec(select(Segment).order_by(col(Segment.name)).limit(500)))
                counts = {s.id: count_segment(session, s) for s in rows}
            return _page(
                "segments.html",
                me=me,
                title="Segments",
                section="/ui/segments",
                status=422,
                segments=rows,
                counts=counts,
                form=data,
                problems=(getattr(exc, "field", None) or "rules", str(exc)),
            )

    # Triggers --------------------------------------------------------------------------

    @get("/triggers", sync_to_thread=True)
    def triggers(self, state: State, request: Request[Any, Any, Any]) -> Any:
        runtime, me = _me(state, request)

        with runtime.session() as session:
            rows = list(session.exec(select(Trigger).order_by(col(Trigger.id)).limit(500)))
        ids = [int(t.id) for t in rows if t.id is not None]
        try:
            stats = read_stats(runtime.redis, TriggerKeys(), ids)
        except Exception:
            stats = {}
        return _page(
            "triggers.html",
            me=me,
            title="Triggers",
            section="/ui/triggers",
            triggers=rows,
            stats=stats,
            counters=COUNTERS,
            verdicts=None,
            event="",
        )

    @post("/triggers/dry-run", sync_to_thread=True)
    def trigger_dry_run(
        self, state: State, request: Request[Any, Any, Any], data: dict[str, str] = _Form
    ) -> Any:
        runtime, me = _me(state, request)
        require(me, Role.VIEWER, form=data)

        try:
            event = event_from_json(json.loads(data.get("event", "")))
            verdicts = dry_run(runtime, event)
            error = None
        except (json.JSONDecodeError, PostwiseError, TypeError) as exc:
            verdicts, error = None, f"event: {exc}"
        with runtime.session() as session:
            rows = list(session.exec(select(Trigger).order_by(col(Trigger.id)).limit(500)))
        return _page(
            "triggers.html",
            me=me,
            title="Triggers",
            section="/ui/triggers",
            status=200 if error is None else 422,
            triggers=rows,
            stats={},
            counters=(),
            verdicts=verdicts,
            event=data.get("event", ""),
            error=error,
        )

    # Experiments -----------------------------------------------------------------------

    @get("/experiments", sync_to_thread=True)
    def experiments(self, state: State, request: Request[Any, Any, Any]) -> Any:
        runtime, me = _me(state, request)
        with runtime.session() as session:
            rows = list(
                session.exec(select(Experiment).order_by(col(Experiment.id).desc()).limit(200))
            )
        return _page(
            "experiments.html",
            me=me,
            title="Experiments",
            section="/ui/experiments",
            experiments=rows,
        )

    @get("/experiments/{experiment_id:int}", sync_to_thread=True)
    def experiment(self, state: State, request: Request[Any, Any, Any], experiment_id: int) -> Any:
        runtime, me = _me(state, request)

        try:
            report = experiment_report(runtime, _int(experiment_id, "experiment_id"))
        except PostwiseError as exc:
            return _page(
                "message.html",
                me=me,
                title="No such experiment",
                status=404,
                text=str(exc),
                back="/ui/experiments",
            )
        analysis = report.get("analysis") or {}
        intervals = []
        for variant in analysis.get("variants", []):
            lift = variant.get("relative_lift") or variant.get("lift") or {}
            if isinstance(lift, dict) and lift.get("ci") and lift.get("estimate") is not None:
                low, high = lift["ci"]
                intervals.append(
                    charts.Interval(str(variant.get("name")), lift["estimate"], low, high)
                )
        plot = (
            charts.forest_plot(
                intervals, title="Lift of each variant against control, with its interval"
            )
            if intervals
            else None
        )
        return _page(
            "experiment.html",
            me=me,
            title=f"Experiment {experiment_id}",
            section="/ui/experiments",
            r=report,
            analysis=analysis,
            plot=plot,
            intervals=intervals,
            words=_decision_words(report),
        )

    # Contacts --------------------------------------------------------------------------

    @get("/contacts", sync_to_thread=True)
    def contacts(
        self, state: State, request: Request[Any, Any, Any], q: str = "", after: int | None = None
    ) -> Any:
        runtime, me = _me(state, request)
        q = q.strip().lower()[:320]
        with runtime.session() as session:
            query = select(Contact).order_by(col(Contact.id)).limit(_PAGE)
            if q:
                query = query.where(col(Contact.email).startswith(q))
            if after:
                query = query.where(col(Contact.id) > after)
            rows = list(session.exec(query))
        return _page(
            "contacts.html",
            me=me,
            title="Contacts",
            section="/ui/contacts",
            contacts=rows,
            q=q,
            next_after=rows[-1].id if len(rows) == _PAGE else None,
        )

    @get("/contacts/{contact_id:int}", sync_to_thread=True)
    def contact(self, state: State, request: Request[Any, Any, Any], contact_id: int) -> Any:
        runtime, me = _me(state, request)
        with runtime.session() as session:
            contact = session.get(Contact, _int(contact_id, "contact_id"))
            if contact is None:
                return _page(
                    "message.html",
                    me=me,
                    title="No such contact",
                    status=404,
                    text=f"contact {contact_id} does not exist (it may have been erased)",
                    back="/ui/contacts",
                )
            consent = list(
                session.exec(
                    select(ConsentRecord)
                    .where(ConsentRecord.contact_id == contact_id)
                    .order_by(col(ConsentRecord.id).desc())
                    .limit(50)
                )
            )
            messages = list(
                session.exec(
                    select(Message)
                    .where(Message.contact_id == contact_id)
                    .order_by(col(Message.created_at).desc())
                    .limit(50)
                )
            )
            links = list(session.exec(select(CrmLink).where(CrmLink.contact_id == contact_id)))
            session.expunge_all()
        with runtime.engine.connect() as connection:
            events = connection.execute(
                sa.select(
                    col(Event.type),
                    col(Event.occurred_at),
                    col(Event.campaign_id),
                    col(Event.message_id),
                )
                .where(col(Event.contact_id) == contact_id)
                .order_by(col(Event.occurred_at).desc())
                .limit(100)
            ).all()
        return _page(
            "contact.html",
            me=me,
            title=f"Contact {contact.email}",
            section="/ui/contacts",
            c=contact,
            consent=consent,
            messages=messages,
            links=links,
            events=events,
        )

    @get("/contacts/{contact_id:int}/export", sync_to_thread=True)
    def export(self, state: State, request: Request[Any, Any, Any], contact_id: int) -> Any:
        runtime, me = _me(state, request)
        require(me, Role.ADMIN)

        data = export_contact(runtime, contact_id=_int(contact_id, "contact_id"))
        return Response(
            json.dumps(data, default=str, indent=2),
            media_type="application/json",
            headers={
                **_HEADERS,
                "Content-Disposition": f'attachment; filename="contact-{contact_id}.json"',
            },
        )

    @post("/contacts/{contact_id:int}/erase", sync_to_thread=True)
    def erase(
        self,
        state: State,
        request: Request[Any, Any, Any],
        contact_id: int,
        data: dict[str, str] = _Form,
    ) -> Any:
        runtime, me = _me(state, request)
        require(me, Role.ADMIN, form=data)

        with runtime.session() as session:
            contact = session.get(Contact, _int(contact_id, "contact_id"))
            email = contact.email if contact else None
        if email is None:
            return _page(
                "message.html",
                me=me,
                title="No such contact",
                status=404,
                text="this contact does not exist any more",
                back="/ui/contacts",
            )
        if str(data.get("confirm", "")).strip().lower() != email:
            return _page(
                "message.html",
                me=me,
                title="Not erased",
                status=422,
                text="type the contact's address exactly to confirm the erasure",
                back=f"/ui/contacts/{contact_id}",
            )
        erase_contact(runtime, contact_id=contact_id, actor=f"ui:{me.user.id}")
        return _page(
            "message.html",
            me=me,
            title="Contact erased",
            section="/ui/contacts",
            text="The contact and everything held about them were erased, and the "
            "address suppressed.",
            back="/ui/contacts",
        )

    # Deliverability ------------------------------------------------------------------------

    @get("/deliverability", sync_to_thread=True)
    def deliverability(self, state: State, request: Request[Any, Any, Any], days: int = 30) -> Any:
        runtime, me = _me(state, request)

        days = days if days in (1, 7, 30) else 30
        scope = Scope(since=_since(days))
        backend = metrics_backend(runtime)
        by_provider = backend.delivery_health(HealthKey.PROVIDER, scope)
        by_domain = backend.delivery_health(HealthKey.DOMAIN, scope)[:50]
        with runtime.engine.connect() as connection:
            reason = Event.properties["reason"].as_string()
            reasons = connection.execute(
                sa.select(reason, sa.func.count())
                .where(col(Event.type) == "bounce", col(Event.occurred_at) >= scope.since)
                # By position: PostgreSQL sees two JSON lookups as two expressions.
                .group_by(sa.text("1"))
                .order_by(sa.text("2 DESC"))
                .limit(30)
            ).all()
        settings = runtime.settings
        return _page(
            "deliverability.html",
            me=me,
            title="Deliverability",
            section="/ui/deliverability",
            days=days,
            providers=by_provider,
            domains=by_domain,
            reasons=reasons,
            paused=paused_streams(runtime.redis),
            settings=settings,
            chart=charts.bar_chart(
                [(str(h.key or "(none)"), 100 * (h.bounce_rate or 0)) for h in by_domain[:15]],
                title="Bounce rate (%) by recipient domain",
            ),
        )

    @post("/deliverability/resume", sync_to_thread=True, status_code=303)
    def resume(
        self, state: State, request: Request[Any, Any, Any], data: dict[str, str] = _Form
    ) -> Any:
        runtime, me = _me(state, request)
        require(me, Role.ADMIN, form=data)

        resume(runtime.redis, str(data.get("stream", "")))
        return Redirect("/ui/deliverability", status_code=303)

    # CRM -------------------------------------------------------------------------------

    @get("/crm", sync_to_thread=True)
    def crm(self, state: State, request: Request[Any, Any, Any]) -> Any:
        runtime, me = _me(state, request)

        systems: list[tuple[str, dict[str, Any] | None, str | None]] = []
        for system in sorted(runtime.settings.crm_options):
            try:
                systems.append((system, crm_status(runtime, system), None))
            except PostwiseError as exc:
                systems.append((system, None, str(exc)))
        return _page("crm.html", me=me, title="CRM", section="/ui/crm", systems=systems)

    # Users -----------------------------------------------------------------------------

    @get("/users", sync_to_thread=True)
    def users(self, state: State, request: Request[Any, Any, Any]) -> Any:
        runtime, me = _me(state, request)
        require(me, Role.ADMIN)
        with runtime.session() as session:
            rows = list_users(session)
            session.expunge_all()
        return _page("users.html", me=me, title="Users", section="/ui/users", users=rows)

    @post("/users", sync_to_thread=True)
    def add_user(
        self, state: State, request: Request[Any, Any, Any], data: dict[str, str] = _Form
    ) -> Any:
        runtime, me = _me(state, request)
        require(me, Role.ADMIN, form=data)
        try:
            with runtime.session() as session:
                if data.get("user_id"):
                    set_role(session, _int(data["user_id"], "user_id"), data.get("role", ""))
                else:
                    create_user(
                        session,
                        email=data.get("email", ""),
                        password=data.get("password", ""),
                        role=data.get("role", ""),
                    )
                session.commit()
        except PostwiseError as exc:
            with runtime.session() as session:
                rows = list_users(session)
                session.expunge_all()
            return _page(
                "users.html",
                me=me,
                title="Users",
                section="/ui/users",
                status=422,
                users=rows,
                error=str(exc),
            )
        return Redirect("/ui/users", status_code=303)


#: Seconds the overview's counts are kept in Redis: the page stays fast on a large event table.
_OVERVIEW_CACHE_SECONDS: Final = 60


def _event_counts(
    runtime: Runtime, types: tuple[str, ...], since: datetime, days: int, bucket_hours: int
) -> dict[str, list[int]]:
    """Events per type per bucket since ``since``, counted by the database, cached a minute."""
    key = f"postwise:ui:overview:{days}"
    cached = runtime.redis.get(key)
    if cached:
        stored: dict[str, list[int]] = json.loads(cached)
        if set(stored) == set(types):
            return stored
    seconds = bucket_hours * 3600
    epoch: Any = sa.func.extract("epoch", col(Event.occurred_at))
    if runtime.engine.dialect.name == "sqlite":
        epoch = sa.func.strftime("%s", col(Event.occurred_at))
    bucket = sa.cast(
        sa.func.floor((sa.cast(epoch, sa.Float) - since.timestamp()) / seconds), sa.Integer
    )
    with runtime.engine.connect() as connection:
        rows = connection.execute(
            sa.select(col(Event.type), bucket, sa.func.count())
            .where(col(Event.occurred_at) >= since, col(Event.type).in_(types))
            .group_by(col(Event.type), bucket)
        ).all()
    buckets = days * 24 // bucket_hours
    counts = {t: [0] * buckets for t in types}
    for event_type, index, number in rows:
        if index is not None and 0 <= int(index) < buckets:
            counts[str(event_type)][int(index)] += int(number)
    runtime.redis.set(key, json.dumps(counts), ex=_OVERVIEW_CACHE_SECONDS)
    return counts


def _safe_next(target: str) -> str:
    # Only our own pages: never an open redirect ("//evil.example", "https://...").
    if target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


def _rules(data: dict[str, str]) -> dict[str, Any]:
    """A segment's rules from the builder's fields (or its JSON box)."""
    raw = str(data.get("rules_json", "")).strip()
    if raw:
        rules = json.loads(raw)
        if not isinstance(rules, dict):
            raise ValidationError("rules must be a JSON object", field="rules_json")
        return rules
    field, op, value = data.get("field", ""), data.get("op", ""), data.get("value", "")
    if not field:
        raise ValidationError("choose a field", field="field")
    return {"field": field, "op": op or "eq", "value": value}


def _progress(status: dict[str, Any]) -> dict[str, Any]:
    messages: dict[str, int] = status.get("messages", {})
    dispatch = status.get("dispatch", {})
    audience = int(dispatch.get("audience") or 0)
    done_count = sum(n for s, n in messages.items() if s not in ("queued", "retrying", "sending"))
    skipped = dispatch.get("skipped") or {}
    skipped_total = sum(int(v) for v in skipped.values()) if isinstance(skipped, dict) else 0
    total = max(audience, done_count + skipped_total, 1)
    finished = done_count + skipped_total
    percent = 100 if status.get("status") == "sent" else min(100, round(100 * finished / total))
    sent = messages.get("accepted", 0)
    failed = messages.get("dead", 0) + messages.get("bounced", 0)
    return {
        "percent": percent,
        "done": status.get("status") in ("sent", "cancelled")
        or (bool(dispatch.get("done")) and status.get("unfinished", 0) == 0),
        "text": f"{percent}% · {sent} sent · {skipped_total} skipped · {failed} failed",
        "sent": sent,
        "skipped": skipped,
        "failed": failed,
    }


def _decision_words(report: dict[str, Any]) -> str:
    decision = str(report.get("decision") or "")
    reason = report.get("reason") or ""
    if report.get("winner"):
        return f"Winner: {report['winner']}. {reason}".strip()
    words = {
        "srm": "Blocked: the traffic split does not match the weights (sample-ratio mismatch).",
        "guardrail": (
            "Stopped by a guardrail: a variant harmed unsubscribes, complaints or bounces."
        ),
        "awaiting_planned_look": "Fixed-horizon test: waiting for the planned sample.",
        "stopped": "Stopped.",
    }
    for key, text in words.items():
        if key in decision:
            return f"{text} {reason}".strip()
    return f"Not significant yet: keep the experiment running. {reason}".strip()
