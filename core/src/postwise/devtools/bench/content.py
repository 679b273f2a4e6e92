"""The per-message cost of the content path: render, build the MIME message, DKIM-sign.

``render_benchmark`` compiles a typical marketing template (30 paragraphs, a style sheet, ten
tracked links of which four come from a recommendation block, a segment condition, an
unsubscribe link) once, then times each step for ``n`` messages to different contacts and
reports medians in microseconds. ``postwise bench render`` prints the result.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate
from typing import Any

import click

from postwise.content.links import AssetConfig, TrackingConfig
from postwise.content.render import TemplateCache
from postwise.content.templates import TemplateSource
from postwise.delivery.dkim import DkimSigner, generate_key
from postwise.delivery.message import Mailbox, build_message

__all__ = ["bench_render", "benchmark_template", "render_benchmark"]

# A small catalogue with sales counts; the benchmark's recommender returns bestsellers.
_CATALOGUE: list[dict[str, Any]] = [
    {
        "id": f"sku-{i}",
        "title": f"Product {i}",
        "url": f"https://shop.example.com/p/{i}?utm_source=email",
        "image_url": f"https://shop.example.com/img/{i}.jpg",
        "sold": (i * 7919) % 1000,
    }
    for i in range(200)
]
_POPULAR: list[Mapping[str, Any]] = sorted(_CATALOGUE, key=lambda item: -item["sold"])


def _popular(contact_id: Any, n: int) -> list[Mapping[str, Any]]:
    # Rotates through the bestsellers so contacts do not all get the same items.
    start = hash(contact_id) % 20
    return _POPULAR[start : start + n]


def benchmark_template() -> TemplateSource:
    """The typical template the benchmark renders."""
    paragraphs = []
    for i in range(30):
        link = (
            f' Read <a href="https://www.example.com/articles/{i}?ref=newsletter&amp;p={i}">'
            "more</a>."
            if i % 5 == 0
            else ""
        )
        paragraphs.append(
            f'<p class="body">Paragraph {i}, {{{{ first_name | default("friend") }}}}: Lorem '
            "ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
            f"incididunt ut labore et dolore magna aliqua.{link}</p>"
        )
    html = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{{{ first_name }}}}'s news</title>
<style>
  body {{ margin: 0; font-family: Helvetica, Arial, sans-serif; }}
  p.body {{ color: #333333; font-size: 16px; line-height: 1.5; margin: 0 0 12px 0; }}
  h1 {{ color: #111111; font-size: 24px; }}
  a {{ color: #0066cc; text-decoration: underline; }}
  td.item {{ padding: 8px; text-align: center; }}
  @media (max-width: 600px) {{ p.body {{ font-size: 15px; }} }}
</style></head>
<body>
<img src="/static/logo.png" alt="Example" width="120">
<h1>Hello {{{{ first_name | default("there") }}}}!</h1>
{{% if "vip" in segments %}}<p class="body">As a VIP you get early access.</p>{{% endif %}}
{"".join(paragraphs)}
<table><tr>
{{% for item in recommendations(4) %}}
<td class="item"><a href="{{{{ item.url }}}}"><img src="{{{{ item.image_url }}}}"
  alt="{{{{ item.title }}}}" width="120"></a><br>{{{{ item.title }}}}</td>
{{% endfor %}}
</tr></table>
<p class="body"><a href="https://www.example.com/account">Your account</a> ·
<a href="mailto:help@example.com">help@example.com</a></p>
<p class="body"><a href="{{{{ unsubscribe_url }}}}">Unsubscribe</a></p>
</body></html>
"""
    return TemplateSource(
        id="bench",
        version=1,
        subject="{{ first_name | default('Hi') }}, this week's picks",
        html=html,
    )


