"""Compose outgoing mail from the Indonesian templates and queue it in the outbox (never send directly).

Every mail is written as an outbox row in the caller's transaction (a transactional outbox), with its
final Message-ID fixed now so that a retry re-sends the same message. Every mail carries
`Auto-Submitted: auto-generated` (RFC 3834) and our loop header, so that we never answer our own mail.
The wire bytes are the standard library's: `email.message.EmailMessage` serialised under `policy.SMTP`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import posixpath
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import EmailPolicy, Policy
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy.orm import Session

from subdomaind.parsers.mime import UnreadableMessage, parse_mime
from subdomaind.parsers.model import Attachment, Limits
from subdomaind.workflows.secretbox import SecretBox
from subdomaind.workflows.store import MailCount, Outbox, tx_state

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
LOOP_HEADER = "X-Subdomaind-Loop"
# Mail sent in reaction to an inbound message: what a mail loop would multiply.
CAPPED_PURPOSES = frozenset({"ack", "refusal", "echo", "form", "delegation", "cancelled", "status", "antrean"})
# The note of mail held by the hourly caps on mail caused by unverified senders (workflows/inbound.py).
CAP_NOTE = "batas surel per jam untuk pengirim tak terverifikasi"


def one_line(value: object, limit: int = 200) -> str:
    """User text made safe for a header: no CR/LF or control characters (no header injection), bounded."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", str(value))
    text = " ".join(text.split())
    return text[:limit]


def new_token() -> str:
    """A per-step reply token: 't' + 26 base32 characters (130 bits), fit for an address sub-part."""
    return "t" + base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.lower().encode("ascii")).hexdigest()


@dataclass(frozen=True)
class MailAttachment:
    filename: str
    content_type: str
    data: bytes
    # An image the HTML part shows (<img src="cid:...">): sent inline beside it (RFC 2387, RFC 2392).
    content_id: str | None = None


# Content types phone mail apps open, by what a file is (its first bytes) or, failing that, its name: a unit's
# mail client often labels a PDF application/octet-stream, which an official's phone will not preview.
_KNOWN_TYPES = {
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".doc": "application/msword",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
}


# A part that may be a file: without one of these headers a letter is body text only, and is not parsed.
_MAY_HOLD_FILES = re.compile(
    rb"(?im)^content-(?:type:[ \t]*(?:application|image|audio|video)/|disposition:[ \t]*attachment)")


def letter_files(raw: bytes, limits: Limits | None = None) -> list[MailAttachment]:
    """The files a unit's letter came with (those of a forwarded letter too), each with a content type by
    what it is; the body text is summarised in the mail itself."""
    if not _MAY_HOLD_FILES.search(raw):
        return []
    try:
        msg = parse_mime(raw, limits)
    except (UnreadableMessage, ValueError, LookupError, RecursionError):
        return []
    return openable_files(msg.attachments) or []


def openable_files(attachments: Sequence[Attachment]) -> list[MailAttachment] | None:
    """The parser's attachments as files to attach; None when one of them came back without its bytes
    (a parser worker leaves large ones behind): the letter is then read again from the database."""

    out: list[MailAttachment] = []
    # The files of a forwarded letter are listed with the outer ones; the forwarded message itself is not a
    # file anyone opens, and a text part without a name is body text, summarised in the mail.
    for att in attachments:
        ctype = att.content_type.lower()
        if ctype.startswith("message/") or (ctype.startswith("text/") and not att.filename):
            continue
        if not att.data:
            if att.filename:
                return None
            continue
        name = posixpath.basename((att.filename or "").replace("\\", "/")).strip() or f"lampiran-{len(out) + 1}"
        ext = posixpath.splitext(name)[1].lower()
        if att.data.startswith(b"%PDF-"):
            ctype = "application/pdf"
        elif ctype in ("application/octet-stream", "application/x-download", "binary/octet-stream", ""):
            ctype = _KNOWN_TYPES.get(ext, "application/octet-stream")
        if ctype == "application/pdf" and not ext:
            name += ".pdf"
        out.append(MailAttachment(filename=name, content_type=ctype, data=att.data))
    return out


