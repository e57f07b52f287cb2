"""Issue 16's adversarial examples: each is exit status 2 with one line naming the file / line /
field, or a clean recovery, and nothing is left behind that a later run trusts."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_movielens
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfm.cli.main import main
from deepfm.data.prepare.cache import clean_stale_builds
from deepfm.data.validate import check_label_values, check_splits
from deepfm.errors import DataError
from deepfm.io import clean_temporary_files, write_json


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 20, n)
    return pd.DataFrame(
        {
            "click": (rng.random(n) < 0.3 + 0.4 * (user % 2)).astype(int),
            "user": [f"u{u}" for u in user],
            "price": np.round(rng.lognormal(1, 1, n), 3),
            "day": rng.integers(0, 30, n),
        }
    )


def spec(tmp_path: Path, data: pd.DataFrame | None = None, name: str = "clicks.csv", **extra) -> Path:
    data = frame() if data is None else data
    if name.endswith(".parquet"):
        data.to_parquet(tmp_path / name)
        inp = {"files": [name], "format": "parquet"}
    else:
        text = data.to_csv(index=False)
        if name.endswith(".gz"):
            (tmp_path / name).write_bytes(gzip.compress(text.encode()))
        else:
            (tmp_path / name).write_text(text)
        inp = {"files": [name], "format": "csv"}
    fields = [{"name": "user"}, {"name": "price", "kind": "numeric"}]
    body = {"name": "clicks", "input": inp, "label": "click", "fields": fields} | extra
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def train(tmp_path: Path, *args: str) -> list[str]:
    out = tmp_path / "run"
    return [
        "train",
        *args,
        "--out",
        str(out),
        "--epochs",
        "1",
        "--no-progress",
        "--threads",
        "1",
        "--batch-size",
        "64",
    ]


def fails(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI: exit status 2, one line on stderr, holding every needle."""
    code = main(argv)
    text = capsys.readouterr().err.strip()
    assert code == 2, text
    assert "Traceback" not in text and text.count("error: ") == 1, text
    err = text.splitlines()[-1]  # the error is one line (after any progress lines)
    assert err.startswith("error: "), text
    for needle in needles:
        assert needle in err, err
    return err


# ---- labels and splits: one validation layer -----------------------------------------------------


def test_label_other_than_0_1_is_an_error_naming_file_line_and_field(tmp_path, capsys):
    data = frame()
    data.loc[7, "click"] = 2
    path = spec(tmp_path, data)
    fails(
        capsys, train(tmp_path, "--spec", str(path)), "clicks.csv", "line 9", "'click'", "label 2 is not 0/1"
    )
    assert not (tmp_path / "run").exists()  # no empty --out folder either


def test_rating_label_needs_a_declared_rule(tmp_path, capsys):
    data = frame().rename(columns={"click": "rating"})
    data["rating"] = np.random.default_rng(1).integers(1, 6, len(data))
    path = spec(tmp_path, data, label="rating")
    fails(capsys, train(tmp_path, "--spec", str(path)), "line 2", "'rating'", "rating > 0")
    path = spec(tmp_path, data, label="rating > 3")  # declared: thresholded as asked
    assert main(train(tmp_path, "--spec", str(path))) == 0


def test_nan_label_is_a_bad_line(tmp_path, capsys):
    path = spec(tmp_path)
    text = (tmp_path / "clicks.csv").read_text().splitlines()
    text[5] = "nan" + text[5][1:]
    (tmp_path / "clicks.csv").write_text("\n".join(text) + "\n")
    fails(capsys, train(tmp_path, "--spec", str(path)), "line 6", "'click'", "not a number")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=20))
def test_label_values_outside_0_1_always_fail(values):
    bad = [v for v in values if v not in (0.0, 1.0)]
    if bad:
        with pytest.raises(DataError, match="is not 0/1"):
            check_label_values(np.asarray(values), "click")
    else:
        check_label_values(np.asarray(values), "click")
    check_label_values(np.asarray([-1.0, 1.0, 0.0]), "label", "libsvm")  # libsvm's -1 / +1


def test_every_row_positive_is_an_error_before_training(tmp_path, capsys):
    data = frame()
    data["click"] = 1
    fails(
        capsys,
        train(tmp_path, "--spec", str(spec(tmp_path, data))),
        "every row of the train split is positive",
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "split",
    [
        {"ratios": [1, 0, 0]},  # no validation rows
        {"ratios": [0.9, 0.1, 0]},  # no test rows
        {"method": "time", "column": "two", "ratios": [0.8, 0.1, 0.1]},  # two distinct times
    ],
)
def test_empty_valid_or_test_split_is_an_error(tmp_path, capsys, split):
    data = frame()
    data["two"] = np.arange(len(data)) % 2
    fails(
        capsys, train(tmp_path, "--spec", str(spec(tmp_path, data, split=split))), "split is empty (0 rows)"
    )


