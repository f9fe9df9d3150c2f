"""Sign letter PDFs electronically (PAdES, ETSI EN 319 142) with the agency's certificate, through pyHanko.

`LetterSigner` is the small interface the engine is handed (like the DNS and hosting backends); `PadesSigner`
implements it with a PKCS#12 file or a PKCS#11 token (`load_signer`). The visible part of the signature is a
stamp placed where the letter left room for it, between the jabatan and the name, pangkat and NIP of the
official: a QR code (the verification URL, or the document id and hash) with the words "Ditandatangani secara
elektronik", the certificate's holder and the date.

`make_demo_pki` makes a throwaway CA and signing certificate for the demo and the tests; a production office
uses the certificate BSrE (Balai Besar Sertifikasi Elektronik) issued to it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from subdomaind.workflows.settings import LetterSigningConfig, credential_path

SIGNATURE_FIELD = "TandaTanganElektronik"
# Room kept for the CMS signature (bytes; twice that as hex in the file): a 4096-bit RSA signature with a
# chain of four certificates and the signed attributes takes about 8 KiB. Fixed, so pyHanko does not sign
# twice (a dry run to measure) for every letter.
SIGNATURE_BYTES = 16384


class SigningError(Exception):
    """The certificate or token cannot be used; the message says why, in plain words."""


@dataclass(frozen=True)
class SignatureBox:
    """Where the stamp goes: a page (0 = first) and a rectangle in PDF points from the lower left corner."""

    page: int
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Stamp:
    """What the visible signature shows: its lines of text and what the QR code encodes."""

    lines: tuple[str, ...]
    qr: str


class LetterSigner(Protocol):
    """Signs one PDF; returns the signed PDF (the original bytes plus an incremental update)."""

    def sign(self, pdf: bytes, box: SignatureBox | None, stamp: Stamp) -> bytes: ...

    def describe(self) -> str: ...

    @property
    def holder(self) -> str: ...

    def close(self) -> None: ...

    @property
    def verify_url(self) -> str: ...


def qr_payload(template: str, *, doc_id: str, sha256: str, number: str) -> str:
    """What the QR code encodes: the configured verification URL filled in, or the document id and hash.

    The hash is that of the letter before signing: a document cannot contain the hash of itself.
    """
    if template:
        return (template.replace("{id}", quote(doc_id, safe=""))
                .replace("{sha256}", sha256)
                .replace("{number}", quote(number, safe="")))
    return f"id:{doc_id};sha256:{sha256}"


def content_hash(pdf: bytes) -> str:
    return hashlib.sha256(pdf).hexdigest()


class PadesSigner:
    """PAdES baseline B signatures (SubFilter ETSI.CAdES.detached, SHA-256) with a visible QR stamp.

    `make_signer` builds pyHanko's signer on the first letter: importing pyHanko costs 25 MB of resident
    memory, which a daemon that has signed nothing yet need not hold.
    """

    def __init__(self, make_signer: Callable[[], Any], certificate: Any, *, reason: str, location: str,
                 verify_url: str = "", closer: Callable[[], None] | None = None) -> None:
        self._make_signer = make_signer
        self._signer: Any = None
        self._certificate = certificate  # cryptography's x509.Certificate
        self._reason = reason
        self._location = location
        self._verify_url = verify_url
        self._closer = closer

    @property
    def verify_url(self) -> str:
        return self._verify_url

    @property
    def holder(self) -> str:
        """The certificate's holder as the stamp names it: its common name, else its organisation."""
        return _name_part(self._certificate.subject, "CN") or _name_part(self._certificate.subject, "O") \
            or self._certificate.subject.rfc4514_string()

    @property
    def not_after(self) -> dt.datetime:
        return self._certificate.not_valid_after_utc

    def describe(self) -> str:
        cert = self._certificate
        org = _name_part(cert.subject, "O")
        issuer = _name_part(cert.issuer, "CN") or cert.issuer.rfc4514_string()
        return (f"{self.holder}{', ' + org if org and org != self.holder else ''} (penerbit {issuer}), "
                f"berlaku sampai {cert.not_valid_after_utc:%Y-%m-%d}")

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def sign(self, pdf: bytes, box: SignatureBox | None, stamp: Stamp) -> bytes:
        """The signed PDF; SigningError when the key cannot sign (a token pulled out, its session gone):
        the letter then waits, it never goes out unsigned."""
        try:
            return self._sign(pdf, box, stamp)
        except SigningError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyHanko, python-pkcs11 and cryptography each raise their own
            raise SigningError(f"tanda tangan elektronik gagal: {type(exc).__name__}: {exc}") from exc

    def _sign(self, pdf: bytes, box: SignatureBox | None, stamp: Stamp) -> bytes:
        if self._signer is None:
            self._signer = self._make_signer()
        # pyHanko (heavy) only to sign: without a certificate it is never loaded
        from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
        from pyhanko.pdf_utils.text import TextBoxStyle
        from pyhanko.sign import fields, signers
        from pyhanko.stamp import QRStampStyle

        writer = IncrementalPdfFileWriter(io.BytesIO(pdf), strict=False)
        rect = (round(box.x1), round(box.y1), round(box.x2), round(box.y2)) if box is not None else None
        spec = (fields.SigFieldSpec(SIGNATURE_FIELD, on_page=box.page, box=rect)
                if box is not None else fields.SigFieldSpec(SIGNATURE_FIELD))
        fields.append_signature_field(writer, spec)
        meta = signers.PdfSignatureMetadata(
            field_name=SIGNATURE_FIELD,
            subfilter=fields.SigSeedSubFilter.PADES,
            md_algorithm="sha256",
            reason=self._reason or None,
            location=self._location or None,
        )
        # pyHanko's built-in Courier: its OpenType path spaced DejaVu's glyphs wrongly in testing.
        text_style = TextBoxStyle(font_size=8, leading=9)
        style = QRStampStyle(stamp_text="%(isi)s", text_box_style=text_style, border_width=0, innsep=2,
                             background=None)
        out = io.BytesIO()
        signers.PdfSigner(meta, signer=self._signer, stamp_style=style).sign_pdf(
            writer, output=out, bytes_reserved=SIGNATURE_BYTES,
            appearance_text_params={"url": stamp.qr, "isi": "\n".join(stamp.lines).replace("%", "%%")},
        )
        return out.getvalue()


