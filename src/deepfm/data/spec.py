"""Dataset spec files: a declared schema (inputs, label, fields, split) parsed into dataclasses.

A spec is a YAML (or TOML) mapping; see ``docs/data-specs.md`` for the full reference. Every
problem is reported as a :class:`ConfigError` naming the spec file and the key, e.g.
``my.yaml: fields[2].transform: must be one of ['log2bucket', 'quantile', 'standardize']``.
Relative input paths are resolved against the spec file's folder.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import yaml

from deepfm.data import yamltext
from deepfm.data.rules import RULE, Rule, parse_rule
from deepfm.errors import ConfigError

FORMATS = ("csv", "tsv", "parquet", "libsvm", "libfm")
KINDS = ("categorical", "numeric", "multi")
NUMERIC_TRANSFORMS = ("log2bucket", "quantile", "standardize", "bucket")
CATEGORICAL_TRANSFORMS = ("hour_of_day", "weekday")
TIME_TRANSFORMS = CATEGORICAL_TRANSFORMS  # read their column as numbers (unix seconds or YYMMDDHH)
TIME_FORMATS = ("yymmddhh", "unix")
SPLIT_METHODS = ("random", "time", "files", "leave_last")
POOLINGS = ("mean", "sum")
ROLES = ("user", "item")
DEFAULT_USER = "user_id"  # the user field when a spec names none (gAUC's default group)
POSITION = re.compile(r"@(\d+)")  # libsvm: the N-th feature token of a row
# libsvm: the tokens of "features" whose index lies in [lo, hi) (a field's ``index_range``)
RANGE = re.compile(r"features\[(\d+):(\d+)\]")
PARTS = ("train", "valid", "test")
_LABEL_RULE = RULE  # a label rule, as filters and checks: column <op> number


MAX_HASH_BUCKETS = 2**31  # the most rows a hashed field's table may have


@dataclass
class InputSpec:
    """Where the rows are and how to read them."""

    files: list[str] = field(default_factory=list)  # paths or globs (.gz allowed for text formats)
    format: str = "csv"
    header: bool = True  # csv/tsv: the first line names the columns
    columns: list[str] = field(default_factory=list)  # csv/tsv without header: the names, in order
    separator: str | None = None  # csv/tsv: default "," or "\t"; several characters ("::") read unquoted
    encoding: str = "utf-8"  # csv/tsv/libsvm text encoding (e.g. "latin-1")


@dataclass
class LabelSpec:
    """The label column and how it becomes 0/1: ``value <op> threshold`` (default ``> 0``)."""

    column: str = "label"
    op: str = ">"
    value: float = 0.0
    declared: bool = False  # the spec states the rule; otherwise the values must already be 0/1

    @property
    def rule(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"

    def as_rule(self) -> Rule:
        """The rule that makes a row's label 1 (``label > 0`` when none is declared)."""
        return Rule(self.column, self.op, self.value)


@dataclass
class FieldSpec:
    """One model field read from one input column."""

    name: str
    column: str = ""  # source column (default: the field's name)
    kind: str = "categorical"  # categorical | numeric | multi
    transform: str | None = None  # numeric: log2bucket | quantile | standardize; categorical: hour_of_day...
    min_count: int | None = None  # categorical / multi / log2bucket: rarer values go to the OOV row
    buckets: int = 10  # quantile: number of buckets
    separator: str = "|"  # multi: separator inside the cell
    max_len: int | None = None  # multi: values kept per row (default: the longest seen in training)
    time_format: str = "yymmddhh"  # hour_of_day / weekday: "yymmddhh" (Avazu) or "unix" seconds
    hash_buckets: int | None = None  # categorical: hash values into this many rows (no vocabulary)
    max_vocab: int | None = None  # categorical / multi: keep only the N most frequent values
    # multi: "mean" (one averaged vector) or "sum" (every element a feature of its own in the
    # linear and FM terms, libFM's definition); default "sum" for libsvm/libfm files, else "mean"
    pooling: str = "mean"
    # libsvm: [lo, hi), the field is the tokens of column "features" with lo <= index < hi
    index_range: tuple[int, int] | None = None
    # a regular expression searched in the column's text; its first group (or the whole match) is
    # the value the field reads, no match = missing (e.g. the year of "Toy Story (1995)")
    pattern: str | None = None
    edges: list[float] | None = None  # numeric, transform bucket: ascending edges -> bucket numbers
    flags: list[str] | None = None  # multi: the names of these 0/1 columns that hold 1 (one-hot genres)

    @property
    def source(self) -> str:
        """The raw column read; for an ``index_range`` field the reader's ``features[lo:hi]``."""
        if self.index_range is not None:
            lo, hi = self.index_range
            return f"{self.column or 'features'}[{lo}:{hi}]"
        return self.column or self.name

    @property
    def model_kind(self) -> str:
        """The :class:`~deepfm.data.features.Field` kind this field becomes."""
        if self.kind == "multi":
            return "multi"
        if self.kind == "numeric" and self.transform == "standardize":
            return "numeric"
        return "categorical"


