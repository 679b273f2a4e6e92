"""``postwise segments``: define and count segments."""

from __future__ import annotations

import json

import click
from sqlmodel import select

from postwise.cli.common import emit_json, get_runtime
from postwise.contacts.segments import (
    count_segment,
    get_segment,
    set_consent_purpose,
    validate_rules,
)
from postwise.db.models import Segment
from postwise.errors import ConflictError, ValidationError


@click.group()
def segments() -> None:
    """Segments: rule-based (compiled to SQL) or static lists."""


@segments.command()
@click.argument("name")
@click.option("--rules", required=True, help='Rule tree as JSON, e.g. \'{"tag": "vip"}\'.')
@click.option(
    "--consent-purpose",
    default=None,
    help="Marketing to this segment needs valid consent for this purpose (e.g. newsletter).",
)
@click.pass_context
def create(ctx: click.Context, name: str, rules: str, consent_purpose: str | None) -> None:
    """Create the rule segment NAME."""
    try:
        tree = json.loads(rules)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not valid JSON: {exc.msg}", field="rules") from None
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        validate_rules(tree, session=session)
        if session.exec(select(Segment).where(Segment.name == name)).first():
            raise ConflictError(f"a segment called {name!r} exists already")
        segment = Segment(name=name, kind="rules", rules=tree)
        set_consent_purpose(segment, consent_purpose)
        session.add(segment)
        session.flush()
        click.echo(f"segment {name!r} created: {count_segment(session, segment)} contacts")


@segments.command()
@click.argument("name")
@click.argument("purpose", required=False)
@click.option("--none", "clear", is_flag=True, help="Remove the segment's consent purpose.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def consent(ctx: click.Context, name: str, purpose: str | None, clear: bool, as_json: bool) -> None:
    """Show or set the consent purpose marketing to segment NAME needs.

    With PURPOSE, every marketing send to the segment dispatched from now on needs the
    contact's valid consent for it; with --none, only the global and regional rules apply.
    """
    if purpose is not None and clear:
        raise ValidationError("give a PURPOSE or --none, not both", field="purpose")
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        segment = get_segment(session, name)
        if purpose is not None or clear:
            set_consent_purpose(segment, purpose)
            session.add(segment)
        current = segment.consent_purpose
    if as_json:
        emit_json({"segment": name, "consent_purpose": current})
    elif current is None:
        click.echo(f"segment {name!r} needs no consent of its own")
    else:
        click.echo(f"segment {name!r} needs consent for {current!r}")


@segments.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def count(ctx: click.Context, name: str, as_json: bool) -> None:
    """Count the members of segment NAME."""
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        total = count_segment(session, get_segment(session, name))
    if as_json:
        emit_json({"segment": name, "count": total})
    else:
        click.echo(total)
