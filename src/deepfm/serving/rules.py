"""Each field's exact encoding rule, as data: what an exported model's caller must compute.

An exported graph takes encoded inputs (``ids`` / ``bags`` / ``dense``). :func:`field_rule` states,
for one field of the feature map, how a raw value becomes its column of those inputs, in terms
another runtime can follow without deepfm: how the value is read (:data:`READ`), the regular
expression applied first (``pattern``), the transform with its fitted statistics, and how the
result is looked up (a vocabulary, a hash, or used as a float). ``docs/serving.md`` holds a
reference encoder that follows these rules alone; a test holds it to ``deepfm predict``.
"""

from __future__ import annotations

from typing import Any

from deepfm.data.features import Field
from deepfm.data.hashing import HASH_NAME
from deepfm.data.transforms import MISSING

# How a raw value is read before its transform (``read`` in a rule).
READ = {
    "text": 'the value as text: null or NaN -> "", true/false -> "true"/"false", an integer or a float '
    'holding an integer -> its digits (6.0 -> "6"), another float -> its shortest text (0.5 -> "0.5"), '
    "text as it is",
    "number": 'the value as a number: a number, or text holding one; null, "" and NaN are missing',
    "integer": 'the value as a number holding an integer (42, 42.0 and "42" are 42); anything else is unseen',
    "list": "a list of values, or text cut at the separator with empty parts dropped; null -> []; each part "
    "as text, at most max_len parts kept",
}

BUCKETS = ("log2bucket", "quantile", "bucket", "hour_of_day", "weekday")  # number -> integer token
TRANSFORM_TEXT = {
    "log2bucket": "token = floor(ln(x)^2) if x > 2 else floor(x)",
    "quantile": "token = number of edges <= x (edges ascending)",
    "bucket": "token = number of edges <= x (edges ascending)",
    "hour_of_day": "token = hour of day (0-23) of x",
    "weekday": "token = weekday of x (Monday = 0)",
}
TIME_TEXT = {
    "yymmddhh": "x is a YYMMDDHH integer (year 2000 + YY)",
    "unix": "x is unix seconds (UTC)",
}


def field_rule(f: Field, table_key: str | None = None) -> dict[str, Any]:
    """The rule of field ``f``: JSON-able, with a one-line ``rule`` text saying the same."""
    transform = dict(f.transform or {})
    kind = transform.get("type")
    rule: dict[str, Any] = {"name": f.name, "kind": f.kind, "column": f.source}
    if table_key:
        rule["table"] = table_key
    pattern = transform.get("pattern")
    if pattern:
        rule["pattern"] = pattern
    source = f"{f.source}" if not pattern else f"the match of pattern in text({f.source})"
    if f.kind == "numeric":
        rule["read"] = "number"
        if kind == "standardize":
            rule["transform"] = {"type": "standardize", "mean": transform["mean"], "std": transform["std"]}
            text = f"(x - {transform['mean']!r}) / {transform['std']!r}"
        else:
            text = "x"
        rule["rule"] = f"dense = {text} where x = {source} as a number; missing -> 0"
        return rule
    if f.kind == "multi":
        rule |= {"read": "list", "lookup": "vocab", "offset": f.offset, "max_len": f.max_len}
        rule["pooling"] = f.pooling
        if kind == "split":
            rule["separator"] = transform["sep"]
        rule["rule"] = (
            f"bags = up to {f.max_len} rows, one per part of {source}: {f.offset} + 1 + its position in "
            f"vocab, else {f.offset} (unseen); 0 pads"
        )
        return rule
    if f.hash_buckets:
        rule |= {"read": "text", "lookup": "hash", "offset": f.offset, "hash_buckets": f.hash_buckets}
        rule["hash"] = HASH_NAME
        rule["rule"] = f"ids = {f.offset} + 1 + xxh64(text({source}) as UTF-8, seed 0) % {f.hash_buckets}"
        return rule
    rule |= {"lookup": "vocab", "offset": f.offset}
    if kind in BUCKETS:
        rule["read"] = "number"
        rule["transform"] = {k: v for k, v in transform.items() if k not in ("column", "pattern")}
        rule["missing_token"] = MISSING
        time = f"; {TIME_TEXT[transform.get('time_format', 'yymmddhh')]}" if kind in TIME_TEXT else ""
        rule["rule"] = (
            f"ids = {f.offset} + 1 + position of the token in vocab, else {f.offset} (unseen), where "
            f"x = {source} as a number, {TRANSFORM_TEXT[kind]}{time}; a missing x has the token "
            f"{MISSING} (-2**62)"
        )
        return rule
    rule["read"] = _vocab_read(f.vocab)
    rule["rule"] = (
        f"ids = {f.offset} + 1 + position of {rule['read']}({source}) in vocab, else {f.offset} (unseen)"
    )
    return rule


def _vocab_read(vocab: list[Any]) -> str:
    """``text`` for a vocabulary of text (every field the prepare stage counts), ``integer`` for
    one of integers (feature maps fitted on frames by earlier versions), else ``number``."""
    if all(isinstance(v, str) for v in vocab):
        return "text"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in vocab):
        return "integer"
    return "number"