@dataclass
class TableSpec:
    """A side table joined onto every row by its ``key`` column (e.g. movies by ``movie_id``).

    Its columns can be read by fields like the rows' own; a trained model keeps the table, so a
    caller sends only the key. Values are text; a key seen twice keeps its first row."""

    key: str
    input: InputSpec


@dataclass
class SplitSpec:
    """How rows become train / valid / test."""

    method: str = "random"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int | None = None  # random: default is the run's --seed
    column: str | None = None  # time: the (numeric) time column; earliest rows train, latest test
    files: dict[str, list[str]] = field(default_factory=dict)  # files: part -> paths or globs
    group: str | None = None  # leave_last: the user column; its latest row is test, the one before valid
    time: str | None = None  # leave_last: the (numeric) time column ordering each group's rows
    item: str | None = None  # leave_last: the item field ranked by HitRate@K / NDCG@K


@dataclass
class DatasetSpec:
    name: str
    input: InputSpec
    label: LabelSpec
    fields: list[FieldSpec]
    split: SplitSpec = field(default_factory=SplitSpec)
    min_count: int = 1  # default for fields that do not set their own
    source: str = "<spec>"  # where the spec came from (file path or built-in name), for messages
    base_dir: str = "."  # relative input paths are resolved against this folder
    tables: list[TableSpec] = field(default_factory=list)  # side tables joined by key
    filter: list[Rule] = field(default_factory=list)  # rows kept: every rule holds
    checks: list[Rule] = field(default_factory=list)  # a row breaking one is a bad row
    roles: dict[str, str] = field(default_factory=dict)  # "user" / "item" field names

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        data.pop("base_dir")
        data["split"]["ratios"] = list(self.split.ratios)
        for f in data["fields"]:
            if f["kind"] != "multi":
                del f["pooling"]  # only bags are pooled
            if f["index_range"] is None:
                del f["index_range"]
            else:
                f["index_range"] = list(f["index_range"])
            for key in ("pattern", "edges", "flags"):
                if f[key] is None:
                    del f[key]
        for key in ("tables", "filter", "checks", "roles"):
            if not data[key]:
                del data[key]
        if self.filter:
            data["filter"] = [str(r) for r in self.filter]
        if self.checks:
            data["checks"] = [str(r) for r in self.checks]
        return data

    def user_item(self) -> tuple[str | None, str | None]:
        """The user and item fields: declared ``roles``, else a leave_last split's group and
        item (its first other categorical field when unnamed); a categorical field named
        ``user_id`` is the user when nothing else says."""
        user, item = self.roles.get("user"), self.roles.get("item")
        categorical = [f.name for f in self.fields if f.model_kind == "categorical"]
        if user is None and DEFAULT_USER in categorical and self.split.method != "leave_last":
            user = DEFAULT_USER
        if self.split.method == "leave_last":
            user = user or self.split.group
            others = [f.name for f in self.fields if f.model_kind == "categorical" and f.name != user]
            item = item or self.split.item or (others[0] if others else None)
        return user, item

    def table_of(self, column: str) -> TableSpec | None:
        """The side table a column comes from (None: the rows themselves)."""
        for table in self.tables:
            if column != table.key and column in table.input.columns:
                return table
        return None

    def index_ranges(self) -> dict[str, FieldSpec]:
        """The ``index_range`` fields by the column the reader makes of each (``features[lo:hi]``)."""
        return {f.source: f for f in self.fields if f.index_range is not None}

    def to_yaml_dict(self) -> dict[str, Any]:
        """A mapping :func:`spec_from_dict` reads back into this spec (unset keys left out)."""
        data = self.to_dict()
        data["label"] = self.label.rule if self.label.declared else self.label.column  # 0/1, checked
        data["split"] = {k: v for k, v in data["split"].items() if v not in (None, {})}
        data["input"] = _input_yaml(data["input"])
        data["input"]["files"] = list(self.input.files)
        data["fields"] = [
            {k: v for k, v in f.items() if v is not None and v != "" and (k, v) != ("kind", "categorical")}
            for f in data["fields"]
        ]
        for table in data.get("tables", []):
            table["input"] = _input_yaml(table["input"])
        if len(self.filter) == 1:
            data["filter"] = str(self.filter[0])
        return data

    def input_files(self) -> dict[str, list[Path]]:
        """Resolved input files: ``{"all": [...]}``, or one list per part for a ``files`` split."""
        if self.split.method == "files":
            return {part: self._resolve(self.split.files[part], f"split.files.{part}") for part in PARTS}
        return {"all": self._resolve(self.input.files, "input.files")}

    def table_files(self) -> dict[str, list[Path]]:
        """Resolved files of every side table, by key."""
        return {
            t.key: self._resolve(t.input.files, f"tables[{i}].input.files") for i, t in enumerate(self.tables)
        }

    def _resolve(self, patterns: list[str], key: str) -> list[Path]:
        found: list[Path] = []
        for pattern in patterns:
            path = Path(pattern).expanduser()
            if not path.is_absolute():
                path = Path(self.base_dir) / path
            matches = sorted(Path(p) for p in glob.glob(str(path))) if glob.has_magic(str(path)) else [path]
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise ConfigError(f"{self.source}: {key}: no file matches {str(path)!r}")
            found.extend(matches)
        return found


