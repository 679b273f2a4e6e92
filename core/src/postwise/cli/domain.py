"""``postwise domain check DOMAIN``: SPF, DKIM and DMARC of a sending domain."""

from __future__ import annotations

from pathlib import Path

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.errors import ValidationError

__all__ = ["domain"]

_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


@click.group()
def domain() -> None:
    """Check the DNS records a sending domain needs."""


@domain.command("check")
@click.argument("name")
@click.option("--selector", default=None, help="DKIM selector (default: settings.dkim_selector).")
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="DKIM private key to compare with DNS (default: dkim_private_key_path).",
)
@click.option(
    "--nameserver",
    default=None,
    help="Ask this DNS server (IP or IP:PORT) instead of the system resolver.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def check(
    ctx: click.Context,
    *,
    name: str,
    selector: str | None,
    key_path: Path | None,
    nameserver: str | None,
    as_json: bool,
) -> None:
    """Check SPF, DKIM and DMARC of NAME. Exits 1 when a check fails (warnings pass)."""
    from postwise.compliance.domain import check_domain, make_resolver

    settings = get_runtime(ctx).settings
    resolver = None
    if nameserver:
        host, _, port = (
            nameserver.rpartition(":") if nameserver.count(":") == 1 else (nameserver, "", "")
        )
        if not port.isdigit() and port:
            raise ValidationError(f"{nameserver!r} is not IP or IP:PORT", field="nameserver")
        resolver = make_resolver([host or nameserver], port=int(port) if port else 53)
    report = check_domain(
        name,
        selector=selector or settings.dkim_selector,
        private_key_path=key_path or settings.dkim_private_key_path,
        resolver=resolver,
    )
    if as_json:
        emit_json(report.to_dict())
    else:
        for item in report.checks:
            click.echo(f"[{_MARK[item.status.value]}] {item.name:<5} {item.detail}")
            if item.record:
                click.echo(f"        {item.where}: {item.record}")
    if not report.ok:
        ctx.exit(1)
