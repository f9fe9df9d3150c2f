"""Read an official's decision (SETUJU / TOLAK / ...) from the new text of a reply to a step mail.

Two steps, both pure: `strip_quoted` cuts the quoted original, the signature and our own template's quoted
instructions away; `extract_reply` applies an ordered list of small named rules to what is left and keeps
the names of the rules that fired in `ReplyDecision.rules`.

Why our own trimmer: talon, quotequail, mail-parser-reply, email_reply_parser and Discourse's
email_reply_trimmer know English and some European quote headers, but none knows the Indonesian ones that
Gmail ("Pada tanggal ... menulis:", also split over two lines), Outlook ("Dari:/Dikirim:/Kepada:/Subjek:"),
Thunderbird ("-------- Pesan Asli --------") and Zimbra ("----- Pesan Asli -----" with "Terkirim:/
Perihal:") write, and none knows that the step mail's own instructions ("Balas surel ini dengan SETUJU atau
TOLAK") may come back quoted without ">" and must never count as the official's answer. Their public test
suites are scored against this module by tests/test_public_corpora.py.

Trimming never loses the sender's words: a quote that is a ">" block (with or without an attribution or a
forward line above it) ends where the block ends, and the unquoted lines after it are new text again
(bottom-posting, interleaving, a forwarder's words under a forward); a quote with no ">" block (Outlook's
header block, an inline forward) runs to the end, since the original follows unmarked. Cut as quote starts:
attributions in every language Gmail writes (one line or wrapped over two, with or without a verb),
Outlook/Exchange separators (a dash line, "-----Original Message-----" and translations, the header block
on several lines or on one), forward lines in many languages; cut as signatures: "-- ", "Sent from my ..."
in the languages phones use, and government confidentiality footers ("PERNYATAAN: surel ini ... rahasia").

Choices, so the daemon never acts on an ambiguous reply:
- Keywords are whole words, case-insensitive, punctuation around them ignored ("*SETUJU*", "Setuju.",
  "SETUJU!!"). A word inside another word does not count: "menyetujui" is not "setuju", "okey" is neither
  "ok" nor "oke". Affixed forms count only when the agency's `Vocabulary` lists them ("disetujui" is listed).
- The longest phrase wins where phrases overlap, and rejections win over approvals on the same span, so
  "tidak setuju", "tidak disetujui" and "belum dapat disetujui" are rejections, never approvals. An approval
  word with a negator up to two words before it ("belum bisa acc") is no decision at all.
- The decision must be in the opening lines of the new text (`OPENING_LINES`, greetings not counted): a
  keyword further down is more likely quoted text we failed to recognise than the answer.
- An approval and anything else (rejection, revision, "pelajari dulu") in the same new text is "unclear";
  so is an approval with a condition ("setuju dengan catatan ...", "setuju, tapi ..."): domain brief
  section 5 says those need a person. The official's condition is kept as the note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from subdomaind.parsers.model import Decision, ParsedMessage, ReplyDecision, Vocabulary

__all__ = ["extract_reply", "decide_text", "strip_quoted", "OPENING_LINES"]

# How many content lines (greetings not counted) the decision keyword may be below the top of the new text.
OPENING_LINES = 3

# ---------------------------------------------------------------------------------------------------------
# Quote headers, separators and signatures (per client; see the module docstring).
# ---------------------------------------------------------------------------------------------------------

_QUOTE_PREFIX_RE = re.compile(r"^(?:[ \t]*>)+[ \t]?")
# Attribution openers: Indonesian "Pada", English "On", and those of every language Gmail writes its
# "On ... wrote:" in (Italian "Il giorno", Greek "Στις", Thai "เมื่อ", Arabic "في", Hebrew "בתאריך", ...).
_OPENER = r"(?:pada|on|le|am|el|il|em|op|w dniu|den|dne|the|vào|il giorno|στις|เมื่อ|في|בתאריך|dana|dňa|la)"
# The verb: Indonesian/Malay "menulis", then Gmail's and the desktop clients' in their other languages.
_WROTE = (
    r"(?:menulis|wrote|a\s+écrit|schrieb|escribió|escribio|ha\s+scritto|scrisse|escreveu|schreef|skrev|"
    r"geschreven|napisał(?:\(a\)|a)?|написал(?:\(а\)|а)?|написав(?:\(ла\)|ла)?|пише|kirjoitti|írta|"
    r"đã\s+viết|napsal(?:\(a\)|a)?|napisal(?:\(a\)|a|o)?|napisao(?:/la)?|yazdı|a\s+scris|έγραψε|כתב(?:\(ה\))?|"
    r"كتب|เขียนว่า|"
    r"写道|寫道|작성)"
)
# "sent:" ends an attribution only after an opener and a date ("On 11-Apr-2011, ... X <x@y> sent:").
_WROTE_OR_SENT = rf"(?:{_WROTE}|sent)"
# "Pada tanggal Sab, 31 Okt 2020 pukul 22.12 Nama <a@b> menulis:" and "On Sat, ... X <a@b> wrote:";
# Dutch/French put the name after the verb ("Op ... schreef Julius <j@r>:").
_ATTRIBUTION_RE = re.compile(rf"^{_OPENER}\b.{{0,500}}?\b{_WROTE_OR_SENT}(?:\s.{{0,200}})?\s*:\s*$", re.I)
_OPENER_RE = re.compile(rf"^{_OPENER}\s+\S", re.IGNORECASE)
# Thunderbird "#1 menulis:" / "#1 menulis di #2 #3:", Gmail "Nama <a@b> wrote:", Samsung "... wrote:".
# The verb needs no word boundary before it: Chinese writes it right after the time ("09:12写道：").
_NAME_WROTE_RE = re.compile(
    rf"^.{{1,200}}(?<![A-Za-z]){_WROTE}(?:\s+(?:di|pada|on|at)\b.{{0,80}}|\s*\(.{{0,80}}\))?\s*[:：]\s*$", re.I
)
# Outlook/Exchange and Thunderbird header blocks, labels in Indonesian, English and the European languages.
_FROM_LABEL_RE = re.compile(
    r"^\*?\s*(?:from|dari|von|de|van|da|od|от|від|fra|från|lähettäjä|feladó|gönderen|expeditor)\s*:\s*\*?\s*\S",
    re.IGNORECASE,
)
_OTHER_LABEL_RE = re.compile(
    r"^\*?\s*(sent|date|to|cc|bcc|subject|dikirim|tanggal|kepada|subjek|perihal|terkirim|tembusan|ke|"
    r"gesendet|datum|an|betreff|envoyé|à|objet|sujet|pour|enviado|enviada|para|asunto|fecha|assunto|data|"
    r"verzonden|aan|onderwerp|inviato|oggetto|a|sendt|til|emne|dato|skickat|till|ämne|wysłano|do|temat|"
    r"отправлено|кому|тема|дата|надіслано|lähetetty|vastaanottaja|aihe|päivämäärä|elküldve|címzett|tárgy|"
    r"dátum|odesláno|komu|předmět|kime|konu|tarih|répondre à|reply-to|balas ke)\s*\*?:",
    re.IGNORECASE,
)
# A header block may open with its date ("Date: ... / To: ..."); then one address label must follow.
_DATE_LABEL_RE = re.compile(r"^\*?\s*(?:date|sent|tanggal|dikirim|terkirim)\s*\*?:\s*\S", re.IGNORECASE)
_ADDRESS_LABELS = frozenset(
    {"to", "from", "kepada", "ke", "dari", "cc", "an", "à", "pour", "para", "aan", "til", "till", "do", "кому",
     "vastaanottaja", "címzett", "komu", "kime"}
)
# "2014-10-17 11:28 GMT+03:00 Postmaster <p@x>:", "2011/4/7 Nathan <s@x>", "02.04.2012 14:20 ... написал:"
# (Gmail in several locales, Android): a date first, then the sender.
_DATE_LED_RE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}[\sT,]")
# Android and some webmails: "---- Budi wrote ----", "------On 12/29/1987 17:32 PM, Budi wrote-----".
_DASHED_ATTRIBUTION_RE = re.compile(rf"^-{{2,}}\s*.{{1,200}}?\b{_WROTE}\s*-{{2,}}\s*$", re.IGNORECASE)
# "-----Original Message-----", "---------- Forwarded message ---------" and their translations (Gmail
# writes the forward line in the reader's language: "Pesan terusan", "Weitergeleitete Nachricht",
# "Пересланное сообщение", ...): a dashed line whose words name a message.
_MESSAGE_WORDS = (
    r"(?:message|pesan|nachricht|mensaje|mensagem|messaggio|bericht|melding|meddelelse|meddelande|viesti|"
    r"wiadomość|wiadomosc|сообщение|повідомлення|zpráva|správa|üzenet|ileti|mesaj|tin nhắn|mesej|"
    r"original|asli|email|e-mail|surel)"
)
_SEPARATOR_RE = re.compile(
    r"^(?:_{10,}"
    rf"|-{{2,}}\s*(?:[^\s-][^-]{{0,40}}\s)?{_MESSAGE_WORDS}(?:\s[^-]{{0,40}}[^\s-])?\s*-{{2,}}"
    r"|(?:begin forwarded message|forwarded message|début du message réexpédié|awal pesan (?:yang )?"
    r"(?:diteruskan|terusan)|anfang der weitergeleiteten nachricht|inicio del mensaje reenviado|"
    r"inizio messaggio inoltrato|início da mensagem reencaminhada|doorgestuurd bericht)\s*:?"
    # Outlook on the web and Exchange: the whole header block on one line.
    r"|\*?(?:from|dari|von|de|van)\s*:.{1,200}?\b(?:sent|dikirim|terkirim|gesendet|envoyé|enviado|date|"
    r"tanggal|datum)\s*:.{1,120}?\b(?:to|kepada|an|à|para|aan|subject|subjek|perihal|betreff|objet)\s*:.*)\s*$",
    re.IGNORECASE,
)
# Outlook's plain-text separator: a bare line of dashes right above the "From:" block.
_DASH_LINE_RE = re.compile(r"^-{5,}\s*$")
# RFC 3676 section 4.3: the signature separator is "-- " (many clients drop the space).
_SIG_DASHES_RE = re.compile(r"^--\s*$")
_DEVICE = (
    r"(?:iphone|ipad|android|samsung|galaxy|yahoo|outlook|mail|ponsel|hp|handphone|blackberry|mobile|"
    r"seluler|smartphone|windows|gmail|xiaomi|redmi|oppo|vivo|huawei|realme|nokia|tablet|sparrow|"
    r"perangkat|device|phone|ipod|mac|superhuman|spark|proton|zimbra|my|saya)"
)
# "Sent from my iPhone" as the phones of Indonesian officials write it, and in the European and Asian
# languages of phones a unit's staff may have set: verb first ("Envoyé de mon", "Sendt fra min", "Enviado
# desde mi", "Отправлено с", "Gửi từ", "发自我的") or device first ("Von meinem iPhone gesendet",
# "iPhoneから送信", "나의 iPhone에서 보냄").
_SENT_WORD = (
    r"(?:sent|dikirim|terkirim|dikirimkan|dihantar|diketik|kirim|sent\s+using|envoyé|sendt|enviado|inviato|"
    r"verzonden|verstuurd|skickat|lähetetty|wysłane|wysłano|отправлено|надіслано|gửi|odesláno|odoslané|"
    r"elküldve|trimis|poslano|gönderildi)"
)
_SENT_VIA = (
    r"(?:from|dari|via|with|melalui|menggunakan|using|lewat|on|di|pakai|de|fra|från|desde|da|dal|do|dal\s+mio|"
    r"vanaf|met|z|ze|с|со|з|từ|z\s+mojego|iz|din|från\s+min|av|saka|ti)"
)
_MOBILE_SIG_RE = re.compile(
    rf"^{_SENT_WORD}\s+{_SENT_VIA}\s+.{{0,50}}\b{_DEVICE}\b.{{0,40}}$"
    rf"|^(?:{_SENT_WORD}|lähetetty)\s+{_DEVICE}\w{{0,8}}\b.{{0,40}}$"
    r"|^(?:发自|發自|从|從)我的\s*\w{2,20}\s*$|^ส่งจาก\s*\w{2,20}"
    r"|^(?:get|dapatkan|unduh|download)\s+outlook\s+(?:for|untuk)\b.{0,40}$",
    re.IGNORECASE,
)
_DISCLAIMER_HEAD_RE = re.compile(
    r"^\W{0,3}(?:(?:pernyataan|disclaimer|penafian|pemberitahuan\s+kerahasiaan|catatan\s+kerahasiaan|"
    r"confidentiality(?:\s+notice)?|kerahasiaan(?:\s+informasi)?|peringatan\s+kerahasiaan)\b\W{0,3}\s*[:：.\-–—]?"
    r"|(?:surel|e-?mail|pesan|informasi)\s+(?:ini|elektronik\s+ini)\b)",
    re.IGNORECASE,
)
_CONFIDENTIAL_RE = re.compile(
    r"\b(?:rahasia|kerahasiaan|confidential|privileged|penerima\s+yang\s+(?:dituju|dimaksud|berhak)|"
    r"intended\s+recipient|bukan\s+penerima)", re.IGNORECASE,
)
# Device first, verb last; tried only on lines ending with one of `_DEVICE_FIRST_ENDS` (it scans).
_DEVICE_FIRST_SIG_RE = re.compile(
    rf"^(?:von\s+meinem\s+)?.{{0,20}}\b{_DEVICE}\w{{0,8}}\s*(?:gesendet|gönderildi|から送信|에서\s*보냄)\s*$",
    re.IGNORECASE,
)
_DEVICE_FIRST_ENDS = ("gesendet", "gönderildi", "送信", "보냄")
_GREETING_RE = re.compile(
    r"^(?:yth\.?|kepada\s+yth|dengan\s+hormat|selamat\s+(?:pagi|siang|sore|malam)|assalamu.?alaikum"
    r"|salam|halo|hallo|hai|hi|dear|pak|bu|bapak|ibu|mas|mbak|sdr\.?|saudara|kpd)\b.{0,80}$",
    re.IGNORECASE,
)
# Closing lines: the note ends where the official signs off.
_VALEDICTION_RE = re.compile(
    r"^(?:terima\s*kasih|terimakasih|trims|tks|thx|thanks|thank\s+you|salam|hormat\s+(?:saya|kami)|"
    r"wassalam\w*|regards|best\s+regards|kind\s+regards|matur\s+nuwun|salam\s+hormat)\b.{0,40}$",
    re.IGNORECASE,
)
_NO_OBJECTION_RE = re.compile(
    r"\b(?:tidak|tdk|tak|gak|nggak|ga|no)\s+(?:ada\s+)?(?:masalah|keberatan|problem|kendala\s+apa\W?pun)\b",
    re.IGNORECASE,
)
_CONNECTOR_RE = re.compile(r"[\s,*_\"'()]*(?:atau|or|maupun|/|\|)[\s,*_\"'()]*", re.IGNORECASE)
_TEMPLATE_ITEM_RE = re.compile(r"^[\s*_\-•·>\"'(\[]*(?P<kw>.+?)[\s*_\"')\]]*\s*[—–=:-]+\s*\S")


@dataclass(frozen=True)
class _Match:
    category: str
    keyword: str
    start: int
    end: int


# Priority where one span matches entries of several categories (an agency's vocabulary may overlap):
# a rejection always wins over an approval (domain brief section 5: match negation before "setuju").
_CATEGORY_ORDER = ("reject", "revise", "problem", "cancel", "hold", "conditional", "approve", "confirm")
_DECISIVE = frozenset({"approve", "reject", "revise", "problem", "cancel", "confirm"})
_POSITIVE = frozenset({"approve", "confirm"})


def _phrase_pattern(phrase: str) -> str:
    words = phrase.split()
    return r"\s+".join(re.escape(w) for w in words)


@lru_cache(maxsize=32)
def _compiled(vocabulary: Vocabulary) -> tuple[re.Pattern[str], dict[str, tuple[str, str]], re.Pattern[str]]:
    """One alternation of every keyword, longest first; a map from normalised phrase to (category, entry)."""
    owner: dict[str, tuple[str, str]] = {}
    for category in _CATEGORY_ORDER:
        for entry in getattr(vocabulary, category, ()) or ():
            key = " ".join(entry.lower().split())
            if key and key not in owner:
                owner[key] = (category, key)
    if owner:
        alternation = "|".join(_phrase_pattern(k) for k in sorted(owner, key=lambda k: (-len(k), k)))
        # Whole words: no letter or digit may touch the keyword on either side ("_" and "*" may).
        pattern = re.compile(rf"(?<![^\W_])(?:{alternation})(?![^\W_])", re.IGNORECASE)
    else:
        pattern = re.compile(r"(?!x)x")
    negators = [n for n in (vocabulary.negation or ()) if n.strip()]
    if negators:
        neg = "|".join(_phrase_pattern(n.lower()) for n in sorted(negators, key=len, reverse=True))
        # A negator, then at most two other words, right before the approval word.
        # Punctuation ends a negator's scope: "tidak keberatan, setuju" is an approval.
        negation = re.compile(rf"(?<![^\W_])(?:{neg})(?:\s+[^\s,.;:!?]+){{0,2}}\s*$", re.IGNORECASE)
    else:
        negation = re.compile(r"(?!x)x")
    return pattern, owner, negation


def _find(text: str, vocabulary: Vocabulary) -> list[_Match]:
    pattern, owner, _ = _compiled(vocabulary)
    out: list[_Match] = []
    for m in pattern.finditer(text):
        key = " ".join(m.group(0).lower().split())
        category, entry = owner.get(key, ("approve", key))
        out.append(_Match(category, entry, m.start(), m.end()))
    return out


# ---------------------------------------------------------------------------------------------------------
# strip_quoted
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Trimmed:
    text: str
    rules: tuple[str, ...]


def _is_attribution(bare: list[str], i: int) -> bool:
    line = bare[i]
    if not line:
        return False
    if _ATTRIBUTION_RE.match(line) and re.search(r"\d|@", line):
        return True
    if _OPENER_RE.match(line) and re.search(r"\d", line) and len(line) < 400:
        # The header wrapped: "Pada Sab, 15 Jun 2024 pukul 14.59 Nama <a@b>" / "> menulis:" (Gmail plain
        # text wraps at 78 columns, sometimes inside the address; Polymail even leaves blank lines).
        joined = line
        for j in range(i + 1, min(i + 6, len(bare))):
            if len(bare[j]) > 200 or _OPENER_RE.match(bare[j]) or _FROM_LABEL_RE.match(bare[j]):
                break  # another header starts there: this line is the official's own text
            joined = f"{joined} {bare[j]}".strip()
            if bare[j] and _ATTRIBUTION_RE.match(joined):
                return True
    return False


def _is_name_wrote(bare: list[str], quoted: list[bool], i: int) -> bool:
    line = bare[i]
    if not line.endswith((":", "：")) or len(line) > 250 or not _NAME_WROTE_RE.match(line):
        return False
    if re.search(r"\d|@", line):
        return True
    for j in range(i + 1, min(i + 4, len(bare))):
        if bare[j] or quoted[j]:
            return quoted[j]
    return False


def _is_date_led(bare: list[str], quoted: list[bool], i: int) -> bool:
    if not _DATE_LED_RE.match(bare[i]):
        return False
    joined = bare[i]
    for j in range(i, min(i + 3, len(bare))):
        if j > i:
            if not bare[j] or quoted[j] and not bare[j].endswith(":"):
                break
            joined = f"{joined} {bare[j]}"
        if "@" in joined and (joined.endswith(":") or _next_is_quoted(bare, quoted, j)):
            return True
    return False


def _next_is_quoted(bare: list[str], quoted: list[bool], i: int) -> bool:
    for j in range(i + 1, min(i + 4, len(bare))):
        if bare[j] or quoted[j]:
            return quoted[j]
    return False


def _is_header_block(bare: list[str], i: int) -> bool:
    if _DATE_LABEL_RE.match(bare[i]):
        others: set[str] = set()
        for j in range(i + 1, min(i + 7, len(bare))):
            m = _OTHER_LABEL_RE.match(bare[j]) if bare[j] else None
            if m:
                others.add(m.group(1).lower())
            elif _FROM_LABEL_RE.match(bare[j]):
                others.add("from")
        return bool(others & _ADDRESS_LABELS)
    if not _FROM_LABEL_RE.match(bare[i]):
        return False
    labels: set[str] = set()
    seen = 0
    for j in range(i + 1, len(bare)):
        if not bare[j]:
            continue
        seen += 1
        if seen > 6:
            break
        m = _OTHER_LABEL_RE.match(bare[j])
        if m:
            labels.add(m.group(1).lower())
    return len(labels) >= 2


def _template_at(bare: list[str], i: int, vocabulary: Vocabulary) -> bool:
    """Our step mail's own instructions, quoted back without ">" (e.g. under an unrecognised header)."""
    line = bare[i]
    if not line:
        return False
    matches = _find(line, vocabulary)
    # "Balas surel ini dengan SETUJU atau TOLAK": two decisions joined by a connector on one line.
    decisive = [m for m in matches if m.category in _DECISIVE]
    for a, b in zip(decisive, decisive[1:], strict=False):
        if a.category != b.category and _CONNECTOR_RE.fullmatch(line[a.end : b.start]):
            return True
    # "SETUJU — permohonan diteruskan ..." / "TOLAK — ..." : a legend of two or more keyword items.
    first = _legend_item(line, vocabulary)
    if first is None:
        return False
    # The legend's items are consecutive lines; an official's own "SETUJU - ..." line is not followed by
    # another keyword item.
    categories = {first}
    for j in range(i + 1, min(i + 4, len(bare))):
        other = _legend_item(bare[j], vocabulary) if bare[j] else None
        if other is None:
            break
        categories.add(other)
    return len(categories) >= 2


