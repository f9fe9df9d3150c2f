"""Normalise and validate one request field at a time: raw text in, `(value | None, Problem | None)` out.

Every function here is total: it never raises for any input string, and every `Problem.reason` is plain,
formal Indonesian that a clerk can paste into the reply to the requesting unit.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from datetime import date

import idna
import phonenumbers
from email_validator import EmailNotValidError, validate_email

from subdomaind.parsers.model import ParseOptions, Problem

Normalized = tuple[str | None, Problem | None]

# The DNS label a returned sub-domain always matches (domain brief section 3; 2 characters are allowed for
# OPD acronyms such as "pu").
LABEL_RE = re.compile(r"^(?!-)(?!.*-$)[a-z0-9-]{2,63}$")
LETTER_NUMBER_RE = re.compile(r"^\d{3}(\.\d+)*\s*/\s*[^/\s]+(\s*/\s*[^/\s]+)*$")

_ALLOWED = "hanya huruf a-z, angka 0-9 dan tanda hubung (-) yang diperbolehkan"
# Values people write into a form field to say "nothing here".
_PLACEHOLDERS = frozenset(
    {
        "",
        "-",
        "--",
        "—",
        "–",
        "n/a",
        "na",
        "nil",
        "null",
        "none",
        "tidak ada",
        "belum ada",
        "kosong",
        "tba",
        "menyusul",
        "x",
        "?",
    }
)
_URL_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.\-]*://", re.IGNORECASE)
_TRAILING_PAREN_RE = re.compile(r"\s*[(\[][^()\[\]]*[)\]]\s*$")


def shown(raw: str, limit: int = 80) -> str:
    """The value as the requester wrote it, shortened for a reason sentence."""
    text = " ".join(raw.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_placeholder(raw: str | None) -> bool:
    """True for empty values and fillers such as "-", "....", "___" or "tidak ada"."""
    if raw is None:
        return True
    text = " ".join(raw.split()).strip(" .:_*…").lower()
    return text in _PLACEHOLDERS


def normalize_text(raw: str | None, max_len: int = 500) -> str | None:
    """Free text (unit, name, position, purpose): whitespace collapsed, edge punctuation trimmed."""
    if raw is None or is_placeholder(raw):
        return None
    text = " ".join(raw.replace("\u00a0", " ").split()).strip(" ,;:|*\"'“”")
    text = text.strip(" -–—").strip()
    if not text:
        return None
    return text[:max_len]


# --- sub-domain -------------------------------------------------------------------------------------------


def normalize_subdomain(raw: str, opts: ParseOptions) -> Normalized:
    """The requested label alone ("dinsos"), from "https://www.dinsos.trenggalekkab.go.id/", "DINSOS." ..."""
    if is_placeholder(raw):
        return None, None
    try:
        return _normalize_subdomain(raw, opts)
    except (UnicodeError, ValueError, idna.IDNAError) as exc:  # last resort: the function must be total
        return None, Problem("subdomain", f"Nama sub domain '{shown(raw)}' tidak dapat dibaca ({type(exc).__name__})")


def _normalize_subdomain(raw: str, opts: ParseOptions) -> Normalized:
    written = shown(raw)
    text = unicodedata.normalize("NFC", " ".join(raw.replace("\u00a0", " ").split()))
    text = text.strip(" \"'`<>“”‘’,;")
    text = _TRAILING_PAREN_RE.sub("", text).strip()
    if " " in text:
        first = text.split(" ", 1)[0]
        # "dinsos.trenggalekkab.go.id untuk website dinas": the first token is the name, the rest is prose.
        if "." in first or "://" in first:
            text = first
    text = _URL_SCHEME_RE.sub("", text)
    if "@" in text:
        return None, Problem(
            "subdomain",
            f"Nama sub domain '{written}' tampaknya alamat surel; tuliskan nama sub domain saja, misalnya dinsos",
        )
    text = re.split(r"[/?#\\]", text, maxsplit=1)[0]
    text = re.sub(r":\d*$", "", text).rstrip(".").lower()
    if text.startswith("www."):
        text = text[4:]
    zone = (opts.zone or "").lower().strip(".")
    if zone:
        if text == zone:
            return None, Problem(
                "subdomain",
                f"'{written}' adalah nama domain induk; tuliskan nama sub domain di depannya, misalnya dinsos.{zone}",
            )
        if text.endswith("." + zone):
            text = text[: -len(zone) - 1]
            if text.startswith("www."):
                text = text[4:]
        elif "." in text and not text.endswith("."):
            return None, Problem(
                "subdomain",
                f"Nama sub domain '{written}' berada di luar domain {zone}; yang dapat dilayani hanya "
                f"sub domain dari {zone} (misalnya dinsos.{zone})",
            )
    if "." in text:
        if zone:
            return None, Problem(
                "subdomain",
                f"Nama sub domain '{written}' memuat lebih dari satu tingkat; ajukan satu nama saja di depan "
                f"{zone} (misalnya dinsos.{zone})",
            )
        # No zone configured: the left-most label is the one being asked for.
        text = text.split(".", 1)[0]
    if not text:
        return None, None
    return _check_label(text, written, opts)


def _check_label(label: str, written: str, opts: ParseOptions) -> Normalized:
    def problem(reason: str) -> Normalized:
        return None, Problem("subdomain", reason)

    if not label.isascii():
        try:
            ace: str | None = idna.encode(label, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            ace = None
        dns_form = f", yang di DNS ditulis sebagai '{ace}'" if ace else ""
        return problem(
            f"Nama sub domain '{written}' memuat huruf di luar a-z (nama domain internasional/IDN)"
            f"{dns_form}; mohon ajukan nama dengan huruf a-z, angka 0-9 dan tanda hubung saja"
        )
    if "_" in label:
        return problem(f"Nama sub domain '{written}' memuat garis bawah; {_ALLOWED}")
    if " " in label:
        return problem(f"Nama sub domain '{written}' memuat spasi; {_ALLOWED}")
    bad = sorted({c for c in label if not (c.isascii() and (c.isalnum() or c == "-"))})
    if bad:
        chars = " ".join(f"'{c}'" for c in bad[:5])
        return problem(f"Nama sub domain '{written}' memuat karakter {chars} yang tidak diperbolehkan; {_ALLOWED}")
    if len(label) < 2:
        return problem(f"Nama sub domain '{written}' terlalu pendek; paling sedikit 2 karakter")
    if len(label) > 63:
        return problem(f"Nama sub domain '{written}' terlalu panjang ({len(label)} karakter); paling banyak 63")
    if label.startswith("-") or label.endswith("-"):
        return problem(f"Nama sub domain '{written}' tidak boleh diawali atau diakhiri tanda hubung")
    if label.isdigit():
        return problem(f"Nama sub domain '{written}' tidak boleh hanya berisi angka")
    if label[2:4] == "--":
        if not label.startswith("xn--"):
            return problem(
                f"Nama sub domain '{written}' memuat tanda hubung ganda pada karakter ke-3 dan ke-4, yang "
                f"dicadangkan untuk nama domain internasional; gunakan satu tanda hubung"
            )
        try:
            idna.decode(label)
        except (idna.IDNAError, UnicodeError, ValueError):
            return problem(
                f"Nama sub domain '{written}' diawali 'xn--' tetapi bukan nama domain internasional yang "
                f"sah; mohon ajukan nama dengan huruf a-z, angka 0-9 dan tanda hubung saja"
            )
    if label in {n.lower() for n in opts.reserved_names}:
        return problem(
            f"Nama sub domain '{label}' dicadangkan untuk layanan teknis dan tidak dapat diberikan; mohon "
            f"ajukan nama lain, misalnya singkatan nama perangkat daerah"
        )
    zone = (opts.zone or "").strip(".")
    if zone and len(label) + 1 + len(zone) > 253:
        return problem(f"Nama lengkap '{label}.{zone}' melebihi 253 karakter")
    if not LABEL_RE.match(label):  # defensive: every rule above should already have caught it
        return problem(f"Nama sub domain '{written}' tidak sah; {_ALLOWED}")
    return label, None


# --- NIP --------------------------------------------------------------------------------------------------

_NIP_EXAMPLE = "contoh: 19870412 201001 1 003"
# The age bounds at TMT CPNS; with no clock in the parsers these make "plausible" relative to the NIP itself.
_MIN_AGE_AT_TMT = 17
_MAX_AGE_AT_TMT = 50
_MIN_BIRTH_YEAR = 1940


def normalize_nip(raw: str) -> Normalized:
    """NIP as 18 digits; birth date, TMT CPNS month and the sex digit are checked (domain brief section 2)."""
    if is_placeholder(raw):
        return None, None
    written = shown(raw)
    text = re.sub(r"(?i)^\s*nip\b\.?\s*:?", "", raw)
    digits = re.sub(r"[\s.\-]", "", text)
    if not digits.isdigit() or not digits.isascii():
        return None, Problem("pic_nip", f"NIP '{written}' hanya boleh berisi angka ({_NIP_EXAMPLE})")
    if len(digits) == 16:
        return None, Problem(
            "pic_nip",
            f"'{written}' berisi 16 angka (tampaknya NIK); NIP terdiri atas 18 angka ({_NIP_EXAMPLE})",
        )
    if len(digits) != 18:
        return None, Problem(
            "pic_nip",
            f"NIP '{written}' berisi {len(digits)} angka; NIP terdiri atas 18 angka ({_NIP_EXAMPLE})",
        )
    by, bm, bd = int(digits[0:4]), int(digits[4:6]), int(digits[6:8])
    try:
        date(by, bm, bd)
    except ValueError:
        return None, Problem(
            "pic_nip",
            f"Delapan angka pertama NIP '{written}' ({digits[0:8]}) harus tanggal lahir yang sah "
            f"(tahun, bulan, tanggal)",
        )
    if by < _MIN_BIRTH_YEAR:
        return None, Problem("pic_nip", f"Tahun lahir {by} pada NIP '{written}' tidak wajar untuk pegawai aktif")
    ty, tm = int(digits[8:12]), int(digits[12:14])
    if not 1 <= tm <= 12:
        return None, Problem(
            "pic_nip",
            f"Angka ke-13 dan ke-14 NIP '{written}' ({digits[12:14]}) harus bulan TMT CPNS antara 01 dan 12",
        )
    age = ty - by
    if not _MIN_AGE_AT_TMT <= age <= _MAX_AGE_AT_TMT:
        return None, Problem(
            "pic_nip",
            f"TMT CPNS tahun {ty} pada NIP '{written}' tidak wajar untuk tahun lahir {by} (usia {age} tahun)",
        )
    if digits[14] not in "12":
        return None, Problem(
            "pic_nip", f"Angka ke-15 NIP '{written}' (jenis kelamin) harus 1 atau 2, tertulis {digits[14]}"
        )
    if digits[15:] == "000":
        return None, Problem("pic_nip", f"Nomor urut pada NIP '{written}' tidak boleh 000")
    return digits, None


# --- phone ------------------------------------------------------------------------------------------------

_PHONE_EXAMPLE = "contoh: 0812-3456-7890"


def normalize_phone(raw: str) -> Normalized:
    """The first valid number in the text as E.164 (+62…); 08…, 62…, +62…, spaces and dashes are accepted."""
    if is_placeholder(raw):
        return None, None
    written = shown(raw)
    text = raw[:200]
    if not re.search(r"\d", text):
        return None, Problem("pic_phone", f"Nomor HP '{written}' tidak memuat angka ({_PHONE_EXAMPLE})")
    # "62812…" without the plus: phonenumbers reads it as a national number, so mark it international.
    text = re.sub(r"(?<![\d+])62[\s.\-]*(?=8\d)", "+62", text)
    try:
        for match in phonenumbers.PhoneNumberMatcher(text, "ID", leniency=phonenumbers.Leniency.VALID):
            return phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164), None
        number = phonenumbers.parse(text, "ID")
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None
    except phonenumbers.NumberParseException:
        pass
    return None, Problem("pic_phone", f"Nomor HP '{written}' bukan nomor telepon Indonesia yang sah ({_PHONE_EXAMPLE})")


# --- e-mail -----------------------------------------------------------------------------------------------

_EMAIL_CANDIDATE_RE = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+")


def normalize_email(raw: str) -> Normalized:
    """The address, syntax-checked by email-validator (no DNS), lower-case."""
    if is_placeholder(raw):
        return None, None
    written = shown(raw)
    text = raw.strip().replace("mailto:", "")
    found = _EMAIL_CANDIDATE_RE.search(text)
    if not found:
        return None, Problem(
            "pic_email", f"Alamat surel '{written}' tidak memuat tanda @ (contoh: nama@trenggalekkab.go.id)"
        )
    candidate = found.group(0).strip(".")
    try:
        valid = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError:
        return None, Problem(
            "pic_email",
            f"Alamat surel '{written}' tidak sah; periksa penulisan nama dan domain setelah tanda @",
        )
    return valid.normalized.lower(), None


# --- service ----------------------------------------------------------------------------------------------

_CHECKED_RE = re.compile(r"(?:☑|☒|✓|✔|✅|■|\[\s*[xv✓]\s*\]|\(\s*[xv✓]\s*\))\s*([^\[\]()☐□☑☒✓✔✅■/|,]+)", re.I)


def normalize_service(raw: str) -> Normalized:
    """ "subdomain" (name only / pointing) or "hosting" (web hosting at the data centre), from the words."""
    if is_placeholder(raw):
        return None, None
    text = " ".join(raw.lower().split())
    checked = _CHECKED_RE.findall(text)
    if checked:
        text = " ".join(checked)
    words = re.sub(r"sub[\s\-_]*domain", "subdomain", text)
    has_hosting = "hosting" in words
    has_subdomain = "subdomain" in words or "pointing" in words or re.search(r"\bdomain\b", words) is not None
    if has_hosting and has_subdomain:
        # "Sub Domain / Hosting" printed as choices and not struck out is a question, not an answer.
        if not checked and re.search(r"subdomain\s*(/|atau|\bor\b)\s*(web\s*)?hosting|hosting\s*(/|atau)\s*sub", words):
            return None, Problem(
                "service",
                f"Jenis layanan '{shown(raw)}' belum dipilih; pilih salah satu: Sub Domain atau Hosting",
            )
        return "hosting", None  # "sub domain dan hosting": hosting brings its own sub-domain
    if has_hosting:
        return "hosting", None
    if has_subdomain:
        return "subdomain", None
    return None, Problem(
        "service", f"Jenis layanan '{shown(raw)}' tidak dikenali; pilih Sub Domain (pointing) atau Hosting"
    )


# --- target IP --------------------------------------------------------------------------------------------

_IPV4_RE = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
_IPV6_RE = re.compile(r"(?<![0-9a-f:])[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?![0-9a-f:])", re.I)
_NON_PUBLIC: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("10.0.0.0/8", "alamat privat (jaringan lokal)"),
        ("172.16.0.0/12", "alamat privat (jaringan lokal)"),
        ("192.168.0.0/16", "alamat privat (jaringan lokal)"),
        ("100.64.0.0/10", "alamat jaringan bersama operator (CGNAT)"),
        ("127.0.0.0/8", "alamat loopback (komputer itu sendiri)"),
        ("169.254.0.0/16", "alamat link-local"),
        ("0.0.0.0/8", "alamat tidak spesifik"),
        ("192.0.0.0/24", "alamat khusus protokol"),
        ("198.18.0.0/15", "alamat uji kinerja jaringan"),
        ("224.0.0.0/4", "alamat multicast"),
        ("240.0.0.0/4", "alamat cadangan"),
        ("::/128", "alamat tidak spesifik"),
        ("::1/128", "alamat loopback (komputer itu sendiri)"),
        ("fc00::/7", "alamat privat (jaringan lokal)"),
        ("fe80::/10", "alamat link-local"),
        ("ff00::/8", "alamat multicast"),
    )
)
# Documentation ranges (RFC 5737 / RFC 3849) are deliberately not refused here: the examples and fixtures use
# them; a real record pointing at one fails later at the DNS verification step.


def normalize_ip(raw: str) -> Normalized:
    """A public IPv4/IPv6 address for the A/AAAA record; private, loopback and similar ranges are refused."""
    if is_placeholder(raw):
        return None, None
    written = shown(raw)
    found = _IPV4_RE.search(raw) or _IPV6_RE.search(raw)
    if not found:
        return None, Problem("target_ip", f"Alamat IP '{written}' tidak sah (contoh: 203.0.113.10)")
    try:
        addr = ipaddress.ip_address(found.group(0))
    except ValueError:
        return None, Problem("target_ip", f"Alamat IP '{written}' tidak sah (contoh: 203.0.113.10)")
    check: ipaddress.IPv4Address | ipaddress.IPv6Address = addr
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        check = addr.ipv4_mapped
    for net, why in _NON_PUBLIC:
        if check.version == net.version and check in net:
            return None, Problem(
                "target_ip",
                f"Alamat IP {addr} adalah {why} yang tidak dapat dijangkau dari internet; sub domain harus "
                f"diarahkan ke alamat IP publik server",
            )
    if check.version == 4 and str(check) == "255.255.255.255":
        return None, Problem("target_ip", f"Alamat IP {addr} adalah alamat broadcast, bukan alamat server")
    return str(addr), None


# --- letter number ----------------------------------------------------------------------------------------


def normalize_letter_number(raw: str) -> Normalized:
    """The letter's Nomor, spaces around slashes removed ("555 / 12 / 406.020 / 2026" → "555/12/…")."""
    if is_placeholder(raw):
        return None, None
    written = shown(raw)
    text = re.sub(r"\s*/\s*", "/", " ".join(raw.split())).strip(" .,;:")
    candidates = [text]
    if " " in text:
        candidates.append(text.split(" ", 1)[0].rstrip(".,;:"))
    for cand in candidates:
        if LETTER_NUMBER_RE.match(cand):
            return cand, None
    return None, Problem(
        "letter_number",
        f"Nomor surat '{written}' tidak sesuai format penomoran naskah dinas (kode klasifikasi/nomor "
        f"urut/kode unit/tahun, misalnya 555/123/406.020/2026 atau 000.8.3.3/15/OR)",
    )


