"""The typed records that `parsers/` produces: frozen dataclasses, no behaviour beyond serialising.

Everything in `parsers/` is bytes in, these records out: no database, network or clock. The JSON shape of
`ParseResult.to_json()` is the `subdomaind parse --json` contract in docs/PARSE-JSON.md; keys may be added, none
removed or renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Kind = Literal["request", "reply", "auto_reply", "bounce", "unrelated", "unreadable"]
# "confirm" (added): the unit's IT admin confirms the sub-domain works (`Vocabulary.confirm`); the engine decides
# what it means for a step, so it is never folded into "approve".
Decision = Literal["approve", "reject", "revise", "problem", "cancel", "confirm", "unclear"]
Source = Literal["body", "html", "pdf", "docx", "ocr", "form"]

# The canonical request fields, in the order a clerk reads the form.
REQUEST_FIELDS: tuple[str, ...] = (
    "subdomain",
    "unit",
    "pic_name",
    "pic_nip",
    "pic_position",
    "pic_email",
    "pic_phone",
    "purpose",
    "service",
    "target_ip",
    "letter_number",
)
# Fields a request cannot go on without (domain brief section 2, "M").
MANDATORY_FIELDS: tuple[str, ...] = ("subdomain", "unit", "pic_name", "pic_email", "pic_phone", "purpose")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one message may cost to parse; over a bound the message is refused, not crashed on."""

    max_message_bytes: int = 40 * 1024 * 1024
    max_attachment_bytes: int = 25 * 1024 * 1024
    max_parts: int = 200
    max_pdf_pages: int = 10
    max_ocr_pages: int = 3
    max_decompressed_bytes: int = 50 * 1024 * 1024
    ocr: bool = True
    # Added: nesting depth of multiparts / attached messages (a forward of a forward is about 6 deep), and
    # the number of header fields (real mail has well under 200, mostly Received).
    max_depth: int = 20
    max_headers: int = 1000


@dataclass(frozen=True)
class Vocabulary:
    """Reply keywords per decision; matched as whole words, case-insensitive, longest phrase first.

    Negations sit in `reject` and are matched before `approve` ("TIDAK SETUJU" is a rejection).
    """

    approve: tuple[str, ...] = ("setuju", "disetujui", "acc", "ok", "oke", "lanjutkan", "lanjut", "proses")
    reject: tuple[str, ...] = (
        "tolak",
        "ditolak",
        "tidak setuju",
        "tidak disetujui",
        "belum setuju",
        "belum dapat disetujui",
        "tidak dapat dipenuhi",
        "jangan diproses",
    )
    revise: tuple[str, ...] = ("perbaiki", "revisi", "perlu perbaikan", "butuh perbaikan")
    problem: tuple[str, ...] = ("kendala",)
    cancel: tuple[str, ...] = ("batal", "batalkan")
    # Confirmation from the unit's IT admin that the sub-domain works (Kalbar step 13).
    confirm: tuple[str, ...] = ("berhasil", "sudah dapat digunakan", "selesai")
    # Added. Words that put an approval under a condition ("setuju dengan catatan ...", "setuju, tapi ...");
    # domain brief section 5 lists these as needing a human, so an approval carrying one is "unclear".
    conditional: tuple[str, ...] = (
        "dengan catatan", "dgn catatan", "dengan syarat", "dgn syarat", "bersyarat", "asalkan",
        "dengan ketentuan", "tapi", "tetapi", "namun", "kecuali",
    )
    # Added. Dispositions that ask for a person, not a decision (domain brief section 5, e-office codes).
    hold: tuple[str, ...] = (
        "untuk diketahui", "pelajari", "telaah", "mohon pertimbangan", "koordinasikan", "menghadap",
        "bahas", "tunda", "ditunda", "dikembalikan",
    )
    # Added. A negator up to two words before an approval word makes it no approval ("belum bisa acc").
    negation: tuple[str, ...] = (
        "tidak", "tdk", "tak", "belum", "blm", "jangan", "jgn", "bukan", "gak", "nggak", "ngga", "enggak",
        "ga", "not", "no",
    )


@dataclass(frozen=True)
class ParseOptions:
    """What the pure parsers need to know about the agency; built from config by the daemon."""

    zone: str | None = None
    reserved_names: frozenset[str] = frozenset(
        {
            "www", "mail", "webmail", "smtp", "imap", "pop", "pop3", "ftp", "ns", "ns1", "ns2", "ns3",
            "dns", "mx", "cpanel", "whm", "admin", "api", "autodiscover", "autoconfig", "localhost",
        }
    )
    mailbox_address: str | None = None
    ticket_prefix: str = "SD"
    vocabulary: Vocabulary = field(default_factory=Vocabulary)
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Attachment:
    filename: str | None
    content_type: str
    data: bytes