def _name_part(name: Any, short: str) -> str:
    oid = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME}[short]
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def _kept_key_signer(simple: Any, key: Any) -> Any:
    """pyHanko's SimpleSigner, with its private key parsed once instead of for every signature: loading an
    RSA key runs cryptography's key checks, 100 ms each time (two thirds of signing a letter)."""
    # pyHanko (heavy) only to sign: without a certificate it is never loaded
    from pyhanko.sign.general import get_pyca_cryptography_hash
    from pyhanko.sign.signers import SimpleSigner

    class KeptKeySigner(SimpleSigner):
        def sign_raw(self, data: bytes, digest_algorithm: str) -> bytes:
            mechanism = self.get_signature_mechanism_for_digest(digest_algorithm)
            if isinstance(key, RSAPrivateKey) and mechanism["algorithm"].native in (
                    "rsassa_pkcs1v15", "sha256_rsa", "sha384_rsa", "sha512_rsa"):
                return key.sign(data, PKCS1v15(), get_pyca_cryptography_hash(digest_algorithm))
            return super().sign_raw(data, digest_algorithm)  # PSS, ECDSA, EdDSA: pyHanko's own path

    return KeptKeySigner(signing_cert=simple.signing_cert, signing_key=simple.signing_key,
                         cert_registry=simple.cert_registry)


def _secret(cfg: LetterSigningConfig) -> str:
    try:
        secret = cfg.read_secret()
    except OSError as exc:
        raise SigningError(f"the PKCS#12 password / token PIN cannot be read: {exc.strerror}") from None
    if secret is None:
        raise SigningError("no PKCS#12 password / token PIN (password_file or password_env)")
    return secret