def load_spec(path: str | Path) -> DatasetSpec:
    """Read and validate a YAML or TOML spec file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"spec file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"spec file {path} is a folder") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yamltext.load(text)
    except yaml.YAMLError as exc:  # one line: where and what, not PyYAML's multi-line report
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({' '.join(str(exc).split())})") from None
    return spec_from_dict(data, source=str(path), base_dir=path.resolve().parent)


def spec_from_dict(data: Any, source: str = "<spec>", base_dir: str | Path = ".") -> DatasetSpec:
    """Build a :class:`DatasetSpec` from a parsed mapping; errors name ``source`` and the key."""
    r = _Reader(source)
    data = r.mapping(data, "")
    r.known(
        data,
        "",
        {"name", "input", "label", "fields", "split", "min_count", "tables", "filter", "checks", "roles"},
    )
    name = r.typed(data.get("name", Path(source).stem), "name", str)

    inp = _input(r, r.required(data, "input", ""), "input")
    fmt = inp.format
    tables = _tables(r, data.get("tables"))

    label = _label(r, data.get("label", "label"))
    raw_fields = r.required(data, "fields", "")
    if raw_fields == "auto":
        if fmt != "libsvm":
            r.fail("fields", "'auto' (one field per token position) is for libsvm files only")
        raw_fields = _positional_fields(r, data, Path(base_dir))
    if not isinstance(raw_fields, list) or not raw_fields:
        r.fail("fields", "must be a non-empty list of fields")
    fields = [_field(r, f, f"fields[{i}]", fmt) for i, f in enumerate(raw_fields)]
    table_columns = {c for t in tables for c in t.input.columns}
    seen: set[str] = set()
    for i, f in enumerate(fields):
        if f.name in seen:
            r.fail(f"fields[{i}].name", f"duplicate field name {f.name!r}")
        seen.add(f.name)
        if f.source == label.column:
            r.fail(f"fields[{i}]", f"column {f.source!r} is the label")
    _check_index_ranges(r, fields, fmt)
    if inp.columns:
        for i, f in enumerate(fields):
            for source in f.flags or [f.source]:
                if source not in inp.columns and source not in table_columns and fmt in ("csv", "tsv"):
                    where = " nor of a table's columns" if tables else ""
                    r.fail(f"fields[{i}].column", f"{source!r} is not one of input.columns{where}")
        if label.column not in inp.columns and fmt in ("csv", "tsv"):
            r.fail("label", f"{label.column!r} is not one of input.columns")

    if fmt in ("libsvm", "libfm"):
        if label.column != "label":
            r.fail("label", f"{fmt} files have their label in the first token; use label: label")
        for i, f in enumerate(fields):
            readable = f.source == "features" or POSITION.fullmatch(f.source)
            if fmt == "libsvm" and f.index_range is None and not readable:
                r.fail(
                    f"fields[{i}].column",
                    "a libsvm file has the column 'features' (all tokens) and '@N' (the N-th token); "
                    "a field of index_range takes the tokens of 'features' in that range",
                )
    split = _split(r, data.get("split", {}))
    if split.method != "files" and not inp.files:
        r.fail("input.files", "list the input files (or use split.method: files)")
    min_count = r.typed(data.get("min_count", 1), "min_count", int)
    if min_count < 1:
        r.fail("min_count", f"must be >= 1, got {min_count}")
    filters = _rules(r, data.get("filter"), "filter")
    checks = _rules(r, data.get("checks"), "checks")
    for key, rules in (("filter", filters), ("checks", checks)):
        for i, rule in enumerate(rules):
            if inp.columns and fmt in ("csv", "tsv") and rule.column not in inp.columns:
                r.fail(f"{key}[{i}]", f"{rule.column!r} is not one of input.columns")
    for t in tables:
        if inp.columns and fmt in ("csv", "tsv") and t.key not in inp.columns:
            r.fail("tables", f"key {t.key!r} is not one of input.columns (the rows are joined on it)")
    _check_patterns(r, fields, label, filters + checks, split)
    spec = DatasetSpec(
        name, inp, label, fields, split, min_count, source, str(base_dir), tables, filters, checks
    )
    spec.roles = _roles(r, data.get("roles"), fields)
    return spec


def _input(r: _Reader, raw: Any, key: str) -> InputSpec:
    raw = r.mapping(raw, key)
    r.known(raw, key, {"files", "format", "header", "columns", "separator", "encoding"})
    fmt = r.choice(raw.get("format", "csv"), f"{key}.format", FORMATS)
    inp = InputSpec(
        files=r.str_list(raw.get("files", []), f"{key}.files"),
        format=fmt,
        header=r.typed(raw.get("header", fmt in ("csv", "tsv")), f"{key}.header", bool),
        columns=r.str_list(raw.get("columns", []), f"{key}.columns"),
        separator=r.typed(raw.get("separator"), f"{key}.separator", str, optional=True),
        encoding=r.typed(raw.get("encoding", "utf-8"), f"{key}.encoding", str),
    )
    if fmt in ("csv", "tsv") and not inp.header and not inp.columns:
        r.fail(f"{key}.columns", "a csv/tsv file without header needs the list of column names")
    if inp.separator is not None and (not inp.separator or "\n" in inp.separator or '"' in inp.separator):
        r.fail(
            f"{key}.separator",
            f"must be one or more characters other than newline and quote, got {inp.separator!r}",
        )
    try:
        codecs.lookup(inp.encoding)
    except LookupError:
        r.fail(f"{key}.encoding", f"unknown text encoding {inp.encoding!r} (e.g. utf-8, latin-1)")
    return inp


def _tables(r: _Reader, raw: Any) -> list[TableSpec]:
    """``tables``: side tables, each ``{key: COLUMN, input: {...}}`` with the table's columns known
    (``input.columns``, also for files with a header) and the key among them."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        r.fail("tables", "must be a list of {key: COLUMN, input: {files, format, columns, ...}}")
    tables = []
    for i, item in enumerate(raw):
        key = f"tables[{i}]"
        item = r.mapping(item, key)
        r.known(item, key, {"key", "input"})
        column = r.typed(r.required(item, "key", key), f"{key}.key", str)
        inp = _input(r, r.required(item, "input", key), f"{key}.input")
        if inp.format not in ("csv", "tsv", "parquet"):
            r.fail(f"{key}.input.format", "a side table is csv, tsv or parquet")
        if not inp.columns:
            r.fail(f"{key}.input.columns", "list the table's columns (the key and the ones fields read)")
        if column not in inp.columns:
            r.fail(f"{key}.key", f"{column!r} is not one of the table's columns {inp.columns}")
        if not inp.files:
            r.fail(f"{key}.input.files", "list the table's files")
        tables.append(TableSpec(column, inp))
    keys = [t.key for t in tables]
    if len(set(keys)) != len(keys):
        r.fail("tables", f"two tables share a key column: {keys}")
    return tables


