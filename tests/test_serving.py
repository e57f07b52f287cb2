"""Using a trained model: predict from files, recommend, export parity, and the HTTP app."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import fit_map, prepared, write_movielens

import deepfm
from deepfm.artifact.checkpoint import model_from_config
from deepfm.artifact.recommend import default_min_item_count, recommend
from deepfm.artifact.trained import TrainedModel
from deepfm.cli.main import main
from deepfm.config import TrainConfig
from deepfm.data.batching import Split
from deepfm.data.features import FeatureMap
from deepfm.data.rated import build_rated, rated_positions
from deepfm.errors import ConfigError
from deepfm.serving.export import example_inputs, export_model, input_names


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepFM trained for 2 epochs on generated MovieLens data (shared by this module's tests)."""
    root = tmp_path_factory.mktemp("serving")
    write_movielens(root / "ml" / "ratings.dat")
    args = ["train", "--data-dir", str(root / "ml"), "--out", str(root / "run"), "--epochs", "2"]
    assert main([*args, "--lr", "0.01", "--no-progress"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def model(run_dir: Path) -> TrainedModel:
    return deepfm.load(str(run_dir))


@pytest.fixture(scope="module")
def client(model: TrainedModel):
    from fastapi.testclient import TestClient

    from deepfm.serving.app import create_app

    with TestClient(create_app(model, max_batch=50), raise_server_exceptions=False) as c:
        yield c


def train_pairs(run_dir: Path) -> pd.DataFrame:
    """The (user, movie) pairs of the training split, rebuilt from the same seeded split."""
    data = prepared(run_dir.parent / "ml", seed=0)
    fmap = data.feature_map
    ids = data.train.ids.numpy()
    vocab_u, vocab_m = np.asarray(fmap.fields[0].vocab), np.asarray(fmap.fields[1].vocab)
    return pd.DataFrame(
        {
            "user_id": vocab_u[ids[:, 0] - fmap.fields[0].offset - 1],
            "movie_id": vocab_m[ids[:, 1] - fmap.fields[1].offset - 1],
        }
    )


# ---- predict -------------------------------------------------------------------------------------


def test_predict_cli_matches_python_api_and_handles_unseen_ids(run_dir, model, tmp_path, capsys):
    records = pd.DataFrame({"user_id": [1, 2, 3, 10**9], "movie_id": [5, 6, 7, -4], "timestamp": [0] * 4})
    records.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "scores.csv"
    assert (
        main(["predict", "--model", str(run_dir), "--input", str(tmp_path / "in.csv"), "--output", str(out)])
        == 0
    )
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["user_id", "movie_id", "timestamp", "probability"]
    expected = model.predict(records.to_dict("records"))
    np.testing.assert_allclose(scores["probability"], expected, rtol=1e-6)
    assert ((scores["probability"] > 0) & (scores["probability"] < 1)).all()
    # the same ids as strings (JSON Lines) give the same numbers: ids are coerced to the vocab type
    lines = "\n".join(
        json.dumps({"user_id": str(u), "movie_id": str(m)}) for u, m in zip(records.user_id, records.movie_id)
    )
    (tmp_path / "in.jsonl").write_text(lines + "\n")
    out2 = tmp_path / "scores.parquet"
    assert (
        main(
            ["predict", "--model", str(run_dir), "--input", str(tmp_path / "in.jsonl"), "--output", str(out2)]
        )
        == 0
    )
    np.testing.assert_allclose(pd.read_parquet(out2)["probability"], expected, rtol=1e-6)


def test_predict_probabilities_equal_encoded_split_predictions(run_dir, model):
    pairs = train_pairs(run_dir).head(500)
    data = prepared(run_dir.parent / "ml", seed=0)
    np.testing.assert_allclose(
        model.predict(pairs), model.predict_split(data.train.take(torch.arange(500))), atol=1e-7
    )


@pytest.mark.parametrize(
    ("text", "suffix", "needle"),
    [
        ("user_id,film\n1,2\n", ".csv", "missing column(s) ['movie_id']"),
        ("user_id,movie_id\n1,2\n3,4,5\n6,7\n", ".csv", "line 3: malformed CSV"),
        ('{"user_id": 1, "movie_id": 2}\n{"user_id": 1, movie_id: 3}\n', ".jsonl", "line 2: invalid JSON"),
        ("", ".csv", "file is empty"),
        ("user_id,movie_id\n", ".xlsx", "unknown input format"),
    ],
)
def test_predict_bad_input_is_one_line_error_naming_the_problem(
    run_dir, tmp_path, capsys, text, suffix, needle
):
    source = tmp_path / f"in{suffix}"
    source.write_text(text)
    code = main(
        ["predict", "--model", str(run_dir), "--input", str(source), "--output", str(tmp_path / "o.csv")]
    )
    err = capsys.readouterr().err
    assert code == 2 and needle in err and str(source) in err, err
    assert not (tmp_path / "o.csv").exists()


# ---- recommend -----------------------------------------------------------------------------------


def test_rated_index_matches_the_training_pairs(run_dir, model):
    pairs = train_pairs(run_dir)
    fu, fm = model.feature_map.field("user_id"), model.feature_map.field("movie_id")
    for user in ("1", "7", "250"):  # ids are text, as the file holds them
        rated = rated_positions(model.facts.rated, fu.vocab.index(user))
        expected = sorted(set(pairs.loc[pairs.user_id == user, "movie_id"]))
        assert [fm.vocab[i] for i in rated] == expected


def test_recommend_skips_rated_movies_and_ranks_by_the_model_score(run_dir, model):
    pairs = train_pairs(run_dir)
    result = recommend(model, "7", k=10, min_item_count=1, discount=0)  # every item a candidate
    seen = set(pairs.loc[pairs.user_id == "7", "movie_id"])
    assert result.known_user and result.excluded == len(seen) > 0
    assert result.candidates == len(model.feature_map.field("movie_id").vocab) - len(seen)
    top = result.items
    assert len(top) == 10 and not set(top.movie_id) & seen
    assert top.score.is_monotonic_decreasing
    # brute force: every unseen movie scored through the raw-record path; the top 10 agree
    unseen = [m for m in model.feature_map.field("movie_id").vocab if m not in seen]
    scores = model.predict(pd.DataFrame({"user_id": 7, "movie_id": unseen}))
    best = np.argsort(-scores, kind="stable")[:10]
    assert list(top.movie_id) == [unseen[i] for i in best]
    np.testing.assert_allclose(top.score, scores[best], rtol=1e-6)
    included = recommend(model, 7, k=len(seen) + result.candidates, exclude_rated=False, min_item_count=1)
    assert included.excluded == 0 and set(included.items.movie_id) >= seen


def test_recommend_discounts_what_the_model_predicts_for_an_unknown_user(model):
    """Planted: one movie gets a first-order weight that puts it first in every user's list by
    score; another lines up with user 7's embedding. With the discount (default: half the unknown
    user's log-odds) the movie user 7 matches comes first; the order is the brute-force one."""
    fu, fi = model.feature_map.field("user_id"), model.feature_map.field("movie_id")
    module = copy.deepcopy(model.module)
    candidates = list(recommend(model, 7, k=len(fi.vocab), min_item_count=1, discount=0).items.movie_id)
    popular, personal = candidates[-1], candidates[-2]  # the two worst by score before planting
    with torch.no_grad():
        table = module.features.sparse.table.weight
        module.mlp.output.weight.zero_()  # DeepFM = its FM part: the planted terms are the whole story
        module.mlp.output.bias.zero_()
        table[fi.offset + 1 + fi.vocab.index(popular), 0] += 8.0
        axis = torch.zeros(table.shape[1] - 1)
        axis[0] = 1.0
        table[fu.offset + 1 + fu.vocab.index("7"), 1:] = axis
        table[fi.offset + 1 + fi.vocab.index(personal), 1:] = 5.0 * axis
    planted = TrainedModel(module, model.feature_map, model.config, model.tables, model.facts)
    by_score = recommend(planted, 7, k=5, min_item_count=1, discount=0)
    other = recommend(planted, 8, k=1, min_item_count=1, discount=0)
    assert by_score.items.movie_id[0] == popular and other.items.movie_id[0] == popular
    unrated = [m for m in fi.vocab if m in set(candidates)]
    mine = planted.predict(pd.DataFrame({"user_id": 7, "movie_id": unrated})).astype(np.float64)
    unknown = planted.predict(pd.DataFrame({"user_id": 10**6, "movie_id": unrated})).astype(np.float64)
    for discount in (0.5, 1.0):
        ranked = recommend(planted, 7, k=5, min_item_count=1, discount=discount)
        if discount == 0.5:
            assert recommend(planted, 7, k=5, min_item_count=1).items.equals(ranked.items)  # the default
        assert ranked.discount == discount and ranked.items.movie_id[0] == personal
        assert (popular in set(ranked.items.movie_id)) == (discount < 1)  # half its weight stays
        expected = np.log(mine / (1 - mine)) - discount * np.log(unknown / (1 - unknown))
        best = np.argsort(-expected, kind="stable")[:5]
        assert list(ranked.items.movie_id) == [unrated[i] for i in best]
        np.testing.assert_allclose(ranked.items.rank_score, expected[best], rtol=1e-4, atol=1e-4)
    # an unknown user is ranked by score, and the result says so
    stranger = recommend(planted, 10**6, k=1, min_item_count=1)
    assert stranger.discount == 0 and stranger.items.movie_id[0] == popular
    with pytest.raises(ConfigError, match="discount must be between 0 and 1"):
        recommend(planted, 7, discount=1.5)


def test_recommend_candidates_are_items_enough_users_rated(run_dir, model, capsys):
    pairs = train_pairs(run_dir).drop_duplicates()
    raters = pairs.groupby("movie_id").user_id.nunique()
    seen = set(pairs.loc[pairs.user_id == "7", "movie_id"])
    vocab = model.feature_map.field("movie_id").vocab
    users = len(model.feature_map.field("user_id").vocab)
    default = recommend(model, "7", k=len(vocab))
    median = int(raters.median())  # about half the items are rarer than this
    assert default_min_item_count(model) == max(1, -(-users * 2 // 100))  # 2% of the users, rounded up
    for n, result in (
        (default_min_item_count(model), default),
        (median, recommend(model, "7", k=len(vocab), min_item_count=median)),
    ):
        allowed = {m for m in vocab if raters.get(m, 0) >= n}
        assert set(result.items.movie_id) == allowed - seen
        assert result.rare == len(vocab) - len(allowed)
        assert result.excluded == len(seen & allowed) and result.candidates == len(allowed - seen)
    args = ["recommend", "--model", str(run_dir), "--user", "7", "--k", "3", "--min-item-count", str(median)]
    assert main(args) == 0
    rare = recommend(model, "7", k=3, min_item_count=median).rare
    assert rare > len(vocab) // 4 and f"{rare:,} rated by too few users" in capsys.readouterr().out


def test_recommend_cli_prints_titles_when_the_model_has_a_title_table(run_dir, model, tmp_path, capsys):
    assert main(["recommend", "--model", str(run_dir), "--user", "7", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "user 7: top 3 of" in out and "movie_id" in out and "title" not in out
    movies = model.feature_map.field("movie_id").vocab
    titled = TrainedModel(
        model.module,
        model.feature_map,
        model.config,
        {"movie_id": pd.DataFrame({"movie_id": movies, "title": [f"Film number {m}" for m in movies]})},
        model.facts,
    )
    titled.save(tmp_path / "titled" / "model.pt")
    assert main(["recommend", "--model", str(tmp_path / "titled"), "--user", "7", "--k", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [i["title"] for i in doc["items"]] == [f"Film number {i['movie_id']}" for i in doc["items"]]
    assert [i["movie_id"] for i in doc["items"]] == list(recommend(model, 7, k=3).items.movie_id)
    # the one id rule: an id that cannot be a user id is an unknown user, scored as OOV
    assert main(["recommend", "--model", str(run_dir), "--user", "abc", "--k", "3"]) == 0
    assert "user abc (not seen in training: scored as an unknown user)" in capsys.readouterr().out


def test_recommend_unknown_user_is_scored_as_oov(model):
    result = recommend(model, 10**6, k=5)
    assert not result.known_user and result.excluded == 0 and len(result.items) == 5


# ---- export --------------------------------------------------------------------------------------


def _parity(model: TrainedModel, tmp_path: Path) -> None:
    import onnxruntime as ort

    onnx_file = export_model(model, "onnx", tmp_path / "model.onnx")
    ts_file = export_model(model, "torchscript", tmp_path / "model.ts")
    doc = json.loads((tmp_path / "feature_map.json").read_text())
    names = input_names(model.feature_map)
    assert [i["name"] for i in doc["inputs"]] == list(names)
    assert FeatureMap.from_dict(doc["feature_map"]).to_dict() == model.feature_map.to_dict()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(ts_file))
    for batch in (300, 1, 7):  # export used 64 rows: the batch axis must be dynamic
        inputs = example_inputs(model.feature_map, batch, seed=batch)
        args = [inputs[n] for n in names]
        with torch.inference_mode():
            expected = torch.sigmoid(_call(model, inputs)).numpy()
            traced = scripted(*args).numpy()
        onnx_out = session.run(None, {n: inputs[n].numpy() for n in names})[0]
        assert onnx_out.shape == traced.shape == expected.shape == (batch,)
        np.testing.assert_allclose(onnx_out, expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(traced, expected, atol=1e-5, rtol=0)


def _call(model: TrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.module(inputs["ids"], inputs.get("bags"), inputs.get("dense"))


def test_export_onnx_and_torchscript_match_pytorch_with_dynamic_batch(model, tmp_path):
    _parity(model, tmp_path)


def test_export_parity_with_multi_valued_and_numeric_fields(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 50, n),
            "city": rng.choice(["a", "b", "c"], n),
            "genres": [
                list(rng.choice(["x", "y", "z", "w"], rng.integers(1, 4), replace=False)) for _ in range(n)
            ],
            "age": rng.random(n),
        }
    )
    fmap = fit_map(frame, ["user_id", "city", "genres", "age"], {"genres": "multi", "age": "numeric"})
    config = TrainConfig(model="deepfm", embed_dim=4, mlp=(8, 8))
    torch.manual_seed(0)
    module = model_from_config(config, fmap)
    with torch.no_grad():  # non-trivial BatchNorm statistics and embeddings
        for norm in (module.mlp.norm0, module.mlp.norm1):
            norm.running_mean.normal_(0, 0.5)
            norm.running_var.uniform_(0.5, 2)
        module.features.sparse.table.weight[1:].normal_(0, 0.5)
    model = TrainedModel(module.eval(), fmap, config)
    assert input_names(fmap) == ("ids", "bags", "dense")
    _parity(model, tmp_path)
    # the exported graph also equals the raw-record path (encode + forward)
    import onnxruntime as ort

    arrays = fmap.encode(frame)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, arrays)[0], model.predict(frame), atol=1e-5)


def test_export_cli_writes_both_files(run_dir, tmp_path, capsys):
    out = tmp_path / "x" / "m.ts"
    assert main(["export", "--model", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and (out.parent / "feature_map.json").is_file()
    assert "wrote" in capsys.readouterr().out


# ---- rated index ---------------------------------------------------------------------------------


def test_build_rated_ignores_oov_and_needs_both_fields():
    frame = pd.DataFrame({"user_id": [1, 1, 2, 2, 3], "movie_id": [10, 11, 10, 10, 12]})
    fmap = fit_map(frame.iloc[:4], ["user_id", "movie_id"])
    split = Split.from_arrays(fmap.encode(frame), np.zeros(5, np.float32))
    rated = build_rated(fmap, split, "user_id", "movie_id")
    assert rated["offsets"].tolist() == [0, 2, 3]  # user 3 is OOV: dropped
    assert rated_positions(rated, 0).tolist() == [0, 1] and rated_positions(rated, 1).tolist() == [0]
    assert rated_positions(rated, 5).tolist() == []
    assert build_rated(fit_map(frame, ["user_id"]), split, "user_id", "movie_id") is None


# ---- HTTP app ------------------------------------------------------------------------------------


def test_health_and_openapi(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["record_columns"] == ["user_id", "movie_id"]
    assert health["recommend"] is True and health["max_batch"] == 50
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/recommend", "/health"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_post_predict_matches_python_api(client, model):
    records = [
        {"user_id": 1, "movie_id": 5},
        {"user_id": "2", "movie_id": 6.0, "extra": "ignored"},
        {"user_id": -1, "movie_id": 10**9},
    ]
    reply = client.post("/predict", json=records)
    assert reply.status_code == 200, reply.text
    expected = model.predict(
        [{"user_id": 1, "movie_id": 5}, {"user_id": 2, "movie_id": 6}, {"user_id": -1, "movie_id": 10**9}]
    )
    np.testing.assert_allclose(reply.json()["probabilities"], expected, rtol=1e-6)
    assert client.post("/predict", json=[]).json() == {"probabilities": []}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([{"user_id": 1}], "movie_id"),  # missing field
        ([{"user_id": {"a": 1}, "movie_id": 2}], "user_id"),  # an object where an id belongs
        ([{"user_id": 1, "movie_id": [2]}], "movie_id"),  # a list where one id belongs
        ({"user_id": 1, "movie_id": 2}, None),  # not a list
        ([1, 2], None),
    ],
)
def test_post_predict_bad_records_get_422_naming_the_field(client, body, field):
    reply = client.post("/predict", json=body)
    assert reply.status_code == 422, reply.text
    if field is not None:
        assert any(field in err["loc"] for err in reply.json()["detail"]), reply.json()


def test_post_predict_malformed_json_and_oversize_batches(client):
    reply = client.post(
        "/predict", content=b'[{"user_id": 1, "movie_id": ', headers={"content-type": "application/json"}
    )
    assert reply.status_code == 422 and reply.json()["detail"][0]["type"] == "json_invalid"
    reply = client.post("/predict", json=[{"user_id": 1, "movie_id": 2}] * 51)
    assert reply.status_code == 413 and "limit of 50" in reply.json()["detail"]
    reply = client.post(
        "/predict", content=b"[" + b" " * 200_000 + b"]", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 413
    for number in (b"NaN", b"Infinity", b"1e400"):  # not strict JSON: json_invalid, as strict JSON
        body = b'[{"user_id": ' + number + b', "movie_id": 2}]'
        reply = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 422 and reply.json()["detail"][0]["type"] == "json_invalid"
    assert client.get("/health").status_code == 200  # still alive


def test_get_recommend(client, model):
    reply = client.get("/recommend", params={"user": 7, "k": 4})
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    expected = recommend(model, 7, k=4)
    assert [i["movie_id"] for i in doc["items"]] == list(expected.items.movie_id)
    np.testing.assert_allclose([i["score"] for i in doc["items"]], expected.items.score, rtol=1e-6)
    assert doc["known_user"] and doc["excluded"] == expected.excluded and doc["discount"] == 0.5
    by_score = client.get("/recommend", params={"user": 7, "k": 4, "discount": 0}).json()
    expected = list(recommend(model, 7, 4, discount=0).items.movie_id)
    assert [i["movie_id"] for i in by_score["items"]] == expected
    assert client.get("/recommend", params={"user": 7, "discount": 2}).status_code == 422
    unknown = client.get("/recommend", params={"user": "abc", "k": 3}).json()  # the one id rule: OOV
    assert unknown["known_user"] is False and unknown["user"] == "abc" and len(unknown["items"]) == 3
    for params, needle in [({"user": 7, "k": 0}, "k"), ({"k": 3}, "user")]:
        reply = client.get("/recommend", params=params)
        assert reply.status_code == 422 and needle in reply.text, reply.text


def test_recommend_on_a_model_without_user_and_item_fields_is_404(tmp_path):
    from fastapi.testclient import TestClient

    from deepfm.serving.app import create_app

    frame = pd.DataFrame({"site": ["a", "b"] * 10, "hour": list(range(20))})
    fmap = fit_map(frame, ["site", "hour"])
    config = TrainConfig(model="fm", embed_dim=4)
    model = TrainedModel(model_from_config(config, fmap).eval(), fmap, config)
    with TestClient(create_app(model)) as c:
        assert c.get("/recommend", params={"user": 1}).status_code == 404
        reply = c.post("/predict", json=[{"site": "a", "hour": 3}, {"site": 7, "hour": 99}])
        assert reply.status_code == 200 and len(reply.json()["probabilities"]) == 2
        assert c.post("/predict", json=[{"site": "a"}]).status_code == 422


def test_recommend_api_titles_with_gaps_are_null(model):
    from fastapi.testclient import TestClient

    from deepfm.serving.app import create_app

    top = list(recommend(model, 7, k=4).items.movie_id)
    titles = pd.DataFrame({"movie_id": top[:2], "title": ["First", "Second"]})  # no title for the rest
    titled = TrainedModel(model.module, model.feature_map, model.config, {"movie_id": titles}, model.facts)
    with TestClient(create_app(titled)) as c:
        reply = c.get("/recommend", params={"user": 7, "k": 4})
        assert reply.status_code == 200, reply.text
        items = reply.json()["items"]
    assert [i["movie_id"] for i in items] == top
    assert [i["title"] for i in items] == ["First", "Second", None, None]
    assert list(items[0]) == ["movie_id", "title", "score", "rank_score"]