def _legend_item(line: str, vocabulary: Vocabulary) -> str | None:
    m = _TEMPLATE_ITEM_RE.match(line)
    if not m:
        return None
    head = m.group("kw").strip()
    found = _find(head, vocabulary)
    if len(found) == 1 and found[0].start == 0 and found[0].end == len(head) and found[0].category in _DECISIVE:
        return found[0].category
    return None


def _signature_at(line: str, raw_line: str) -> str | None:
    if _SIG_DASHES_RE.match(raw_line.strip("\ufeff")):
        return "signature_delimiter"
    if line and len(line) <= 90 and (
        _MOBILE_SIG_RE.match(line)
        or line.lower().endswith(_DEVICE_FIRST_ENDS) and _DEVICE_FIRST_SIG_RE.match(line)
    ):
        return "signature_mobile"
    return None


def _disclaimer_at(bare: list[str], i: int) -> bool:
    """A government mail footer ("PERNYATAAN: surel ini ... rahasia ... mohon tidak menindaklanjuti ..."):
    a heading or an opening about this mail, then words about confidentiality within the paragraph. It is
    never the official's answer, whatever words it holds ("setuju", "tidak"), so it is cut like a signature."""
    if not _DISCLAIMER_HEAD_RE.match(bare[i]):
        return False
    paragraph = " ".join(bare[i : i + 8])
    return _CONFIDENTIAL_RE.search(paragraph[:700]) is not None