def _rules(r: _Reader, raw: Any, key: str) -> list[Rule]:
    """``filter`` / ``checks``: one rule or a list, each ``column <op> number``."""
    if raw is None:
        return []
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        r.fail(key, "expected a rule like 'rating != 3' or a list of them")
    rules = []
    for i, text in enumerate(items):
        try:
            rules.append(parse_rule(text))
        except ValueError as exc:
            r.fail(f"{key}[{i}]" if isinstance(raw, list) else key, str(exc))
    return rules


def _roles(r: _Reader, raw: Any, fields: list[FieldSpec]) -> dict[str, str]:
    """``roles: {user: FIELD, item: FIELD}``: which categorical fields are the user and the item
    (recommendations, ranking metrics, the default gAUC group)."""
    raw = r.mapping(raw, "roles")
    r.known(raw, "roles", set(ROLES))
    categorical = [f.name for f in fields if f.model_kind == "categorical"]
    roles = {}
    for role, name in raw.items():
        name = r.typed(name, f"roles.{role}", str)
        if name not in categorical:
            r.fail(f"roles.{role}", f"{name!r} is not a categorical field; those are {categorical}")
        roles[role] = name
    return roles


def _check_patterns(
    r: _Reader, fields: list[FieldSpec], label: LabelSpec, rules: list[Rule], split: Any
) -> None:
    """A column read as text by a ``pattern`` field cannot also be read as a number."""
    numbers = {label.column, *(rule.column for rule in rules)}
    numbers |= {
        f.source
        for f in fields
        if f.pattern is None and (f.kind == "numeric" or f.transform in TIME_TRANSFORMS)
    }
    numbers |= {c for c in (split.column, split.time) if c}
    for i, f in enumerate(fields):
        if f.pattern is not None and f.source in numbers:
            r.fail(
                f"fields[{i}].pattern",
                f"column {f.source!r} is read as a number elsewhere; a pattern reads it as text",
            )


