"""Temporal rules over a source's samples: always, eventually-within, until.

A rule is one line of text (the grammar is below); :func:`parse_rule` turns it into a
monitor that reads the source's samples in event-time order and says, per sample,
whether the rule holds (``Verdict``) or that the sample tells it nothing (``None``,
e.g. the field is null in that row).

Grammar (``FIELD`` as in the metric envelope, ``OP`` one of ``< <= > >= == !=``,
times in seconds, ``s`` optional)::

    COND := FIELD OP NUMBER [and COND]
    FIELD OP NUMBER always                       # also: always COND
    COND is followed by COND within N s          # response: after the first, the
                                                 # second within N s of event time
    eventually COND within N s                   # COND holds at least every N s
    COND until COND [within N s]                 # once the first holds, it keeps
                                                 # holding until the second does

A monitor is driven by the samples alone (event time), so a source that goes silent
raises nothing until its next sample; a deadline is judged at the first sample past it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import partial
from typing import Any

from kestrel.errors import KestrelError

Row = Mapping[str, float | None]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COMPARISON = re.compile(rf"^\s*([A-Za-z0-9_.:-]{{1,64}})\s*(<=|>=|==|!=|<|>)\s*({_NUMBER})\s*$")
_WITHIN = rf"\s+within\s+({_NUMBER})\s*s?"
_FORMS = [
    ("followed", re.compile(rf"^(.+?)\s+is\s+followed\s+by\s+(.+?){_WITHIN}$")),
    ("eventually", re.compile(rf"^eventually\s+(.+?){_WITHIN}$")),
    ("until", re.compile(rf"^(.+?)\s+until\s+(.+?)(?:{_WITHIN})?$")),
    ("always", re.compile(r"^always\s+(.+)$")),
    ("always", re.compile(r"^(.+?)\s+always$")),
]


class RuleError(KestrelError, ValueError):
    """A rule's text does not parse; the message shows the grammar's forms."""


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Condition:
    """Comparisons joined by ``and``."""

    terms: tuple[Comparison, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(term.field for term in self.terms)

    def __call__(self, row: Row) -> bool | None:
        """True or False, or None when a field it needs is missing or null."""
        for term in self.terms:
            value = row.get(term.field)
            if value is None:
                return None
            if not _OPS[term.op](value, term.threshold):
                return False
        return True

    def __str__(self) -> str:
        return " and ".join(str(term) for term in self.terms)


def parse_condition(text: str) -> Condition:
    terms = []
    for part in re.split(r"\s+and\s+", text.strip()):
        match = _COMPARISON.match(part)
        if match is None:
            raise RuleError(f"not a comparison: {part!r} (expected e.g. 'cpu_percent > 90')")
        name, op, number = match.groups()
        terms.append(Comparison(name, op, float(number)))
    return Condition(tuple(terms))


@dataclass
class Verdict:
    """The rule's state after one sample: holds or not, with what shows it."""

    ok: bool
    field: str
    value: float | None
    evidence: dict[str, Any] = dataclass_field(default_factory=dict)
    #: The obligation is met for good (a response came, a release came): an alert
    #: ends now, without waiting for the condition to hold a while.
    settles: bool = False


class Monitor:
    """One rule's state for one source."""

    kind = ""
    text = ""
    #: The attributes that change as samples come: what a restart must get back.
    state_fields: tuple[str, ...] = ()

    def step(self, t_ms: int, row: Row) -> Verdict | None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.state_fields}

    def restore(self, state: Mapping[str, Any]) -> None:
        for name in self.state_fields:
            if name in state:
                setattr(self, name, state[name])

    def _verdict(
        self, ok: bool, cond: Condition, row: Row, settles: bool = False, **evidence: Any
    ) -> Verdict:
        name = cond.fields[0]
        return Verdict(ok, name, row.get(name), {"condition": str(cond), **evidence}, settles)


@dataclass
class Always(Monitor):
    cond: Condition
    kind = "always"

    def step(self, t_ms: int, row: Row) -> Verdict | None:
        holds = self.cond(row)
        return None if holds is None else self._verdict(holds, self.cond, row)


