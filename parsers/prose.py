"""Find the request's values in a letter written in sentences, with no "Label : value" form.

Many units send only the official letter (SOP step 1, "surat permohonan"): "bersama ini kami mengajukan
permohonan pembuatan sub domain sipakde.trenggalekkab.go.id untuk ... penanggung jawab Sdr. Rina Marlina,
S.T. (NIP ...), surel ..., telepon ...". `find_prose` returns raw `Hit`s for what such sentences state:
the requested names (a FQDN under the agency's zone, or "sub domain X"; several in one letter are all
kept, in order, as one "subdomains" hit), the person named as penanggung jawab (after "Sdr./Saudara/
Saudari", "a.n." or "penanggung jawab") with the NIP, jabatan, e-mail and phone written next to them, and
the purpose ("untuk ...") and the address to point to ("alamat IP ..."). `find_kop_unit` reads the unit
from the letterhead's second line.

Every hit carries a label saying which phrase it came from ("kalimat surat: Sdr."), so the origin a clerk
sees names the sentence, and a lower priority than any labelled value: a form, when there is one, wins.
Pure: records in, hits out; nothing is normalised here (that is `parsers.normalize`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from subdomaind.parsers.fields import Hit, title_case

__all__ = ["find_prose", "find_kop_unit", "UNIT_NAME_RE"]

PROSE_PRIORITY = 5  # below every labelled value (1-3) of the same source
_LABEL = "kalimat surat"

# What a unit's name starts with (Permendagri nomenclature of perangkat daerah and their parts).
UNIT_NAME_RE = re.compile(
    r"^(?:dinas|badan|sekretariat|inspektorat|kecamatan|kelurahan|satuan|rumah\s+sakit|rsud|kantor|bagian|"
    r"uptd?|unit\s+pelaksana|desa|pemerintah\s+desa|dprd|puskesmas|bidang|satpol|bappeda|bapenda|bpbd|"
    r"bkpsdm|bpkad|diskominfo|dinkes|dinsos|disdik)\b",
    re.IGNORECASE,
)
_GOVERNMENT_RE = re.compile(r"^pemerintah\s+(?:kabupaten|kota|provinsi|daerah)\b", re.IGNORECASE)
_KOP_RECORDS = 6
_FORM_TITLE_RE = re.compile(r"^(?:formulir|form)\b", re.IGNORECASE)

_CUE_RE = re.compile(
    r"sub[\s\-]?domain|\bdomain\b|alamat\s+(?:website|situs|web|laman)|\bsitus\b|\bwebsite\b|\blaman\b",
    re.IGNORECASE,
)
# A kop or contact line names the office's own site and mailbox, never a requested name.
_CONTACT_LINE_RE = re.compile(r"^(?:laman|website|situs|web|pos-?el|e-?mail|surel|telepon|telp|faks)\b", re.I)
_STOP_LABELS = frozenset(
    {
        "untuk", "yang", "pada", "baru", "dengan", "dgn", "dan", "di", "ke", "dari", "milik", "instansi", "kami",
        "tersebut", "tsb", "sebagai", "atas", "agar", "guna", "dalam", "bagi", "website", "web", "resmi", "ini",
        "itu", "berikut", "yaitu", "bernama", "nama", "adalah", "serta", "atau", "sesuai", "pemerintah",
        "kabupaten", "kota", "the", "for", "name", "go", "id", "www", "http", "https", "dimaksud", "diatas",
        "dinas", "badan", "kantor", "desa", "aplikasi", "sistem", "layanan", "portal", "informasi", "data",
        "sekolah", "kecamatan", "kelurahan", "bagian", "lama", "utama", "induk",
    }
)
_BARE_NAME_RE = re.compile(r"[\"“'‘]?([a-z0-9][a-z0-9\-]{0,62})[\"”'’]?")
_NAMING_RE = re.compile(r"nama|yaitu|yakni|berikut|:", re.IGNORECASE)
# Words that may follow a name that ends its phrase ("sub domain ppid dan jdih pada domain ...").
_FUNCTION_WORDS = frozenset(
    {"untuk", "yang", "dan", "serta", "pada", "guna", "sebagai", "agar", "dengan", "di", "ke", "sesuai", "dalam",
     "bagi", "milik", "atas", "tersebut", "ini", "maka", "atau", "for", "and"}
)
_JOIN_RE = re.compile(r"\s*(?:,|;|\bdan\b|\bserta\b|&|/)\s*(?:sub[\s\-]?domain\s+)?")
_SUB_CUE_RE = re.compile(
    r"sub[\s\-]?domain\s+(?:(?:baru|resmi)\s+)?(?:(?:dengan|dgn)\s+nama\s+|bernama\s+|yaitu\s+|yakni\s+|"
    r"berikut\s*:?\s*|:\s*)?",
    re.IGNORECASE,
)

_HONORIFIC = r"(?:Sdr\.?i?|Sdri\.?|Saudara|Saudari|a\.\s?n\.?|atas\s+nama|Bapak|Ibu)"
_PIC_CUE_RE = re.compile(
    rf"(?:\b(?:penanggung\s*jawab|narahubung|pengelola|admin(?:istrator)?|petugas|operator)\b"
    rf"(?:\s+(?:teknis|website|sub\s*domain|aplikasi))?[^.\n]{{0,60}}?"
    rf"(?:\b(?:adalah|yaitu|yakni|kami\s+tunjuk|ditunjuk|menunjuk|kepada|oleh)\b|:)\s*(?:{_HONORIFIC}\s+)?"
    rf"|(?<![\w.])(?:Sdr\.?i?|Sdri\.?|Saudara|Saudari|a\.\s?n\.?|atas\s+nama)\s+)",
    re.IGNORECASE,
)
_NAME_RE = re.compile(
    r"((?:(?:dr|drs|dra|ir|hj|h|prof|dr\.\s?ir)\.?\s+)?"
    r"[A-Z][A-Za-z'\-]+\.?(?:\s+[A-Z][A-Za-z'\-]*\.?){0,5}"
    r"(?:\s*,\s*(?:[A-Z][A-Za-z]{0,4}\.\s?){1,3}(?:[A-Z][A-Za-z]{0,4}\.?)?)*)"
)
_NOT_A_NAME_RE = re.compile(
    r"^(?:kepala|sekretaris|bupati|walikota|wali\s+kota|gubernur|camat|direktur|plt|plh|dinas|badan|kami|"
    r"yang|pemerintah|nip|jabatan|selaku|sebagai)\b",
    re.IGNORECASE,
)
_NIP_RE = re.compile(r"(?<!\d)(\d{8}[\s.]?\d{6}[\s.]?\d[\s.]?\d{3})(?!\d)")
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_PHONE_RE = re.compile(r"(?<![\d+])(?:\+62|62|0)\s?8[\d\s\-.]{7,15}\d")
_POSITION_RE = re.compile(
    r"\b(?:jabatan|selaku|sebagai)\s*:?\s*(?!penanggung|narahubung)"
    r"([A-Za-z][\w .&/\-]{3,80}?)(?=\s*(?:[,;()]|\.\s|\.$|$|\bdengan\b|\byang\b|\bsurel\b|\be-?mail\b|"
    r"\btelepon\b|\btelp\b|\bnomor\b|\bno\.|\bhp\b|\bwa\b|\bnip\b|\bdapat\b|\bdan\b))",
    re.IGNORECASE,
)
_PURPOSE_RE = re.compile(
    r"(?:\b(?:yang\s+)?(?:akan\s+)?(?:di)?(?:gunakan|pergunakan|manfaatkan)\s+(?:untuk|sebagai)|"
    r"\b(?:untuk|guna)\s+(?:keperluan|kebutuhan)?|\bsebagai\s+(?=(?:portal|website|situs|laman|aplikasi|sistem)))"
    r"\s*([^.;\n]{8,200}?)(?=\s*(?:[.;](?:\s|$)|$|,\s*(?:dengan|adapun|sebagai\s+penanggung|penanggung|kami|"
    r"yang\s+(?:akan\s+)?dikelola|pengelola|(?:yang\s+)?(?:akan\s+)?diarahkan|mengarah|pointing|ke\s+alamat)))",
    re.IGNORECASE,
)
# "diarahkan ke alamat IP 203.0.113.10", "server kami (IP publik 2001:db8::5)".
_IP_RE = re.compile(
    r"\b(?:alamat\s+)?IP(?:\s+(?:publik|public|server|address|tujuan))?\s*:?\s*"
    r"((?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![\w:]|\.\d)",
)
_CONTEXT_PURPOSE_RE = re.compile(
    r"\b(?:sehubungan\s+dengan|dalam\s+rangka|untuk\s+mendukung)\s+([^,.;\n]{8,160})", re.IGNORECASE
)
# Only a paragraph that asks names a bare "sub domain X"; a question about the rules does not ask for one.
_ASKING_RE = re.compile(
    r"\b(?:mengajukan|ajukan|permohonan|memohon|mohon|dibuatkan|pembuatan|pendaftaran|meminta|usulan|"
    r"mengusulkan|diusulkan|membuat|penambahan|diterbitkan|kebutuhan)\b",
    re.IGNORECASE,
)
_QUESTION_RE = re.compile(r"\?|\b(?:apakah|bagaimana|berapa|bisakah|bolehkah)\b", re.IGNORECASE)
_SIGNATURE_START_RE = re.compile(r"^(?:demikian|hormat\s+kami|atas\s+perhatian)", re.IGNORECASE)
_LIST_ITEM_RE = re.compile(r"^(?:\(?[0-9a-z]{1,2}[.)]|[-•·*])\s+")
_WINDOW = 420
_WRAPPED_LINE = 45  # a line this long that does not end a sentence was wrapped by the writer's client
_ENDS = (".", ":", ";", "!", "?")


def _paragraphs(records: Sequence[Sequence[str | None]]) -> list[str]:
    """Lines joined into paragraphs: plain text and PDF wrap sentences over lines (a wrapped line is long
    and does not end a sentence); DOCX paragraphs are whole already."""
    out: list[str] = []
    current: list[str] = []
    for record in records:
        cells = [" ".join(str(c).split()) for c in record if c and str(c).strip()]
        line = " ".join(cells)
        wrapped = bool(current) and len(current[-1]) >= _WRAPPED_LINE and not current[-1].endswith(_ENDS)
        if line and len(cells) == 1 and wrapped and not _LIST_ITEM_RE.match(line):
            current.append(line)
            continue
        if current:
            out.append(" ".join(current))
            current = []
        if line:
            current.append(line)
    if current:
        out.append(" ".join(current))
    return out


def _body(paragraphs: list[str]) -> list[str]:
    """The letter's paragraphs between its letterhead/contact lines and its signature block."""
    out: list[str] = []
    for p in paragraphs:
        if _SIGNATURE_START_RE.match(p) and out:
            out.append(p)
            break
        if _CONTACT_LINE_RE.match(p) or _GOVERNMENT_RE.match(p):
            continue
        out.append(p)
    return out