def _input_yaml(data: dict[str, Any]) -> dict[str, Any]:
    """An input section without the keys left at their defaults."""
    out = {k: v for k, v in data.items() if v not in (None, [])}
    if out.get("encoding") == "utf-8":
        del out["encoding"]
    return out


def _check_index_ranges(r: _Reader, fields: list[FieldSpec], fmt: str) -> None:
    """``index_range`` fields: libsvm only, of column ``features``, not overlapping one another,
    and not mixed with ``@N`` positional fields (two ways of splitting the same row)."""
    ranged = [(i, f) for i, f in enumerate(fields) if f.index_range is not None]
    if not ranged:
        return
    if fmt != "libsvm":
        r.fail(f"fields[{ranged[0][0]}].index_range", "is for libsvm files (their column 'features')")
    for i, f in ranged:
        if f.column != "features":
            r.fail(
                f"fields[{i}].column",
                f"an index_range field reads column 'features' (tokens by index), not {f.column!r}",
            )
    for i, f in enumerate(fields):
        if POSITION.fullmatch(f.source):
            r.fail(
                f"fields[{i}].column",
                f"{f.source!r} (a token position) cannot be combined with index_range fields; "
                "split the rows by position or by index range, not both",
            )
    ranged.sort(key=lambda p: p[1].index_range or (0, 0))
    for (i, a), (j, b) in zip(ranged, ranged[1:]):
        assert a.index_range is not None and b.index_range is not None
        if b.index_range[0] < a.index_range[1]:
            first, second = sorted([(i, a), (j, b)], key=lambda p: p[0])
            lo, hi = first[1].index_range or (0, 0)
            r.fail(
                f"fields[{second[0]}].index_range",
                f"{list(second[1].index_range or ())} overlaps [{lo}, {hi}) of field {first[1].name!r}",
            )


