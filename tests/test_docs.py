"""The operator's guide (docs/PANDUAN.md) and README.md name only what the code has: every `subdomaind ...`
command line they show parses with the CLI's own parser (daemon/cli.py build_parser), and every
configuration key they show (TOML examples, `[section] key` mentions, the key tables) is a field of the
configuration models (daemon/config.py Config). A doc that names a subcommand, flag or key the code does not
have fails here."""

from __future__ import annotations

import argparse
import importlib
import re
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from subdomaind.daemon.cli import build_parser
from subdomaind.daemon.config import Config

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "docs" / "PANDUAN.md", ROOT / "README.md"]

# `subdomaind ARGS` (also as `.venv/bin/subdomaind`, or the guide's `$S` shorthand for it), in a code block
# line or an inline code span. Words after it up to a comment, the end of the span or a shell operator.
_COMMAND = re.compile(r"(?:(?<=[\s`(\"'])|^)(?:[\w./-]*/)?(?:subdomaind|\$S)((?:[ \t]+[^\s#`;&><)\"']+)*)")
# Lines and spans where `subdomaind` is a user, unit, key or package name, not the command.
_NOT_THE_COMMAND = re.compile(
    r"(systemctl|journalctl|adduser|tsig-keygen|systemd-analyze|grant|useradd|chown|install -|key \"|pip install)"
    r"[^`\n]*subdomaind")
# Placeholders the docs write for a value: TIKET, ID, BERKAS, N, `…`, <nomor tiket>.
_PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z_]*|<[^>]*>|…|\.\.\.)$")


def doc_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_lines(text: str) -> Iterator[str]:
    """Each line of each fenced code block, and each inline code span outside them."""
    in_block = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            yield line
        else:
            yield from re.findall(r"`([^`]+)`", line.replace("\\|", "|"))


def commands(path: Path) -> list[tuple[str, list[str]]]:
    """(the text as written, its argument words) for every `subdomaind` command line in the doc."""
    found = []
    for line in code_lines(doc_text(path)):
        if _NOT_THE_COMMAND.search(line) or line.lstrip().startswith(("S=", "export ")):
            continue
        for match in _COMMAND.finditer(line):
            words = match.group(1).split()
            if not words or not (words[0].startswith("-") or words[0].islower()):
                continue  # a path such as /opt/subdomaind or /var/lib/subdomaind
            found.append((match.group(0).strip(), words))
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def check_command(words: list[str]) -> list[str]:
    """What in one documented command line the CLI does not have. Alternatives written `a | b` and optional
    parts written `[...]` are each checked; placeholders (TIKET, ID, BERKAS) stand for any value."""
    root = build_parser()
    parser, problems = root, []
    expect_value = False
    positional_choices: list[tuple[str, ...]] = []
    for raw in words:
        word = raw.strip("[]")
        if not word or word == "|":
            continue
        if expect_value:
            expect_value = False
            continue
        if word.startswith("-"):
            flag = word.split("=", 1)[0]
            action = _options(parser).get(flag) or _options(root).get(flag)
            if action is None:
                problems.append(f"{flag}: no such option of {parser.prog!r}")
            elif action.nargs != 0 and "=" not in word:
                expect_value = True
            continue
        subs = _subparsers(parser)
        if subs:
            if word not in subs:
                problems.append(f"{word}: no such command of {parser.prog!r} (known: {', '.join(subs)})")
                break
            parser = subs[word]
            positional_choices = [tuple(a.choices) for a in parser._actions
                                  if not a.option_strings and a.choices and not isinstance(a.choices, dict)]
            continue
        if _PLACEHOLDER.match(word):
            continue
        if positional_choices and word.islower() and word.isalpha() and not any(word in c for c in positional_choices):
            problems.append(f"{word}: not one of {parser.prog!r}'s choices {positional_choices}")
    return problems


ALL_COMMANDS = [(path.name, text, words) for path in DOCS for text, words in commands(path)]


