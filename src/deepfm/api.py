"""The Python API: :func:`fit` trains on a DataFrame, an Arrow table, a spec or a built-in data set.

``fit`` goes through exactly the command line's path: a frame or table is written once to a
content-addressed Parquet file in the cache folder, declared in a dataset spec (``spec.yaml`` in
the run folder, so ``deepfm train --spec RUN/spec.yaml`` repeats the run; written with the run's
first output), prepared by
:mod:`deepfm.data.prepare` and trained by :func:`deepfm.training.run.train`, which writes the
same run folder as ``deepfm train``. It returns the :class:`~deepfm.artifact.trained.TrainedModel`
that ``deepfm.load(out)`` returns, with ``.predict``, ``.evaluate`` and ``.recommend``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from deepfm.artifact.trained import TrainedModel, load_model
from deepfm.config import TrainConfig, load_yaml
from deepfm.errors import ConfigError, DataError, DeepFMError, brief

SPEC_FILE = "spec.yaml"
FRAME_MTIME = 946684800  # frames are content-addressed: a fixed mtime keeps their cache key stable


def fit(
    data: Any = None,
    *,
    label: str | dict[str, Any] = "label",
    fields: list[Any] | None = None,
    valid: Any = None,
    test: Any = None,
    split: str | dict[str, Any] | None = None,
    roles: dict[str, str] | None = None,
    name: str | None = None,
    out: str | Path = "runs/deepfm",
    config: str | Path | None = None,
    echo: Any = print,
    **options: Any,
) -> TrainedModel:
    """Train a model and return it (the run folder ``out`` is written as by ``deepfm train``).

    ``data``: a pandas DataFrame or Arrow table (with ``label``, ``fields`` and optionally
    ``valid`` / ``test`` frames or a ``split``), a spec file path, a spec mapping (the YAML
    schema of docs/data-specs.md) or ``None`` with ``dataset=`` / ``data_dir=`` for a built-in.
    ``label``: a 0/1 column or a rule such as ``"rating > 3"``. ``fields``: names, or mappings
    like ``{"name": "price", "kind": "numeric"}`` (default: every column but the label).
    ``split``: ``"random"`` (80/10/10, the default), ``"leave-last"`` (needs ``group`` and
    ``time`` in a mapping: ``{"method": "leave_last", "group": "user_id", "time": "timestamp"}``)
    or any spec ``split`` mapping; with ``valid`` (and ``test``, default: ``valid``) frames the
    parts are given. ``roles``: which fields are the user and the item (``{"user": "user_id",
    "item": "movie_id"}``), for ``recommend``, ranking metrics and the default gAUC group.
    ``config``: a YAML file or preset name; ``options``: any ``deepfm train`` option by its
    Python name (``model="fm"``, ``epochs=10``, ``seed=1``, ``no_progress=True``, ...);
    ``deepfm train --debug`` (tracebacks) is the command line's own.
    """
    values: dict[str, Any] = load_yaml(config) if config else {}
    values.update(config_options(options))
    values["out"] = str(out)
    out = Path(out)
    files: dict[str, bytes] = {}
    frames: dict[str, tuple[str, Any]] = {}  # cached Parquet file -> (argument name, frame)
    if data is None:
        if valid is not None or test is not None or fields is not None:
            raise ConfigError("fit: valid, test and fields need data (a DataFrame, an Arrow table or a spec)")
    elif isinstance(data, (str, Path)):
        if Path(data).suffix.lower() not in (".yaml", ".yml", ".toml"):
            raise ConfigError(
                f"fit: a path must be a dataset spec (.yaml/.toml), got {str(data)!r}; read a data file "
                "into a DataFrame first, or declare it in a spec (docs/data-specs.md)"
            )
        values["spec"] = str(data)
    else:
        spec = _spec_of(data, label, fields, valid, test, split, name, roles, frames)
        text = (
            "# written by deepfm.fit: `deepfm train --spec THIS_FILE` repeats the run\n"
            + yaml.safe_dump(spec, sort_keys=False, width=100)
        ).encode()
        # read from the cache; written into ``out`` only with the run's first output, so a fit
        # that fails (or finds ``out`` in use) leaves the folder as it was
        values["spec"] = str(spec_file(text))
        files[SPEC_FILE] = text
    from deepfm.experiments.tracking import train_tracked

    try:
        train_tracked(TrainConfig.from_dict(values), echo=echo, files=files)
    except DeepFMError as exc:  # name the caller's frame, row and column, not our cached file
        raise in_frames(exc, frames) from None
    return load_model(out)


def spec_file(text: bytes) -> Path:
    """``text`` as ``spec.yaml`` in a content-addressed folder of the cache."""
    from deepfm.data.cache_cap import mark_used
    from deepfm.data.download import cache_dir
    from deepfm.io import write_bytes

    path = cache_dir() / "specs" / hashlib.sha256(text).hexdigest()[:20] / SPEC_FILE
    if not path.is_file() or path.read_bytes() != text:
        write_bytes(path, text)
    mark_used(path.parent)
    return path


def config_options(options: dict[str, Any]) -> dict[str, Any]:
    """``deepfm train``'s flags as config keys: ``no_progress=True`` (``--no-progress``) is
    ``progress=False``, as for every ``--no-X`` flag of a yes/no option ``X``."""
    flags = {f.name for f in dataclasses.fields(TrainConfig) if f.type in ("bool", bool)}
    values = {}
    for key, value in options.items():
        if key.startswith("no_") and key[3:] in flags and key not in flags:
            if not isinstance(value, bool):
                raise ConfigError(f"fit: {key} must be True or False, got {value!r}")
            key, value = key[3:], not value
            if key in options:
                raise ConfigError(f"fit: give {key}= or no_{key}=, not both")
        values[key] = value
    return values


def _spec_of(
    data: Any,
    label: str | dict[str, Any],
    fields: list[Any] | None,
    valid: Any,
    test: Any,
    split: str | dict[str, Any] | None,
    name: str | None,
    roles: dict[str, str] | None = None,
    frames: dict[str, tuple[str, Any]] | None = None,
) -> dict[str, Any]:
    """A spec mapping for ``data`` (frames written to Parquet; relative spec paths made absolute)."""
    from deepfm.data.spec import DatasetSpec, spec_from_dict

    if isinstance(data, DatasetSpec):
        spec = data
    elif isinstance(data, dict):
        data = {**data, **({"roles": roles} if roles else {})}
        spec = spec_from_dict(data, source=name or "<fit spec>", base_dir=Path.cwd())
    else:
        files = {"train": frame_file(data, "data")}
        if valid is not None:
            files["valid"] = frame_file(valid, "valid")
            files["test"] = frame_file(test, "test") if test is not None else files["valid"]
        if frames is not None:  # which cached file holds which frame, for error messages
            given = {"train": ("data", data), "valid": ("valid", valid), "test": ("test", test)}
            for part in ("test", "valid", "train"):  # (valid doubles as test when no test is given)
                if part in files and given[part][1] is not None:
                    frames[str(files[part].resolve())] = given[part]
                    frames[str(files[part])] = given[part]
        elif test is not None:
            raise ConfigError("fit: test data needs valid data too (or leave both out and give a split)")
        columns = _columns(data)
        declared = {
            "name": name or "dataframe",
            "input": {"files": [str(files["train"])], "format": "parquet"},
            "label": label,
            "fields": fields if fields is not None else [c for c in columns if c != _label_column(label)],
            "split": _split(split, files),
            **({"roles": roles} if roles else {}),
        }
        spec = spec_from_dict(declared, source=f"fit({declared['name']})", base_dir=Path.cwd())
    out = spec.to_yaml_dict()
    for table, paths in zip(out.get("tables", []), spec.table_files().values()):
        table["input"]["files"] = [str(p.resolve()) for p in paths]
    resolved = spec.input_files()
    if "all" in resolved:
        out["input"]["files"] = [str(p.resolve()) for p in resolved["all"]]
    else:
        out["split"]["files"] = {part: [str(p.resolve()) for p in paths] for part, paths in resolved.items()}
    return _plain(out)


def _split(split: str | dict[str, Any] | None, files: dict[str, Path]) -> dict[str, Any]:
    if len(files) > 1:
        if split is not None:
            raise ConfigError("fit: give either valid/test data or a split, not both")
        return {"method": "files", "files": {part: [str(p)] for part, p in files.items()}}
    if split is None or split == "random":
        return {"method": "random"}
    if isinstance(split, str):
        raise ConfigError(
            f"fit: split must be 'random' or a spec split mapping such as "
            f"{{'method': 'leave_last', 'group': 'user_id', 'time': 'timestamp'}}, got {split!r}"
        )
    return dict(split)


def _label_column(label: str | dict[str, Any]) -> str:
    from deepfm.data.spec import spec_from_dict

    probe = {"input": {"files": ["-"], "format": "parquet"}, "label": label, "fields": ["__probe__"]}
    return spec_from_dict(probe, source="fit(label)").label.column


def _columns(data: Any) -> list[str]:
    names = getattr(data, "column_names", None)  # pyarrow.Table
    return [str(c) for c in (names if names is not None else data.columns)]


def frame_file(data: Any, what: str = "data") -> Path:
    """``data`` (pandas, Arrow or Polars) as a Parquet file in the cache, named by its content hash;
    ``what`` names it in errors (``data``, ``valid``, ``test``)."""
    import pyarrow.parquet as pq

    from deepfm.data.cache_cap import mark_used
    from deepfm.data.download import cache_dir

    table = arrow_table(data, what)
    folder = cache_dir() / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".frame-", suffix=".parquet", dir=folder)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()[:20]
        path = folder / f"{digest}.parquet"
        if path.exists():
            os.unlink(tmp)
        else:
            os.utime(tmp, (FRAME_MTIME, FRAME_MTIME))
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    mark_used(path)  # the cache's size cap never removes what this run uses
    return path


def arrow_table(data: Any, what: str = "data") -> Any:
    """``data`` as an Arrow table; duplicate column names are refused, and an object column whose
    values Arrow cannot hold in one type (ints and text, text among numbers) is stored as the
    values' tokens (:data:`deepfm.data.transforms.TOKEN_RULE`: a numeric field then reads numeric
    text as its number, and names the row of any other text)."""
    import pyarrow as pa

    if isinstance(data, pa.Table) or hasattr(data, "to_arrow"):
        table = data if isinstance(data, pa.Table) else data.to_arrow()  # polars
        _check_names(list(table.column_names), what)
        return table
    if not hasattr(data, "columns"):
        raise ConfigError(f"fit: expected a DataFrame or an Arrow table, got {type(data).__name__}")
    _check_names(list(data.columns), what)
    try:
        return _from_pandas(data)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
        pass
    import pandas as pd

    from deepfm.data.records import SCALARS
    from deepfm.data.transforms import series_text

    unstorable = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError)
    data = data.copy(deep=False)
    for column in data.columns:
        values = data[column]
        if values.dtype != object:
            continue
        try:
            pa.array(values, from_pandas=True)
        except unstorable as exc:
            if not values.map(lambda v: isinstance(v, SCALARS)).all():
                raise ConfigError(
                    f"fit: {what} column {column!r} holds values of types Arrow cannot store together "
                    f"({brief(exc)}); give it one type"
                ) from None
            data[column] = pd.Series(series_text(values), index=data.index, dtype=object)
    try:
        return _from_pandas(data)
    except unstorable as exc:
        raise ConfigError(f"fit: {what} cannot be stored as an Arrow table ({brief(exc)})") from None


def _from_pandas(data: Any) -> Any:
    import pyarrow as pa

    with warnings.catch_warnings():  # pyarrow reads time-zone columns by a deprecated pandas path
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return pa.Table.from_pandas(data, preserve_index=False)


def _check_names(columns: list[Any], what: str) -> None:
    names = [str(c) for c in columns]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"fit: {what} has duplicate column names {duplicated}; rename them")


def in_frames(exc: DeepFMError, frames: dict[str, tuple[str, Any]]) -> DeepFMError:
    """``exc`` located in the caller's frames instead of their cached Parquet files: ``data, row 7
    (position), column 'click': ...`` (the file's line N is the frame's row N - 1)."""
    import pandas as pd

    if isinstance(exc, DataError) and exc.path in frames:
        what, frame = frames[exc.path]
        where = what
        if exc.line is not None:
            row = exc.line - 1
            where += f", row {row}"
            index = getattr(frame, "index", None)
            if index is not None and not isinstance(index, pd.RangeIndex) and 0 <= row < len(index):
                where += f" (index {index[row]!r})"
        if exc.field is not None:
            where += f", column {exc.field!r}"
        reason = exc.reason
        if "declare the rule" in reason:  # the spec's syntax: say how fit takes it
            column = exc.field or "label"
            reason = reason.split("; declare")[0] + f"; give the rule that makes it 0/1: label='{column} > 0'"
        reason = reason.replace("--on-bad-lines skip", "on_bad_lines='skip'")
        return DataError(f"{where}: {reason}")
    text = str(exc)
    for path, (what, _) in frames.items():
        text = text.replace(path, f"the DataFrame {what!r}")
    if text == str(exc):
        return exc
    return type(exc)(text) if type(exc) in (ConfigError, DataError, DeepFMError) else exc


def _plain(value: Any) -> Any:
    """Tuples as lists (for ``yaml.safe_dump``)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