def _index_range(r: _Reader, raw: Any, key: str) -> tuple[int, int]:
    """A field's ``index_range``: two integers ``[lo, hi]`` with ``0 <= lo < hi`` (half-open)."""
    ok = (
        isinstance(raw, (list, tuple))
        and len(raw) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in raw)
    )
    if not ok:
        r.fail(key, f"expected two integers [lo, hi] (indices lo <= i < hi), got {raw!r}")
    lo, hi = raw
    if not 0 <= lo < hi:
        r.fail(key, f"expected 0 <= lo < hi, got [{lo}, {hi}]")
    return int(lo), int(hi)


def _positional_fields(r: _Reader, data: dict[str, Any], base_dir: Path) -> list[dict[str, Any]]:
    """``fields: auto``: one categorical field per token position (``@0``, ``@1``, ...) of a
    fixed-width libsvm file, as many as the first row of the first input file has."""
    split = data.get("split") or {}
    files = (split.get("files") or {}).get("train") if isinstance(split, dict) else None
    patterns = files or (data.get("input") or {}).get("files") or []
    patterns = [patterns] if isinstance(patterns, str) else patterns
    paths = [
        p
        for pattern in patterns
        for p in sorted(glob.glob(str(base_dir / Path(pattern).expanduser())))
        if Path(p).is_file()
    ]
    if not paths:
        r.fail("fields", "'auto' reads the first row of the first input file, and no input file was found")
    opener = gzip.open if paths[0].endswith(".gz") else open
    with opener(paths[0], "rt", encoding="utf-8", errors="replace") as f:
        first = f.readline().split()
    if len(first) < 2:
        r.fail("fields", f"'auto': the first row of {paths[0]} has no feature tokens")
    return [{"name": f"f{i}", "column": f"@{i}"} for i in range(len(first) - 1)]


def _label(r: _Reader, raw: Any) -> LabelSpec:
    if isinstance(raw, dict) and {"column", "op", "value"} <= set(raw):  # DatasetSpec.to_dict()'s form
        raw = f"{raw['column']} {raw['op']} {raw['value']}" if raw.get("declared", True) else raw["column"]
    if isinstance(raw, str):
        match = _LABEL_RULE.match(raw)
        if match:
            column = match["column"] or "label"
            return LabelSpec(column, match["op"], r.number(match["value"], "label"), declared=True)
        if re.fullmatch(r"[A-Za-z_][\w.-]*", raw):
            return LabelSpec(raw)
        r.fail("label", f"expected a column name or a rule like 'rating > 3', got {raw!r}")
    raw = r.mapping(raw, "label")
    r.known(raw, "label", {"column", "positive"})
    column = r.typed(raw.get("column", "label"), "label.column", str)
    positive = raw.get("positive", "> 0")
    match = _LABEL_RULE.match(str(positive))
    if not match or match["column"]:
        r.fail("label.positive", f"expected a rule like '> 3' or '== 1', got {positive!r}")
    value = r.number(match["value"], "label.positive")
    return LabelSpec(column, match["op"], value, declared="positive" in raw)


