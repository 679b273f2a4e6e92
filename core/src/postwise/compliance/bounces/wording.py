"""What the remote side's words say: one ordered list of patterns per reason, and the decision.

:func:`decide` is the only place a failure gets its :class:`~.reasons.BounceReason`: first the
wording (in a fixed precedence: sender-side refusals before recipient-side ones, specific
wording before generic), then the status code, then ``undetermined``. The kind follows from the
reason and the permanence through :func:`~.reasons.kind_for`.
"""

from __future__ import annotations

import re

from postwise.compliance.bounces.reasons import REASONS, BounceKind, BounceReason, kind_for
from postwise.compliance.bounces.status import describe, reason_from_status

__all__ = ["decide", "matched_line", "patterns", "reason_from_text"]


def patterns(*alternatives: str) -> re.Pattern[str]:
    """One case-insensitive pattern matching any of ``alternatives``."""
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.I)


# Characters between a sender word and its verdict, none of them starting a recipient word:
# "sender ok, recipient unknown" is about the recipient.
_NOT_RECIPIENT = r"(?:(?!recipient|rcpt|destinat|empf|adressat|user|mailbox|usuario)[^.\n])"

_R = BounceReason

#: (reason, pattern) in precedence order: the first that matches decides.
RULES: list[tuple[BounceReason, re.Pattern[str]]] = [
    (
        _R.SENDER_REJECTED,
        patterns(
            r"sender (address )?verif\w* failed|unverified sender|sender verify failed",
            r"verification failed for <",
            r"(sender|return[- ]path|envelope[- ]from|mail from)( address| domain)?"
            rf"{_NOT_RECIPIENT}{{0,30}}"
            r"(does not exist|doesn't exist|not found|unknown|invalid|unverifiable|not verified|"
            r"could not be verified|rejected|must (exist|resolve)|not (be )?resolv)",
            r"unroutable sender|sender domain\b|domain of sender address",
            r"(can't|cannot|could not|unable to) determine purported responsible address|"
            r"\bPRA\b",
            r"sender (is )?(on|in) (the )?[\w' ]{0,20}(block|black|deny) ?list",
            r"(mail from|sender)[^\n]{0,30}(blocked|refused|not allowed|denied)",
            r"sender address has null mx|null mx.{0,20}sender",
            rf"absender\w*{_NOT_RECIPIENT}{{0,40}}"
            r"(existiert nicht|unbekannt|nicht vorhanden|abgelehnt|ung(ü|ue)ltig)",
            rf"exp(é|e)diteur{_NOT_RECIPIENT}{{0,40}}"
            r"(n'existe pas|inconnue?|refus(é|e)e?|invalide)",
            rf"remitente{_NOT_RECIPIENT}{{0,40}}"
            r"(no existe|desconocido|rechazad[oa]|no v(á|a)lid[oa])",
        ),
    ),
    (
        _R.BLOCKED,
        patterns(
            r"\b(no|missing|bad|invalid|failed) (ptr|rdns|reverse[- ]dns)",
            r"reverse (dns|lookup|dns lookup)|\brdns\b|\bptr (record|lookup)|"
            r"(ptr|reverse) [\w ]{0,20}(does not match|mismatch|failed|not found)",
            r"\b(rbl|dnsbl|rbls|dnsrbl|rhsbl)\b|blocked using|"
            r"spamhaus|spamcop|barracuda|sorbs|\bcbl\b|uceprotect|psbl|dnswl|surbl|senderbase",
            r"black ?list|block ?list|deny ?list",
            r"(?<!not )listed (at|on|in|by)",
            r"client host[^\n]{0,60}(rejected|blocked|refused)",
            r"\b(ip|host|server|network|connection|address|domain|mta)\b[^.\n]{0,40}"
            r"\b(blocked|banned|black-?listed|blacklisted|rejected due to|refused due to)",
            r"\bblocked\b[^.\n]{0,30}\b(ip|host|server|network)\b",
            r"(poor|bad|low) (ip |sender |domain )?reputation|reputation",
            r"\bTSS\d\d\b|\bRP-00\d\b|\bHL:\d+\b|AS\(\d+\)",
            r"access denied, banned|\bbanned\b",
            r"suspicious (activity|connection)|looks (suspiciously )?like spammer",
            r"dynamic (ip|address)|dial-?up|residential",
        ),
    ),
    (_R.VIRUS_DETECTED, patterns(r"\bvirus", r"malware", r"\binfected\b", r"trojan")),
    (
        _R.MAILBOX_FULL,
        patterns(
            r"mail ?box (is )?(full|over)|full mailbox",
            r"over (the |its |their )?(allowed |storage |disk )?quota",
            r"quota (exceeded|full|violation)|\bover ?quota\b",
            r"exceed(s|ed)? (the |its |their |his |her )?(storage |mailbox |disk )?quota",
            r"storage quota|disk ?(space )?quota|diskspace quota|overdrawn",
            r"mailbox size limit|would exceed mailbox",
            r"not enough (disk )?space|(user|recipient)('s)? (storage|disk) (is )?full",
            r"mailfolder is full|mail box full|inbox is full|is over (the )?limit",
            r"postfach (des empf(ä|ae)ngers )?(ist )?(voll|(ü|ue)berf(ü|ue)llt)",
            r"bo[iî]te (aux lettres )?(du destinataire )?(est )?pleine|quota d[ée]pass[ée]",
            r"buz[oó]n (est[aá] )?lleno",
            r"容量[^\n。]{0,15}(オーバー|超過|いっぱい|一杯)",
            r"ящик (переполнен|полон)|превышен[^\n]{0,20}квот",
        ),
    ),
    (
        _R.SUSPENDED,
        patterns(
            r"(account|mailbox|user|address|recipient)\b[^.\n]{0,30}\b(has been |is |was )?"
            r"(disabled|deactivated|inactive|suspended|locked|frozen|expired|discontinued)",
            r"mailbox (is )?(disabled|inactive|not active|unavailable for now)",
            r"(inactive|disabled|suspended|closed|frozen) (account|mailbox|user)",
            r"account (is )?(closed|on hold)",
            r"temporarily (locked|disabled)|not (currently )?active",
        ),
    ),
    (
        _R.HAS_MOVED,
        patterns(r"(user|recipient|address|mailbox) has moved|has moved to|\bmoved to <"),
    ),
    (
        _R.NOT_ACCEPTED,
        patterns(
            r"null mx",
            r"(does not|doesn't|will not|won't) accept (any )?(e-?)?mail",
            r"accepts? no (e-?)?mail|not accepting (any )?(e-?)?mail|no mail accepted",
        ),
    ),
    (
        _R.USER_UNKNOWN,
        patterns(
            r"user unknown|unknown user|destinatario desconocido",
            r"non-?existent (user|mailbox|recipient|address|account)",
            # Exchange Online's directory-based edge blocking: the recipient does not exist.
            r"5\.4\.1 (<[^>\s]*>:? )?recipient address rejected: access denied",
            # IronPort's LDAP accept query: the address is not in the directory.
            r"5\.1\.0 address rejected",
            r"\brecipient\b[^;\n]{0,60}\b(unknown|not found|invalid|does not exist)\b",
            r"unknown (recipient|address|mailbox|local ?part|account|alias|e-?mail)",
            r"no such (user|mailbox|recipient|address|account|person|local user|alias)",
            r"(user|mailbox|recipient|address|account|alias|e-?mail)( name| address)? "
            r"(is )?(unknown|not found|invalid|not valid|not known|does not exist)",
            r"(mailbox|account|address|user|recipient|alias)\b[^.;\n]{0,40}\b"
            r"(does not|doesn't|no longer|not) exists?",
            r"(address|mailbox|recipient|user) (could|can)(n't| ?not) be found",
            r"invalid (recipient|mailbox|address|user|account)",
            r"not a valid (user|mailbox|recipient|address)",
            r"doesn't have an? [\w.-]+ account",
            r"recipient (name )?is not recognized|not recognized as a valid",
            r"recip(ient)?notfound|recipient not found|mailbox not found|user not found",
            r"no mailbox here by that name|mailbox unavailable|mailbox not available",
            r"not listed in (the )?(domino directory|public name (&|and) address book)",
            r"address not found|bad destination mailbox|not a registered (gateway )?user",
            r"(?<!sender )(?<!sender's )address (is )?(unknown|invalid)",
            r"no (such )?(valid )?(recipients?|mailbox|account)( here| at| for)",
            r"unrouteable address|undeliverable address|no valid recipients",
            r"not our customer|(user|account) (doesn't|does not) have",
            r"mailbox name not allowed|is not a known user|no account by that name",
            r"this user doesn't have|no such person at this address",
            r"empf(ä|ae)nger (ist )?unbekannt|unbekannte[rn]? (empf(ä|ae)nger|benutzer)",
            r"benutzer (ist )?unbekannt|"
            r"(postfach|adresse)[^.\n]{0,40}(existiert nicht|nicht vorhanden)",
            r"(utilisateur|destinataire|adresse) inconnue?",
            r"(adresse|bo[iî]te|compte|utilisateur|destinataire)[^.\n]{0,40}n'existe pas",
            r"usuario desconocido|(direcci[oó]n|buz[oó]n|cuenta|usuario)[^.\n]{0,40} no existe",
            r"(メールアドレス|アドレス|宛先|ユーザー?|アカウント)[^\n。]{0,12}"
            r"(存在しません|存在しない|見つかりません)",
            r"宛先不明",
            r"(пользователь|адрес|ящик)[^\n]{0,30}(не существует|не найден|неизвест)",
        ),
    ),
    (
        # A DNS lookup that failed for now ("Host not found, try again" is Postfix's SERVFAIL):
        # before the host-unknown words it contains, so a DNS glitch never suppresses.
        _R.NETWORK_ERROR,
        patterns(
            r"not found, try again|name service error[^\n]{0,120}try again",
            r"temporary (dns|lookup|name server) (failure|error)",
        ),
    ),
    (
        _R.HOST_UNKNOWN,
        patterns(
            r"host unknown|unknown host|host not found|host or domain name not found",
            r"domain (is )?(not reachable|unreachable)",
            r"(domain|host) (name )?(not found|does not exist|doesn't exist|is invalid|unknown)",
            r"unknown (domain|host)|no such (domain|host)|domain (is )?not (found|valid)",
            r"non-?existent (host|domain)|nonexistent (host|domain)",
            r"no mx (record|host)|no (valid )?mx|all relevant mx records point to non-existent",
            r"name or service not known|nxdomain|domain lookup failed|"
            r"could not be resolved|couldn't find any host named",
        ),
    ),
    (
        _R.EXPIRED,
        patterns(
            r"retry time(out)? (not reached|exceeded)",
            r"delivery time expired|message expired|expired after",
            r"(cannot|could not) (send|deliver) (the )?message for \d+ (days|hours)",
            r"could not be delivered (for|within) \d+",
            r"too long in (the )?queue|in the queue too long|deferred for too long",
            r"giving up|given up|gave up",
            r"has not been delivered[^\n]{0,40}(yet|within)",
        ),
    ),
    (
        _R.NETWORK_ERROR,
        patterns(
            r"connection (timed out|refused|reset|closed|lost|dropped)|timed out",
            r"(could not|couldn't|unable to|cannot|can't) (connect|establish|open)",
            r"(host|network) (is )?(unreachable|not reachable)|no route to host",
            r"lost connection|broken pipe|conversation with [^\n]{0,60} (timed out|failed)",
            r"(name server|dns|nameserver)[^\n]{0,30}(failure|error|timeout|not respond)",
            r"temporary lookup failure|malformed or unexpected name server reply",
            r"mail (loop|forwarding loop)|loops back to myself|too many hops|routing loop",
            r"forwarding loop|alias(ing)? loop|loop (detected|broken)|unrouteable mail domain",
            r"no answer from",
        ),
    ),
    (
        # Authentication results name the sender's domain: before the generic spam words.
        _R.POLICY,
        patterns(r"\b(dmarc|spf|dkim|sender id)\b", r"unauthenticated"),
    ),
    (
        _R.SPAM_DETECTED,
        patterns(
            r"spam",
            r"unsolicited",
            r"\bjunk\b",
            r"bulk (e-?mail|mail)",
            r"content (was )?rejected|message content rejected|content filter",
            r"complaints",
            r"scor(e|ing)[^\n]{0,20}(too high|exceed)",
            r"high probability|suspected|(looks|appears) like",
        ),
    ),
    (
        _R.SECURITY_ERROR,
        patterns(
            r"\b(tls|starttls|ssl)\b",
            r"certificate",
            r"(smtp |sasl )?authentication (is )?(required|failed)|must authenticate|"
            r"not authenticated|auth(entication)? required",
            r"encryption (required|needed)",
        ),
    ),
    (
        _R.POLICY,
        patterns(
            r"\b(dmarc|spf|dkim|sender id)\b",
            r"unauthenticated|authentication (results|check)",
            r"\bpolicy\b|policies",
            r"not (authorized|permitted|allowed)|unauthorized|prohibited",
            r"access denied|(refused|rejected|denied) (for|by|due|because)",
            r"\bblocked\b",
        ),
    ),
    (
        _R.RELAY_DENIED,
        patterns(
            r"relay(ing)? (access )?(denied|not permitted|prohibited|not allowed)",
            r"(not permitted|unable|not allowed|will not|cannot) (to )?relay",
            r"we do not relay|no relaying|not a gateway|relay not permitted",
        ),
    ),
    (
        _R.RATE_LIMITED,
        patterns(
            r"too many (connections|messages|recipients|mails|sessions|concurrent)",
            r"rate (limit|exceeded)|rate-?limit|ratelimit|throttl",
            r"(sending|receiving|message) (limit|quota) (exceeded|reached)",
            r"gr[ae]y ?list",
            r"try (again )?later|temporarily deferred",
            r"connection (limit|count)|exceeded the (maximum|max)",
        ),
    ),
    (
        _R.MESSAGE_TOO_BIG,
        patterns(
            r"message (size|length) exceeds|exceeds (the )?(max(imum)? )?(message )?size",
            r"(message|mail|email) (is )?too (big|large|long)|size limit|too big for",
            r"message (is )?larger than",
        ),
    ),
    (
        _R.FILTERED,
        patterns(
            r"(rejected|refused|blocked) by (the )?(recipient|user)'?s?\b",
            r"recipient (has|does not|doesn't) (chosen|set|want|accept)",
            r"(user|recipient)'s filter|filtered|filter rules",
            r"(does not|doesn't) receive (e-?mail|mail|messages) from",
        ),
    ),
    (
        _R.SYSTEM_ERROR,
        patterns(
            r"system (error|failure|full|is full|not accepting)",
            r"insufficient (system )?storage|out of (disk|memory|storage)",
            r"(local|internal|server) (configuration |server )?error|misconfigur",
            r"server (is )?(too )?busy|resources? (temporarily )?unavailable",
            r"service (is )?(temporarily )?(not available|unavailable)",
            r"mailer error|command (died|failed)|pipe to|unable to deliver to local",
            r"temporary (local )?(problem|failure|error)",
            r"i/o error|database error|internal software error",
        ),
    ),
    (
        _R.CONTENT_ERROR,
        patterns(
            r"(invalid|illegal|malformed|bad) (mime|header|character|content|message)",
            r"(header|line) (is )?too long|8-?bit|content[- ]type",
            r"(message|attachment) (type|format) (not )?(allowed|supported)",
        ),
    ),
    (
        _R.SYNTAX_ERROR,
        patterns(
            r"syntax error|command (not )?(unrecognized|recognized|implemented)",
            r"unrecognized command|bad sequence of commands|invalid command",
        ),
    ),
]