def load_signer(cfg: LetterSigningConfig, *, location: str = "") -> PadesSigner | None:
    """The agency's signer, or None when no certificate is configured (letters then go out unsigned)."""
    if cfg.pkcs12_file is not None:
        path = credential_path(cfg.pkcs12_file)
        password = _secret(cfg).encode()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SigningError(f"{path}: cannot read: {exc.strerror}") from None

        try:
            key, cert, chain = pkcs12.load_key_and_certificates(data, password)
        except ValueError:
            raise SigningError(f"{path}: not a PKCS#12 file, or the password is wrong") from None
        if key is None or cert is None:
            raise SigningError(f"{path}: no key and certificate in the PKCS#12 file")

        def make() -> Any:
            # pyHanko (heavy) only to sign: without a certificate it is never loaded
            from pyhanko.sign import signers

            simple = signers.SimpleSigner.load_pkcs12_data(data, other_certs=(), passphrase=password)
            return _kept_key_signer(simple, key)

        return PadesSigner(make, cert, reason=cfg.reason, location=location, verify_url=cfg.verify_url)
    if cfg.pkcs11_module is not None:
        # python-pkcs11 and pyHanko (heavy, optional) only for a hardware token
        from pkcs11.exceptions import PKCS11Error
        from pyhanko.config.pkcs11 import TokenCriteria
        from pyhanko.sign.pkcs11 import PKCS11Signer, open_pkcs11_session

        try:
            session = open_pkcs11_session(str(cfg.pkcs11_module), token_criteria=TokenCriteria(label=cfg.pkcs11_token),
                                          user_pin=_secret(cfg))
        except (PKCS11Error, OSError, RuntimeError) as exc:
            raise SigningError(f"PKCS#11 token {cfg.pkcs11_token!r} cannot be opened: "
                               f"{type(exc).__name__} {exc}".strip()) from None
        except Exception as exc:  # noqa: BLE001 - pyHanko wraps token lookups in its own errors
            raise SigningError(f"PKCS#11 token {cfg.pkcs11_token!r} cannot be opened: {exc}") from None
        try:
            token_signer = PKCS11Signer(session, cert_label=cfg.pkcs11_key, key_label=cfg.pkcs11_key)
            token_signer.signing_cert  # noqa: B018 - fetch now: a missing certificate is a config error
        except Exception as exc:  # noqa: BLE001
            session.close()
            raise SigningError(f"PKCS#11 key/certificate {cfg.pkcs11_key!r} not usable on the token: {exc}") from None

        certificate = x509.load_der_x509_certificate(token_signer.signing_cert.dump())
        return PadesSigner(lambda: token_signer, certificate, reason=cfg.reason, location=location,
                           verify_url=cfg.verify_url, closer=session.close)
    return None


# --- a throwaway PKI for the demo and the tests -----------------------------------------------------------


@dataclass(frozen=True)
class DemoPki:
    ca_pem: Path
    pkcs12: Path
    password_file: Path
    key_pem: Path
    cert_pem: Path


def make_demo_pki(directory: Path, *, signer_name: str, organization: str,
                  password: str = "demo-tte", days: int = 825) -> DemoPki:  # noqa: S107 - a throwaway demo certificate
    """A local CA and a signing certificate issued by it (RSA 2048, key usage as for a BSrE TTE certificate:
    digitalSignature + nonRepudiation), valid for `days` more days (negative: already expired), written as
    PEM files and a PKCS#12 bundle with the CA in it."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} Demo CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
             x509.NameAttribute(NameOID.COMMON_NAME, signer_name)]
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = DemoPki(ca_pem=directory / "ca.pem", pkcs12=directory / "tte.p12",
                  password_file=directory / "tte.pass", key_pem=directory / "tte-key.pem",
                  cert_pem=directory / "tte-cert.pem")
    pki.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    pki.key_pem.chmod(0o600)
    pki.pkcs12.write_bytes(pkcs12.serialize_key_and_certificates(
        signer_name.encode(), key, cert, [ca], serialization.BestAvailableEncryption(password.encode())))
    pki.pkcs12.chmod(0o600)
    pki.password_file.write_text(password, encoding="utf-8")
    pki.password_file.chmod(0o600)
    return pki


__all__ = [
    "DemoPki",
    "LetterSigner",
    "PadesSigner",
    "SignatureBox",
    "SigningError",
    "Stamp",
    "content_hash",
    "load_signer",
    "make_demo_pki",
    "qr_payload",
]