def test_check_splits_unit():
    check_splits("x", {"train": np.array([0, 1]), "valid": np.array([1, 0]), "test": np.array([0, 1])})
    with pytest.raises(DataError, match="valid split is empty"):
        check_splits("x", {"train": np.array([0, 1]), "valid": np.array([]), "test": np.array([0, 1])})
    with pytest.raises(DataError, match="test split is negative"):
        check_splits("x", {"train": np.array([0, 1]), "valid": np.array([0, 1]), "test": np.array([0, 0])})


# ---- metrics.json is strict JSON -----------------------------------------------------------------


def strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_metrics_json_is_strict_json_and_the_writer_refuses_nan(tmp_path):
    assert main(train(tmp_path, "--spec", str(spec(tmp_path)))) == 0
    metrics = strict((tmp_path / "run" / "metrics.json").read_text())
    assert isinstance(metrics, dict) and math.isfinite(metrics["test_auc"])
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"auc": float("nan")})
    assert not (tmp_path / "x.json").exists() and not list(tmp_path.glob(".x.json.*"))


# ---- numbers: inf / 1e308 name the row -----------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "-inf", "1e308", "-1e39", "Infinity"])
def test_non_finite_or_overflowing_number_names_the_row(tmp_path, capsys, cache, value):
    path = spec(tmp_path)
    lines = (tmp_path / "clicks.csv").read_text().splitlines()
    parts = lines[11].split(",")
    parts[2] = value
    lines[11] = ",".join(parts)
    (tmp_path / "clicks.csv").write_text("\n".join(lines) + "\n")
    fails(
        capsys,
        train(tmp_path, "--spec", str(path)),
        "clicks.csv",
        "line 12",
        "'price'",
        "not a finite number",
    )
    prepared = cache / "prepared"
    assert not prepared.exists() or not list(prepared.iterdir())  # no cache with inf statistics


def test_inf_in_a_parquet_float_column_names_the_row(tmp_path, capsys):
    data = frame()
    data.loc[3, "price"] = np.inf
    path = spec(tmp_path, data, name="clicks.parquet")
    fails(capsys, train(tmp_path, "--spec", str(path)), "clicks.parquet", "line 4", "'price'")


# ---- one error path for every reader and decompressor -------------------------------------------


def damaged_gzip(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "clicks.csv.gz"
    raw = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "bad-crc":
        path.write_bytes(raw[:-8] + bytes(b ^ 0xFF for b in raw[-8:-4]) + raw[-4:])
    else:  # a plain file named .gz
        path.write_bytes(gzip.decompress(raw))


@pytest.mark.parametrize("kind", ["truncated", "bad-crc", "not-gzip"])
def test_damaged_gzip_is_one_line(tmp_path, capsys, kind):
    path = spec(tmp_path, name="clicks.csv.gz")
    damaged_gzip(tmp_path, kind)
    fails(capsys, train(tmp_path, "--spec", str(path)), "clicks.csv.gz", "cannot read")


@pytest.mark.parametrize("kind", ["truncated", "not-gzip"])
def test_damaged_gzip_with_the_builtin_criteo_layout_is_one_line(tmp_path, capsys, kind):
    rng = np.random.default_rng(0)
    rows = [
        "\t".join(
            [
                str(rng.integers(0, 2)),
                *map(str, rng.integers(0, 9, 13)),
                *(f"{v:08x}" for v in rng.integers(0, 50, 26)),
            ]
        )
        for _ in range(300)
    ]
    folder = tmp_path / "criteo"
    folder.mkdir()
    raw = gzip.compress(("\n".join(rows) + "\n").encode())
    (folder / "train.txt.gz").write_bytes(
        raw[: len(raw) // 2] if kind == "truncated" else gzip.decompress(raw)
    )
    fails(
        capsys,
        train(tmp_path, "--dataset", "criteo", "--data-dir", str(folder)),
        "train.txt.gz",
        "cannot read",
    )


def test_parquet_with_corrupt_data_pages_is_one_line(tmp_path, capsys):
    data = frame(5000)
    data["user"] = [f"user-{i}-{'x' * 20}" for i in range(len(data))]  # big enough data pages
    path = spec(tmp_path, data, name="clicks.parquet")
    raw = bytearray((tmp_path / "clicks.parquet").read_bytes())
    footer = int.from_bytes(raw[-8:-4], "little") + 8
    for i in range(64, len(raw) - footer - 64, 97):  # the pages, not the footer
        raw[i] ^= 0x5A
    (tmp_path / "clicks.parquet").write_bytes(bytes(raw))
    fails(capsys, train(tmp_path, "--spec", str(path)), "clicks.parquet")


def test_spec_that_is_not_utf8_or_not_yaml_is_one_line(tmp_path, capsys):
    path = spec(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"clicks", b"cl\xe9cks", 1))
    fails(capsys, train(tmp_path, "--spec", str(path)), "spec.yaml, line ", "not UTF-8")
    path.write_text("name: clicks\ninput: {files: [clicks.csv]\nfields: [user]\n")
    fails(capsys, train(tmp_path, "--spec", str(path)), "spec.yaml, line", "not valid YAML")


# ---- the preprocessing cache is checked against meta.json ----------------------------------------


@pytest.mark.parametrize("damage", ["truncate-npy", "remove-npy", "bad-feature-map", "bad-meta"])
def test_damaged_cache_is_rebuilt(tmp_path, capsys, cache, damage):
    path = spec(tmp_path)
    assert main(train(tmp_path, "--spec", str(path))) == 0
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())["test_auc"]
    (folder,) = (cache / "prepared").iterdir()
    target = {
        "truncate-npy": folder / "train_ids.npy",
        "remove-npy": folder / "valid_label.npy",
        "bad-feature-map": folder / "feature_map.json",
        "bad-meta": folder / "meta.json",
    }[damage]
    if damage == "truncate-npy":
        target.write_bytes(target.read_bytes()[:-16])
    elif damage == "remove-npy":
        target.unlink()
    else:
        target.write_text("{not json")
    capsys.readouterr()
    assert main(train(tmp_path, "--spec", str(path))) == 0
    assert "is damaged" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_auc"] == pytest.approx(first)