_AFTER_DATA_RE = re.compile(
    r"(in\s+reply\s+to|after)\s+(the\s+)?(end\s+of\s+)?data(\s+command)?\b", re.I
)


def reason_from_text(text: str) -> BounceReason | None:
    """The first reason (in precedence order) whose wording appears in ``text``."""
    for reason, pattern in RULES:
        if pattern.search(text):
            return reason
    return None


def matched_line(text: str, reason: BounceReason) -> str:
    """The line of ``text`` whose wording decided ``reason`` (empty when none did)."""
    for candidate, pattern in RULES:
        if candidate is reason:
            match = pattern.search(text)
            if match:
                start = text.rfind("\n", 0, match.start()) + 1
                end = text.find("\n", match.end())
                return text[start : end if end != -1 else len(text)].strip()
    return ""


def decide(
    permanent: bool | None,
    status: str | None,
    text: str,
    *,
    coded: bool | None = None,
    context: str = "",
) -> tuple[BounceReason, BounceKind, str]:
    """The reason, kind and an explanation for a failure.

    ``permanent`` is ``None`` when nothing said whether the failure was permanent; ``status``
    the enhanced status code if any; ``text`` the remote side's words. ``coded`` says whether
    a status or SMTP reply code backs ``permanent`` (default: whether ``status`` is given): a
    failure of unrecognised cause whose permanence only prose asserts gets no verdict.
    ``context`` is the rest of the report (the MTA's own account of the session), read only
    for when the refusal came.
    """
    suffix = f" ({status}: {describe(status)})" if status else ""
    reason = reason_from_text(text)
    if reason is not None:
        how = "from the wording"
    else:
        reason = reason_from_status(status)
        how = "from the status code"
    if reason is _R.USER_UNKNOWN and (
        _AFTER_DATA_RE.search(text) or _AFTER_DATA_RE.search(context)
    ):
        # Refused after DATA: the server had accepted the recipient at RCPT, so the mailbox
        # exists and something about this message was refused (Sisimai calls it "filtered").
        reason, how = _R.FILTERED, "the refusal came after DATA, when the recipient was known"
    if reason is None or reason in {_R.DELIVERED}:
        reason, how = _R.UNDETERMINED, "nothing in the wording or code says why"
    if coded is None:
        coded = status is not None
    if reason is _R.UNDETERMINED:
        # A reported failure of unrecognised cause is a soft bounce whatever its permanence;
        # without evidence that anything failed it gets no verdict.
        kind = kind_for(reason, True if coded else None)
    else:
        kind = kind_for(reason, permanent)
    when = {True: "permanent", False: "temporary", None: "of unknown permanence"}[permanent]
    explanation = f"{reason.value}: {REASONS[reason].description} ({when}, {how}){suffix}"
    return reason, kind, explanation
