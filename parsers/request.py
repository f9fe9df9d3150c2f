"""Extract the request form's canonical fields from a message, merging every place a requester puts them.

Sources, in the order a clerk would trust them: a returned copy of our own fillable PDF form ("form"),
the plain-text body ("body"), the HTML body ("html"), PDF attachments ("pdf"), DOCX attachments ("docx"),
and OCR of scans ("ocr", only while a mandatory field is still missing). For each field the first source
that has a usable value wins; `origins` says which source, label and raw text each value came from.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from email.utils import parseaddr
from typing import Literal

from subdomaind.parsers import normalize
from subdomaind.parsers.fields import (
    Hit,
    extract_records,
    find_place_date,
    find_signatory,
    html_records,
    text_records,
)
from subdomaind.parsers.mime import UnreadableMessage, html_to_text, parse_mime
from subdomaind.parsers.model import (
    MANDATORY_FIELDS,
    REQUEST_FIELDS,
    Attachment,
    FieldOrigin,
    ParsedMessage,
    ParseOptions,
    Problem,
    RequestFields,
    Source,
)
from subdomaind.parsers.ocr import available as ocr_available
from subdomaind.parsers.ocr import ocr_image, ocr_pdf
from subdomaind.parsers.pdf import FormField, read_pdf
from subdomaind.parsers.prose import PROSE_PRIORITY, UNIT_NAME_RE, find_kop_unit, find_prose

_TRUST: tuple[Source, ...] = ("form", "body", "html", "pdf", "docx", "ocr")
_EXTRA_FIELDS = ("letter_date", "letter_subject", "unit_head", "target_cname", "nameservers")
# Chosen like a field but not one: every name a letter in sentences asks for, in order (parsers.prose).
_LIST_FIELDS = ("subdomains",)
# Hits at or above this priority (the kop's unit, what sentences state) count only where no source has a
# labelled value: a form wins over a sentence wherever each of them is.
_FALLBACK_PRIORITY = 4
_MAX_DOCUMENTS = 10  # PDF/DOCX attachments read per message
_MAX_ATTACHED_MESSAGES = 3
_LEGACY_TYPES = frozenset(
    {"application/msword", "application/vnd.oasis.opendocument.text", "application/rtf", "text/rtf"}
)
_MIN_IMAGE_BYTES = 8 * 1024  # smaller images are logos and signature icons, not scans

Record = Sequence[str | None]

_FWD_MARK_RE = re.compile(
    r"^(?:-{2,}\s*(?:forwarded message|pesan terusan|pesan diteruskan|original message|pesan asli)\s*-{2,}"
    r"|begin forwarded message:?|_{10,})$",
    re.IGNORECASE,
)
_FWD_HEADER_RE = re.compile(
    r"^(from|dari|date|tanggal|sent|dikirim|terkirim|subject|subjek|to|kepada|cc)\s*:\s*(.*)$", re.IGNORECASE
)
_ADDRESS_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_TOPIC_RE = re.compile(r"sub[\s\-]?domain|hosting|\bdomain\b|website|situs", re.IGNORECASE)
_ASKING_RE = re.compile(r"permohonan|pengajuan|usulan|permintaan", re.IGNORECASE)
_CORE_FIELDS = (
    "subdomain",
    "unit",
    "pic_name",
    "pic_nip",
    "pic_email",
    "pic_phone",
    "purpose",
    "service",
    "target_ip",
)

_NORMALIZERS: dict[str, Callable[[str, ParseOptions], normalize.Normalized]] = {
    "subdomain": normalize.normalize_subdomain,
    "pic_nip": lambda raw, _o: normalize.normalize_nip(raw),
    "pic_email": lambda raw, _o: normalize.normalize_email(raw),
    "pic_phone": lambda raw, _o: normalize.normalize_phone(raw),
    "service": lambda raw, _o: normalize.normalize_service(raw),
    "target_ip": lambda raw, _o: normalize.normalize_ip(raw),
    "letter_number": lambda raw, _o: normalize.normalize_letter_number(raw),
    "target_cname": lambda raw, _o: normalize.normalize_cname(raw),
    "nameservers": lambda raw, _o: normalize.normalize_nameservers(raw),
}
_DIGIT_FIELDS = frozenset({"letter_number", "pic_nip", "pic_phone", "target_ip"})
_GROUP_RANK = {"tech": 0, "pic": 1, None: 1, "admin": 2, "kop": 3}
ServiceValue = Literal["subdomain", "hosting"] | None


def extract_request(msg: ParsedMessage, opts: ParseOptions) -> RequestFields | None:
    """The request fields found anywhere in the message, or None when it does not look like a request."""
    hits: dict[Source, list[Hit]] = {s: [] for s in _TRUST}
    problems: list[Problem] = []
    subjects = [msg.subject or ""]
    forwarded_from = msg.forwarded_from

    # "Forward as attachment": the request is an attached message. Its bodies come before the forwarder's
    # note and its attachments are read like ours (mime also lists them loose; `seen` drops the copies).
    messages = [msg]
    attachments: list[Attachment] = []
    for att in msg.attachments:
        if att.content_type in ("message/rfc822", "message/global") and len(messages) <= _MAX_ATTACHED_MESSAGES:
            try:
                inner = parse_mime(att.data, opts.limits)
            except UnreadableMessage as exc:
                problems.append(Problem("lampiran", f"Pesan terlampir tidak dapat dibaca ({exc})"))
                continue
            messages.insert(len(messages) - 1, inner)
            subjects.append(inner.subject or "")
            forwarded_from = forwarded_from or inner.from_addr
            attachments.extend(inner.attachments)
        else:
            attachments.append(att)
    for m in messages:
        for source, records, fwd in _body_records(m):
            hits[source].extend(_renumber(_text_hits(records, opts), len(hits[source])))
            if fwd:
                forwarded_from = forwarded_from or fwd[0]
                subjects.append(fwd[1] or "")

    scans: list[tuple[Attachment, tuple[int, ...] | None]] = []  # (attachment, scanned PDF pages / None: image)
    form_present = False
    documents = 0
    seen: set[bytes] = set()
    legacy: list[Attachment] = []  # .doc/.odt/.rtf letters we cannot read; named only if fields are missing
    for att in attachments:
        digest = hashlib.sha256(att.data).digest()
        if digest in seen:
            continue
        seen.add(digest)
        kind = _kind(att)
        if kind in ("pdf", "docx"):
            documents += 1
            if documents > _MAX_DOCUMENTS:
                continue
        if kind == "pdf":
            content = read_pdf(att.data, opts.limits, att.filename)
            problems.extend(content.problems)
            own, other = _split_form_fields(content.form_fields)
            if own:
                form_present = True
                hits["form"].extend(Hit(f, None, v, 1, None, i) for i, (f, v) in enumerate(own))
            pdf_hits = _text_hits(list(content.records), opts)
            pdf_hits.extend(extract_records([[name, value] for name, value in other]))
            hits["pdf"].extend(_renumber(pdf_hits, len(hits["pdf"])))
            if content.scan_pages and not content.form_fields:
                scans.append((att, content.scan_pages))
        elif kind == "docx":
            # Imported on the first DOCX: python-docx and lxml are 13 MB of a parser worker's memory, which
            # an office whose letters come as PDF and in the mail body never needs (bench/backlog.py --memory).
            from subdomaind.parsers.docx import read_docx

            doc = read_docx(att.data, opts.limits, att.filename)
            problems.extend(doc.problems)
            hits["docx"].extend(_renumber(_text_hits(list(doc.records), opts), len(hits["docx"])))
        elif kind == "image" and len(att.data) >= _MIN_IMAGE_BYTES:
            scans.append((att, None))
        elif kind == "legacy":
            legacy.append(att)

    # The plain and HTML bodies are usually two renderings of one text; the one that kept more of the form
    # (HTML keeps table cells apart) goes first, and on a tie the plain text, as a person would read it.
    order = list(_TRUST)
    if _fields_in(hits["html"]) > _fields_in(hits["body"]):
        order[1], order[2] = "html", "body"

    chosen = _choose_all(hits, order)
    if scans and ocr_available(opts.limits) and any(f not in chosen for f in MANDATORY_FIELDS):
        ocr_problems, ocr_hits = _run_ocr(scans, opts)
        problems.extend(ocr_problems)
        hits["ocr"] = ocr_hits
        chosen = _choose_all(hits, order)

    if legacy and any(f not in chosen for f in MANDATORY_FIELDS):
        for att in legacy:
            name = att.filename or ""
            kind_name = "." + name.rsplit(".", 1)[-1] if "." in name else att.content_type
            problems.append(
                Problem(
                    "lampiran",
                    f"Lampiran '{att.filename or att.content_type}' berformat {kind_name} yang tidak dapat dibaca "
                    f"otomatis; mohon kirim formulir dalam bentuk PDF atau DOCX",
                )
            )
    subject_text = " ".join(subjects)
    # A request letter we could not read (a damaged or refused attachment) is still answered, with why.
    unreadable_request = bool(problems) and _ASKING_RE.search(subject_text) and _TOPIC_RE.search(subject_text)
    if not form_present and not unreadable_request and not _looks_like_request(chosen, subject_text, hits):
        return None
    return _build(msg, opts, chosen, problems, subject_text, forwarded_from, form_present)


# --- sources ----------------------------------------------------------------------------------------------


Forward = tuple[str | None, str | None]


def _body_records(msg: ParsedMessage) -> list[tuple[Source, list[list[str]], Forward | None]]:
    """The plain and HTML bodies as records, each with the forward it carries (original sender, subject).

    A text part that mime made from the HTML (HTML-only mail) is not a second source: the HTML itself, with
    its table cells kept apart, is read instead.
    """
    out: list[tuple[Source, list[list[str]], Forward | None]] = []
    plain = msg.text if msg.text and not (msg.html and msg.text == html_to_text(msg.html)) else None
    if plain:
        records, fwd = _unforward(text_records(plain))
        out.append(("body", records, fwd))
    if msg.html:
        records, fwd = _unforward(html_records(msg.html))
        out.append(("html", records, fwd))
    return out


def _kind(att: Attachment) -> str:
    name = (att.filename or "").lower()
    ctype = att.content_type.lower()
    if ctype == "application/pdf" or name.endswith(".pdf") or att.data[:5] == b"%PDF-":
        return "pdf"
    if "wordprocessingml" in ctype or name.endswith(".docx"):
        return "docx"
    if ctype in _LEGACY_TYPES or name.endswith((".doc", ".odt", ".rtf", ".wps")):
        return "legacy"
    if ctype in ("image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/tiff") or name.endswith(
        (".png", ".jpg", ".jpeg", ".tif", ".tiff")
    ):
        return "image"
    return "other"


def _text_hits(records: Sequence[Record], opts: ParseOptions) -> list[Hit]:
    hits = extract_records(records)
    extra = [find_signatory(records), find_place_date(records), find_kop_unit(records)]
    hits.extend(h for h in extra if h is not None)
    if not any(h.field == "subdomain" for h in hits):
        hits.extend(find_prose(records, opts.zone))
    return _renumber(hits, 0)


def _renumber(hits: list[Hit], start: int) -> list[Hit]:
    return [Hit(h.field, h.label, h.value, h.priority, h.group, start + i) for i, h in enumerate(hits)]


def _split_form_fields(fields: Sequence[FormField]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Our own form's fields (named after REQUEST_FIELDS) apart from a third party's, which are matched by
    their tooltip or their name as a label ("txtNamaSubDomain" → "txt Nama Sub Domain")."""
    own: list[tuple[str, str]] = []
    other: list[tuple[str, str]] = []
    for f in fields:
        short = f.name.rsplit(".", 1)[-1].strip()
        if short.lower() in REQUEST_FIELDS or short.lower() in _EXTRA_FIELDS:
            own.append((short.lower(), f.value))
        else:
            label = f.tooltip or re.sub(r"(?<=[a-z])(?=[A-Z])|_", " ", re.sub(r"^(?:txt|fld|field)_?", "", short))
            other.append((label, f.value))
    return own, other


