"""``postwise demo``: the whole sending pipeline on one laptop, with no servers.

The demo keeps its own state apart from any real data: a SQLite database under
``data_dir/demo`` and an in-process Redis stand-in. It starts the SMTP sink on loopback (every
message becomes an ``.eml`` file in the outbox), seeds contacts (a few unsubscribed, bounced,
suppressed, without the consent their country needs, or over the frequency cap, so the gate has
work to do), a marketing template with merge tags, conditional blocks and a recommendation
block filled by the popularity recommender, signs with a DKIM key of its own, and sends one
campaign through dispatch, RQ (an in-process ``SimpleWorker``) and SMTP. Running it again adds
another campaign to the same database and outbox.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from postwise.contacts.normalize import email_hash
from postwise.db.models import (
    ConsentRecord,
    Contact,
    ContactStatus,
    Message,
    MessageStatus,
    Segment,
    SegmentMember,
    Suppression,
    Template,
    utcnow,
)
from postwise.delivery.campaigns import create_campaign
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.dkim import generate_key
from postwise.delivery.services import DEFAULT_RECOMMENDER, services_for
from postwise.delivery.templates import create_template
from postwise.delivery.worker import drain
from postwise.devtools.sink import SmtpSink
from postwise.errors import UnknownComponentError
from postwise.plugins import RECOMMENDERS
from postwise.recommend.base import Interaction, Item
from postwise.runtime import Runtime
from postwise.settings import Settings

__all__ = ["DEMO_TEMPLATE", "DemoResult", "run_demo"]

log = logging.getLogger(__name__)

DEMO_TEMPLATE = "postwise-demo-newsletter"
_SEGMENT = "postwise-demo-list"
_VIP_SEGMENT = "postwise-demo-vip"
_CONSENT_COUNTRY = "DE"

_SUBJECT = "{{ first_name | default('there') }}, your {{ city | default('weekly') }} picks are in"
_HTML = """<html><head><style>
  body { font-family: Helvetica, Arial, sans-serif; color: #222; }
  h1 { color: #0b5394; font-size: 22px; }
  .item { padding: 6px 0; border-bottom: 1px solid #eee; }
  .vip { background: #fff4d6; padding: 8px; }
  .footer { color: #888; font-size: 11px; }
</style></head><body>
<h1>Hello {{ first_name | default("there") }}!</h1>
{% if "postwise-demo-vip" in segments %}
<p class="vip">As a {{ plan | default("valued") }} member you get early access this week.</p>
{% else %}
<p>Here is what other readers liked this week.</p>
{% endif %}
<p>This week we looked at how small teams keep their weekly newsletter useful without
spending a whole day on it. The short version: write for one reader, keep one idea per
paragraph, and link to the full article instead of pasting it.</p>
<p>Our editors read every reply to this newsletter. If a story helped you, or if you think we
got something wrong, answer this email and tell us; the best replies shape next week's
issue.</p>
<h2>Picked for you</h2>
{% for item in recommendations(3) %}
<div class="item"><a href="{{ item.url }}">{{ item.title }}</a></div>
{% endfor %}
<h2>From the workshop</h2>
<p>Planning a launch? Start from the question your customers ask most often, answer it in the
first sentence, and put the details underneath. Readers skim on their phones between meetings,
so short headings and plain words do more than any design trick.</p>
<p>We also rewrote our guide to onboarding emails. It walks through a welcome message, a
first-week tip and a gentle check-in, with the reasoning behind each one, so you can adapt it
to your own product rather than copy it.</p>
<p>A reader asked how often a newsletter should go out. Our answer: as often as you have
something worth reading, and no more. A steady weekly rhythm builds a habit, but a skipped week
costs less than an empty issue. Measure replies and clicks rather than opens, because many
mail apps now load images on their own and make open counts look better than they are.</p>
<p>Another asked whether long emails still work. They do when every paragraph earns its
place. Put the most useful sentence first, cut anything you would not say out loud to a
colleague, and give people one clear next step at the end instead of five competing
buttons.</p>
<p>Finally, a note on privacy. We only email people who asked to hear from us, we keep the
unsubscribe link at the bottom of every issue, and one click is all it takes. If you change
your mind later, you can always join again from our website.</p>
<p><img src="/img/banner.png" alt="postwise"></p>
<p>See you next week,<br>the postwise demo team</p>
<p class="footer">You receive this because you joined the postwise demo.
<a href="{{ unsubscribe_url }}">Unsubscribe</a> &middot; {{ postal_address }}</p>
</body></html>
"""

_FIRST_NAMES = [
    "Ada", "Zoë", "José", "Łukasz", "Aoife", "Mei", "Noor", "Søren", "Chidi", "Ana", "Björn",
    "Priya", "Mateo", "Yuki", "Olga", "Émile", "Fatima", "Liam", "Inés", "Kofi",
]  # fmt: skip
_LAST_NAMES = ["Lovelace", "García", "Nowak", "Murphy", "Chen", "Haddad", "Jensen", "Okafor"]
_CITIES = ["Berlin", "Lisbon", "Nairobi", "Osaka", "Toronto", "Lyon", "Austin", "Kraków"]
_COUNTRIES = ["US", "GB", "PT", "KE", "JP", "CA", "FR", _CONSENT_COUNTRY]
_CATALOGUE = [
    ("espresso-guide", "The espresso guide"),
    ("trail-shoes", "Trail shoes that last"),
    ("sourdough-101", "Sourdough 101"),
    ("city-bikes", "City bikes compared"),
    ("tea-atlas", "A tea atlas"),
    ("night-sky", "Reading the night sky"),
    ("pocket-notebook", "The pocket notebook"),
    ("rain-jacket", "A rain jacket for every city"),
]


@dataclass(slots=True)
class DemoResult:
    """The demo's summary (``postwise demo --json`` prints :meth:`to_dict`)."""

    campaign_id: int
    audience: int
    sent: int
    skipped: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    pending: int = 0
    seconds: float = 0.0
    outbox: Path = Path()
    files: int = 0
    dkim_domain: str | None = None
    database: str = ""

    @property
    def messages_per_second(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "audience": self.audience,
            "sent": self.sent,
            "skipped": dict(sorted(self.skipped.items())),
            "failed": self.failed,
            "pending": self.pending,
            "seconds": round(self.seconds, 3),
            "messages_per_second": round(self.messages_per_second, 1),
            "messages_per_hour": round(self.messages_per_second * 3600),
            "outbox": str(self.outbox),
            "files_in_outbox": self.files,
            "dkim_domain": self.dkim_domain,
            "database": self.database,
        }


Progress = Callable[[str, int, int], None]


def demo_settings(settings: Settings) -> Settings:
    """The demo's settings: its own SQLite file and Redis stand-in under ``data_dir/demo``."""
    base = Path(settings.data_dir) / "demo"
    base.mkdir(parents=True, exist_ok=True)
    key_path = base / "dkim-rsa.pem"
    if not key_path.exists():
        key_path.write_bytes(generate_key("rsa-sha256").private_key_pem)
        key_path.chmod(0o600)
    return settings.model_copy(
        update={
            "database_url": f"sqlite:///{(base / 'postwise-demo.sqlite3').resolve()}",
            "redis_url": "fakeredis://postwise-demo",
            "provider": "smtp",
            "smtp_host": "127.0.0.1",
            "smtp_starttls": "off",
            "smtp_implicit_tls": False,
            "smtp_username": "",
            "rate_limits": {},
            "consent_regions": [_CONSENT_COUNTRY],
            "require_consent": False,
            "dkim_domain": "example.com",
            "dkim_selector": "demo",
            "dkim_algorithm": "rsa-sha256",
            "dkim_private_key_path": key_path,
            "sender": "postwise demo <news@example.com>",
            "cdn_base_url": "https://cdn.example.com",
            "delivery_lease_seconds": 60,
        }
    )


def run_demo(
    settings: Settings,
    *,
    contacts: int = 1000,
    outbox: Path | None = None,
    progress: Progress | None = None,
) -> DemoResult:
    """Seed, send one campaign end to end, and summarise it."""

    config = demo_settings(settings)
    box = Path(outbox) if outbox is not None else Path(settings.data_dir) / "demo" / "outbox"
    sink = SmtpSink(box)
    sink.start()
    runtime = Runtime(config.model_copy(update={"smtp_port": sink.port}))
    try:
        runtime.migrate()
        with runtime.session() as session:
            _seed_contacts(session, contacts)
            template_id = _seed_template(session, runtime)
        _prefill_frequency_cap(runtime)
        _install_recommender(runtime)
        with runtime.session() as session:
            campaign = create_campaign(
                session,
                name=f"postwise demo {utcnow():%Y-%m-%d %H:%M:%S}",
                template=template_id,
                segment=_SEGMENT,
            )
            campaign_id = campaign.id
        assert campaign_id is not None
        services_for(runtime).composer  # noqa: B018 - build template cache and signer up front

        def dispatched(report: Any) -> None:
            if progress is not None:
                progress("dispatch", report.audience, contacts)

        report = dispatch_campaign(runtime, campaign_id, progress=dispatched)
        before = sink.count
        stop = threading.Event()
        if progress is not None:
            watcher = threading.Thread(
                target=_watch, args=(sink, before, report.queued, progress, stop), daemon=True
            )
            watcher.start()
        started = time.monotonic()
        drain(runtime, max_wait=30.0)
        seconds = time.monotonic() - started
        stop.set()
        if progress is not None:
            progress("send", sink.count - before, report.queued)
        return _summarise(runtime, campaign_id, audience=report.audience, seconds=seconds, box=box)
    finally:
        # Connections close (QUIT) before the sink stops, so the sink sees a clean goodbye.
        runtime.close()
        sink.stop()


def _watch(sink: Any, before: int, total: int, progress: Progress, stop: threading.Event) -> None:
    while not stop.wait(0.1):
        progress("send", sink.count - before, total)


def _summarise(
    runtime: Runtime, campaign_id: int, *, audience: int, seconds: float, box: Path
) -> DemoResult:
    with runtime.session() as session:
        rows = session.execute(
            sa.select(col(Message.status), col(Message.last_error), sa.func.count())
            .where(col(Message.campaign_id) == campaign_id)
            .group_by(col(Message.status), col(Message.last_error))
        ).all()
    by_status: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for status, reason, count in rows:
        by_status[str(status)] += int(count)
        if status == MessageStatus.SKIPPED:
            skipped[str(reason or "unknown")] += int(count)
    return DemoResult(
        campaign_id=campaign_id,
        audience=audience,
        sent=by_status[MessageStatus.ACCEPTED],
        skipped=skipped,
        failed=by_status[MessageStatus.BOUNCED] + by_status[MessageStatus.DEAD],
        pending=sum(
            by_status[s]
            for s in (MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.SENDING)
        ),
        seconds=seconds,
        outbox=box.resolve(),
        files=sum(1 for _ in box.glob("*.eml")),
        dkim_domain=runtime.settings.dkim_domain or None,
        database=runtime.settings.resolved_database_url,
    )


def _seed_contacts(session: Session, count: int) -> None:
    """Contacts demo-0 ... demo-(count-1), idempotently, and the demo's segments.

    Each contact's made-up details come from a generator seeded with its number, so every run
    (and every --contacts) describes the same people the same way.
    """

    existing = {
        email
        for (email,) in session.execute(
            sa.select(col(Contact.email)).where(col(Contact.email).like("demo-%@example.org"))
        )
    }
    segment = session.exec(select(Segment).where(Segment.name == _SEGMENT)).first()
    if segment is None:
        segment = Segment(name=_SEGMENT, kind="static")
        session.add(segment)
        session.add(
            Segment(
                name=_VIP_SEGMENT,
                kind="rules",
                rules={"field": "attributes.plan", "op": "eq", "value": "pro"},
            )
        )
        session.flush()
    new: list[Contact] = []
    for i in range(count):
        email = f"demo-{i}@example.org"
        if email in existing:
            continue
        rng = random.Random(f"postwise-demo-{i}")
        roll = rng.random()
        status = ContactStatus.ACTIVE
        if roll < 0.03:
            status = ContactStatus.UNSUBSCRIBED
        elif roll < 0.04:
            status = ContactStatus.BOUNCED
        elif roll < 0.045:
            status = ContactStatus.COMPLAINED
        new.append(
            Contact(
                email=email,
                first_name=rng.choice(_FIRST_NAMES) if rng.random() > 0.05 else None,
                last_name=rng.choice(_LAST_NAMES),
                country=_COUNTRIES[i % len(_COUNTRIES)],
                status=status,
                attributes={
                    "plan": "pro" if rng.random() < 0.2 else "free",
                    "city": rng.choice(_CITIES),
                },
            )
        )
    session.add_all(new)
    session.flush()
    for contact in new:
        assert contact.id is not None
        rng = random.Random(f"postwise-demo-consent-{contact.email}")
        session.add(SegmentMember(segment_id=segment.id or 0, contact_id=contact.id))
        if contact.country == _CONSENT_COUNTRY and rng.random() < 0.7:
            session.add(
                ConsentRecord(
                    contact_id=contact.id, purpose="marketing", granted=True, source="demo"
                )
            )
        elif rng.random() < 0.01:
            session.add(
                Suppression(email_hash=email_hash(contact.email), reason="manual", detail="demo")
            )
    session.flush()


def _seed_template(session: Session, runtime: Runtime) -> int:

    template = session.exec(select(Template).where(Template.name == DEMO_TEMPLATE)).first()
    if template is None:
        template = create_template(
            session,
            runtime.settings,
            name=DEMO_TEMPLATE,
            subject=_SUBJECT,
            html=_HTML,
            variables=["plan", "city"],
        )
    assert template.id is not None
    return template.id


def _prefill_frequency_cap(runtime: Runtime) -> None:
    """Give a few contacts three recent messages already, as if sent by earlier campaigns."""

    cap = services_for(runtime).frequency_cap
    if cap is None:
        return
    with runtime.session() as session:
        ids = [
            cid
            for (cid,) in session.execute(
                sa.select(col(Contact.id))
                .where(col(Contact.email).like("demo-%@example.org"))
                .order_by(col(Contact.id))
            )
        ]
    rng = random.Random("postwise-demo-cap")
    chosen = [cid for cid in ids if rng.random() < 0.01]
    for n in range(cap.limit):
        cap.count(runtime.redis, [(cid, f"earlier-campaign-{n}") for cid in chosen])


def _install_recommender(runtime: Runtime) -> None:
    """Fit the registry's popularity recommender on a small catalogue and made-up history."""

    try:
        factory = runtime.component(RECOMMENDERS, DEFAULT_RECOMMENDER)
    except UnknownComponentError as exc:
        log.warning("demo recommendation blocks will be empty: %s", exc)
        return
    items = [
        Item(id=key, title=title, url=f"https://shop.example.com/{key}")
        for key, title in _CATALOGUE
    ]
    rng = random.Random("postwise-demo-recommend")
    interactions = [
        Interaction(contact_id=rng.randint(1, 500), item_id=rng.choice(items[:5]).id)
        for _ in range(400)
    ]
    recommender = factory()
    recommender.fit(interactions, items)
    services_for(runtime).use_recommender(recommender, name=DEFAULT_RECOMMENDER)