def _names(paragraphs: list[str], zone: str | None) -> list[tuple[str, str]]:
    """(name as written, phrase) for every requested name, in order, without repeats."""
    fqdn_re = None
    if zone:
        fqdn_re = re.compile(
            r"(?<![@\w.\-])((?:https?://)?(?:www\.)?[a-z0-9][a-z0-9_\-]{0,62}\."
            + re.escape(zone.lower().strip("."))
            + r")\b",
            re.IGNORECASE,
        )
    found: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(raw: str, phrase: str) -> None:
        key = raw.lower().split("://")[-1].removeprefix("www.").split(".")[0]
        if key and key not in seen and key not in _STOP_LABELS:
            seen.add(key)
            found.append((raw, phrase))

    listing = False
    for p in paragraphs:
        cue = _CUE_RE.search(p)
        if cue is None and not (listing and (_LIST_ITEM_RE.match(p) or fqdn_re and fqdn_re.search(p))):
            listing = False
            continue
        listing = bool(cue) and p.rstrip().endswith(":") or listing and cue is None
        if _QUESTION_RE.search(p):
            # A question asks for nothing ("Apakah nama sub domain boleh ...?"); the other sentences may.
            p = " ".join(x for x in re.split(r"(?<=[.?!])\s+", p) if not _QUESTION_RE.search(x))
        asking = _ASKING_RE.search(p) is not None
        spans: list[tuple[int, str, str]] = []
        if fqdn_re is not None:
            for m in fqdn_re.finditer(p):
                spans.append((m.start(), m.group(1), "nama domain lengkap"))
        for m in _SUB_CUE_RE.finditer(p) if asking else ():
            pos = m.end()
            while True:
                n = _BARE_NAME_RE.match(p, pos)
                if not n or not _bare_ok(p, n, named=_NAMING_RE.search(m.group(0)) is not None):
                    break
                spans.append((n.start(1), n.group(1), "sub domain"))
                j = _JOIN_RE.match(p, n.end())
                if not j or j.end() == n.end():
                    break
                pos = j.end()
        for _, raw, phrase in sorted(spans, key=lambda s: s[0]):
            add(raw, phrase)
    return found