def _unforward(records: list[list[str]]) -> tuple[list[list[str]], Forward | None]:
    """A forwarded message's own part first, its header block dropped; plus (original sender, subject).

    The secretary's note above the "---------- Forwarded message ---------" line comes after it, so the
    requester's form wins over anything in the note (an e-mail address in the secretary's signature).
    """
    for i, record in enumerate(records):
        line = " ".join(c for c in record if c).strip()
        if not _FWD_MARK_RE.match(line):
            continue
        sender = subject = None
        j = i + 1
        while j < len(records) and not any(c.strip() for c in records[j] if c):
            j += 1
        first_header = j
        while j < len(records):
            header = _FWD_HEADER_RE.match(" ".join(c for c in records[j] if c).strip())
            if not header:
                break
            name, value = header.group(1).lower(), header.group(2)
            if name in ("from", "dari") and sender is None:
                address = _ADDRESS_RE.search(value) or _ADDRESS_RE.search(parseaddr(value)[1])
                sender = address.group(0).lower() if address else None
            elif name in ("subject", "subjek"):
                subject = value
            j += 1
        if j == first_header and line.startswith("_"):
            continue  # a line of underscores without a header block under it is a signature divider
        return records[j:] + [[]] + records[:i], (sender, subject)
    return records, None


def _run_ocr(
    scans: list[tuple[Attachment, tuple[int, ...] | None]], opts: ParseOptions
) -> tuple[list[Problem], list[Hit]]:
    budget = opts.limits.max_ocr_pages
    problems: list[Problem] = []
    hits: list[Hit] = []
    for att, pages in scans:
        if budget <= 0:
            break
        result = (
            ocr_pdf(att.data, opts.limits, pages, budget, att.filename)
            if pages is not None
            else ocr_image(att.data, opts.limits, att.filename)
        )
        budget -= max(result.pages, 1)
        problems.extend(result.problems)
        if result.text:
            hits.extend(_renumber(_text_hits(text_records(result.text), opts), len(hits)))
    return problems, hits


