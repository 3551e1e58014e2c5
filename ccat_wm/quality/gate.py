"""A step's quality gate: rules over its run's metrics, and the decision they make.

A gate is a list of rules, `{metric, operator, value}`, all of which a run's metrics
must pass (`ccat_wm.quality.metrics`). The operators are those of filter rules (`eq`,
`neq`, `lt`, `lte`, `gt`, `gte`, `in`, `not_in`), and the shorter spellings `ne`, `le`
and `ge` mean `neq`, `lte` and `gte`. A run without a metric its gate names fails that
rule, and the decision says the metric is missing. The decision is data: it names every
rule, the value seen and whether it passed, so that a person reads why a scan was left
out without opening its files.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, field_validator, model_validator


class QaOperator(enum.StrEnum):
    """How a rule compares a metric with its value."""

    EQ = "eq"
    NEQ = "neq"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    IN = "in"
    NOT_IN = "not_in"


SPELLINGS = {"ne": QaOperator.NEQ, "le": QaOperator.LTE, "ge": QaOperator.GTE}
"""Other spellings of operators, as comparisons are often written."""
LIST_OPERATORS = frozenset({QaOperator.IN, QaOperator.NOT_IN})
SYMBOLS = {
    QaOperator.EQ: "==", QaOperator.NEQ: "!=", QaOperator.LT: "<", QaOperator.LTE: "<=",
    QaOperator.GT: ">", QaOperator.GTE: ">=", QaOperator.IN: "in", QaOperator.NOT_IN: "not in",
}  # fmt: skip
_COMPARE: dict[QaOperator, Callable[[float, float], bool]] = {
    QaOperator.EQ: operator.eq,
    QaOperator.NEQ: operator.ne,
    QaOperator.LT: operator.lt,
    QaOperator.LTE: operator.le,
    QaOperator.GT: operator.gt,
    QaOperator.GTE: operator.ge,
}


class QaRule(BaseModel):
    """One rule of a gate: `metric operator value` must hold for the run's metric."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    operator: QaOperator
    value: float | tuple[float, ...]

    @field_validator("operator", mode="before")
    @classmethod
    def _spelling(cls, value: object) -> object:
        return SPELLINGS.get(value, value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _value_fits_operator(self) -> QaRule:
        listed = isinstance(self.value, tuple)
        if self.operator in LIST_OPERATORS and not listed:
            raise ValueError(f"operator {self.operator.value!r} takes a list of numbers")
        if self.operator not in LIST_OPERATORS and listed:
            raise ValueError(f"operator {self.operator.value!r} takes one number, not a list")
        return self

    def holds(self, value: float) -> bool:
        """Return whether a metric's value passes this rule."""
        if isinstance(self.value, tuple):
            return (value in self.value) is (self.operator is QaOperator.IN)
        return _COMPARE[self.operator](value, self.value)

    def describe(self) -> str:
        """Return the rule as a person writes it: `tsys_k < 400`."""
        if isinstance(self.value, tuple):
            shown = "[" + ", ".join(f"{v:g}" for v in self.value) + "]"
        else:
            shown = f"{self.value:g}"
        return f"{self.metric} {SYMBOLS[self.operator]} {shown}"


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """One rule held against a run: the value seen (None: not reported) and the verdict."""

    rule: QaRule
    value: float | None
    passed: bool

    def describe(self) -> str:
        """Return `tsys_k = 2000 (needs tsys_k < 400)` or `rms_k missing (...)`."""
        seen = "missing" if self.value is None else f"= {self.value:g}"
        return f"{self.rule.metric} {seen} (needs {self.rule.describe()})"


@dataclass(frozen=True, slots=True)
class GateDecision:
    """What a gate decided for one run: accepted when every rule passed."""

    outcomes: tuple[RuleOutcome, ...]

    @property
    def accepted(self) -> bool:
        """True when every rule passed (a gate without rules accepts every run)."""
        return all(o.passed for o in self.outcomes)

    @property
    def failing(self) -> tuple[RuleOutcome, ...]:
        """The rules that did not pass, in the gate's order."""
        return tuple(o for o in self.outcomes if not o.passed)

    def message(self) -> str:
        """Return one line: `accepted`, or `rejected: tsys_k = 2000 (needs tsys_k < 400)`."""
        if self.accepted:
            return "accepted"
        return "rejected: " + "; ".join(o.describe() for o in self.failing)


def evaluate_gate(rules: Sequence[QaRule], metrics: Mapping[str, float]) -> GateDecision:
    """Hold a run's metrics to a gate's rules; a metric the run did not report fails."""
    outcomes = []
    for rule in rules:
        value = metrics.get(rule.metric)
        outcomes.append(RuleOutcome(rule, value, value is not None and rule.holds(value)))
    return GateDecision(tuple(outcomes))