def _field(r: _Reader, raw: Any, key: str, fmt: str = "csv") -> FieldSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    raw = r.mapping(raw, key)
    r.known(
        raw,
        key,
        {
            "name",
            "column",
            "kind",
            "transform",
            "min_count",
            "buckets",
            "separator",
            "max_len",
            "time_format",
            "hash_buckets",
            "max_vocab",
            "pooling",
            "index_range",
            "pattern",
            "edges",
            "flags",
        },
    )
    name = r.typed(r.required(raw, "name", key), f"{key}.name", str)
    kind = r.choice(raw.get("kind", "categorical"), f"{key}.kind", KINDS + ("sequence",))
    kind = "multi" if kind == "sequence" else kind
    transform = raw.get("transform")
    if kind == "numeric":
        transform = r.choice(transform or "standardize", f"{key}.transform", NUMERIC_TRANSFORMS)
    elif kind == "categorical" and transform is not None:
        transform = r.choice(transform, f"{key}.transform", CATEGORICAL_TRANSFORMS)
    elif transform is not None:
        r.fail(f"{key}.transform", "multi-valued fields take no transform")
    column = raw.get("column", "")
    index_range = None
    if raw.get("index_range") is not None:
        index_range = _index_range(r, raw["index_range"], f"{key}.index_range")
        column = column or "features"
        if kind == "numeric" or transform is not None:
            r.fail(
                f"{key}.index_range", "an index range is a categorical or multi field, without a transform"
            )
    f = FieldSpec(
        name=name,
        column=r.typed(str(column) if isinstance(column, int) else column, f"{key}.column", str),
        kind=kind,
        transform=transform,
        min_count=r.typed(raw.get("min_count"), f"{key}.min_count", int, optional=True),
        buckets=r.typed(raw.get("buckets", 10), f"{key}.buckets", int),
        separator=r.typed(raw.get("separator", "|"), f"{key}.separator", str),
        max_len=r.typed(raw.get("max_len"), f"{key}.max_len", int, optional=True),
        time_format=r.choice(raw.get("time_format", "yymmddhh"), f"{key}.time_format", TIME_FORMATS),
        hash_buckets=r.typed(raw.get("hash_buckets"), f"{key}.hash_buckets", int, optional=True),
        max_vocab=r.typed(raw.get("max_vocab"), f"{key}.max_vocab", int, optional=True),
        pooling=r.choice(
            raw.get("pooling", "sum" if fmt in ("libsvm", "libfm") else "mean"), f"{key}.pooling", POOLINGS
        ),
        index_range=index_range,
        pattern=r.typed(raw.get("pattern"), f"{key}.pattern", str, optional=True),
    )
    if f.pattern is not None:
        try:
            groups = re.compile(f.pattern).groups
        except re.error as exc:
            r.fail(f"{key}.pattern", f"not a regular expression ({exc})")
        if groups > 1:
            r.fail(f"{key}.pattern", f"has {groups} groups; use one (the value) or none (the whole match)")
        if f.kind == "multi" or f.index_range is not None:
            r.fail(f"{key}.pattern", "a pattern reads one value a row (categorical or numeric fields)")
    if raw.get("flags") is not None:
        f.flags = r.str_list(raw["flags"], f"{key}.flags")
        if kind != "multi" or not f.flags:
            r.fail(f"{key}.flags", "a list of 0/1 columns makes a multi-valued field (kind: multi)")
        if raw.get("column") is not None:
            r.fail(f"{key}.column", "a field of flags reads its flag columns, not a column")
    if f.transform == "bucket":
        edges = raw.get("edges")
        ok = (
            isinstance(edges, list)
            and edges
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in edges)
        )
        if not ok:
            r.fail(f"{key}.edges", f"transform bucket needs edges: a list of numbers, got {edges!r}")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            r.fail(f"{key}.edges", f"must be strictly ascending, got {edges}")
        f.edges = [float(x) for x in edges]
    elif raw.get("edges") is not None:
        r.fail(f"{key}.edges", "only used with transform: bucket")
    if f.hash_buckets is not None:
        if f.hash_buckets < 1:
            r.fail(f"{key}.hash_buckets", f"must be >= 1, got {f.hash_buckets}")
        if f.hash_buckets > MAX_HASH_BUCKETS:  # one embedding row per bucket: 2^31 x 16 floats = 128 GiB
            r.fail(f"{key}.hash_buckets", f"must be <= 2^31 ({MAX_HASH_BUCKETS:,}), got {f.hash_buckets:,}")
        if f.kind != "categorical" or f.transform is not None:
            r.fail(f"{key}.hash_buckets", "only a categorical field without a transform can be hashed")
        for other in ("min_count", "max_vocab"):
            if raw.get(other) is not None:
                r.fail(f"{key}.{other}", "a hashed field has no vocabulary; drop hash_buckets or this key")
    if f.max_vocab is not None and f.max_vocab < 1:
        r.fail(f"{key}.max_vocab", f"must be >= 1, got {f.max_vocab}")
    if "pooling" in raw and kind != "multi":
        r.fail(f"{key}.pooling", "only multi-valued fields are pooled")
    if f.min_count is not None and f.min_count < 1:
        r.fail(f"{key}.min_count", f"must be >= 1, got {f.min_count}")
    if f.buckets < 2:
        r.fail(f"{key}.buckets", f"must be >= 2, got {f.buckets}")
    if f.max_len is not None and f.max_len < 1:
        r.fail(f"{key}.max_len", f"must be >= 1, got {f.max_len}")
    if not f.separator:
        r.fail(f"{key}.separator", "must not be empty")
    return f