# --- choosing and checking --------------------------------------------------------------------------------


def _usable(field: str, value: str) -> bool:
    """Whether a value can be meant for the field at all; "No | Uraian" is a table header, not a Nomor."""
    if normalize.is_placeholder(value):
        return False
    if field not in _DIGIT_FIELDS:
        return True
    digits = sum(c.isdigit() for c in value)
    if field == "letter_number":
        return digits > 0 and "/" in value
    if field == "pic_nip":
        return digits >= 8
    if field == "pic_phone":
        return digits >= 6
    if field == "target_ip":
        return digits > 0 or ":" in value
    return True


def _rank(hit: Hit) -> tuple[int, int, int]:
    if hit.field == "unit_head":
        return (hit.priority, 0, -hit.position)  # the signature block is at the end
    if hit.field.startswith("pic_"):
        return (_GROUP_RANK.get(hit.group, 1), hit.priority, hit.position)
    return (0, hit.priority, hit.position)


def _labelled(hit: Hit) -> bool:
    return hit.priority < _FALLBACK_PRIORITY and hit.group != "kop"


def _choose_all(hits: dict[Source, list[Hit]], order: Sequence[Source]) -> dict[str, tuple[Source, Hit]]:
    chosen: dict[str, tuple[Source, Hit]] = {}
    for field in (*REQUEST_FIELDS, *_EXTRA_FIELDS, *_LIST_FIELDS):
        for first_pass in (True, False):
            for source in order:
                candidates = [
                    h
                    for h in hits[source]
                    if h.field == field and _usable(field, h.value) and (_labelled(h) or not first_pass)
                ]
                if candidates:
                    chosen[field] = (source, min(candidates, key=_rank))
                    break
            if field in chosen:
                break
    return chosen