def _is_generic_attribution(bare: list[str], quoted: list[bool], i: int) -> bool:
    """Gmail's attribution in a language with no verb we know ("пн, 1 янв. 2024 г. в 10:00, Имя <a@b>:",
    Polish "pon., 1 sty 2024 o 10:00 Imię <a@b> napisał(a):" wrapped): one or two lines carrying an address
    and a time, ending with a colon, right above a ">" block. The ">" block is what makes it safe."""
    if quoted[i] or len(bare[i]) > 300 or "@" not in " ".join(bare[i : i + 3]):
        return False
    if i > 0 and bare[i - 1] and not quoted[i - 1]:
        return False  # an attribution stands apart from the text above it; this line is the sender's own
    if not re.search(r"[\d@<]", bare[i]):
        return False
    joined = bare[i]
    j = i
    while not joined.endswith((":", "：")) and j + 1 < len(bare) and j < i + 2 and bare[j + 1] and not quoted[j + 1]:
        j += 1
        joined = f"{joined} {bare[j]}"
    if not joined.endswith((":", "：")) or "@" not in joined or len(joined) > 400 or not re.search(r"\d", joined):
        return False
    return _next_is_quoted(bare, quoted, j)


def _quote_start(lines: list[str], bare: list[str], quoted: list[bool], i: int, vocab: Vocabulary) -> str | None:
    """The rule that makes line i the start of quoted or signature text, or None."""
    if quoted[i]:
        return "quote_angle"
    if not bare[i]:
        return None
    if _SEPARATOR_RE.match(bare[i]):
        return "quote_separator"
    if _DASH_LINE_RE.match(bare[i]) and any(
        _FROM_LABEL_RE.match(bare[j]) or _DATE_LABEL_RE.match(bare[j]) for j in range(i + 1, min(i + 3, len(bare)))
    ):
        return "quote_separator"
    if _is_attribution(bare, i):
        return "quote_attribution"
    if _is_name_wrote(bare, quoted, i) or _DASHED_ATTRIBUTION_RE.match(bare[i]):
        return "quote_name_wrote"
    if _is_date_led(bare, quoted, i) or _is_generic_attribution(bare, quoted, i):
        return "quote_attribution"
    if _is_header_block(bare, i):
        return "quote_header_block"
    sig = _signature_at(bare[i], lines[i])
    if sig:
        return sig
    if _disclaimer_at(bare, i):
        return "signature_disclaimer"
    if _template_at(bare, i, vocab):
        return "template_instructions"
    return None