def _split(r: _Reader, raw: Any) -> SplitSpec:
    raw = r.mapping(raw, "split")
    r.known(raw, "split", {"method", "ratios", "seed", "column", "files", "group", "time", "item"})
    method = r.choice(raw.get("method", "random"), "split.method", SPLIT_METHODS)
    ratios = raw.get("ratios", [0.8, 0.1, 0.1])
    if (
        not isinstance(ratios, (list, tuple))
        or len(ratios) != 3
        or not all(isinstance(x, (int, float)) and x >= 0 for x in ratios)
        or abs(sum(ratios) - 1.0) > 1e-6
    ):
        r.fail("split.ratios", f"must be three non-negative numbers summing to 1, got {ratios!r}")
    split = SplitSpec(
        method,
        tuple(float(x) for x in ratios),
        seed=r.typed(raw.get("seed"), "split.seed", int, optional=True),
        column=r.typed(raw.get("column"), "split.column", str, optional=True),
    )
    if method == "time" and not split.column:
        r.fail("split.column", "a time split needs the time column")
    for key in ("group", "time", "item"):
        value = r.typed(raw.get(key), f"split.{key}", str, optional=True)
        if value is not None and method != "leave_last":
            r.fail(f"split.{key}", "only used with method: leave_last")
        setattr(split, key, value)
    if method == "leave_last" and not (split.group and split.time):
        r.fail("split", "leave_last needs group (the user column) and time (the column ordering rows)")
    if method == "files":
        files = r.mapping(raw.get("files"), "split.files")
        r.known(files, "split.files", set(PARTS))
        for part in PARTS:
            split.files[part] = r.str_list(r.required(files, part, "split.files"), f"split.files.{part}")
    elif "files" in raw:
        r.fail("split.files", "only used with method: files")
    return split


class _Reader:
    """Typed access to a parsed mapping with errors that name the spec and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> None:
        raise ConfigError(f"{self.source}: {key or 'top level'}: {message}")

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping, got {type(value).__name__}")
        return value

    def known(self, value: dict[str, Any], key: str, allowed: set[str]) -> None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            prefix = f"{key}." if key else ""
            self.fail(f"{prefix}{unknown[0]}", f"unknown key; known keys are {sorted(allowed)}")

    def required(self, value: dict[str, Any], name: str, key: str) -> Any:
        if name not in value:
            self.fail(f"{key}.{name}" if key else name, "is required")
        return value[name]

    def typed(self, value: Any, key: str, kind: type, optional: bool = False) -> Any:
        if value is None and optional:
            return None
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            self.fail(key, f"expected {kind.__name__}, got {value!r}")
        return value

    def choice(self, value: Any, key: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            self.fail(key, f"must be one of {list(allowed)}, got {value!r}")
        return value

    def str_list(self, value: Any, key: str) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"expected a list of strings, got {value!r}")
        return list(value)

    def number(self, value: str, key: str) -> float:
        try:
            return float(value)
        except ValueError:
            self.fail(key, f"{value!r} is not a number")
            raise