@dataclass
class FollowedBy(Monitor):
    """``trigger`` is followed by ``response`` within ``within_ms``."""

    trigger: Condition
    response: Condition
    within_ms: int
    kind = "followed_by"
    state_fields = ("pending_since", "trigger_value")
    pending_since: int | None = None
    trigger_value: float | None = None

    def step(self, t_ms: int, row: Row) -> Verdict | None:
        if self.pending_since is not None:
            answered = self.response(row)
            late = t_ms - self.pending_since > self.within_ms
            if answered:
                since, self.pending_since = self.pending_since, None
                return self._verdict(True, self.response, row, True, triggered_at_ms=since)
            if late:
                return self._verdict(
                    False,
                    self.response,
                    row,
                    triggered_at_ms=self.pending_since,
                    trigger_value=self.trigger_value,
                    deadline_ms=self.pending_since + self.within_ms,
                )
            return None
        if self.trigger(row):
            self.pending_since = t_ms
            self.trigger_value = row.get(self.trigger.fields[0])
        return None


@dataclass
class Eventually(Monitor):
    """``cond`` holds at least once in every ``within_ms``."""

    cond: Condition
    within_ms: int
    kind = "eventually"
    state_fields = ("last_held",)
    last_held: int | None = None

    def step(self, t_ms: int, row: Row) -> Verdict | None:
        holds = self.cond(row)
        if holds:
            self.last_held = t_ms
            return self._verdict(True, self.cond, row, True)
        if self.last_held is None:
            self.last_held = t_ms  # the clock starts at the source's first sample
            return None
        if t_ms - self.last_held > self.within_ms:
            return self._verdict(False, self.cond, row, last_held_ms=self.last_held)
        return None


@dataclass
class Until(Monitor):
    """Once ``hold`` holds, it keeps holding until ``release`` does (within ``within_ms``)."""

    hold: Condition
    release: Condition
    within_ms: int | None
    kind = "until"
    state_fields = ("armed_since",)
    armed_since: int | None = None

    def step(self, t_ms: int, row: Row) -> Verdict | None:
        if self.release(row):
            was, self.armed_since = self.armed_since, None
            return self._verdict(True, self.release, row, True, armed_at_ms=was)
        holds = self.hold(row)
        if self.armed_since is None:
            if holds:
                self.armed_since = t_ms
            return None
        if holds is False:
            return self._verdict(False, self.hold, row, armed_at_ms=self.armed_since)
        if self.within_ms is not None and t_ms - self.armed_since > self.within_ms:
            return self._verdict(
                False,
                self.release,
                row,
                armed_at_ms=self.armed_since,
                deadline_ms=self.armed_since + self.within_ms,
            )
        return None if holds is None else self._verdict(True, self.hold, row)


@dataclass(frozen=True)
class RuleSpec:
    """A parsed rule; :meth:`monitor` makes a fresh state for one source."""

    text: str
    kind: str
    make: Callable[[], Monitor]
    fields: tuple[str, ...]

    def monitor(self) -> Monitor:
        made = self.make()
        made.text = self.text
        return made


def parse_rule(text: str) -> RuleSpec:
    """Parse one rule; :class:`RuleError` names the forms it accepts."""
    line = " ".join(text.split())
    for kind, pattern in _FORMS:
        match = pattern.match(line)
        if match is None:
            continue
        groups = match.groups()
        if kind == "always":
            cond = parse_condition(groups[0])
            return RuleSpec(line, kind, partial(Always, cond), cond.fields)
        if kind == "followed":
            a, b = parse_condition(groups[0]), parse_condition(groups[1])
            within = _ms(groups[2])
            return RuleSpec(
                line, "followed_by", partial(FollowedBy, a, b, within), a.fields + b.fields
            )
        if kind == "eventually":
            cond, within = parse_condition(groups[0]), _ms(groups[1])
            return RuleSpec(line, kind, partial(Eventually, cond, within), cond.fields)
        hold, release = parse_condition(groups[0]), parse_condition(groups[1])
        bound = None if groups[2] is None else _ms(groups[2])
        return RuleSpec(
            line, kind, partial(Until, hold, release, bound), hold.fields + release.fields
        )
    raise RuleError(
        f"cannot parse rule {text!r}; the forms are 'COND always', 'always COND', "
        "'COND is followed by COND within N s', 'eventually COND within N s' and "
        "'COND until COND [within N s]', COND being e.g. 'cpu_percent > 90 [and ...]'"
    )


def _ms(seconds: str) -> int:
    return round(float(seconds) * 1000)