def test_the_docs_show_commands_at_all() -> None:
    by_doc = {name for name, _text, _words in ALL_COMMANDS}
    assert by_doc == {"PANDUAN.md", "README.md"}
    subcommands = {words[0] for _name, _text, words in ALL_COMMANDS if not words[0].startswith("-")}
    # Every subcommand the CLI has is documented in the guide or the README.
    assert set(_subparsers(build_parser())) <= subcommands


@pytest.mark.parametrize(("doc", "text", "words"), ALL_COMMANDS, ids=[f"{d}:{t}" for d, t, _w in ALL_COMMANDS])
def test_each_documented_command_exists_in_the_cli(doc: str, text: str, words: list[str]) -> None:
    assert check_command(words) == [], f"{doc}: `{text}`"


@pytest.mark.parametrize(("words", "problem"), [
    (["statsu"], "statsu: no such command"),
    (["status", "--jsno"], "--jsno: no such option"),
    (["quarantine", "purge", "ID"], "purge: not one of"),
    (["oauth", "logon"], "logon: no such command"),
])
def test_the_checker_refuses_what_the_cli_lacks(words: list[str], problem: str) -> None:
    assert any(problem in p for p in check_command(words)), check_command(words)


# --- configuration keys ---------------------------------------------------------------------------------

def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (itself, in a list or dict, or optional), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, dict, typing.Union, types.UnionType) or origin is not None:
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    names: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        names[info.alias or name] = info.annotation
        names[name] = info.annotation
    return names


def check_keys(data: dict[str, Any], model: type[BaseModel] = Config, where: str = "") -> list[str]:
    problems = []
    known = _fields(model)
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            problems.append(f"{path}: no such key in {model.__name__}")
            continue
        sub = _model_of(known[key])
        if sub is None:
            continue  # a value, or a table of free keys (names, delegates)
        items = value if isinstance(value, list) else [value]
        if typing.get_origin(known[key]) is dict and isinstance(value, dict):
            items = list(value.values())  # a table of named models ([agency.letter.signers.incomplete])
        for item in items:
            if isinstance(item, dict):
                problems += check_keys(item, sub, path)
    return problems


def _uncomment(block: str) -> str:
    """A commented-out key (`# ca_file = "..."`) is documented as an option: read it as a key too."""
    return re.sub(r"(?m)^#\s*(?=[a-z_]+\s*=)", "", block)


def toml_blocks(path: Path) -> list[tuple[int, dict[str, Any]]]:
    out = []
    text = doc_text(path)
    for match in re.finditer(r"```toml\n(.*?)```", text, re.S):
        line = text.count("\n", 0, match.start()) + 2
        block = match.group(1)
        try:
            data = tomllib.loads(_uncomment(block))
        except tomllib.TOMLDecodeError:
            data = tomllib.loads(block)
        out.append((line, data))
    return out


def _is_config(data: dict[str, Any]) -> bool:
    """SOP files (roles, steps) and holiday files (libur, masuk, jam_khusus) have their own loaders."""
    return not {"steps", "roles", "start", "libur", "masuk", "jam_khusus"} & set(data)


CONFIG_BLOCKS = [(p.name, line, data) for p in DOCS for line, data in toml_blocks(p) if _is_config(data)]


@pytest.mark.parametrize(("doc", "line", "data"), CONFIG_BLOCKS, ids=[f"{d}:{n}" for d, n, _x in CONFIG_BLOCKS])
def test_each_toml_example_uses_only_configuration_keys(doc: str, line: int, data: dict[str, Any]) -> None:
    assert check_keys(data) == [], f"{doc} line {line}"