def _bare_ok(text: str, m: re.Match[str], *, named: bool) -> bool:
    """Whether "sub domain X" names X: a quoted word, one after "dengan nama", or a word that ends the phrase
    ("sub domain dinsos untuk ..."); "sub domain dinas sosial" describes, it does not name."""
    name = m.group(1)
    if name in _STOP_LABELS or len(name) < 2 or name.isdigit():
        return False
    after = text[m.end() : m.end() + 1]
    # A name followed by ".zone" is taken whole by the FQDN pattern; a bare one must end at a word boundary.
    if after not in ("", " ", ",", ";", ")", ":", ".", "\u201d", '"', "'"):
        return False
    if named or m.group(0)[:1] in "\"“'‘":
        return True
    following = re.match(r"\s+([A-Za-z]+)", text[m.end() :])
    return following is None or following.group(1).lower() in _FUNCTION_WORDS


def _person(paragraphs: list[str]) -> list[Hit]:
    text = "\n".join(paragraphs)
    for cue in _PIC_CUE_RE.finditer(text):
        rest = text[cue.end() :]
        m = _NAME_RE.match(rest)
        if not m:
            continue
        name = m.group(1).strip(" ,")
        if _NOT_A_NAME_RE.match(name) or len(name) < 3:
            continue
        phrase = f"{_LABEL}: {' '.join(cue.group(0).split())}".strip()
        hits = [Hit("pic_name", phrase, name, PROSE_PRIORITY)]
        window = rest[m.end() : m.end() + _WINDOW]
        # The window ends where another person's block or the signature begins.
        stop = re.search(r"\n(?:demikian|hormat\s+kami)|\bkepala\s+(?:dinas|badan)\b", window, re.IGNORECASE)
        if stop:
            window = window[: stop.start()]
        nip = _NIP_RE.search(window)
        if nip:
            hits.append(Hit("pic_nip", f"{_LABEL}: NIP", nip.group(1), PROSE_PRIORITY))
        position = _POSITION_RE.search(window)
        if position:
            hits.append(Hit("pic_position", f"{_LABEL}: jabatan", position.group(1).strip(" ,."), PROSE_PRIORITY))
        else:
            # "Sdr. Rina Marlina, S.T., Pranata Komputer Ahli Pertama (NIP ...)": a title after the name.
            after = re.match(r"\s*,\s*([A-Z][A-Za-z]+(?:\s+(?:[A-Z][A-Za-z]+|dan|pada|di)){1,8})", window)
            if after:
                hits.append(Hit("pic_position", f"{_LABEL}: jabatan", after.group(1), PROSE_PRIORITY))
        email = _EMAIL_RE.search(window)
        if email:
            hits.append(Hit("pic_email", f"{_LABEL}: surel", email.group(0), PROSE_PRIORITY))
        phone = _PHONE_RE.search(window)
        if phone:
            hits.append(Hit("pic_phone", f"{_LABEL}: telepon", phone.group(0), PROSE_PRIORITY))
        return hits
    return []


