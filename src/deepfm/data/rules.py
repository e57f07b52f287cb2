"""Row rules: ``column <op> number``, the one grammar of labels, filters and checks.

A spec's label rule (``label: rating > 3``) turns a column into 0/1; its filter rules
(``filter: rating != 3``) keep the rows for which every rule holds; its checks (``checks:
[rating >= 1, rating <= 5]``) make a row that breaks one a bad row (named by file, line and
column). Preparing data, reading files for ``deepfm predict`` / ``deepfm evaluate`` and ``deepfm
evaluate --label`` all evaluate rules here.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
RULE = re.compile(r"^\s*(?:(?P<column>[A-Za-z_][\w.-]*)\s*)?(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>\S+)\s*$")
COLUMN = re.compile(r"[A-Za-z_][\w.-]*")


@dataclass(frozen=True)
class Rule:
    """``column op value``: holds for a row whose column's number compares so with ``value``."""

    column: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"

    def holds(self, values: Any) -> np.ndarray:
        """Where the rule holds for ``values`` (numbers; NaN never satisfies it, except ``!=``)."""
        with np.errstate(invalid="ignore"):
            return np.asarray(OPS[self.op](np.asarray(values, dtype=np.float64), self.value), dtype=bool)


def parse_rule(text: str, column: str | None = None) -> Rule:
    """``"rating > 3"`` (or ``"> 3"`` with ``column`` given) -> :class:`Rule`; ``ValueError`` says why."""
    match = RULE.match(text) if isinstance(text, str) else None
    if not match or (match["column"] is None and column is None):
        raise ValueError(f"expected a rule like 'rating > 3', got {text!r}")
    try:
        value = float(match["value"])
    except ValueError:
        raise ValueError(f"{match['value']!r} is not a number") from None
    return Rule(match["column"] or column or "", match["op"], value)