def render_benchmark(n: int = 2000) -> dict[str, float]:
    """Median microseconds per message for render, build, RSA and Ed25519 signing.

    Keys: ``compile_ms`` (once per template version), ``render_us``, ``build_us``,
    ``sign_rsa_us``, ``sign_ed25519_us``, ``total_rsa_us`` (render + build + RSA sign),
    ``messages_per_hour_per_core`` (from ``total_rsa_us``), ``message_bytes``, and
    ``stdlib_build_us``: the same message built with ``email.message.EmailMessage``, as a
    yardstick for ``build_us``. The steps run interleaved, as in a send worker, so each pays
    for the caches the others evict.
    """
    cache = TemplateCache(assets=AssetConfig("https://cdn.example.com", frozenset()))
    source = benchmark_template()
    started = time.perf_counter()
    cache.get(source)
    compile_ms = (time.perf_counter() - started) * 1000
    tracking = TrackingConfig("https://t.example.com", b"benchmark-signing-key-0123456789")
    rsa = DkimSigner("rsa", "example.com", generate_key("rsa-sha256").private_key_pem)
    ed = DkimSigner(
        "ed", "example.com", generate_key("ed25519-sha256").private_key_pem, "ed25519-sha256"
    )
    sender = Mailbox("news@example.com", "Example News")
    timings: dict[str, list[float]] = {
        k: [] for k in ("render", "build", "rsa", "ed", "total", "stdlib")
    }
    # The stdlib build is so much slower that timing it inside the loop would mostly measure
    # the cache misses it causes in the other steps; it gets its own, shorter loop.
    stdlib_inputs: list[tuple[str, str, str, str, str]] = []
    size = 0
    for i in range(n):
        name, email = f"Contact{i}", f"c{i}@example.org"
        contact = {"id": i, "first_name": name, "email": email}
        message_id = f"bench.{i}"
        t0 = time.perf_counter()
        # The cache lookup is part of every render on the send path.
        content = cache.get(source).render(
            contact,
            message_id=message_id,
            segments=("vip",) if i % 3 == 0 else (),
            recommender=_popular,
            unsubscribe_url=f"https://t.example.com/u/{i}",
            tracking=tracking,
        )
        t1 = time.perf_counter()
        raw = build_message(
            sender=sender,
            recipient=Mailbox(email, name),
            subject=content.subject,
            text=content.text,
            html=content.html,
            message_id=message_id,
            unsubscribe_url=f"https://t.example.com/u/{i}",
            unsubscribe_mailto="unsubscribe@example.com",
        )
        t2 = time.perf_counter()
        signed = rsa.sign(raw)
        t3 = time.perf_counter()
        ed.sign(raw)
        t4 = time.perf_counter()
        if i < 200:
            stdlib_inputs.append((content.subject, content.text, content.html, email, message_id))
        timings["render"].append(t1 - t0)
        timings["build"].append(t2 - t1)
        timings["rsa"].append(t3 - t2)
        timings["ed"].append(t4 - t3)
        timings["total"].append(t3 - t0)
        size = len(signed)
    for inputs in stdlib_inputs:
        t0 = time.perf_counter()
        _stdlib_message(*inputs)
        timings["stdlib"].append(time.perf_counter() - t0)
    medians = {k: round(statistics.median(v) * 1e6, 1) for k, v in timings.items()}
    return {
        "compile_ms": round(compile_ms, 2),
        "render_us": medians["render"],
        "build_us": medians["build"],
        "sign_rsa_us": medians["rsa"],
        "sign_ed25519_us": medians["ed"],
        "total_rsa_us": medians["total"],
        "messages_per_hour_per_core": round(3600e6 / medians["total"]),
        "message_bytes": size,
        "stdlib_build_us": medians["stdlib"],
    }


def _stdlib_message(subject: str, text: str, html: str, recipient: str, message_id: str) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "Example News <news@example.com>"
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = formatdate()
    message["Message-ID"] = f"<{message_id}@example.com>"
    message["List-Unsubscribe"] = "<https://t.example.com/u/1>, <mailto:unsubscribe@example.com>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message.as_bytes()


@click.command("render")
@click.option("--messages", default=2000, show_default=True, help="Messages to render and sign.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_render(*, messages: int, as_json: bool) -> None:
    """Content path: render, MIME build and DKIM signing, median microseconds per message."""
    result = render_benchmark(messages)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(json.dumps(result, indent=2))