def _contacts(paragraphs: list[str]) -> list[Hit]:
    """An e-mail or mobile number stated anywhere in the letter's sentences (below the person's own)."""
    hits: list[Hit] = []
    for p in paragraphs:
        if not hits or all(h.field != "pic_email" for h in hits):
            m = _EMAIL_RE.search(p)
            if m:
                hits.append(Hit("pic_email", f"{_LABEL}: surel", m.group(0), PROSE_PRIORITY + 1))
        if all(h.field != "pic_phone" for h in hits):
            n = _PHONE_RE.search(p)
            if n:
                hits.append(Hit("pic_phone", f"{_LABEL}: telepon", n.group(0), PROSE_PRIORITY + 1))
    return hits


def _purpose(paragraphs: list[str], first_name: str | None) -> Hit | None:
    for p in paragraphs:
        at = p.find(first_name) if first_name else -1
        if first_name and at < 0:
            continue
        tail = p[at + len(first_name) :] if first_name else p
        m = _PURPOSE_RE.search(tail)
        if m and not _PIC_CUE_RE.match(m.group(1)):
            return Hit("purpose", f"{_LABEL}: untuk", m.group(1).strip(" ,"), PROSE_PRIORITY)
    for p in paragraphs:
        m = _CONTEXT_PURPOSE_RE.search(p)
        if m:
            return Hit("purpose", f"{_LABEL}: sehubungan dengan", m.group(1).strip(" ,"), PROSE_PRIORITY + 1)
    return None


