"""Letters signed electronically (workflows/signing.py): a local CA signs each kind of letter, and each one is
checked the way a recipient would, with poppler's `pdfsig` and pyHanko's validator; the QR code is read back
with `zbarimg`; a PKCS#11 token (SoftHSM 2) signs as well as a PKCS#12 file; check-config says who signs."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from subdomaind.daemon.config import LetterConfig, LetterSigningConfig
from subdomaind.workflows.letters import KINDS, build_letter
from subdomaind.workflows.signing import PadesSigner, SigningError, load_signer, make_demo_pki
from tests.devkit.localoffice import DEMO_LOGO, config_data, nss_trusting, pdfsig, pdfsig_valid, write_config
from tests.test_letters import LETTER, make_ctx, pdf_text

pytestmark = pytest.mark.filterwarnings("ignore:.*DSA.*")  # pyHanko imports DSA names cryptography deprecates

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VERIFY = "https://tte.trenggalekkab.go.id/verifikasi/{id}?sha256={sha256}"
SIGNED_LETTER = LetterConfig(**{**LETTER.model_dump(), "logo": DEMO_LOGO})

needs_pdfsig = pytest.mark.skipif(shutil.which("pdfsig") is None or shutil.which("certutil") is None,
                                  reason="pdfsig (poppler-utils) and certutil (libnss3-tools) are needed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_demo_pki(tmp_path_factory.mktemp("pki"), signer_name="Drs. BUDI SANTOSO, M.Si.",
                         organization="Dinas Komunikasi dan Informatika Kabupaten Trenggalek")


@pytest.fixture(scope="module")
def nss(pki, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    if shutil.which("certutil") is None:
        pytest.skip("certutil (libnss3-tools) is not installed")
    return nss_trusting(pki.ca_pem, tmp_path_factory.mktemp("nss"))


@pytest.fixture(scope="module")
def signer(pki) -> PadesSigner:  # type: ignore[no-untyped-def]
    s = load_signer(LetterSigningConfig(pkcs12_file=pki.pkcs12, password_file=pki.password_file, verify_url=VERIFY),
                    location="Trenggalek")
    assert s is not None
    return s


def pyhanko_status(pdf: bytes, ca_pem: Path):  # type: ignore[no-untyped-def]
    from pyhanko.keys import load_cert_from_pemder
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko_certvalidator import ValidationContext

    sigs = PdfFileReader(io.BytesIO(pdf)).embedded_signatures
    assert len(sigs) == 1
    return validate_pdf_signature(sigs[0], ValidationContext(trust_roots=[load_cert_from_pemder(str(ca_pem))]))


def stream_bytes(pdf: bytes) -> bytes:
    """Every content stream of the PDF decoded, the signature's appearance (which text extractors skip) too."""
    from pypdf import PdfReader
    from pypdf.generic import StreamObject

    reader = PdfReader(io.BytesIO(pdf))
    out = []
    for num, gen in ((n, g) for g, nums in reader.xref.items() for n in nums):
        obj = reader.get_object(pypdf_ref(reader, num, gen))
        if isinstance(obj, StreamObject):
            out.append(obj.get_data())
    # Strings in content streams may write punctuation as octal escapes ("\\054" for ",").
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), b"\n".join(out))


def pypdf_ref(reader, num: int, gen: int):  # type: ignore[no-untyped-def]
    from pypdf.generic import IndirectObject

    return IndirectObject(num, gen, reader)


def page_png(pdf_path: Path, png: Path, dpi: int = 80) -> bytes:
    png.unlink(missing_ok=True)
    subprocess.run(["pdftoppm", "-r", str(dpi), "-png", "-f", "1", "-l", "1", "-singlefile", str(pdf_path),
                    str(png.with_suffix(""))], check=True, timeout=60)
    return png.read_bytes()