# A quote that starts with one of these may end: the text after its ">" block is the sender's again.
_HEADED_RULES = frozenset({"quote_angle", "quote_attribution", "quote_name_wrote", "quote_separator"})


def _quote_end(bare: list[str], quoted: list[bool], start: int, rule: str) -> int | None:
    """The first line after the quote that starts at `start`, or None when it runs to the end.

    Only a ">" block ends: after it, unquoted lines are the sender's (bottom-posting, interleaving, the
    forwarder's words under a forward). A header, separator or signature with no ">" block under it
    (Outlook, a forward inline) is followed by the original itself, which runs to the end.
    """
    if rule not in _HEADED_RULES:
        return None
    j = start
    if not quoted[start]:
        # The header's own lines (a wrapped attribution, a forward's header block), then blank lines.
        limit = min(start + 8, len(bare))
        j = start + 1
        while j < limit and not quoted[j]:
            j += 1
        if j >= limit or not quoted[j]:
            return None
        if any(bare[k] and not (_FWD_HEADER_LINE_RE.match(bare[k]) or k <= start + 2)
               for k in range(start + 1, j)):
            return None
        if _WROTE_TAIL_RE.match(bare[j]):
            return None  # "> wrote:": the attribution's own wrapped tail, not a quote; the original follows
    while j < len(bare):
        if quoted[j] or not bare[j]:
            j += 1
        elif quoted[j - 1] and bare[j - 1] and j + 1 < len(bare) and quoted[j + 1]:
            j += 1  # one line between two ">" lines with no blank line: a quoted line wrapped (a long link)
        else:
            break
    return j if j < len(bare) else None


