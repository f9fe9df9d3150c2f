"""Load an agency's SOP definition (one TOML file per agency under `workflows/sops/`) and validate it.

An SOP is data: roles, and steps with an actor role, a kind, a Mutu Baku time, and where each outcome
leads. A definition with an unknown step, an unreachable step, a role with no definition, or an outcome
that leads nowhere is refused at load with the file, the line and the problem.

Why pydantic: each table's shape (types, known keys, one step's own rules) is declared once, as the
configuration's is; the rules that refer across tables (roles, targets, reachability) follow the models.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from subdomaind.workflows.textfiles import TextFileError, read_utf8

SOP_DIR = Path(__file__).parent / "sops"

StepKind = Literal["approval", "notification", "action", "wait_requester", "end"]
STEP_KINDS: tuple[str, ...] = get_args(StepKind)
OUTCOMES = ("approve", "reject", "revise", "problem", "confirm", "ok", "error", "complete", "incomplete")
ACTIONS = (
    "check_completeness",
    "provision",
    "draft_letter",
    "send_letter",
    "send_rejection",
    "recheck_dns",
    "close",
)
_TIME_RE = re.compile(r"^\s*(\d+(?:[.,]\d+)?)\s*(menit|jam|hari)\s*$", re.IGNORECASE)
_UNIT_MINUTES = {"menit": 1, "jam": 60, "hari": None}


class SopError(Exception):
    pass


@dataclass(frozen=True)
class MutuBaku:
    """A step's service time as the SOP writes it ("2 hari", "15 menit")."""

    text: str
    minutes: float  # working minutes for menit/jam; 0 for hari
    days: float  # working days for hari; 0 otherwise

    @classmethod
    def parse(cls, text: str) -> MutuBaku:
        m = _TIME_RE.match(text)
        if not m:
            raise ValueError(f"time {text!r} is not like '2 hari', '3 jam' or '15 menit'")
        n = float(m.group(1).replace(",", "."))
        unit = m.group(2).lower()
        if unit == "hari":
            return cls(text=text, minutes=0.0, days=n)
        return cls(text=text, minutes=n * (_UNIT_MINUTES[unit] or 1), days=0.0)


@dataclass(frozen=True)
class Role:
    key: str
    title: str
    superior: str | None = None
    requester: bool = False  # the requesting unit (not an address from config)


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    kind: StepKind
    actor: str | None
    sop_no: str | None
    time: MutuBaku | None
    on: dict[str, str] = field(default_factory=dict)  # outcome -> next step key
    action: str | None = None
    template: str | None = None
    outcome: Literal["done", "rejected"] | None = None  # for end steps
    irreversible: bool = False  # the undo window applies before this action runs
    silent: bool = False  # a wait step whose request was already said in the previous mail
    line: int = 0


@dataclass(frozen=True)
class Sop:
    name: str
    title: str
    path: Path
    start: str
    roles: dict[str, Role]
    steps: dict[str, Step]

    def step(self, key: str) -> Step:
        return self.steps[key]

    def actor_roles(self) -> set[str]:
        """Roles whose addresses must come from config (every actor but the requester)."""
        return {
            s.actor
            for s in self.steps.values()
            if s.actor and not self.roles[s.actor].requester
        } | {r.superior for r in self.roles.values() if r.superior}

    def main_path(self) -> list[Step]:
        """The steps a request meets when everything goes well: from the start, following the first of
        approve / complete / ok / confirm at each step, until an end step (loops and branches left out)."""
        path: list[Step] = []
        key: str | None = self.start
        while key is not None and key not in {s.key for s in path}:
            step = self.steps[key]
            path.append(step)
            key = next((step.on[o] for o in ("approve", "complete", "ok", "confirm") if o in step.on), None)
        return path

    def total(self) -> tuple[float, float]:
        """The SOP's total Mutu Baku as (working days, working minutes) over its main path."""
        path = self.main_path()
        return sum(s.time.days for s in path if s.time), sum(s.time.minutes for s in path if s.time)


class _Spec(BaseModel):
    # Like the configuration: an unknown key is a typo the operator must hear about, not a value ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoleSpec(_Spec):
    """One ``[roles]`` entry as written in the file."""

    title: str
    superior: str | None = None
    requester: bool = False


class StepSpec(_Spec):
    """One ``[steps.<key>]`` table as written in the file; the rules that need one step only."""

    title: str | None = None
    kind: StepKind
    actor: str | None = None
    sop_no: str | None = None
    time: str | None = None
    on: dict[str, str] = {}
    next: str | None = None
    action: str | None = None
    template: str | None = None
    outcome: Literal["done", "rejected"] | None = None
    irreversible: bool = False
    silent: bool = False

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, value: object) -> object:
        if value not in STEP_KINDS:
            raise ValueError(f"unknown kind {value!r}")
        return value

    @field_validator("sop_no", mode="before")
    @classmethod
    def _sop_no_text(cls, value: object) -> object:
        # SOP tables number their rows; `sop_no = 3` and `sop_no = "3"` mean the same row.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("time")
    @classmethod
    def _mutu_baku(cls, value: str | None) -> str | None:
        if value is not None:
            MutuBaku.parse(value)
        return value

    @field_validator("on")
    @classmethod
    def _known_outcomes(cls, value: dict[str, str]) -> dict[str, str]:
        for outcome in value:
            if outcome not in OUTCOMES:
                raise ValueError(f"unknown outcome {outcome!r}")
        return value

    @model_validator(mode="after")
    def _shape_of_kind(self) -> StepSpec:
        if self.kind in ("approval", "notification", "wait_requester") and self.actor is None:
            raise ValueError(f"a {self.kind} step needs an actor")
        if self.kind == "action" and self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r} (known: {', '.join(ACTIONS)})")
        if self.kind == "approval" and "approve" not in self.on:
            raise ValueError("an approval step needs on.approve")
        if self.kind == "end" and self.outcome is None:
            raise ValueError("an end step needs outcome = 'done' or 'rejected'")
        return self

    def outcomes(self) -> dict[str, str]:
        """``on``, with ``next`` as the ``ok`` outcome when ``on.ok`` is not given."""
        return {**self.on, "ok": self.on.get("ok", self.next)} if self.next is not None else dict(self.on)


