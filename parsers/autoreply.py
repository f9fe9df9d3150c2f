"""Recognise mail that no person wrote: bounces (RFC 3464 DSNs and classic MTA bounces) and auto-replies.

This module's one job is to say "do not act on this and do not answer it", so the daemon never loops with a
vacation responder or a mailer-daemon. A bounce is not an auto-reply and an out-of-office is not a bounce;
`parse()` asks for a bounce first because a DSN may also carry `Auto-Submitted`.

Choices:
- A delayed DSN (RFC 3464 `Action: delayed`, or a "still trying" warning) is reported as a bounce with
  `action="delayed"`, no failed recipients (they go to `delayed_recipients`) and a reason that says it is not
  a failure. Like every bounce it never changes a request's state; the MTA will send a real failure later.
- A success DSN (`Action: delivered/relayed/expanded`) is a bounce-kind report too: mail nobody wrote.
- `X-Auto-Response-Suppress` is only a hint: Outlook puts `X-Auto-Response-Suppress: All` on ordinary mail,
  so it never makes an auto-reply by itself; it only lets a single out-of-office phrase in the body count.
- Out-of-office phrases are read from the new text only (quotes stripped), and not when the opening lines
  hold a decision keyword: "SETUJU. Mulai besok saya sedang cuti" is a reply, not an auto-reply.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import Message

from subdomaind.parsers.model import AutoReplyInfo, BounceInfo, ParsedMessage, Vocabulary
from subdomaind.parsers.reply import OPENING_LINES, strip_quoted

__all__ = ["detect_bounce", "detect_auto_reply", "LOOP_HEADER"]

# Our own outgoing mail carries this header; seeing it inbound means our mail came back to us.
LOOP_HEADER = "X-Subdomaind-Loop"

_ADDR_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_MSGID_RE = re.compile(r"<[^<>\s]+@[^<>\s]+>")
_STATUS_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_MAX_RECIPIENTS = 50

# ---------------------------------------------------------------------------------------------------------
# Bounces
# ---------------------------------------------------------------------------------------------------------

# RFC 3464 section 2: report-type=delivery-status; RFC 6533 adds the "global" (UTF-8) variants.
_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_ORIGINAL_TYPES = frozenset({"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"})
# Local parts and display names of the programs that send bounces (RFC 5321 section 4.5.5 null sender,
# RFC 2142 role addresses).
_DAEMON_LOCAL_RE = re.compile(
    r"^(mailer-daemon|mailer_daemon|mailerdaemon|mail-daemon|maildaemon|postmaster|mdaemon|mmdf|smtp|"
    r"bounce|bounces|mail\.delivery|nobody|microsoftexchange[0-9a-f]*|mail-delivery-system)$",
    re.IGNORECASE,
)
_DAEMON_NAME_RE = re.compile(
    r"mail delivery (system|subsystem|service)|mailer.?daemon|postmaster|mail administrator|"
    r"microsoft outlook|delivery status notification|mail system|sistem pengiriman surel",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver(ed|able)|delivery status notification|mail delivery failed|returned mail|"
    r"delivery (failure|failed|notification|problem|has failed)|failure notice|non.?deliver|"
    r"could not send|message not delivered|not delivered|mail system error|nicht zustellbar|"
    r"unzustellbar|non remis|no entregado|pesan tidak terkirim|tidak terkirim|gagal terkirim|"
    r"gagal dikirim|tidak dapat dikirim|warning: could not send|delayed mail|delivery delayed|"
    r"could not be delivered|delivery warning|failed mail|delivery problem|"
    r"mail delivery (delayed|warning)|returned to sender|bounce|automatically rejected|rejected mail",
    re.IGNORECASE,
)
_DELAY_RE = re.compile(
    r"\(delay\)|delayed|postponed|warning: could not send|will (?:continue|keep) trying|still trying|"
    r"continue to try|"
    r"not yet been delivered|has not been delivered yet|retry|tertunda|masih dicoba|belum terkirim|"
    r"this is a warning|temporary failure|transient",
    re.IGNORECASE,
)
_FAILURE_LINE_RE = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|address|recipient)|does not exist|doesn't exist|"
    r"not found|mailbox (?:is )?(unavailable|not found|full|disabled)|full mailbox|not known|invalid|error|"
    r"did not (?:exactly )?match|recipient (rejected|address rejected)|"
    r"address rejected|invalid (recipient|address|mailbox)|undeliverable|could not be delivered|"
    r"couldn't be delivered|wasn't delivered|was not delivered|delivery (has )?failed|failed|"
    r"permanent(ly)?|rejected|unrouteable|unroutable|host not found|over quota|quota exceeded|"
    r"account (is )?(disabled|inactive|suspended)|\b5[0-9][0-9]\b|\b5\.\d\.\d\b|tidak ditemukan|"
    r"tidak dikenal|tidak terkirim|gagal",
    re.IGNORECASE,
)
# Lines after which the failed addresses are listed (Exim, Exchange, Gmail, Postfix, qmail, Sendmail).
_LIST_INTRO_RE = re.compile(
    r"following (address(es)?|recipient(s)?)|failed recipient|delivery has failed to these|"
    r"could not be delivered to|couldn't be delivered to|wasn't delivered to|not delivered to|"
    r"undeliverable to|permanent fatal errors|unable to deliver|to the following|"
    r"alamat berikut|penerima berikut|tidak dapat dikirim ke|gagal dikirim ke|intended recipient|"
    r"failed address|recipient address|original recipient|your message to|message to the following|"
    r"invalid recipient|unknown recipient|address(?:es)? (?:not found|failed)|address to which|"
    r"addressed to|originally addressed|error-for|delivery userid|did not reach|"
    r"delivery of (?:e-?mail|your message|the message) to",
    re.IGNORECASE,
)
# Opening sentences of MTA-written reports (Exim, Postfix, Sendmail, Gmail, Exchange, qmail, Apache James,
# Lotus Domino, GroupWise, MDaemon, Yahoo, Verizon-style gateways). No person writes these: a mail whose own
# text opens with one is a bounce whatever its sender or subject ("Re: [SD/...]" when James bounces with the
# original subject), so it is never read as a reply or a request.
_MTA_BODY_RE = re.compile(
    r"created automatically by mail delivery software|this is the mail system at host|"
    r"automatically generated delivery status notification|delivery to the following recipients? failed|"
    r"the original message was received at|i'?m afraid i wasn'?t able to deliver|"
    r"delivery has failed to these recipients|your message couldn'?t be delivered|"
    r"pesan ini dibuat secara otomatis oleh perangkat lunak pengiriman|"
    r"this is the james mail server|this is the qmail-send program|"
    r"this message was undeliverable due to the following reason|"
    r"your message did not reach some or all of the intended recipients|"
    r"the following recipient\(?s\)? (?:cannot|could not) be reached|"
    r"was not delivered to:.{0,200}because:|"
    r"the attached message had permanent fatal delivery errors|"
    r"sorry, we were unable to deliver your message|"
    r"the message that you sent was undeliverable|"
    r"delivery to the following recipient failed permanently|"
    r"your message wasn'?t delivered to|"
    r"message could not be delivered to the following recipients|"
    r"(?:unable|failed) to deliver (?:the |your )?message to the following (?:address|recipient)",
    re.IGNORECASE | re.DOTALL,
)
# Every phrase of _MTA_BODY_RE holds one of these words.
_MTA_HINTS = ("deliver", "recipient", "mail system", "mail server", "qmail", "received at", "pengiriman")
_ROLE_ADDR_RE = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon|abuse|noreply|no-reply)@", re.I)


def _fields(block: str) -> dict[str, str]:
    """RFC 822-style fields of one DSN block (continuation lines unfolded), lower-case names."""
    out: dict[str, str] = {}
    last: str | None = None
    for line in block.split("\n"):
        if not line.strip():
            continue
        if line[:1] in (" ", "\t") and last:
            out[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        last = name.strip().lower()
        out.setdefault(last, value.strip())
    return out


def _recipient(value: str) -> str | None:
    """`rfc822; a@b` (RFC 3464 section 2.3.2) or a bare address, as a lower-case address."""
    value = value.split(";", 1)[1] if ";" in value else value
    m = _ADDR_RE.search(value)
    return m.group(0).lower() if m else None


def _original_message_id(msg: ParsedMessage) -> str | None:
    """The Message-ID of the mail that bounced, from the returned message or its headers."""
    for att in msg.attachments:
        if att.content_type not in _ORIGINAL_TYPES:
            continue
        try:
            head = email.message_from_bytes(att.data[:200_000], policy=email.policy.compat32)
        except Exception:  # a returned message is often truncated; the scan below still works
            head = None
        if isinstance(head, Message):
            value = head.get("Message-ID")
            if value:
                m = _MSGID_RE.search(str(value))
                if m:
                    return m.group(0)
        m2 = re.search(rb"^message-id:\s*(<[^<>\s]+>)", att.data[:200_000], re.IGNORECASE | re.MULTILINE)
        if m2:
            return m2.group(1).decode("ascii", "replace")
    # Classic bounces quote the original below the human text ("--- Below this line is a copy ...").
    text = msg.text or ""
    own = (msg.message_id or "").lower()
    for m3 in re.finditer(r"^\s*message-id:\s*(<[^<>\s]+>)", text, re.IGNORECASE | re.MULTILINE):
        if m3.group(1).lower() != own:
            return m3.group(1)
    return None


def _dsn(msg: ParsedMessage) -> BounceInfo | None:
    parts = [a for a in msg.attachments if a.content_type in _DSN_TYPES]
    if not parts:
        return None
    failed: list[str] = []
    delayed: list[str] = []
    delivered: list[str] = []
    failed_status: str | None = None
    other_status: str | None = None
    diagnostic: str | None = None
    for part in parts:
        body = part.data.decode("utf-8", "replace").replace("\r\n", "\n")
        blocks = re.split(r"\n\s*\n", body)
        for block in blocks:
            f = _fields(block)
            # RFC 3464 section 2.3.1: Original-Recipient is the address as we sent it (before aliases and
            # forwarding rewrote it into Final-Recipient); that is the one our records know.
            addr = _recipient(f.get("original-recipient", "")) or _recipient(f.get("final-recipient", ""))
            if not addr:
                continue
            # Normalise "failure", "failed (Bad destination ...)" and friends to the RFC 3464 keyword.
            action_word = (f.get("action", "").strip().lower().split() or [""])[0]
            action = (
                "failed" if action_word.startswith("fail")
                else "delayed" if action_word.startswith("delay")
                else action_word
            )
            status_m = _STATUS_RE.search(f.get("status", ""))
            status = status_m.group(1) if status_m else None
            if action not in ("failed", "delayed", "delivered", "relayed", "expanded"):
                # RFC 3464 makes Action mandatory with five values; for a missing or invented one ("error")
                # the status class decides (RFC 3463: 2 success, 4 persistent transient, 5 permanent).
                action = {"2": "delivered", "4": "delayed"}.get((status or "5")[:1], "failed")
            if action == "failed":
                failed.append(addr)
                failed_status = failed_status or status
                diagnostic = diagnostic or f.get("diagnostic-code")
            elif action == "delayed":
                delayed.append(addr)
                other_status = other_status or status
            else:
                delivered.append(addr)
                other_status = other_status or status
    original = _original_message_id(msg)
    if failed:
        detail = f": {diagnostic[:200]}" if diagnostic else ""
        return BounceInfo(
            failed_recipients=tuple(dict.fromkeys(failed))[:_MAX_RECIPIENTS],
            status=failed_status,
            original_message_id=original,
            reason=f"surel gagal terkirim ke {', '.join(dict.fromkeys(failed))} ({failed_status or '-'}){detail}",
            action="failed",
            delayed_recipients=tuple(dict.fromkeys(delayed))[:_MAX_RECIPIENTS],
        )
    if delayed:
        return BounceInfo(
            failed_recipients=(),
            status=other_status,
            original_message_id=original,
            reason=(
                f"pengiriman ke {', '.join(dict.fromkeys(delayed))} tertunda (DSN Action: delayed); "
                "belum gagal, status permohonan tidak berubah"
            ),
            action="delayed",
            delayed_recipients=tuple(dict.fromkeys(delayed))[:_MAX_RECIPIENTS],
        )
    if delivered:
        return BounceInfo(
            failed_recipients=(),
            status=other_status,
            original_message_id=original,
            reason=f"laporan pengiriman berhasil (DSN) untuk {', '.join(dict.fromkeys(delivered))}",
            action="delivered",
        )
    return None


def _report_text(msg: ParsedMessage) -> str:
    """The human-readable part of a bounce, plus text attachments (some MTAs attach the explanation)."""
    chunks = [msg.text or ""]
    for att in msg.attachments:
        if att.content_type == "text/plain" and len(att.data) < 200_000:
            chunks.append(att.data.decode("utf-8", "replace"))
    return "\n".join(chunks)[:200_000]


def _classic_addresses(msg: ParsedMessage, text: str) -> list[str]:
    """Failed addresses from a non-DSN bounce's text."""
    exclude = {a for a in (msg.from_addr, *msg.to, *msg.delivered_to) if a}
    found: list[str] = []

    def add(addr: str) -> None:
        a = addr.strip("<>.,;:()[]'\"").lower()
        a = re.sub(r"^.*?\bsmtp[:=]", "", a)  # Exchange X.400 form "...;dda:SMTP=user@host"
        if a and a not in exclude and not _ROLE_ADDR_RE.match(a) and a not in found and "@" in a:
            found.append(a)

    for value in (msg.header_all("X-Failed-Recipients") or ()):
        for m in _ADDR_RE.finditer(value):
            add(m.group(0))
    if found:
        return found
    lines = text.split("\n")
    stop = len(lines)
    for idx, line in enumerate(lines):
        # Stop at the returned copy of the original message: its addresses are not the failed ones.
        if re.match(
            r"^\s*(-+\s*(original message|below this line|this is a copy|pesan asli)|"
            r"------ This is a copy of the message|--- Below this line|"
            r"original message follows|"
            r"message headers? follow|received:)",
            line,
            re.IGNORECASE,
        ):
            stop = idx
            break
    body = lines[:stop]
    # Postfix / qmail: "<a@b>: host ... said: 550 ..." or a "<a@b>:" line.
    for line in body:
        angle = re.match(r"^\s*<([^<>\s]+@[^<>\s]+)>\s*:?", line)
        if angle:
            add(angle.group(1))
    if found:
        return found
    # Exim / Exchange / Gmail: the addresses listed after an introduction line.
    for idx, line in enumerate(body):
        if _LIST_INTRO_RE.search(line):
            for m in _ADDR_RE.finditer(line):
                add(m.group(0))
            for follow in body[idx + 1 : idx + 8]:
                for m in _ADDR_RE.finditer(follow):
                    add(m.group(0))
    if found:
        return found
    # Anything that looks like an address on a line that states a failure.
    for idx, line in enumerate(body):
        if _FAILURE_LINE_RE.search(line):
            window = [line]
            if idx > 0:
                window.append(body[idx - 1])
            for piece in window:
                for m in _ADDR_RE.finditer(piece):
                    add(m.group(0))
    return found[:_MAX_RECIPIENTS]