_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _host(raw: str) -> str | None:
    name = raw.strip().strip(".").lower()
    name = re.sub(r"^https?://", "", name).split("/")[0]
    labels = name.split(".")
    if len(labels) < 2 or len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return None
    return name


def normalize_cname(raw: str) -> Normalized:
    """The host name a CNAME should point to (the unit's hosting provider, e.g. web.penyedia.co.id)."""
    name = _host(raw)
    if name is None:
        return None, Problem("target_cname", f"Nama tujuan CNAME '{raw.strip()[:80]}' bukan nama host yang sah "
                                             "(contoh: web.penyedia.co.id)")
    return name, None


def normalize_nameservers(raw: str) -> Normalized:
    """The unit's own name servers for an NS delegation: "ns1.x.go.id (203.0.113.20), ns2.x.go.id ...".

    Returned as "name=ip,name" (the IP is the glue, given for names inside the delegated zone).
    """
    pairs: list[str] = []
    for chunk in re.split(r"[,;]|\s+dan\s+", raw):
        tokens = [t for t in re.split(r"[\s()\[\]]+", chunk) if t]
        if not tokens:
            continue
        name = _host(tokens[0])
        if name is None:
            return None, Problem("nameservers", f"Name server '{tokens[0][:80]}' bukan nama host yang sah "
                                                "(contoh: ns1.dinsos.trenggalekkab.go.id)")
        ip = next((t for t in tokens[1:] if re.fullmatch(r"[0-9a-fA-F:.]{7,45}", t)), None)
        if ip is not None:
            addr, problem = normalize_ip(ip)
            if problem is not None:
                return None, Problem("nameservers", f"Alamat IP name server {name}: {problem.reason}")
            pairs.append(f"{name}={addr}")
        else:
            pairs.append(name)
    if not pairs:
        return None, Problem("nameservers", "Name server tidak disebutkan")
    if len(pairs) < 2:
        return None, Problem("nameservers", "Delegasi memerlukan sedikitnya dua name server (RFC 1034)")
    return ",".join(pairs), None