@functools.cache
def template_env(agency_id: str | None = None) -> jinja2.Environment:
    """Templates of the agency's own folder first (`templates/<agency>/`), then the shared ones."""
    loaders: list[jinja2.BaseLoader] = []
    if agency_id and (TEMPLATES / agency_id).is_dir():
        loaders.append(jinja2.FileSystemLoader(str(TEMPLATES / agency_id)))
    loaders.append(jinja2.FileSystemLoader(str(TEMPLATES)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["one_line"] = one_line
    env.globals["tanggal"] = format_tanggal
    return env


_BULAN = (
    "Januari", "Februari", "Maret", "April", "Mei", "Juni",
    "Juli", "Agustus", "September", "Oktober", "November", "Desember",
)


_HARI = ("Senin", "Selasa", "Rabu", "Kamis", "Jumat", "Sabtu", "Minggu")
# Indonesia's three time zones as letters name them (UU 1987 / Keppres 41/1987); others by their offset.
_ZONE_NAMES = {"Asia/Jakarta": "WIB", "Asia/Pontianak": "WIB", "Asia/Makassar": "WITA", "Asia/Jayapura": "WIT"}


def format_deadline(value: datetime) -> str:
    """A local deadline as officials read it: "Senin, 7 Desember 2026 pukul 16.00 WIB"."""
    key = getattr(value.tzinfo, "key", None)
    zone = _ZONE_NAMES.get(key or "") or value.strftime("UTC%z")
    return f"{_HARI[value.weekday()]}, {format_tanggal(value, with_time=True)} {zone}"


def format_tanggal(value: datetime, with_time: bool = False) -> str:
    """An Indonesian date as letters write it: "21 November 2026" (and "pukul 09.15" with the time)."""
    text = f"{value.day} {_BULAN[value.month - 1]} {value.year}"
    if with_time:
        text += f" pukul {value.hour:02d}.{value.minute:02d}"
    return text


class _MsgIdList(UnstructuredHeader, BaseHeader):
    """In-Reply-To and References: a list of msg-ids (RFC 5322 section 3.6.4), folded only between them.

    The standard library reads these two as unstructured text, and folds a msg-id longer than a line into
    RFC 2047 encoded words, which no client threads on: a msg-id is one token, never split or encoded."""

    def fold(self, *, policy: Policy) -> str:
        ids = str(self).split()
        if not all(i.isascii() for i in ids):
            return super().fold(policy=policy)
        lines = [f"{self.name}:"]
        for msg_id in ids:
            if lines[-1] != f"{self.name}:" and len(lines[-1]) + 1 + len(msg_id) > (policy.max_line_length or 998):
                lines.append("")
            lines[-1] += " " + msg_id
        return policy.linesep.join(lines) + policy.linesep


class _Subject(UnstructuredHeader, BaseHeader):
    """The subject folded by email.header.Header (RFC 5322 folding at spaces; a non-ASCII subject whole as
    RFC 2047 encoded words). The standard library's own folder of Python 3.11 moves a subject that fits on
    one continuation line onto it (a leading space readers keep), and drops the space between two encoded
    words it splits a subject into."""

    max_count = 1  # one Subject a mail (RFC 5322 section 3.6)

    def fold(self, *, policy: Policy) -> str:
        value = str(self)
        charset = "us-ascii" if value.isascii() else "utf-8"
        encoded = Header(value, charset, header_name=self.name).encode(linesep=policy.linesep)
        if encoded.startswith(policy.linesep):  # a first word longer than a line: it stays on the name's line
            encoded = encoded[len(policy.linesep):].lstrip(" \t")
        return f"{self.name}: {encoded}{policy.linesep}"


class _Registry(HeaderRegistry):
    """The header classes of the policy, each class and each recurring header made once: header objects are
    immutable, and most of what we write recurs from mail to mail (From, To, Auto-Submitted, the loop header,
    the content headers), so parsing each value again was a third of a mail's cost. A value is kept only
    once it recurs: a mail's own values (Message-ID, Subject, a boundary) never do, and keeping their parse
    trees (some forty objects each) made the cyclic garbage collector walk the whole heap three times as often."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[tuple[str, str], BaseHeader] = {}
        self._seen: set[tuple[str, str]] = set()  # values met once (strings only: no work for the collector)
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        # The standard registry builds a new class on every lookup (each header set, each max_count asked).
        cls = self._classes.get(name.lower())
        if cls is None:
            cls = self._classes[name.lower()] = super().__getitem__(name)
        return cls

    def map_to_type(self, name: str, cls: type[BaseHeader]) -> None:
        self._classes.clear()
        super().map_to_type(name, cls)

    def __call__(self, name: str, value: Any) -> BaseHeader:
        key = (name, str(value))
        header = self._made.get(key)
        if header is None:
            header = super().__call__(name, value)
            if key not in self._seen:
                if len(self._seen) >= 4096:
                    self._seen.clear()  # bounded: unique values (Message-ID, Date) come and go
                self._seen.add(key)
            else:
                if len(self._made) >= 4096:
                    self._made.clear()
                self._made[key] = header
        return header


class _SmtpPolicy(EmailPolicy):
    """policy.SMTP, with each header folded once: the generator folds every header of every part anew on
    each write, and folding was half of a composed mail's cost; the same header always folds the same."""

    def fold_binary(self, name: str, value: Any) -> bytes:
        key = (name, str(value), type(value))
        folded = _FOLDED.get(key)
        if folded is None:
            if len(_FOLDED) >= 4096:
                _FOLDED.clear()  # bounded: unique values (Message-ID, Date) come and go
            folded = _FOLDED[key] = super().fold_binary(name, value)
        return folded


_FOLDED: dict[tuple[str, str, type], bytes] = {}


def _smtp_policy() -> _SmtpPolicy:
    registry = _Registry()
    registry.map_to_type("in-reply-to", _MsgIdList)
    registry.map_to_type("references", _MsgIdList)
    registry.map_to_type("subject", _Subject)
    return _SmtpPolicy(linesep="\r\n", header_factory=registry)  # policy.SMTP: policy.default with CRLF


# CRLF line ends, headers folded at 78 characters (RFC 5322 section 2.1.1), RFC 2047/2231 for non-ASCII.
SMTP_POLICY = _smtp_policy()


def _text(text: str) -> tuple[str, str]:
    """How a text part is written: as it is when it is ASCII in lines a server takes (RFC 5322's 998), else
    quoted-printable, readable in the raw and safe without 8BITMIME (RFC 6152, RFC 2045 section 6.7)."""
    if text.isascii() and all(len(line) <= 998 for line in text.splitlines()):
        return "us-ascii", "7bit"
    return "utf-8", "quoted-printable"


def _file(att: MailAttachment) -> dict[str, Any]:
    """The arguments of EmailMessage.add_attachment / add_related (after the bytes) for a file."""
    # A forwarded letter goes as it came (octet-stream), so the official sees exactly what was sent.
    ctype = "application/octet-stream" if att.content_type == "message/rfc822" else att.content_type
    maintype, _, subtype = ctype.partition("/")
    return {"maintype": maintype, "subtype": subtype or "octet-stream",
            "filename": att.filename, "cid": f"<{att.content_id}>" if att.content_id else None}


def _boundary() -> str:
    """A multipart boundary, given to the part when it is made. "=_" never occurs in quoted-printable or
    base64 (RFC 2045 section 6.7), and 96 random bits not by chance in a 7bit part; left to the generator,
    each multipart cost a regular expression compiled to search the whole text for a boundary it drew, and
    its Content-Type header parsed again to add that boundary."""
    return f"=_sd_{secrets.token_hex(12)}"


def compose(headers: Sequence[tuple[str, str]], text: str, html: str | None,
            attachments: Sequence[MailAttachment] = ()) -> bytes:
    """The wire bytes of a mail: text (and HTML as its alternative), then the attachments."""
    msg = EmailMessage(policy=SMTP_POLICY)
    for name, value in headers:
        msg[name] = value
    charset, cte = _text(text)
    msg.set_content(text.replace("\r\n", "\n"), charset=charset, cte=cte)
    inline = [a for a in attachments if a.content_id] if html else []
    files = [a for a in attachments if a not in inline]
    if html:
        # The HTML names its few non-ASCII characters (a dash, a name) as references (&#8212;), which every
        # mail client reads alike: the part is then ASCII and goes as it is, where the standard library's
        # quoted-printable encoder, written in Python, was a third of a mail's composition.
        html = html.encode("ascii", "xmlcharrefreplace").decode("ascii")
        charset, cte = _text(html)
        msg.make_alternative(_boundary())
        msg.add_alternative(html.replace("\r\n", "\n"), subtype="html", charset=charset, cte=cte)
        if inline:  # the HTML and the images it shows travel together (RFC 2387 multipart/related)
            html_part = list(msg.iter_parts())[1]
            html_part.make_related(_boundary())
            for att in inline:
                html_part.add_related(att.data, **_file(att), disposition="inline")
            html_part.set_param("type", "text/html")  # RFC 2387 section 3.1: the root part's type
    if files:
        msg.make_mixed(_boundary())
    for att in files:
        msg.add_attachment(att.data, **_file(att), disposition="inline" if att.content_id else "attachment")
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]  # the standard library repeats it on every part it adds; it is the mail's
    return msg.as_bytes()


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


class Mailer:
    """Renders a named template and writes the resulting mail into the outbox of the given session."""

    def __init__(
        self,
        *,
        agency_id: str,
        agency_name: str,
        address: str,
        zone: str,
        clock: Callable[[], datetime],
        daily_cap: int = 0,
        uncapped: Iterable[str] = (),
        box: SecretBox | None = None,
    ) -> None:
        self.box = box  # seals a sensitive mail's bytes at rest (workflows/secretbox.py)
        self.agency_id = agency_id
        self.agency_name = agency_name
        self.address = address
        self.zone = zone
        self.clock = clock
        self.daily_cap = daily_cap
        # Officials: what we send them in answer is bounded per request (one notice per request, reason and
        # day; one echo per decision), and they must always hear back, so the per-address cap is not theirs.
        self.uncapped = frozenset(a.lower() for a in uncapped)
        self.env = template_env(agency_id)

    def reply_address(self, token: str | None) -> str:
        if not token:
            return self.address
        local, _, domain = self.address.partition("@")
        return f"{local}+{token}@{domain}"

    def render(self, template: str, context: dict[str, Any]) -> Rendered:
        ctx = {"agency_name": self.agency_name, "mailbox": self.address, **context}
        tmpl = self.env.get_template(f"mail/{template}.txt.j2")
        module = tmpl.make_module(ctx)
        subject = one_line(getattr(module, "subject", "") or template, 300)
        text = str(module).strip() + "\n"
        html = None
        try:
            html_tmpl = self.env.get_template(f"mail/{template}.html.j2")
        except jinja2.TemplateNotFound:
            html_tmpl = self.env.get_template("mail/_layout.html.j2")
        html = html_tmpl.render(**ctx, subject=subject, body_text=text)
        return Rendered(subject=subject, text=text, html=html)

    def queue(
        self,
        session: Session,
        *,
        to: Sequence[str],
        template: str,
        context: dict[str, Any],
        purpose: str,
        request_id: int | None = None,
        ticket: str | None = None,
        token: str | None = None,
        in_reply_to: str | None = None,
        references: Iterable[str] = (),
        attachments: Sequence[MailAttachment] = (),
        sensitive: bool = False,
        cc: Sequence[str] = (),
        after: Outbox | None = None,
    ) -> Outbox:
        return self.queue_rendered(
            session, rendered=self.render(template, context), to=to, purpose=purpose, request_id=request_id,
            ticket=ticket, token=token, in_reply_to=in_reply_to, references=references, attachments=attachments,
            sensitive=sensitive, cc=cc, after=after,
        )

    def queue_rendered(
        self,
        session: Session,
        *,
        rendered: Rendered,
        to: Sequence[str],
        purpose: str,
        request_id: int | None = None,
        ticket: str | None = None,
        token: str | None = None,
        in_reply_to: str | None = None,
        references: Iterable[str] = (),
        attachments: Sequence[MailAttachment] = (),
        sensitive: bool = False,
        cc: Sequence[str] = (),
        after: Outbox | None = None,
    ) -> Outbox:
        """Queue a mail whose subject, text and HTML were made elsewhere (a letter). A `sensitive` mail is
        sealed at rest; one given `after` (a flushed row) waits until that one is sent."""
        now = self.clock()
        subject = one_line(rendered.subject, 300)
        if ticket and f"[{ticket}]" not in subject:
            subject = f"[{ticket}] {subject}"
        headers: list[tuple[str, str]] = [
            ("From", formataddr((one_line(f"Layanan Sub Domain {self.agency_name}", 120), self.address),
                                charset="utf-8")),
            ("To", ", ".join(to)),
        ]
        if cc:
            headers.append(("Cc", ", ".join(cc)))
        headers += [("Reply-To", self.reply_address(token)), ("Subject", subject), ("Date", format_datetime(now))]
        slug = (ticket or "sd").replace("/", ".").lower()
        message_id = f"<{slug}.{purpose}.{secrets.token_hex(6)}@{self.zone}>"
        headers.append(("Message-ID", message_id))
        if in_reply_to:
            headers.append(("In-Reply-To", in_reply_to))
        refs = [r for r in references if r]
        if in_reply_to and in_reply_to not in refs:
            refs.append(in_reply_to)
        if refs:
            headers.append(("References", " ".join(refs)))
        # RFC 3834 section 5: mark what a program sends, so well-behaved responders stay quiet.
        headers.append(("Auto-Submitted", "auto-generated"))
        headers.append(("X-Auto-Response-Suppress", "All"))  # Exchange/Outlook: no out-of-office back to us
        headers.append((LOOP_HEADER, self.agency_id))
        if ticket:
            headers.append(("X-Subdomaind-Ticket", ticket))
        raw = compose(headers, rendered.text, rendered.html, attachments)
        if sensitive:
            if self.box is None:
                raise ValueError("a sensitive mail needs the key of [secrets] key_file to be sealed")
            raw = self.box.seal(raw, message_id)  # opened by the outbox sender, just before it goes out
        status, note = ("waiting", None) if after is not None else ("queued", None)
        # The cap fences mail we send *in answer to* mail (a loop feeds on those); mail the SOP itself sends
        # (step mails, letters, alerts, digests) is bounded by the requests and must not be stalled by a
        # flood of strangers' letters filling an official's quota.
        rcpts = [a for a in (*to, *cc) if a.lower() not in self.uncapped]
        capped = self._over_cap(session, rcpts, now) if purpose.split(".")[0] in CAPPED_PURPOSES else []
        if capped:
            # The last fence against a mail loop: the mail is kept, not sent, and staff see it.
            status, note = "held", f"batas harian {self.daily_cap} surel per alamat tercapai: {', '.join(capped)}"
        row = Outbox(
            agency=self.agency_id,
            request_id=request_id,
            purpose=purpose,
            message_id=message_id,
            mail_from=self.address,
            rcpts=sorted({a.lower() for a in (*to, *cc)}),
            subject=subject,
            raw=raw,
            sensitive=sensitive,
            status=status,
            after_id=after.id if after is not None else None,
            last_error=note,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        session.add(row)
        # The mail one inbound message makes us queue, while its handler runs (workflows/inbound.py,
        # charge_unverified: the caps on mail caused by unverified senders).
        queued = tx_state(session).queued
        if queued is not None:
            queued.append(row)
        return row

    def _over_cap(self, session: Session, rcpts: Sequence[str], now: datetime) -> list[str]:
        """Count this mail against each recipient's daily cap; the recipients already at the cap."""
        if not self.daily_cap:
            return []
        day = now.date().isoformat()
        over: list[str] = []
        # Kept for the transaction (a batch of letters from one unit counts against the same rows), and
        # read without flushing everything pending first: no other pending change bears on these rows.
        cache = tx_state(session).mail_counts
        for addr in {r.lower() for r in rcpts}:
            key = (self.agency_id, addr, day)
            row = cache.get(key)
            if row is None:
                with session.no_autoflush:
                    row = session.get(MailCount, key)
                if row is None:
                    row = MailCount(agency=self.agency_id, address=addr, day=day, count=0)
                    session.add(row)
                cache[key] = row
            if row.count >= self.daily_cap:
                over.append(addr)
            row.count += 1
        return sorted(over)