def detect_bounce(msg: ParsedMessage) -> BounceInfo | None:
    """A bounce report (delivery failure, delay or success DSN), or None for mail a person wrote."""
    dsn = _dsn(msg)
    if dsn is not None:
        return dsn
    local = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", (msg.from_addr or "").split("@", 1)[0])
    daemon_local = bool(_DAEMON_LOCAL_RE.match(local))
    daemon_name = bool(msg.from_name and _DAEMON_NAME_RE.search(msg.from_name)) or bool(
        re.search(r"mailer-daemon|postmaster", " ".join(msg.header_all("From")), re.IGNORECASE)
    )
    return_path = msg.header("Return-Path")
    # RFC 5321 section 4.5.5: notifications are sent with a null reverse-path; some relays write the
    # MAILER-DAEMON name into Return-Path instead.
    null_sender = return_path is not None and (
        return_path.strip() in ("<>", "") or bool(re.search(r"mailer-daemon", return_path, re.IGNORECASE))
    )
    auto = (msg.header("Auto-Submitted") or "").strip().lower()
    head = (msg.text or "")[:6000]
    # The phrases are tried only on text holding one of their words (a regex alternation scans slowly).
    lowered = head[:3000].lower()
    mta_raw = any(k in lowered for k in _MTA_HINTS) and bool(_MTA_BODY_RE.search(head[:3000]))
    machine = (
        daemon_local
        or daemon_name
        or null_sender
        or (bool(auto) and auto != "no")
        or "multipart/report" in (msg.header("Content-Type") or "").lower()
        or not msg.from_addr
        or mta_raw
    )
    bounce_subject = bool(_BOUNCE_SUBJECT_RE.search(msg.subject or ""))
    content_type = (msg.header("Content-Type") or "").lower()
    dsn_report = "multipart/report" in content_type and "delivery-status" in content_type
    # Only the mail's own text counts: an official quoting a bounce under "SETUJU" is still a reply.
    mta_text = mta_raw and bool(_MTA_BODY_RE.search(strip_quoted(head)[:3000]))
    if msg.header("X-Failed-Recipients") or daemon_local or dsn_report or mta_text:
        # Exim's header, mail from MAILER-DAEMON/postmaster, or an RFC 3464 report we could not read
        # recipients from: machine mail, never to be answered.
        pass
    elif not bounce_subject:
        return None
    elif not machine:
        # A person may title a mail "Pesan tidak terkirim"; without a machine sender it must at least read
        # like a bounce: a failure statement and a failed address.
        probe = _report_text(msg)
        if not (_FAILURE_LINE_RE.search(probe) and _classic_addresses(msg, probe)):
            return None
    text = _report_text(msg)
    addrs = _classic_addresses(msg, text)
    status_m = _STATUS_RE.search(text)
    status = status_m.group(1) if status_m else None
    original = _original_message_id(msg)
    delayed = bool(_DELAY_RE.search(msg.subject or "")) or (
        bool(_DELAY_RE.search(text[:3000])) and not re.search(r"permanent|fatal|gave up|giving up", text[:3000], re.I)
    )
    if status and status.startswith("5"):
        delayed = False
    if delayed:
        return BounceInfo(
            failed_recipients=(),
            status=status,
            original_message_id=original,
            reason=(
                f"peringatan pengiriman tertunda dari {msg.from_addr or 'server surel'}"
                + (f" untuk {', '.join(addrs)}" if addrs else "")
                + "; belum gagal, status permohonan tidak berubah"
            ),
            action="delayed",
            delayed_recipients=tuple(addrs),
        )
    if addrs:
        reason = f"surel gagal terkirim ke {', '.join(addrs)}" + (f" ({status})" if status else "")
    else:
        reason = f"pemberitahuan gagal kirim dari {msg.from_addr or 'server surel'} (alamat tidak terbaca)"
    return BounceInfo(
        failed_recipients=tuple(addrs),
        status=status,
        original_message_id=original,
        reason=reason,
        action="failed",
    )