def _fields_in(hits: list[Hit]) -> int:
    return len({h.field for h in hits if h.field in REQUEST_FIELDS and _usable(h.field, h.value)})


def _looks_like_request(chosen: dict[str, tuple[Source, Hit]], subject: str, hits: dict[Source, list[Hit]]) -> bool:
    found = [f for f in REQUEST_FIELDS if f in chosen]
    if "subdomain" in found:
        return True
    core = [f for f in found if f in _CORE_FIELDS]
    if len(core) >= 3:
        return True
    letter = chosen.get("letter_subject")
    topic = f"{subject} {letter[1].value if letter else ''}"
    return len(found) >= 2 and _TOPIC_RE.search(topic) is not None


_HEAD_TO_UNIT = (
    (re.compile(r"^(?:plt\.?|plh\.?)\s+", re.IGNORECASE), ""),
    (
        re.compile(
            r"^kepala\s+(?=(?:dinas|badan|bagian|kantor|satuan|pelaksana|unit|uptd|rsud|seksi|bidang)\b)",
            re.IGNORECASE,
        ),
        "",
    ),
    (re.compile(r"^camat\b", re.IGNORECASE), "Kecamatan"),
    (re.compile(r"^lurah\b", re.IGNORECASE), "Kelurahan"),
    (re.compile(r"^inspektur\b", re.IGNORECASE), "Inspektorat"),
    (re.compile(r"^sekretaris daerah\b", re.IGNORECASE), "Sekretariat Daerah"),
    (re.compile(r"^direktur\s+(?=rsud|rumah sakit)", re.IGNORECASE), ""),
)


