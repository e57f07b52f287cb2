"""Built-in click-log data sets as specs: Criteo, Avazu and the BARS "x1" splits.

None can be downloaded automatically (they sit behind licence pages), so each needs
``--data-dir``; without it the error says where to get the files and where to put them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfm.data.catalog.entry import Entry
from deepfm.data.options import PrepareOptions
from deepfm.data.spec import DatasetSpec, spec_from_dict
from deepfm.errors import ConfigError, DataError

CRITEO_INTS = [f"I{i}" for i in range(1, 14)]
CRITEO_CATS = [f"C{i}" for i in range(1, 27)]
TEXT_SUFFIXES = (".txt", ".tsv", ".csv", ".txt.gz", ".tsv.gz", ".csv.gz")

AVAZU_COLUMNS = [
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category",
    "app_id", "app_domain", "app_category", "device_id", "device_ip", "device_model",
    "device_type", "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]  # fmt: skip


def criteo_spec_dict(files: list[str] | None = None) -> dict[str, Any]:
    """The Criteo Display Advertising Challenge layout: label, I1-I13, C1-C26, tab-separated."""
    return {
        "name": "criteo",
        "input": {
            "files": files or ["train.txt"],
            "format": "tsv",
            "header": False,
            "columns": ["label", *CRITEO_INTS, *CRITEO_CATS],
        },
        "label": "label",
        "fields": [{"name": c, "kind": "numeric", "transform": "log2bucket"} for c in CRITEO_INTS]
        + [{"name": c} for c in CRITEO_CATS],
        "split": {"method": "random", "ratios": [0.8, 0.1, 0.1]},
    }


def avazu_spec_dict(files: list[str] | None = None) -> dict[str, Any]:
    """The Avazu CSV (header; ``click`` label; ``hour`` YYMMDDHH -> hour of day and weekday)."""
    plain = [c for c in AVAZU_COLUMNS if c not in ("id", "click", "hour")]
    return {
        "name": "avazu",
        "input": {"files": files or ["train.csv"], "format": "csv", "header": True},
        "label": "click",
        "fields": [
            {"name": "hour_of_day", "column": "hour", "transform": "hour_of_day"},
            {"name": "weekday", "column": "hour", "transform": "weekday"},
            *({"name": c} for c in plain),
        ],
        "split": {"method": "random", "ratios": [0.8, 0.1, 0.1]},
    }


def _files(data_dir: Path | None, dataset: str, names: tuple[str, ...], where: str) -> list[str]:
    if data_dir is None:
        raise ConfigError(f"{dataset} cannot be downloaded automatically. {where}")
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} is not a folder")
    found = sorted(
        str(p)
        for p in data_dir.iterdir()
        if p.is_file() and (p.name in names or p.name.lower().endswith(TEXT_SUFFIXES))
    )
    if not found:
        raise DataError(f"no {dataset} files (*.txt, *.tsv, *.csv, optionally .gz) in {data_dir}. {where}")
    return found


CRITEO_WHERE = (
    "Get the Criteo Display Advertising Challenge data (dac.tar.gz, from https://ailab.criteo.com/"
    "ressources/ or the Kaggle 'criteo-display-ad-challenge' page), unpack it, put train.txt "
    "(label, I1-I13, C1-C26, tab-separated; any number of such .txt/.tsv/.csv files, gzipped or "
    "not) in a folder without the unlabelled test.txt, and pass --data-dir FOLDER."
)
AVAZU_WHERE = (
    "Get the Avazu click-through data from the Kaggle 'avazu-ctr-prediction' page, put its "
    "labelled train file (train, train.gz or train.csv, with header) in a folder and pass --data-dir FOLDER."
)


def criteo_spec(data_dir: Path | None, options: PrepareOptions | None = None) -> DatasetSpec:
    files = _files(data_dir, "criteo", (), CRITEO_WHERE)
    return spec_from_dict(criteo_spec_dict(files), source="criteo", base_dir=data_dir or ".")


def avazu_spec(data_dir: Path | None, options: PrepareOptions | None = None) -> DatasetSpec:
    files = _files(data_dir, "avazu", ("train", "train.gz"), AVAZU_WHERE)
    return spec_from_dict(avazu_spec_dict(files), source="avazu", base_dir=data_dir or ".")


# --------------------------------------------------------------------------- BARS (reczoo) data sets
# The "x1" splits of the BARS benchmark (https://github.com/reczoo/BARS, files from
# https://github.com/reczoo/Datasets): train.csv / valid.csv / test.csv with a header, column
# ``label`` and the fields below, already split (the split is the files). ``published`` is the
# benchmark's DeepFM result (test AUC / logloss, mean of 5 runs) with its recipe, shipped as the
# preset of the same name (``--config frappe-x1``).


@dataclass(frozen=True)
class BarsDataset:
    name: str
    folder: str  # the folder name in reczoo/Datasets
    categorical: tuple[str, ...]
    numeric: tuple[str, ...] = ()
    published: str = ""


BARS = {
    d.name: d
    for d in (
        BarsDataset(
            "frappe-x1",
            "Frappe_x1",
            (
                "user",
                "item",
                "daytime",
                "weekday",
                "isweekend",
                "homework",
                "cost",
                "weather",
                "country",
                "city",
            ),
            published="DeepFM 0.983947 ± 0.00016 AUC, logloss 0.149462",
        ),
        BarsDataset(
            "movielenslatest-x1",
            "MovielensLatest_x1",
            ("user_id", "item_id", "tag_id"),
            published="DeepFM 0.968223 ± 0.00016 AUC, logloss 0.213790",
        ),
        BarsDataset(
            "avazu-x1",
            "Avazu_x1",
            tuple(f"feat_{i}" for i in range(1, 23)),
            published="DeepFM 0.764586 ± 0.00044 AUC, logloss 0.366971",
        ),
        BarsDataset(
            "criteo-x1",
            "Criteo_x1",
            tuple(CRITEO_CATS),
            numeric=tuple(CRITEO_INTS),
            published="DeepFM 0.813812 ± 0.00008 AUC, logloss 0.438033",
        ),
    )
}


def bars_spec_dict(dataset: BarsDataset) -> dict[str, Any]:
    """The spec of a BARS x1 data set: header CSVs, ``label``, categorical (and numeric) fields,
    split by file (train.csv, valid.csv, test.csv, each optionally gzipped)."""
    fields: list[dict[str, Any]] = [{"name": c, "kind": "numeric"} for c in dataset.numeric]
    fields += [{"name": c} for c in dataset.categorical]
    return {
        "name": dataset.name,
        "input": {"format": "csv", "header": True},
        "label": "label",
        "fields": fields,
        "split": {
            "method": "files",
            "files": {part: [f"{part}.csv*"] for part in ("train", "valid", "test")},
        },
    }


def bars_spec(dataset: BarsDataset) -> Any:
    def spec(data_dir: Path | None, options: PrepareOptions | None = None) -> DatasetSpec:
        where = (
            f"Get {dataset.folder} (train.csv, valid.csv, test.csv) as linked from "
            f"https://github.com/reczoo/Datasets/tree/main/{dataset.folder.split('_')[0]}/{dataset.folder} "
            "and pass --data-dir FOLDER."
        )
        if data_dir is None:
            raise ConfigError(f"{dataset.name} cannot be downloaded automatically. {where}")
        missing = [p for p in ("train", "valid", "test") if not list(Path(data_dir).glob(f"{p}.csv*"))]
        if missing:
            raise DataError(
                f"{data_dir}: no {', '.join(f'{p}.csv' for p in missing)} for {dataset.name}. {where}"
            )
        return spec_from_dict(bars_spec_dict(dataset), source=dataset.name, base_dir=data_dir)

    return spec


ENTRIES = [
    Entry(
        "criteo",
        "Criteo Display Advertising Challenge TSV (label, I1-I13 log2-bucketed, C1-C26); needs --data-dir",
        criteo_spec,
        lambda options: criteo_spec_dict(),
    ),
    Entry(
        "avazu",
        "Avazu CTR CSV (click; hour -> hour of day + weekday; id dropped); needs --data-dir",
        avazu_spec,
        lambda options: avazu_spec_dict(),
    ),
    *(
        Entry(
            d.name,
            f"BARS {d.folder} (train/valid/test CSV, {len(d.categorical) + len(d.numeric)} "
            f"fields); needs --data-dir; published {d.published}",
            bars_spec(d),
            lambda options, d=d: bars_spec_dict(d),
        )
        for d in BARS.values()
    ),
]