_WROTE_TAIL_RE = re.compile(rf"^.{{0,60}}\b{_WROTE}\s*:\s*$", re.IGNORECASE)


# A forward's own header lines between its separator and its ">" block (Apple Mail).
_FWD_HEADER_LINE_RE = re.compile(r"^\S[^:]{0,30}:\s*\S")


def _trim(text: str, vocabulary: Vocabulary) -> _Trimmed:
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "").replace("\xa0", " ")
    lines = text.split("\n")
    bare = [_QUOTE_PREFIX_RE.sub("", ln).strip() for ln in lines]
    quoted = [bool(_QUOTE_PREFIX_RE.match(ln)) for ln in lines]
    rules: list[str] = []
    segments: list[list[str]] = []
    start = i = 0
    while i < len(lines):
        rule = _quote_start(lines, bare, quoted, i, vocabulary)
        if not rule:
            i += 1
            continue
        segments.append(lines[start:i])
        if rule not in rules:
            rules.append(rule)
        end = _quote_end(bare, quoted, i, rule)
        if end is None:
            start = i = len(lines)
            break
        start = i = end
    segments.append(lines[start:])
    kept = [seg for seg in segments if "\n".join(seg).strip()]
    if kept and not "\n".join(segments[0]).strip():
        rules.append("bottom_posted")  # the quote came first, the answer below it
    elif len(kept) > 1:
        rules.append("interleaved")  # new text above and below (or between) quotes: all of it is kept
    out = "\n\n".join("\n".join(ln.rstrip() for ln in seg).strip() for seg in kept)
    out = re.sub(r"\n{3,}", "\n\n", out)
    return _Trimmed(out, tuple(rules))


