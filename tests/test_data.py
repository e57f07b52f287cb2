import numpy as np
import pandas as pd
import pytest

from deepfm.data.datasets import DataOptions, prepare
from deepfm.data.features import FeatureMap
from deepfm.data.movielens import read_ratings
from deepfm.data.split import random_split
from deepfm.errors import ConfigError, DataError


def test_vocabulary_from_train_only_and_unseen_ids_go_to_oov():
    train = pd.DataFrame({"user_id": [10, 20, 20], "movie_id": [1, 2, 3]})
    fmap = FeatureMap.fit(train, ["user_id", "movie_id"])
    user, movie = fmap.fields
    encoded = fmap.encode(pd.DataFrame({"user_id": [20, 99], "movie_id": [3, -5]}))["ids"]
    assert encoded[0].tolist() == [user.offset + 2, movie.offset + 3]
    assert encoded[1].tolist() == [user.offset, movie.offset]  # OOV rows
    assert fmap.num_rows == 1 + 3 + 4  # padding + (OOV + 2 users) + (OOV + 3 movies)


def test_min_count_sends_rare_values_to_oov():
    train = pd.DataFrame({"c": ["a", "a", "b"]})
    fmap = FeatureMap.fit(train, ["c"], min_count=2)
    assert fmap.fields[0].vocab == ["a"]
    assert fmap.encode(pd.DataFrame({"c": ["b"]}))["ids"][0, 0] == fmap.fields[0].offset


def test_feature_map_round_trips_through_dict():
    fmap = FeatureMap.fit(
        pd.DataFrame({"u": [3, 1], "g": [["x", "y"], ["y"]]}), ["u", "g"], kinds={"g": "sequence"}
    )
    again = FeatureMap.from_dict(fmap.to_dict())
    frame = pd.DataFrame({"u": [1, 7], "g": [["y", "z"], []]})
    for key, value in fmap.encode(frame).items():
        np.testing.assert_array_equal(value, again.encode(frame)[key])


def test_split_is_reproducible_and_disjoint():
    a = random_split(1000, seed=3)
    b = random_split(1000, seed=3)
    c = random_split(1000, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert [len(p) for p in a] == [800, 100, 100]
    assert len(np.unique(np.concatenate(a))) == 1000


def test_split_rejects_bad_ratios():
    with pytest.raises(ConfigError):
        random_split(10, (0.5, 0.5, 0.5))


def test_prepared_split_and_encoding_are_identical_for_the_same_seed(tiny_ml):
    a = prepare("movielens-1m", tiny_ml, seed=1)
    b = prepare("movielens-1m", tiny_ml, seed=1)
    assert a.train.ids.equal(b.train.ids) and a.test.label.equal(b.test.label)


def test_drop_neutral_removes_rating_3_rows(tiny_ml):
    raw = read_ratings(tiny_ml / "ratings.dat")
    data = prepare("movielens-1m", tiny_ml, DataOptions(drop_neutral=True))
    total = len(data.train) + len(data.valid) + len(data.test)
    assert total == int((raw["rating"] != 3).sum())


@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        ("5::6::4", None, "expected 4"),
        ("5::x::4::978300760", "movie_id", "not an integer"),
        ("5::6::9::978300760", "rating", "outside 1..5"),
        ("5;6;4;978300760", None, "expected 4"),
    ],
)
def test_malformed_ratings_line_is_named(tmp_path, line, field, needle):
    path = tmp_path / "ratings.dat"
    path.write_text("1::1193::5::978300760\n2::661::3::978302109\n" + line + "\n3::1::1::1\n")
    with pytest.raises(DataError) as err:
        read_ratings(path)
    assert err.value.line == 3 and err.value.field == field
    assert str(path) in str(err.value) and "line 3" in str(err.value) and needle in str(err.value)


def test_missing_and_empty_ratings_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_ratings(tmp_path / "nope.dat")
    (tmp_path / "empty.dat").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_ratings(tmp_path / "empty.dat")


def test_ratings_reader_parses_the_official_layout(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    frame = read_ratings(path)
    assert frame.to_numpy().tolist() == [[1, 1193, 5, 978300760], [1, 661, 3, 978302109]]


def test_side_tables_join_on_key_and_survive_payload_round_trip():
    from deepfm.data.tables import join_tables, tables_from_payload, tables_to_payload

    tables = {"movie_id": pd.DataFrame({"movie_id": [1, 2], "genres": [["a", "b"], ["c"]]})}
    tables = tables_from_payload(tables_to_payload(tables))
    rows = join_tables(pd.DataFrame({"movie_id": [2, 1, 7]}), tables)
    assert rows["genres"].tolist()[:2] == [["c"], ["a", "b"]]
    assert pd.isna(rows["genres"].iloc[2])  # unknown key -> missing -> OOV / empty bag


def test_atomic_writes_have_normal_file_permissions(tmp_path):
    import os
    import stat

    from deepfm.io import write_text

    path = write_text(tmp_path / "x.txt", "hello")
    mask = os.umask(0)
    os.umask(mask)
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]  # no temporary file left behind