def unit_from_head(jabatan: str) -> str | None:
    """ "Kepala Dinas Sosial" → "Dinas Sosial"; None when the jabatan does not name a unit."""
    text = jabatan.strip()
    for pattern, repl in _HEAD_TO_UNIT:
        text = pattern.sub(repl, text, count=1).strip()
    if text == jabatan.strip() and not re.match(r"^(?:camat|lurah|inspektur|sekretaris daerah)", text, re.I):
        return None
    if (
        re.match(r"^(?:kepala|sekretaris|direktur)\b", text, re.IGNORECASE)
        or len(text.split()) < 2
        and text.lower() not in ("inspektorat",)
    ):
        return None
    return text


def _build(
    msg: ParsedMessage,
    opts: ParseOptions,
    chosen: dict[str, tuple[Source, Hit]],
    attachment_problems: list[Problem],
    subject_text: str,
    forwarded_from: str | None,
    form_present: bool,
) -> RequestFields:
    values: dict[str, str | None] = {}
    origins: list[FieldOrigin] = []
    problems: list[Problem] = []
    counted: list[Source] = []
    for field in (*REQUEST_FIELDS, *_EXTRA_FIELDS):
        if field not in chosen:
            continue
        source, hit = chosen[field]
        if field in _NORMALIZERS:
            value, problem = _NORMALIZERS[field](hit.value, opts)
        else:
            value, problem = normalize.normalize_text(hit.value), None
        if value is None and problem is None:
            continue
        values[field] = value
        if problem is not None:
            problems.append(problem)
        origins.append(FieldOrigin(field, source, hit.label, hit.value))
        if field in REQUEST_FIELDS:
            counted.append(source)

    fallback_source: Source = counted[0] if counted else "body"
    if not values.get("unit") and "unit" not in {o.field for o in origins} and values.get("unit_head"):
        unit = unit_from_head(values["unit_head"] or "")
        if unit:
            values["unit"] = unit
            head_origin = next(o for o in origins if o.field == "unit_head")
            origins.append(FieldOrigin("unit", head_origin.source, head_origin.label, head_origin.raw))
    if not values.get("unit") and "unit" not in {o.field for o in origins}:
        # Last of the letter's three places for the unit (kop, signature, From): "Dinas Pariwisata" <...>.
        name = " ".join(((msg.forwarded_name if forwarded_from else msg.from_name) or "").split()).strip(" \"'")
        if name and UNIT_NAME_RE.match(name) and "@" not in name and len(name) <= 120:
            values["unit"] = name
            origins.append(FieldOrigin("unit", "body", "Nama pengirim (From)", name))
    subdomains, name_problems = _subdomains(chosen, values.get("subdomain"), opts)
    problems.extend(name_problems)
    if "service" not in {o.field for o in origins}:
        _infer_service(values, origins, subject_text, fallback_source)
    if "pic_email" not in {o.field for o in origins}:
        sender = forwarded_from or msg.from_addr
        if sender:
            value, problem = normalize.normalize_email(sender)
            if value:
                label = "Pengirim asli (pesan terusan)" if forwarded_from else "Pengirim surel (From)"
                values["pic_email"] = value
                origins.append(FieldOrigin("pic_email", "body", label, sender))

    found = {o.field for o in origins}
    missing = tuple(f for f in MANDATORY_FIELDS if f not in found)
    source = _majority(counted) if counted else ("form" if form_present else "body")
    seen: set[tuple[str, str]] = set()
    all_problems: list[Problem] = []
    for p in (*problems, *attachment_problems):
        if (p.field, p.reason) not in seen:
            seen.add((p.field, p.reason))
            all_problems.append(p)
    order = {f: i for i, f in enumerate(REQUEST_FIELDS)}
    origins.sort(key=lambda o: order.get(o.field, len(order)))
    return RequestFields(
        subdomain=values.get("subdomain"),
        subdomains=subdomains,
        unit=values.get("unit"),
        pic_name=values.get("pic_name"),
        pic_nip=values.get("pic_nip"),
        pic_position=values.get("pic_position"),
        pic_email=values.get("pic_email"),
        pic_phone=values.get("pic_phone"),
        purpose=values.get("purpose"),
        service=_service(values.get("service")),
        target_ip=values.get("target_ip"),
        letter_number=values.get("letter_number"),
        target_cname=values.get("target_cname"),
        nameservers=values.get("nameservers"),
        letter_date=values.get("letter_date"),
        letter_subject=values.get("letter_subject"),
        unit_head=values.get("unit_head"),
        source=source,
        missing=missing,
        problems=tuple(all_problems),
        origins=tuple(origins),
    )


