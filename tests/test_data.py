"""The feature map, the split rules and MovieLens through the prepare stage (files, lines, fields)."""

import numpy as np
import pandas as pd
import pytest
from conftest import prepared

from deepfm.data.features import FeatureMap, Field
from deepfm.data.split import random_parts, row_uniforms
from deepfm.errors import DataError


def fmap_of(**vocabs: list) -> FeatureMap:
    fields = [
        Field(name, "multi" if name == "g" else "categorical", vocab, max_len=2)
        for name, vocab in vocabs.items()
    ]
    return FeatureMap(fields).with_offsets()


def test_unseen_values_go_to_their_fields_oov_row():
    fmap = fmap_of(user_id=["10", "20"], movie_id=["1", "2", "3"])
    user, movie = fmap.fields
    encoded = fmap.encode(pd.DataFrame({"user_id": ["20", "99"], "movie_id": ["3", "-5"]}))["ids"]
    assert encoded[0].tolist() == [user.offset + 2, movie.offset + 3]
    assert encoded[1].tolist() == [user.offset, movie.offset]  # OOV rows
    assert fmap.num_rows == 1 + 3 + 4  # padding + (OOV + 2 users) + (OOV + 3 movies)


def test_feature_map_round_trips_through_dict():
    fmap = fmap_of(u=[1, 3], g=["x", "y"])
    again = FeatureMap.from_dict(fmap.to_dict())
    frame = pd.DataFrame({"u": [1, 7], "g": [["y", "z"], []]})
    for key, value in fmap.encode(frame).items():
        np.testing.assert_array_equal(value, again.encode(frame)[key])


def test_the_random_split_is_a_seeded_draw_per_file_line():
    lines = np.arange(1, 100_001)
    a = random_parts(row_uniforms(3, 0, lines), (0.8, 0.1, 0.1))
    np.testing.assert_array_equal(a, random_parts(row_uniforms(3, 0, lines), (0.8, 0.1, 0.1)))
    # any chunking gives the same parts: a row's part depends on its own line only
    np.testing.assert_array_equal(
        a[500:900], random_parts(row_uniforms(3, 0, lines[500:900]), (0.8, 0.1, 0.1))
    )
    assert (a != random_parts(row_uniforms(4, 0, lines), (0.8, 0.1, 0.1))).mean() > 0.2  # another seed
    assert (a != random_parts(row_uniforms(3, 1, lines), (0.8, 0.1, 0.1))).mean() > 0.2  # another file
    shares = np.bincount(a, minlength=3) / len(a)
    np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.005)


def test_the_split_hash_is_xxhash64_chained_as_sparks_xxhash64_column_function():
    import struct

    import xxhash

    from deepfm.data.split import xxh64_long

    h = 42
    for value in (7, 0, 12345):  # xxhash64(seed, file, line): each long hashed with the previous hash
        h = xxhash.xxh64_intdigest(struct.pack("<q", value), seed=h)
    assert int(xxh64_long(12345, xxh64_long(0, xxh64_long(7, 42)))) == h
    assert row_uniforms(7, 0, np.array([12345]))[0] == (h >> 11) / 2**53


def test_prepared_split_and_encoding_are_identical_for_the_same_seed(tiny_ml):
    a, b = prepared(tiny_ml, seed=1), prepared(tiny_ml, seed=1)
    assert a.train.ids.equal(b.train.ids) and a.test.label.equal(b.test.label)
    c = prepared(tiny_ml, seed=2)
    assert not (len(c.test) == len(a.test) and c.test.ids.equal(a.test.ids))


def test_drop_neutral_filters_the_rating_3_rows(tiny_ml):
    ratings = pd.read_csv(tiny_ml / "ratings.dat", sep="::", engine="python", header=None)
    all_rows, kept = prepared(tiny_ml), prepared(tiny_ml, drop_neutral=True)
    assert sum(map(len, (all_rows.train, all_rows.valid, all_rows.test))) == len(ratings)
    assert sum(map(len, (kept.train, kept.valid, kept.test))) == int((ratings[2] != 3).sum())
    # a filtered row does not move any other row to another part
    assert len(kept.test) == len(all_rows.test) - int(
        (all_rows.test.label.numpy() == 0).sum() - (kept.test.label.numpy() == 0).sum()
    )


@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        ("5::6::4", None, "expected 4 columns, found 3"),
        ("5::6::x::978300760", "rating", "'x' is not a number"),
        ("5::6::9::978300760", "rating", "9 breaks the check 'rating <= 5'"),
        ("5;6;4;978300760", None, "expected 4 columns, found 1"),
    ],
)
def test_malformed_ratings_line_is_named(tmp_path, line, field, needle):
    path = tmp_path / "ratings.dat"
    good = "\n".join(f"{u}::{m}::{1 + (u + m) % 5}::97830076{u}" for u in range(1, 5) for m in range(1, 5))
    path.write_text("1::1193::5::978300760\n2::661::3::978302109\n" + line + "\n" + good + "\n")
    with pytest.raises(DataError) as err:
        prepared(tmp_path)
    assert err.value.line == 3 and err.value.field == field
    assert str(path) in str(err.value) and "line 3" in str(err.value) and needle in str(err.value)
    data = prepared(tmp_path, on_bad_lines="skip")  # or skipped and counted
    assert data.facts.bad_lines_skipped == 1


def test_missing_ratings_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no ratings.dat in"):
        prepared(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        prepared(tmp_path / "nope")


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