@dataclass(frozen=True)
class ParsedMessage:
    """One message read at the MIME level: decoded headers, the bodies, the attachments."""

    message_id: str | None
    from_addr: str | None  # lower-case address
    from_name: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    reply_to: tuple[str, ...]
    delivered_to: tuple[str, ...]
    subject: str | None
    date: datetime | None
    in_reply_to: str | None
    references: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]  # every header, decoded, in order; names as sent
    text: str | None  # the text/plain body (or text made from HTML when there is none)
    html: str | None
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...] = ()
    # A forward's original sender (secretary's "Fwd:"), when the body carries one.
    forwarded_from: str | None = None
    forwarded_name: str | None = None
    # Added: the messages attached as message/rfc822 (a forward "as attachment", a bounce's returned mail),
    # each read the same way, one level deep (their own attached messages are not read again).
    attached_messages: tuple[ParsedMessage, ...] = ()

    def header(self, name: str) -> str | None:
        """The first header of that name (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def header_all(self, name: str) -> tuple[str, ...]:
        lname = name.lower()
        return tuple(v for k, v in self.headers if k.lower() == lname)


@dataclass(frozen=True)
class Problem:
    field: str
    reason: str  # in plain Indonesian, for the clerk and the requester


@dataclass(frozen=True)
class FieldOrigin:
    field: str
    source: Source
    label: str | None  # the label as written ("Alamat Sub Domain yang diajukan"), None for form fields
    raw: str  # the value as written, before normalising


@dataclass(frozen=True)
class RequestFields:
    subdomain: str | None = None
    unit: str | None = None
    pic_name: str | None = None
    pic_nip: str | None = None
    pic_position: str | None = None
    pic_email: str | None = None
    pic_phone: str | None = None
    purpose: str | None = None
    service: Literal["subdomain", "hosting"] | None = None
    target_ip: str | None = None
    letter_number: str | None = None
    target_cname: str | None = None  # a CNAME target instead of an address
    nameservers: str | None = None  # the unit's own name servers for an NS delegation: "name=ip,name"
    letter_date: str | None = None  # as written ("12 November 2026")
    letter_subject: str | None = None  # the letter's "Hal"
    unit_head: str | None = None  # jabatan of the signatory ("Kepala Dinas Sosial")
    source: Source = "body"
    # Added: every name the letter asks for, `subdomain` first; several when a letter lists more than one
    # ("sub domain ppid dan jdih"): the daemon opens one request per name, linked to the same letter.
    subdomains: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()
    origins: tuple[FieldOrigin, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in REQUEST_FIELDS}
        out["target_cname"] = self.target_cname
        out["nameservers"] = [
            {"name": n.partition("=")[0], "ip": n.partition("=")[2] or None}
            for n in (self.nameservers.split(",") if self.nameservers else [])
        ]
        out["letter_date"] = self.letter_date
        out["letter_subject"] = self.letter_subject
        out["unit_head"] = self.unit_head
        out["source"] = self.source
        out["subdomains"] = list(self.subdomains or ((self.subdomain,) if self.subdomain else ()))
        out["missing"] = list(self.missing)
        out["problems"] = [{"field": p.field, "reason": p.reason} for p in self.problems]
        # The fields with a problem, in order, without the reasons: what a fixture or a dashboard compares.
        out["problem_fields"] = [p.field for p in self.problems]
        out["origins"] = {
            o.field: {"source": o.source, "label": o.label, "raw": o.raw} for o in self.origins
        }
        return out


@dataclass(frozen=True)
class ReplyDecision:
    decision: Decision
    note: str | None  # what the official wrote after the keyword
    text: str  # the new text of the reply, quotes and signature removed
    keyword: str | None = None  # the keyword as matched ("tidak setuju")
    rules: tuple[str, ...] = ()  # names of the rules that fired, kept with the decision

    def to_json(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "note": self.note,
            "text": self.text,
            "keyword": self.keyword,
            "rules": list(self.rules),
        }


@dataclass(frozen=True)
class AutoReplyInfo:
    reason: str  # which signal: "Auto-Submitted: auto-replied", "subject: Balasan Otomatis", ...


@dataclass(frozen=True)
class BounceInfo:
    failed_recipients: tuple[str, ...]
    status: str | None  # DSN status code, e.g. "5.1.1"
    original_message_id: str | None  # Message-ID of the mail that bounced, when the DSN carries it
    reason: str
    # Added. RFC 3464 Action of the report: "failed", "delayed" (not a failure: only `delayed_recipients`
    # is set), "delivered"/"relayed"/"expanded" (a success report). Never changes a request's state.
    action: str | None = None
    delayed_recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParseResult:
    kind: Kind
    message: ParsedMessage | None
    request: RequestFields | None = None
    reply: ReplyDecision | None = None
    ticket: str | None = None  # "SD/2026/0042" when the subject or body carries the tag
    token: str | None = None  # the step token from our Reply-To sub-address, when present
    auto_reply: AutoReplyInfo | None = None
    bounce: BounceInfo | None = None
    reason: str | None = None
    over_limit: bool = False  # unreadable because a configured limit was passed (size, parts, depth)
    # (SHA-256 hex of an attachment's bytes, the text a reader sees in it) for PDF and .eml attachments, also
    # those of attached messages: where the daemon looks for a quoted password it must blank. Not in to_json.
    attachment_text: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        msg = self.message
        reply: dict[str, Any] | None = None
        if self.reply is not None:
            reply = self.reply.to_json()
            reply["ticket"] = self.ticket
        return {
            "kind": self.kind,
            "message_id": msg.message_id if msg else None,
            "from": msg.from_addr if msg else None,
            "subject": msg.subject if msg else None,
            "request": self.request.to_json() if self.request else None,
            "reply": reply,
            "reason": self.reason,
            "over_limit": self.over_limit,
            "ticket": self.ticket,
            "token": self.token,
            "auto_reply": {"reason": self.auto_reply.reason} if self.auto_reply else None,
            "bounce": (
                {
                    "failed_recipients": list(self.bounce.failed_recipients),
                    "status": self.bounce.status,
                    "original_message_id": self.bounce.original_message_id,
                    "reason": self.bounce.reason,
                    "action": self.bounce.action,
                    "delayed_recipients": list(self.bounce.delayed_recipients),
                }
                if self.bounce
                else None
            ),
            "forwarded_from": msg.forwarded_from if msg else None,
            "forwarded_name": msg.forwarded_name if msg else None,
            "attachments": [
                {"filename": a.filename, "content_type": a.content_type, "size": len(a.data)}
                for a in (msg.attachments if msg else ())
            ],
        }