def find_prose(records: Sequence[Sequence[str | None]], zone: str | None) -> list[Hit]:
    """Hits for what the letter's sentences state; empty when no sentence asks for a name."""
    paragraphs = _body(_paragraphs(records))
    names = _names(paragraphs, zone)
    if not names:
        return []
    first_raw, first_phrase = names[0]
    hits = [Hit("subdomain", f"{_LABEL}: {first_phrase}", first_raw, PROSE_PRIORITY)]
    hits.append(Hit("subdomains", _LABEL, "\n".join(raw for raw, _ in names), PROSE_PRIORITY))
    hits.extend(_person(paragraphs))
    hits.extend(_contacts(paragraphs))
    purpose = _purpose(paragraphs, first_raw)
    if purpose is not None:
        hits.append(purpose)
    for p in paragraphs:
        ip = _IP_RE.search(p)
        if ip:
            hits.append(Hit("target_ip", f"{_LABEL}: alamat IP", ip.group(1), PROSE_PRIORITY))
            break
    return hits


def find_kop_unit(records: Sequence[Sequence[str | None]]) -> Hit | None:
    """The unit from the letterhead: the line under "PEMERINTAH KABUPATEN ..." when it names a unit."""
    lines: list[str] = []
    for record in records:
        line = " ".join(" ".join(str(c).split()) for c in record if c and str(c).strip())
        if line:
            lines.append(line)
        if len(lines) >= _KOP_RECORDS:
            break
    if any(_FORM_TITLE_RE.match(line) for line in lines):
        # A form under a kop is the office's own blank form (its kop is the office's), filled in: the unit
        # is whatever its "Unit kerja" line says, never the kop.
        return None
    for i, line in enumerate(lines[:-1]):
        if _GOVERNMENT_RE.match(line):
            unit = lines[i + 1].strip(" ,.")
            if UNIT_NAME_RE.match(unit) and len(unit) <= 120 and not re.search(r"\d|:", unit):
                return Hit("unit", "kop surat", title_case(unit), 4)
            return None
    return None
