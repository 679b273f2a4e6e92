"""``postwise templates``: create, version, inspect and preview templates."""

from __future__ import annotations

import json
from pathlib import Path

import click

from postwise.cli.common import emit_json, get_runtime


def _read(path: Path | None) -> str | None:
    return None if path is None else path.read_text(encoding="utf-8")


@click.group()
def templates() -> None:
    """Templates: validated on save, immutable versions."""


@templates.command()
@click.argument("name")
@click.option("--subject", required=True, help="The subject line (merge tags allowed).")
@click.option("--html", "html_file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--text",
    "text_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Text part (default: generated from the HTML).",
)
@click.option("--kind", type=click.Choice(["marketing", "transactional"]), default="marketing")
@click.option(
    "--var", "variables", multiple=True, help="A variable beyond the contact fields (repeat)."
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def create(
    ctx: click.Context,
    *,
    name: str,
    subject: str,
    html_file: Path,
    text_file: Path | None,
    kind: str,
    variables: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create template NAME from an HTML file."""
    from postwise.delivery.templates import create_template, get_version, template_dict

    runtime = get_runtime(ctx)
    runtime.migrate()
    with runtime.session() as session:
        template = create_template(
            session,
            runtime.settings,
            name=name,
            subject=subject,
            html=_read(html_file) or "",
            text=_read(text_file),
            kind=kind,
            variables=variables,
        )
        assert template.id is not None
        data = template_dict(template, get_version(session, template.id))
    if as_json:
        emit_json(data)
    else:
        click.echo(f"template {data['id']} {data['name']!r} created (version 1)")


@templates.command()
@click.argument("template")
@click.option("--subject", required=True)
@click.option("--html", "html_file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--text", "text_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--var", "variables", multiple=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def version(
    ctx: click.Context,
    *,
    template: str,
    subject: str,
    html_file: Path,
    text_file: Path | None,
    variables: tuple[str, ...],
    as_json: bool,
) -> None:
    """Save a new version of TEMPLATE (id or name) and make it current."""
    from postwise.delivery.templates import add_version, get_template, template_dict

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        stored = get_template(session, template)
        assert stored.id is not None
        saved = add_version(
            session,
            runtime.settings,
            stored.id,
            subject=subject,
            html=_read(html_file) or "",
            text=_read(text_file),
            variables=variables,
        )
        data = template_dict(stored, saved)
    if as_json:
        emit_json(data)
    else:
        click.echo(f"template {data['id']} is now at version {saved.version}")


@templates.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List templates."""
    from sqlmodel import col, select

    from postwise.db.models import Template
    from postwise.delivery.templates import template_dict

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        rows = [template_dict(t) for t in session.exec(select(Template).order_by(col(Template.id)))]
    if as_json:
        emit_json({"templates": rows})
        return
    for row in rows:
        click.echo(f"{row['id']:>5}  {row['name']}  ({row['kind']}, v{row['current_version']})")


@templates.command()
@click.argument("template")
@click.option("--version", "number", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, template: str, number: int | None, as_json: bool) -> None:
    """Show TEMPLATE (id or name) and one version of it."""
    from postwise.delivery.templates import get_template, get_version, template_dict

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        stored = get_template(session, template)
        assert stored.id is not None
        data = template_dict(stored, get_version(session, stored.id, number))
    if as_json:
        emit_json(data)
        return
    click.echo(f"template {data['id']} {data['name']!r} ({data['kind']})")
    click.echo(f"version {data['version']['version']}: {data['version']['subject']}")
    click.echo(data["version"]["html"])


@templates.command()
@click.argument("template")
@click.option("--contact", "contact_id", type=int, help="Render for this contact.")
@click.option("--fields", default="{}", help="Merge values as a JSON object.")
@click.option("--version", "number", type=int, default=None)
@click.option("--part", type=click.Choice(["subject", "html", "text", "all"]), default="all")
@click.pass_context
def preview(
    ctx: click.Context,
    *,
    template: str,
    contact_id: int | None,
    fields: str,
    number: int | None,
    part: str,
) -> None:
    """Render TEMPLATE for a contact or made-up fields (no tracking)."""
    from postwise.delivery.compose import load_contacts
    from postwise.delivery.templates import get_template
    from postwise.delivery.templates import preview as render_preview
    from postwise.errors import NotFoundError, ValidationError

    try:
        extra = json.loads(fields)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"--fields is not JSON: {exc}", field="fields") from None
    if not isinstance(extra, dict):
        raise ValidationError("--fields must be a JSON object", field="fields")
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        stored = get_template(session, template)
        assert stored.id is not None
        merge: dict[str, object] = {}
        if contact_id is not None:
            contact = load_contacts(session, [contact_id]).get(contact_id)
            if contact is None:
                raise NotFoundError(f"no contact with id {contact_id}")
            merge = contact.merge_fields()
        merge.update(extra)
        rendered = render_preview(
            session, runtime.settings, stored.id, fields=merge, version=number
        )
    if part == "all":
        click.echo(f"Subject: {rendered['subject']}\n\n{rendered['text']}")
    else:
        click.echo(rendered[part])