def strip_quoted(text: str, vocabulary: Vocabulary | None = None) -> str:
    """The new text of a reply: quoted original, quote headers, signature and template instructions removed."""
    return _trim(text, vocabulary or Vocabulary()).text


# ---------------------------------------------------------------------------------------------------------
# The decision rules.
# ---------------------------------------------------------------------------------------------------------


def _line_index(text: str, pos: int) -> int:
    return text.count("\n", 0, pos)


def _opening_lines(text: str, matches: list[_Match]) -> set[int]:
    """Indexes of the lines that count as the opening of the new text."""
    keyword_lines = {_line_index(text, m.start) for m in matches}
    opening: set[int] = set()
    counted = 0
    for idx, line in enumerate(text.split("\n")):
        s = line.strip()
        if not s:
            continue
        if idx not in keyword_lines and _GREETING_RE.match(s):
            opening.add(idx)
            continue
        counted += 1
        if counted > OPENING_LINES:
            break
        opening.add(idx)
    return opening


def _note(text: str, match: _Match) -> str | None:
    rest = text[match.end :]
    rest = re.sub(r"^[\s.,:;!\-—–=*_)\]]+", "", rest)
    lines = [ln.rstrip() for ln in rest.split("\n")]
    out: list[str] = []
    for ln in lines:
        if _VALEDICTION_RE.match(ln.strip()) and len(out) > 0:
            break
        if _VALEDICTION_RE.match(ln.strip()) and not out:
            break
        out.append(ln)
    note = "\n".join(out).strip()
    note = re.sub(r"\n{3,}", "\n\n", note)
    return note or None


