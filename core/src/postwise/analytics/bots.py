"""Telling machines from people: machine opens and link-scanner clicks.

Opens and clicks by machines are recorded (a message whose images a proxy fetched was at least
delivered) but flagged, and metrics leave them out of rates by default:

* **machine opens** (``machine_open: true``): Apple Mail Privacy Protection fetches every image
  of every message on delivery, from Apple's network (17.0.0.0/8) with the bare user agent
  ``Mozilla/5.0``; image proxies (Google's ``GoogleImageProxy``, Yahoo's ``YahooMailProxy``)
  fetch on the reader's behalf, which is a person opening, except when they prefetch within
  moments of delivery; and anything announcing itself as a bot or an HTTP library.
* **scanner clicks** (``scanner: true``): security gateways (Proofpoint, Mimecast, Barracuda,
  Microsoft Safe Links...) follow every link of a message as it arrives. A click is flagged when
  its user agent names a scanner or an HTTP library, when it comes within a couple of seconds of
  the send, or when it is one of several different links of the same message clicked within a
  couple of seconds (a person cannot read and click that fast).

These are heuristics with stated reasons (``machine_reason`` / ``scanner_reason``), kept in the
event so a rule can be re-examined later.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import redis

__all__ = [
    "BURST_LINKS",
    "BURST_SECONDS",
    "PREFETCH_SECONDS",
    "SCANNER_DELAY_SECONDS",
    "classify_click",
    "classify_open",
    "record_click_burst",
]

#: Apple's network, from which Mail Privacy Protection fetches images.
_APPLE_NETWORK: Final = ipaddress.ip_network("17.0.0.0/8")
#: Image proxies that fetch for a reader (a person) but also prefetch on delivery.
_IMAGE_PROXIES: Final = ("googleimageproxy", "yahoomailproxy", "ggpht.com")
#: An open through an image proxy this soon after the send is a prefetch.
PREFETCH_SECONDS: Final = 60.0
#: A click this soon after the send is a scanner.
SCANNER_DELAY_SECONDS: Final = 2.0
#: This many different links of one message clicked within BURST_SECONDS is a scanner.
BURST_LINKS: Final = 3
BURST_SECONDS: Final = 2.0

_AUTOMATION: Final = re.compile(
    r"bot\b|crawler|spider|headless|python-requests|python-urllib|aiohttp|httpx|curl/|wget|"
    r"go-http-client|java/|okhttp|libwww|scrapy|phantomjs|node-fetch|axios|preview|"
    r"facebookexternalhit|slack|whatsapp|discord",
    re.IGNORECASE,
)
_SCANNERS: Final = re.compile(
    r"barracuda|mimecast|proofpoint|ppops|urldefense|messagelabs|symantec|trend ?micro|"
    r"fortinet|fortiguard|forcepoint|zscaler|ironport|cisco|sophos|mcafee|kaspersky|"
    r"safelinks|microsoft office|ms-office|outlook-ios-linkpreview|virustotal|checkpoint|"
    r"cloudmark|spamtitan|hornetsecurity|avanan|abnormal",
    re.IGNORECASE,
)


def _in_apple_network(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address in _APPLE_NETWORK


def _seconds_since(sent_at: datetime | None, now: datetime) -> float | None:
    return None if sent_at is None else (now - sent_at).total_seconds()


def classify_open(
    user_agent: str | None, ip: str | None, *, sent_at: datetime | None, now: datetime
) -> str | None:
    """Why this open was made by a machine (``apple_mpp``, ``proxy_prefetch``,
    ``automation``), or ``None`` for a person."""
    agent = (user_agent or "").strip()
    if _in_apple_network(ip) or agent == "Mozilla/5.0":
        return "apple_mpp"
    lowered = agent.lower()
    if any(proxy in lowered for proxy in _IMAGE_PROXIES):
        elapsed = _seconds_since(sent_at, now)
        if elapsed is not None and elapsed < PREFETCH_SECONDS:
            return "proxy_prefetch"
        return None
    if not agent or _AUTOMATION.search(agent):
        return "automation"
    return None


def classify_click(
    user_agent: str | None,
    *,
    sent_at: datetime | None,
    now: datetime,
    burst: bool = False,
) -> str | None:
    """Why this click was made by a link scanner (``scanner_agent``, ``automation``,
    ``on_delivery``, ``burst``), or ``None`` for a person."""
    agent = (user_agent or "").strip()
    if _SCANNERS.search(agent):
        return "scanner_agent"
    if not agent or _AUTOMATION.search(agent):
        return "automation"
    elapsed = _seconds_since(sent_at, now)
    if elapsed is not None and elapsed < SCANNER_DELAY_SECONDS:
        return "on_delivery"
    if burst:
        return "burst"
    return None


def record_click_burst(client: redis.Redis, message_id: str, url: str, now: float) -> bool:
    """Note a click of ``url`` in ``message_id``; return whether it completes a burst
    (``BURST_LINKS`` different links of the message within ``BURST_SECONDS``)."""
    key = f"postwise:clickburst:{message_id}"
    pipe = client.pipeline(transaction=True)
    pipe.zadd(key, {url: now})
    pipe.zremrangebyscore(key, "-inf", now - BURST_SECONDS)
    pipe.zcard(key)
    pipe.expire(key, int(BURST_SECONDS) + 5)
    result = pipe.execute()
    return int(result[2]) >= BURST_LINKS