# ---------------------------------------------------------------------------------------------------------
# Auto-replies
# ---------------------------------------------------------------------------------------------------------

# Outlook's and Thunderbird's read-receipt subjects (English and Indonesian UI).
_MDN_SUBJECT_RE = re.compile(
    r"^\s*(read|not read|dibaca|telah dibaca|sudah dibaca|tidak dibaca|return receipt|"
    r"tanda terima(?: baca)?|read receipt|gelesen|lu)\s*:",
    re.IGNORECASE,
)
_PRECEDENCE = frozenset({"bulk", "auto_reply", "auto-reply", "junk", "list"})
_AUTORESPONDER_RE = re.compile(
    r"vacation|auto.?reply|auto.?respon|autoresponder|out.of.office|abwesen|away|penjawab|balasan otomatis",
    re.IGNORECASE,
)
_OOF_SUBJECT_RE = re.compile(
    r"^\s*(?:(?:re|aw|balas|fw|fwd)\s*:\s*)*"
    r"(?:balasan otomatis|automatic reply|auto(?:matic)?[- ]?(?:reply|response|answer)|autoreply|"
    r"out of (?:the )?office|penjawab saat libur|penjawab otomatis|jawaban otomatis|auto:|"
    r"respuesta automática|réponse automatique|risposta automatica|abwesenheitsnotiz|"
    r"automatische antwort|afwezig|sedang cuti|cuti:|ooo\b|on vacation|vacation reply|away from (?:my|the) office)",
    re.IGNORECASE,
)
_OOF_SUBJECT_ANYWHERE_RE = re.compile(
    r"\b(balasan otomatis|automatic reply|out of (?:the )?office|penjawab saat libur|autoreply|auto-reply)\b",
    re.IGNORECASE,
)
# Phrases that only an autoresponder writes.
_OOF_STRONG_RE = re.compile(
    r"pesan ini (?:adalah|merupakan) (?:balasan|pesan|jawaban) otomatis|ini (?:adalah )?balasan otomatis|"
    r"surel ini dikirim(?:kan)? secara otomatis|balasan otomatis|"
    r"this is an auto(?:matic|mated)[- ]?(?:reply|response|message)|"
    r"i am (?:currently )?out of (?:the )?office|i'm (?:currently )?out of (?:the )?office|"
    r"i am (?:currently )?away from (?:the|my) office|automatic reply|auto-reply|autoreply",
    re.IGNORECASE,
)
_OOF_WEAK_RE = re.compile(
    r"sedang cuti|sedang tidak berada di kantor|tidak berada di kantor|sedang dinas luar|dinas luar kota|"
    r"akan membalas(?: surel| email| pesan)?(?: anda| bapak/ibu)? setelah (?:saya )?kembali|"
    r"setelah saya kembali|untuk keperluan mendesak|untuk hal mendesak|dalam keadaan mendesak|"
    r"akses (?:terbatas|email terbatas)|out of office|on leave|on vacation|on annual leave|"
    r"will (?:respond|reply|get back to you) (?:when|upon|after) (?:i|my) return|limited access to (?:e-?mail)|"
    r"back in the office|kembali (?:ke kantor|bertugas) pada|cuti (?:tahunan|bersama|melahirkan)",
    re.IGNORECASE,
)