def _decide(text: str, vocabulary: Vocabulary) -> tuple[Decision, str | None, str | None, list[str]]:
    """(decision, note, keyword, rules) for the new text of a reply."""
    rules: list[str] = []
    if not text.strip():
        return "unclear", None, None, ["empty_reply"]
    matches = _find(text, vocabulary)
    if not matches:
        return "unclear", None, None, ["no_keyword"]

    _, _, negation = _compiled(vocabulary)
    effective: list[_Match] = []
    negated: list[_Match] = []
    for m in matches:
        if m.category in _POSITIVE:
            line_start = text.rfind("\n", 0, m.start) + 1
            # "tidak ada masalah setuju": "no objection" ends a negator's reach like a comma does.
            before = _NO_OBJECTION_RE.sub(",", text[line_start : m.start])
            if negation.search(before):
                negated.append(m)
                continue
        effective.append(m)

    leading = [m for m in matches if m.category in _DECISIVE or m.category == "hold"]
    if not leading:
        # Only a condition word ("tapi ...") and no decision.
        return "unclear", None, None, ["no_keyword"]
    first = leading[0]
    opening = _opening_lines(text, matches)
    if _line_index(text, first.start) not in opening:
        return "unclear", None, first.keyword, ["keyword_not_in_opening"]
    if first in negated:
        return "unclear", None, first.keyword, ["negated_approval"]
    after = text[first.end : first.end + 3].lstrip(" *_\"')")
    if after.startswith("?"):
        return "unclear", None, first.keyword, ["question"]

    categories = {m.category for m in effective}
    positive = categories & _POSITIVE
    other = categories & ((_DECISIVE - _POSITIVE) | {"hold"})
    if positive and other:
        return "unclear", None, first.keyword, ["conflicting_keywords"]
    if negated and positive:
        # "setuju ... tidak ok": an approval next to a negated approval is no clear approval.
        return "unclear", None, first.keyword, ["conflicting_keywords"]
    if first.category == "hold":
        return "unclear", _note(text, first), first.keyword, ["needs_human"]
    if first.category in _POSITIVE and "conditional" in categories:
        return "unclear", _note(text, first), first.keyword, ["conditional_approval"]
    if len(other) > 1:
        rules.append("first_keyword_wins")
    rules.append(f"keyword_{first.category}")
    decision: Decision
    if first.category == "approve":
        decision = "approve"
    elif first.category == "reject":
        decision = "reject"
    elif first.category == "revise":
        decision = "revise"
    elif first.category == "problem":
        decision = "problem"
    elif first.category == "cancel":
        decision = "cancel"
    else:
        decision = "confirm"
    return decision, _note(text, first), first.keyword, rules


def decide_text(text: str, vocabulary: Vocabulary | None = None) -> ReplyDecision:
    """The decision for a reply body given as text (the whole body, quotes included)."""
    vocab = vocabulary or Vocabulary()
    try:
        trimmed = _trim(text, vocab)
        decision, note, keyword, rules = _decide(trimmed.text, vocab)
    except RecursionError:  # pragma: no cover - regexes here do not recurse; belt and braces
        return ReplyDecision(decision="unclear", note=None, text="", rules=("internal_error",))
    return ReplyDecision(
        decision=decision, note=note, text=trimmed.text, keyword=keyword, rules=(*trimmed.rules, *rules)
    )


def extract_reply(msg: ParsedMessage, vocabulary: Vocabulary) -> ReplyDecision:
    """The official's decision in a reply; "unclear" unless the new text says one thing plainly."""
    return decide_text(msg.text or "", vocabulary)
