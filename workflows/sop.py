"""Load an agency's SOP definition (one TOML file per agency under `workflows/sops/`) and validate it.

An SOP is data: roles, and steps with an actor role, a kind, a Mutu Baku time, and where each outcome
leads. A definition with an unknown step, an unreachable step, a role with no definition, or an outcome
that leads nowhere is refused at load with the file, the line and the problem.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

from workflows.textfiles import TextFileError, read_utf8

SOP_DIR = Path(__file__).parent / "sops"

StepKind = Literal["approval", "notification", "action", "wait_requester", "end"]
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


def _line_of(text: str, pattern: str) -> int:
    for i, line in enumerate(text.splitlines(), start=1):
        if re.match(pattern, line.strip()):
            return i
    return 0


def parse_sop(text: str, path: Path) -> Sop:
    where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SopError(f"{where}: {exc}") from None

    def fail(line: int, msg: str) -> SopError:
        return SopError(f"{where}:{line}: {msg}" if line else f"{where}: {msg}")

    for key in ("name", "title", "start", "roles", "steps"):
        if key not in data:
            raise fail(0, f"missing top-level key {key!r}")
    roles: dict[str, Role] = {}
    for rkey, rdata in data["roles"].items():
        line = _line_of(text, rf"^{re.escape(rkey)}\s*=") or _line_of(text, rf"^\[roles\.{re.escape(rkey)}\]")
        if not isinstance(rdata, dict) or "title" not in rdata:
            raise fail(line, f"role {rkey!r} needs a title")
        roles[rkey] = Role(
            key=rkey, title=rdata["title"], superior=rdata.get("superior"), requester=bool(rdata.get("requester"))
        )
    for role in roles.values():
        if role.superior and role.superior not in roles:
            line = _line_of(text, rf"^{re.escape(role.key)}\s*=")
            raise fail(line, f"role {role.key!r}: unknown superior {role.superior!r}")

    steps: dict[str, Step] = {}
    for skey, sd in data["steps"].items():
        line = _line_of(text, rf"^\[steps\.{re.escape(skey)}\]")
        if not isinstance(sd, dict):
            raise fail(line, f"step {skey!r} must be a table")
        kind = sd.get("kind")
        if kind not in ("approval", "notification", "action", "wait_requester", "end"):
            raise fail(line, f"step {skey!r}: unknown kind {kind!r}")
        actor = sd.get("actor")
        if actor is not None and actor not in roles:
            raise fail(line, f"step {skey!r}: actor role {actor!r} is not defined under [roles]")
        if kind in ("approval", "notification", "wait_requester") and actor is None:
            raise fail(line, f"step {skey!r}: a {kind} step needs an actor")
        time = None
        if "time" in sd:
            try:
                time = MutuBaku.parse(str(sd["time"]))
            except ValueError as exc:
                raise fail(line, f"step {skey!r}: {exc}") from None
        on = dict(sd.get("on", {}))
        if "next" in sd:
            on.setdefault("ok", sd["next"])
        for outcome in on:
            if outcome not in OUTCOMES:
                raise fail(line, f"step {skey!r}: unknown outcome {outcome!r}")
        action = sd.get("action")
        if kind == "action" and action not in ACTIONS:
            raise fail(line, f"step {skey!r}: unknown action {action!r} (known: {', '.join(ACTIONS)})")
        if kind == "approval" and "approve" not in on:
            raise fail(line, f"step {skey!r}: an approval step needs on.approve")
        if kind == "end" and sd.get("outcome") not in ("done", "rejected"):
            raise fail(line, f"step {skey!r}: an end step needs outcome = 'done' or 'rejected'")
        steps[skey] = Step(
            key=skey,
            title=sd.get("title", skey),
            kind=kind,
            actor=actor,
            sop_no=str(sd["sop_no"]) if "sop_no" in sd else None,
            time=time,
            on=on,
            action=action,
            template=sd.get("template"),
            outcome=sd.get("outcome"),
            irreversible=bool(sd.get("irreversible", False)),
            silent=bool(sd.get("silent", False)),
            line=line,
        )
    if data["start"] not in steps:
        raise fail(_line_of(text, r"^start\s*="), f"start step {data['start']!r} is not defined")
    for step in steps.values():
        for outcome, target in step.on.items():
            if target not in steps:
                raise fail(step.line, f"step {step.key!r}: on.{outcome} leads to unknown step {target!r}")
        if step.kind not in ("end",) and not step.on:
            raise fail(step.line, f"step {step.key!r}: leads nowhere (no next or on.*)")
    reachable: set[str] = set()
    todo = [data["start"]]
    while todo:
        k = todo.pop()
        if k in reachable:
            continue
        reachable.add(k)
        todo.extend(steps[k].on.values())
    for step in steps.values():
        if step.key not in reachable:
            raise fail(step.line, f"step {step.key!r} is unreachable from {data['start']!r}")
    return Sop(
        name=data["name"], title=data["title"], path=path, start=data["start"], roles=roles, steps=steps
    )


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
    try:
        return parse_sop(text, path)
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        # A value of the wrong type (a number where a table or text belongs): the file, never a traceback.
        raise SopError(f"{path}: a value has the wrong type ({type(exc).__name__}: {exc}); compare with "
                       f"workflows/sops/trenggalek.toml") from None