def _new_text_has_decision(text: str, vocabulary: Vocabulary) -> bool:
    words: list[str] = []
    for name in ("approve", "reject", "revise", "problem", "cancel", "confirm"):
        words.extend(getattr(vocabulary, name, ()) or ())
    if not words:
        return False
    alternation = "|".join(
        r"\s+".join(re.escape(w) for w in word.split()) for word in sorted(words, key=len, reverse=True) if word.strip()
    )
    opening = [ln for ln in text.split("\n") if ln.strip()][: OPENING_LINES + 1]
    return bool(re.search(rf"(?<![^\W_])(?:{alternation})(?![^\W_])", "\n".join(opening), re.IGNORECASE))


def detect_auto_reply(msg: ParsedMessage, vocabulary: Vocabulary | None = None) -> AutoReplyInfo | None:
    """An automatic message (RFC 3834 and the de-facto signals), or None for mail a person wrote."""
    if msg.header(LOOP_HEADER) is not None:
        return AutoReplyInfo(reason=f"surel kita sendiri kembali ({LOOP_HEADER}); tidak dibalas")
    content_type = (msg.header("Content-Type") or "").lower()
    if "disposition-notification" in content_type or any(
        a.content_type == "message/disposition-notification" for a in msg.attachments
    ) or _MDN_SUBJECT_RE.match(msg.subject or ""):
        # RFC 8098 read receipts are generated by the official's client, not written by the official.
        return AutoReplyInfo(reason="tanda terima baca (MDN, RFC 8098)")
    if "feedback-report" in content_type or any(a.content_type == "message/feedback-report" for a in msg.attachments):
        # RFC 5965 abuse/feedback reports come from a mailbox provider's machine, often as MAILER-DAEMON.
        return AutoReplyInfo(reason="laporan umpan balik penyedia surel (ARF, RFC 5965)")
    auto = " ".join((msg.header("Auto-Submitted") or "").split()).lower()
    if auto and auto.split(";")[0].strip() != "no":
        # RFC 3834 section 5: any value but "no" marks the message as automatically generated.
        return AutoReplyInfo(reason=f"Auto-Submitted: {auto}")
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Autogenerated", "X-AutoReply-From",
                 "X-Mail-Autoreply", "X-FC-MachineGenerated"):
        value = msg.header(name)
        if value is not None and value.strip().lower() not in ("no", "false", "0"):
            return AutoReplyInfo(reason=f"{name}: {value.strip()[:60]}")
    for name in ("Precedence", "X-Precedence"):
        precedence = (msg.header(name) or "").strip().lower()
        if precedence in _PRECEDENCE:
            return AutoReplyInfo(reason=f"{name}: {precedence}")
    for name in ("X-Mailer", "X-Loop", "User-Agent"):
        value = msg.header(name) or ""
        if value and _AUTORESPONDER_RE.search(value):
            return AutoReplyInfo(reason=f"{name}: {value.strip()[:60]}")
    subject = msg.subject or ""
    if _OOF_SUBJECT_RE.match(subject) or _OOF_SUBJECT_ANYWHERE_RE.search(subject):
        return AutoReplyInfo(reason=f"subjek balasan otomatis: {subject[:80]}")

    vocab = vocabulary or Vocabulary()
    new_text = strip_quoted(msg.text or "", vocab)[:3000]
    if not new_text or _new_text_has_decision(new_text, vocab):
        return None
    strong = _OOF_STRONG_RE.search(new_text)
    if strong:
        return AutoReplyInfo(reason=f"isi balasan otomatis: \"{strong.group(0)}\"")
    weak = {m.group(0).lower() for m in _OOF_WEAK_RE.finditer(new_text)}
    # Outlook sets X-Auto-Response-Suppress on ordinary mail as well: a hint, never a verdict on its own.
    hint = msg.header("X-Auto-Response-Suppress") is not None or (msg.header("Return-Path") or "").strip() == "<>"
    if len(weak) >= 2 or (weak and hint):
        return AutoReplyInfo(reason="isi pesan tidak di kantor: " + ", ".join(sorted(weak)))
    return None