def section_keys(path: Path) -> list[tuple[str, str]]:
    """(`[section]`, key) for every `[section] key` mention and every first-column key of a table under a
    heading that names its section (`### 2.3 `[workflow]`: ...`); the section "" is the top level."""
    text = doc_text(path).replace("\\|", "|")
    found = [(m.group(1), m.group(2)) for m in re.finditer(r"`?\[([a-z_.]+)\]`? `?([a-z_]+)`?(?: =|`)", text)]
    section: str | None = None
    for line in text.splitlines():
        heading = re.match(r"#{2,4} .*?`\[\[?([a-z_.]+)\]\]?`", line)
        if line.startswith("#"):
            section = heading.group(1) if heading else ("" if "Kunci tingkat atas" in line else None)
            continue
        cell = re.match(r"\| `([a-z_]+)` \|", line)
        if section is not None and cell:
            found.append((section, cell.group(1)))
        # | `[section]` | what, naming its keys: `key = ...`, `key`: ..., `key` / `other`, `key` (default) |
        row = re.match(r"\| `\[\[?([a-z_.]+)\]\]?` \| (.*)", line)
        if row:
            found += [(row.group(1), key) for key in
                      re.findall(r"`([a-z_0-9]+)(?: =[^`]*`|`(?=:| /|,| \+| \())", row.group(2))]
    return found


def _nest(section: str, key: str) -> dict[str, Any]:
    data: dict[str, Any] = {key: None}
    for part in reversed([p for p in section.split(".") if p]):
        data = {part: data}
    return data


SECTION_KEYS = sorted({(p.name, s, k) for p in DOCS for s, k in section_keys(p)})


@pytest.mark.parametrize(("doc", "section", "key"), SECTION_KEYS, ids=[f"{d}:[{s}] {k}" for d, s, k in SECTION_KEYS])
def test_each_named_key_is_a_configuration_key(doc: str, section: str, key: str) -> None:
    data = _nest(section, key)
    problems = [p for p in check_keys(data) if not p.endswith("no such key in str")]
    assert problems == [], f"{doc}: [{section}] {key}"


def test_the_key_checker_refuses_an_unknown_key() -> None:
    assert check_keys({"agency": [{"imap": {"hots": "x"}}]}) == ["agency.imap.hots: no such key in ImapConfig"]
    assert check_keys({"workflow": {"refusal_notice_per_day": 1}})
    assert len(SECTION_KEYS) > 30 and len(CONFIG_BLOCKS) > 10


# --- files ----------------------------------------------------------------------------------------------

_REPO_PATH = re.compile(r"`((?:docs|daemon|workflows|parsers|templates|tests|examples|systemd|bench)/[^`\s<*]*)`")
NAMED_FILES = sorted({(p.name, m) for p in DOCS for m in _REPO_PATH.findall(doc_text(p))})


@pytest.mark.parametrize(("doc", "name"), NAMED_FILES, ids=[f"{d}:{n}" for d, n in NAMED_FILES])
def test_each_repository_file_named_exists(doc: str, name: str) -> None:
    assert (ROOT / name.split("::")[0]).exists(), f"{doc} names {name}"


# --- the dev kit ----------------------------------------------------------------------------------------

DEVKIT = ROOT / "docs" / "DEVKIT.md"
# `name(` or `name` at the start of a table cell or a list item, and `from tests.devkit.X import a, b`.
_KIT_IMPORT = re.compile(r"from (tests\.devkit(?:\.\w+)?) import ([\w, ]+)")
_KIT_CALL = re.compile(r"`(?:office\.|netguard\.)?(\w+)\(")


def test_each_dev_kit_name_the_guide_gives_exists() -> None:
    """docs/DEVKIT.md is what outside test tools read: every import it shows works, every call it names exists."""
    text = DEVKIT.read_text(encoding="utf-8")
    modules = {}
    for module, names in _KIT_IMPORT.findall(text):
        modules[module] = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(modules[module], name), f"DEVKIT.md: {module} has no {name}"
    kit = [*modules.values(), *(v for m in modules.values() for v in vars(m).values() if isinstance(v, types.ModuleType))]
    members = {n for m in kit for n in dir(m)} | {n for m in kit for v in vars(m).values() if isinstance(v, type)
                                                    for n in dir(v)}
    called = set(_KIT_CALL.findall(text))
    assert len(called) > 15 and called - members == set()