class SopSpec(_Spec):
    """A whole SOP file as written; `parse_sop` checks what refers across tables."""

    name: str
    title: str
    start: str
    roles: dict[str, RoleSpec]
    steps: dict[str, StepSpec]


def _line_of(text: str, pattern: str) -> int:
    for i, line in enumerate(text.splitlines(), start=1):
        if re.match(pattern, line.strip()):
            return i
    return 0


def _role_line(text: str, key: str) -> int:
    return _line_of(text, rf"^{re.escape(key)}\s*=") or _line_of(text, rf"^\[roles\.{re.escape(key)}\]")


def _step_line(text: str, key: str) -> int:
    return _line_of(text, rf"^\[steps\.{re.escape(key)}\]")


def _problem(error: ErrorDetails) -> str:
    """Our own rules speak for themselves; pydantic's messages get the key they are about."""
    if error["type"] == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    if error["type"] in ("model_type", "dict_type"):
        return "must be a table"
    return error["msg"]


def _located(error: ErrorDetails, text: str) -> tuple[int, str]:
    """(line, "what: problem") for one validation error, the line that of the table it is in."""
    loc = [str(part) for part in error["loc"]]
    problem = _problem(error)
    if len(loc) >= 2 and loc[0] in ("roles", "steps"):
        what = "role" if loc[0] == "roles" else "step"
        line = _role_line(text, loc[1]) if what == "role" else _step_line(text, loc[1])
        key = ".".join(loc[2:])
        return line, f"{what} {loc[1]!r}: " + (f"{key}: {problem}" if key and error["type"] != "value_error"
                                                  else problem)
    if loc:
        return _line_of(text, rf"^{re.escape(loc[0])}\s*=") or _line_of(text, rf"^\[{re.escape(loc[0])}\]"), \
            f"{'.'.join(loc)}: {problem}"
    return 0, problem


def parse_sop(text: str, path: Path) -> Sop:
    where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SopError(f"{where}: {exc}") from None

    def fail(line: int, msg: str) -> SopError:
        return SopError(f"{where}:{line}: {msg}" if line else f"{where}: {msg}")

    try:
        spec = SopSpec.model_validate(data)
    except ValidationError as exc:
        # The first problem, located: the operator fixes it and loads again.
        raise fail(*_located(exc.errors()[0], text)) from None

    roles = {key: Role(key=key, title=r.title, superior=r.superior, requester=r.requester)
             for key, r in spec.roles.items()}
    for role in roles.values():
        if role.superior and role.superior not in roles:
            raise fail(_role_line(text, role.key), f"role {role.key!r}: unknown superior {role.superior!r}")

    steps: dict[str, Step] = {}
    for skey, sd in spec.steps.items():
        line = _step_line(text, skey)
        if sd.actor is not None and sd.actor not in roles:
            raise fail(line, f"step {skey!r}: actor role {sd.actor!r} is not defined under [roles]")
        steps[skey] = Step(
            key=skey,
            title=sd.title if sd.title is not None else skey,
            kind=sd.kind,
            actor=sd.actor,
            sop_no=sd.sop_no,
            time=MutuBaku.parse(sd.time) if sd.time is not None else None,
            on=sd.outcomes(),
            action=sd.action,
            template=sd.template,
            outcome=sd.outcome,
            irreversible=sd.irreversible,
            silent=sd.silent,
            line=line,
        )
    if spec.start not in steps:
        raise fail(_line_of(text, r"^start\s*="), f"start step {spec.start!r} is not defined")
    for step in steps.values():
        for outcome, target in step.on.items():
            if target not in steps:
                raise fail(step.line, f"step {step.key!r}: on.{outcome} leads to unknown step {target!r}")
        if step.kind != "end" and not step.on:
            raise fail(step.line, f"step {step.key!r}: leads nowhere (no next or on.*)")
    reachable: set[str] = set()
    todo = [spec.start]
    while todo:
        k = todo.pop()
        if k in reachable:
            continue
        reachable.add(k)
        todo.extend(steps[k].on.values())
    for step in steps.values():
        if step.key not in reachable:
            raise fail(step.line, f"step {step.key!r} is unreachable from {spec.start!r}")
    return Sop(name=spec.name, title=spec.title, path=path, start=spec.start, roles=roles, steps=steps)


@cache
def load_sop(name: str) -> Sop:
    """The SOP named `name` (a file under workflows/sops/), or a path to a .toml file."""
    path = Path(name) if name.endswith(".toml") else SOP_DIR / f"{name}.toml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in SOP_DIR.glob("*.toml")))
        raise SopError(f"no SOP named {name!r} (known: {known})")
    try:
        text = read_utf8(path)
    except TextFileError as exc:
        raise SopError(str(exc)) from None
    return parse_sop(text, path)