@needs_pdfsig
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_signed_valid_and_trusted_by_pdfsig_and_pyhanko(kind: str, signer: PadesSigner, pki,  # type: ignore[no-untyped-def]
                                                                      nss: Path, tmp_path: Path) -> None:
    letter = build_letter(kind, make_ctx(letter=SIGNED_LETTER))
    rendered = letter.render_pdf(signer, doc_id="a1b2c3d4e5f60718")
    assert rendered.signed
    path = tmp_path / f"{kind}.pdf"
    path.write_bytes(rendered.data)

    report = pdfsig(path, nss)
    assert pdfsig_valid(report), report
    assert "Signature Type: ETSI.CAdES.detached" in report, "PAdES, not the older adbe.pkcs7.detached"
    assert "Signer Certificate Common Name: Drs. BUDI SANTOSO, M.Si." in report
    assert "Certificate issuer isn't Trusted" in pdfsig(path), "without the CA trusted, pdfsig says so"

    from pyhanko.sign.validation import SignatureCoverageLevel

    status = pyhanko_status(rendered.data, pki.ca_pem)
    assert status.bottom_line and status.intact and status.valid and status.trusted
    assert status.coverage == SignatureCoverageLevel.ENTIRE_FILE

    # The visible block: jabatan, name, NIP around the stamp; the stamp names the certificate and the date.
    text = pdf_text(rendered.data)
    for part in ("Kepala Dinas Komunikasi dan Informatika", "Drs. BUDI SANTOSO, M.Si.", "NIP. 19680411 199303 1 009"):
        assert part in text, f"{part!r} missing from the signed {kind} letter"
    stamp = stream_bytes(rendered.data)
    for words in (b"Ditandatangani secara elektronik", b"dengan sertifikat:", b"Drs. BUDI SANTOSO, M.Si.",
                  b"Trenggalek, 21 November 2026"):
        assert words in stamp, f"{words!r} missing from the signature stamp"

    # What people see: the page as a picture, the QR code in it read back by a QR reader.
    ARTIFACTS.mkdir(exist_ok=True)
    kept = ARTIFACTS / f"letter_{kind}_signed.pdf"
    kept.write_bytes(rendered.data)
    png = page_png(kept, ARTIFACTS / f"letter_{kind}_signed.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    if shutil.which("zbarimg"):
        big = page_png(kept, tmp_path / "qr.png", dpi=200)
        assert big
        read = subprocess.run(["zbarimg", "--quiet", "--raw", str(tmp_path / "qr.png")], capture_output=True,
                              text=True, timeout=60).stdout.strip()
        assert read == f"https://tte.trenggalekkab.go.id/verifikasi/a1b2c3d4e5f60718?sha256={rendered.content_sha256}"


@needs_pdfsig
def test_a_changed_byte_or_another_ca_is_caught(signer: PadesSigner, pki, nss: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = build_letter("rejection", make_ctx()).to_pdf(signer)
    # Change one character of the letter's own text inside the signed range (an uncompressed string would
    # be easiest, but any byte inside the first signed range breaks the digest).
    tampered = bytearray(data)
    tampered[200] ^= 0x01
    path = tmp_path / "tampered.pdf"
    path.write_bytes(bytes(tampered))
    assert "Digest Mismatch" in pdfsig(path, nss)
    assert not pyhanko_status(bytes(tampered), pki.ca_pem).intact

    other = make_demo_pki(tmp_path / "other", signer_name="Orang Lain", organization="Bukan Dinas")
    status = pyhanko_status(data, other.ca_pem)
    assert status.intact and not status.trusted and not status.bottom_line


def test_unsigned_only_without_a_certificate_and_a_bad_one_is_refused(pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert load_signer(LetterSigningConfig()) is None
    rendered = build_letter("final", make_ctx()).render_pdf(None)
    assert not rendered.signed
    path = tmp_path / "unsigned.pdf"
    path.write_bytes(rendered.data)
    if shutil.which("pdfsig"):
        assert "does not contain any signatures" in pdfsig(path)
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("salah")
    with pytest.raises(SigningError, match="password is wrong"):
        load_signer(LetterSigningConfig(pkcs12_file=pki.pkcs12, password_file=wrong))
    with pytest.raises(SigningError, match="cannot read"):
        load_signer(LetterSigningConfig(pkcs12_file=tmp_path / "missing.p12", password_file=pki.password_file))


def test_the_draft_is_marked_konsep_and_its_stamp_says_no_official_signed_yet(signer: PadesSigner) -> None:
    draft = build_letter("final", make_ctx(draft=True))
    data = draft.to_pdf(signer)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "letter_draft_signed.pdf").write_bytes(data)
    if shutil.which("pdftoppm"):
        assert len(page_png(ARTIFACTS / "letter_draft_signed.pdf", ARTIFACTS / "letter_draft_signed.png")) > 20_000
    assert "KONSEP" in pdf_text(data)
    stamp = stream_bytes(data)
    assert b"belum" in stamp and b"ditandatangani pejabat." in stamp
    assert b"Ditandatangani secara elektronik" not in stamp
    assert draft.to_text().lstrip().startswith("KONSEP")


SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
needs_softhsm = pytest.mark.skipif(shutil.which("softhsm2-util") is None or not SOFTHSM.exists(),
                                   reason="SoftHSM 2 (Debian softhsm2) is needed for the PKCS#11 tests")


@pytest.fixture(scope="module")
def token(pki, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A SoftHSM 2 token holding the demo key and certificate, as a signing configuration. One per module:
    the PKCS#11 library reads SOFTHSM2_CONF once, when the process first loads it."""
    tmp_path = tmp_path_factory.mktemp("softhsm")
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _softhsm_token(pki, tmp_path, monkeypatch)


def _softhsm_token(pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LetterSigningConfig:  # type: ignore[no-untyped-def]
    import pkcs11
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from pkcs11 import Attribute, CertificateType, ObjectClass

    module = str(SOFTHSM)
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    pin = "246810"
    run = {"check": True, "capture_output": True, "timeout": 60}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "tte-dinas", "--so-pin", "13579135",
                    "--pin", pin], **run)  # type: ignore[call-overload]
    subprocess.run(["softhsm2-util", "--import", str(pki.key_pem), "--token", "tte-dinas", "--label", "kadis",
                    "--id", "01", "--pin", pin], **run)  # type: ignore[call-overload]
    # softhsm2-util 2.6 imports keys only; the certificate goes on the token as a PKCS#11 object.
    cert = x509.load_pem_x509_certificate(pki.cert_pem.read_bytes())
    with pkcs11.lib(module).get_token(token_label="tte-dinas").open(rw=True, user_pin=pin) as session:
        session.create_object({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                               Attribute.TOKEN: True, Attribute.LABEL: "kadis", Attribute.ID: b"\x01",
                               Attribute.VALUE: cert.public_bytes(Encoding.DER),
                               Attribute.SUBJECT: cert.subject.public_bytes()})
    pin_file = tmp_path / "token.pin"
    pin_file.write_text(pin)
    return LetterSigningConfig(pkcs11_module=SOFTHSM, pkcs11_token="tte-dinas", pkcs11_key="kadis",
                               password_file=pin_file)


@needs_pdfsig
@needs_softhsm
def test_a_pkcs11_token_signs_like_the_pkcs12_file(pki, token: LetterSigningConfig, nss: Path,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    cfg = token
    token_signer = load_signer(cfg)
    assert token_signer is not None
    try:
        path = tmp_path / "token.pdf"
        path.write_bytes(build_letter("incomplete", make_ctx()).to_pdf(token_signer))
    finally:
        token_signer.close()
    assert pdfsig_valid(pdfsig(path, nss))
    assert pyhanko_status(path.read_bytes(), pki.ca_pem).bottom_line

    assert cfg.password_file is not None
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("000000")
    with pytest.raises(SigningError, match="cannot be opened"):
        load_signer(cfg.model_copy(update={"password_file": wrong}))


def test_check_config_says_who_signs_or_that_letters_go_out_unsigned(pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.devkit.localoffice import SUBDOMAIND

    def check(data: dict) -> subprocess.CompletedProcess[str]:  # type: ignore[type-arg]
        path = write_config(tmp_path / "config.toml", data)
        return subprocess.run([str(SUBDOMAIND), "check-config", str(path)], capture_output=True, text=True,
                              timeout=120)

    plain = check(config_data(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "WARNING: agency trenggalek: no signing certificate" in plain.stdout and "UNSIGNED" in plain.stdout

    signed = check(config_data(tmp_path / "signed", signing=True))
    assert signed.returncode == 0, signed.stdout + signed.stderr
    assert "agency trenggalek: letters signed by Drs. Contoh Pejabat, M.Si, Dinas Komunikasi" in signed.stdout
    assert "UNSIGNED" not in signed.stdout

    for days, rc, words in ((10, 0, "WARNING: agency trenggalek: the signing certificate expires in 9 day(s)"),
                            (-1, 78, "agency trenggalek: letter.signing: the certificate has EXPIRED")):
        data = config_data(tmp_path / f"days{days}", signing=True)
        make_demo_pki(tmp_path / f"days{days}" / "tte", signer_name="Drs. Contoh Pejabat, M.Si",
                      organization="Dinas Kominfo", days=days)
        soon = check(data)
        assert soon.returncode == rc and words in soon.stdout, soon.stdout

    data = config_data(tmp_path / "nologo", signing=True)
    data["agency"][0]["letter"]["logo"] = str(tmp_path / "nologo" / "lambang.png")
    nologo = check(data)
    assert nologo.returncode == 78 and "agency[0].letter.logo: cannot read" in nologo.stdout, nologo.stdout

    data = config_data(tmp_path / "wrong", signing=True)
    (tmp_path / "wrong" / "tte" / "tte.pass").write_text("salah")
    wrong = check(data)
    assert wrong.returncode == 78  # EX_CONFIG
    assert "letter.signing:" in wrong.stdout and "password is wrong" in wrong.stdout
    assert "Traceback" not in wrong.stdout + wrong.stderr


@needs_pdfsig
@pytest.mark.servers
def test_every_letter_through_the_real_daemon_is_signed_and_numbered_without_gaps(  # type: ignore[no-untyped-def]
        dovecot, smtp_relay, bind, tmp_path: Path) -> None:
    """Rejection, incomplete-form, draft and final letters, each from the register (the draft's number passes
    to the rejection that replaces it), each PDF valid and trusted by pdfsig."""
    import re as _re
    import sqlite3
    import tempfile

    from tests.devkit.localoffice import REQUEST_BODY, UNVOUCHED, Office, parse_mail, pdf_attachments

    base = Path(tempfile.mkdtemp(prefix="office-tte-"))
    base.chmod(0o755)
    office = Office.create(base, dovecot, smtp_relay, bind, signing=True, auth=UNVOUCHED)
    office.start()
    try:
        def subject_has(words: str):  # type: ignore[no-untyped-def]
            return lambda m: words in str(m["Subject"])

        # 1. Rejected at disposition: a rejection letter.
        office.send_request("ditolak1")
        office.decide("kadis", "TOLAK\nnama tidak sesuai nomenklatur")
        rejected = office.wait_mail(office.requester, subject_has("ditolak1.trenggalekkab.go.id belum dapat"))
        # 2. A form without the PIC's phone: the incomplete-form letter, with the form as PDF and DOCX.
        body = "\n".join(line for line in REQUEST_BODY.format(label="kurang1", pic=office.requester.address)
                         .splitlines() if not line.startswith("No. HP"))
        office.send_request("kurang1", body=body)
        incomplete = office.wait_mail(office.requester, subject_has("perlu dilengkapi"))
        # 3. Made, then its draft refused by the Kasi: the rejection goes out under the draft's number.
        office.send_request("konsep1")
        for role in ("kadis", "kabid", "kasi"):
            office.decide(role, "SETUJU")
        draft_mail = office.decide("kasi", "TOLAK\nkonsep tidak jadi dikirim")
        refused = office.wait_mail(office.requester, subject_has("konsep1.trenggalekkab.go.id belum dapat"))
    finally:
        assert office.stop() == 0

    nss = nss_trusting(base / "tte" / "ca.pem", tmp_path / "nss")
    numbers = {}
    for name, raw in (("rejection", rejected), ("incomplete", incomplete), ("draft", draft_mail),
                      ("refused", refused)):
        pdfs = [(n, d) for n, d in pdf_attachments(raw) if n.startswith(("surat-", "konsep-surat-"))]
        assert len(pdfs) == 1, (name, [n for n, _ in pdf_attachments(raw)])
        path = tmp_path / pdfs[0][0]
        path.write_bytes(pdfs[0][1])
        assert pdfsig_valid(pdfsig(path, nss)), name
        nomor = _re.search(r"Nomor : (\S+)", pdf_text(pdfs[0][1]))
        assert nomor, name
        numbers[name] = nomor.group(1)
    year = numbers["rejection"].rsplit("/", 1)[1]
    assert numbers == {"rejection": f"555/1/406.020/{year}", "incomplete": f"555/2/406.020/{year}",
                       "draft": f"555/3/406.020/{year}", "refused": f"555/3/406.020/{year}"}
    assert "Lampiran : 2 (dua) berkas" in pdf_text(pdf_attachments(incomplete)[0][1])
    text = " ".join(pdf_text(pdf_attachments(rejected)[0][1]).split())
    assert "Nama tidak sesuai nomenklatur." in text
    assert parse_mail(incomplete).get_content_type() == "multipart/mixed"

    with sqlite3.connect(base / "state" / "subdomaind.db") as db:
        rows = db.execute("SELECT seq, kind, status, signed, content_sha256 IS NOT NULL, pdf_sha256 IS NOT NULL "
                          "FROM letters ORDER BY seq").fetchall()
    assert rows == [(1, "rejection", "terkirim", 1, 1, 1), (2, "incomplete", "terkirim", 1, 1, 1),
                    (3, "rejection", "terkirim", 1, 1, 1)]
    register = office.cli("letters").stdout.splitlines()
    assert [line.split()[1] for line in register] == [numbers["rejection"], numbers["incomplete"], numbers["draft"]]
    assert all(" terkirim " in line and " TTE " in line for line in register), register
    assert "Permintaan Kelengkapan Permohonan Layanan Sub Domain" in register[1]


@needs_softhsm
def test_a_letter_that_cannot_be_signed_waits_takes_no_number_and_staff_are_told(  # type: ignore[no-untyped-def]
        token: LetterSigningConfig, tmp_path: Path) -> None:
    from dataclasses import replace

    from sqlalchemy import select

    from subdomaind.daemon.service import Daemon
    from subdomaind.workflows.db import upgrade
    from subdomaind.workflows.engine import Services
    from subdomaind.workflows.provision import NoHosting
    from subdomaind.workflows.store import Counter, LetterRecord, Request, make_engine, make_sessionmaker
    from tests.devkit.localoffice import STAFF, UNVOUCHED, make_config, request_mail
    from tests.test_engine_unit import DictDns, ListSource, ListTransport, approve

    cfg = make_config(tmp_path, auth=UNVOUCHED)  # the officials' replies here carry no authentication
    engine = make_engine(cfg.db_url)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    broken = load_signer(token)
    assert broken is not None
    broken.close()  # the token's session is gone, as when the token is pulled out
    src, tr = ListSource(), ListTransport()
    services = Services(dns=DictDns(), hosting=NoHosting(), signer=broken)
    d = Daemon(cfg, sessions, transport=tr, sources={"trenggalek": src}, services={"trenggalek": services})
    src.add(request_mail("dinsos@example.org"))
    d.run_once()
    approve(d, src, tr, "kadis", "TOLAK\nnama tidak sesuai nomenklatur")

    assert not [m for m in tr.to("dinsos@example.org") if "dapat dipenuhi" in str(m["Subject"])], \
        "never an unsigned letter"
    alerts = [m for m in tr.to(STAFF) if "tanda tangan elektronik gagal" in m.get_body(("plain",)).get_content()]
    assert alerts, [str(m["Subject"]) for m in tr.to(STAFF)]
    with sessions() as s:
        assert s.execute(select(LetterRecord)).first() is None, "no register row for a letter not sent"
        assert all(c.last == 0 for c in s.execute(select(Counter).where(Counter.name == "letter")).scalars())
        assert s.execute(select(Request)).scalar_one().status == "open"

    working = load_signer(token)
    assert working is not None
    d.runtimes["trenggalek"].services = replace(services, signer=working)
    for _ in range(3):
        d.run_once()
    working.close()
    letters = [m for m in tr.to("dinsos@example.org") if "dapat dipenuhi" in str(m["Subject"])]
    assert len(letters) == 1
    with sessions() as s:
        record = s.execute(select(LetterRecord)).scalar_one()
        assert (record.seq, record.kind, record.signed) == (1, "rejection", True)