# ---- temporary files: removed at start when their writer is gone, and on exit --------------------


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_stale_temporary_files_and_folders_are_removed(tmp_path, cache):
    pid = dead_pid()
    prepared = cache / "prepared"
    stale = prepared / f".clicks-0123456789abcdef-{pid}-abc_12"
    live = prepared / f".clicks-0123456789abcdef-{os.getpid()}-def_34"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "train_ids.npy").write_bytes(b"x" * 100)
    assert clean_stale_builds(prepared) == [stale]
    assert live.exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / f".model.pt.{pid}-k2j4.tmp").write_bytes(b"partial")
    (run / f".model.pt.{os.getpid()}-a1b2.tmp").write_bytes(b"being written")
    assert [p.name for p in clean_temporary_files(run)] == [f".model.pt.{pid}-k2j4.tmp"]


def test_a_killed_preprocessing_leaves_nothing_a_later_run_uses(tmp_path, cache):
    """SIGTERM during preprocessing: the temporary folder is removed on exit."""
    path = spec(tmp_path, frame(200_000))
    env = {**os.environ, "DEEPFM_CACHE": str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepfm", *train(tmp_path, "--spec", str(path))],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until it is writing the cache
        if "pass 1/2" in line:
            break
    proc.terminate()
    proc.wait(timeout=60)
    prepared = cache / "prepared"
    assert not [p for p in prepared.iterdir() if p.name.startswith(".")]


# ---- small one-liners ----------------------------------------------------------------------------


def test_utf8_bom_is_accepted_in_ratings_dat_and_csv_headers(tmp_path, capsys):
    ratings = write_movielens(tmp_path / "ml" / "ratings.dat", n=2000)
    ratings.write_bytes(b"\xef\xbb\xbf" + ratings.read_bytes())
    assert main(train(tmp_path, "--data-dir", str(ratings.parent))) == 0
    path = spec(tmp_path)
    csv = tmp_path / "clicks.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())
    assert main(train(tmp_path, "--spec", str(path))) == 0


def test_predict_output_folder_and_serve_bad_port_are_one_line(tmp_path, capsys):
    assert main(train(tmp_path, "--spec", str(spec(tmp_path)))) == 0
    frame().drop(columns="click").to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "outdir").mkdir()
    for output in (str(tmp_path / "outdir") + "/", str(tmp_path / "outdir")):
        argv = [
            "predict",
            "--model",
            str(tmp_path / "run"),
            "--input",
            str(tmp_path / "in.csv"),
            "--output",
            output,
        ]
        fails(capsys, argv, "is a folder")
    fails(capsys, ["serve", "--model", str(tmp_path / "run"), "--port", "99999"], "--port must be 0..65535")