def _subdomains(
    chosen: dict[str, tuple[Source, Hit]], first: str | None, opts: ParseOptions
) -> tuple[tuple[str, ...], list[Problem]]:
    """Every name the letter asks for, the chosen one first: one when a form names it, all the names a
    letter in sentences lists ("sub domain ppid dan jdih"), each checked like the first."""
    if not first:
        return (), []
    listed = chosen.get("subdomains")
    picked = chosen.get("subdomain")
    if listed is None or picked is None or listed[0] != picked[0] or picked[1].priority < PROSE_PRIORITY:
        return (first,), []
    names: list[str] = []
    problems: list[Problem] = []
    for raw in listed[1].value.split("\n"):
        value, problem = normalize.normalize_subdomain(raw, opts)
        if problem is not None and value is None and raw != picked[1].value:
            problems.append(problem)
        if value and value not in names:
            names.append(value)
    if first not in names:
        names.insert(0, first)
    return tuple(names), problems


def _service(value: str | None) -> ServiceValue:
    if value == "hosting":
        return "hosting"
    if value == "subdomain":
        return "subdomain"
    return None


def _infer_service(values: dict[str, str | None], origins: list[FieldOrigin], subject: str, source: Source) -> None:
    """Service from the letter's Hal or the mail subject ("Permohonan Hosting"), else pointing when an IP is
    given; recorded as an origin so a clerk sees it was inferred."""
    letter = values.get("letter_subject") or ""
    for label, text in (("Hal", letter), ("Subjek", subject)):
        lowered = text.lower()
        if "hosting" in lowered:
            values["service"] = "hosting"
        elif re.search(r"sub[\s\-]?domain", lowered):
            values["service"] = "subdomain"
        else:
            continue
        origins.append(FieldOrigin("service", source, label, text))
        return
    if values.get("target_ip"):
        values["service"] = "subdomain"
        origins.append(FieldOrigin("service", source, "Alamat IP", values["target_ip"] or ""))


def _majority(sources: list[Source]) -> Source:
    counts = Counter(sources)
    return max(_TRUST, key=lambda s: (counts.get(s, 0), -_TRUST.index(s)))
