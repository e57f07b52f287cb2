import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import prepared

import deepfm
from deepfm.cli.main import main
from deepfm.evaluation.metrics import auc


def train_tiny(tiny_ml, out, *extra):
    code = main(
        [
            "train",
            "--data-dir",
            str(tiny_ml),
            "--out",
            str(out),
            "--epochs",
            "6",
            "--lr",
            "0.01",
            "--no-progress",
            *extra,
        ]
    )
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("model", ["deepfm", "fm"])
def test_cli_trains_planted_signal_end_to_end(tiny_ml, tmp_path, model):
    metrics = train_tiny(tiny_ml, tmp_path / "run", "--model", model)
    assert metrics["test_auc"] > 0.70, metrics["test_auc"]
    for key in ("test_auc", "test_logloss", "best_epoch", "train_samples_per_s", "epochs"):
        assert key in metrics
    assert len(metrics["epochs"]) == metrics["epochs_run"] >= metrics["best_epoch"] >= 1
    for name in ("model.pt", "history.csv", "learning_curve.png", "metrics.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,valid_auc") and len(history) == 1 + metrics["epochs_run"]


def test_checkpoint_round_trip_predicts_identical_probabilities(tiny_ml, tmp_path):
    metrics = train_tiny(tiny_ml, tmp_path / "run", "--seed", "5")
    model = deepfm.load(str(tmp_path / "run"))
    data = prepared(tiny_ml, seed=5)
    probs = model.predict_split(data.test)
    assert auc(data.test.label.numpy(), probs) == pytest.approx(metrics["test_auc"], abs=1e-12)
    again = deepfm.load(str(tmp_path / "run" / "model.pt")).predict_split(data.test)
    np.testing.assert_array_equal(probs, again)
    # raw records: known ids, and ids never seen in training go to OOV without crashing
    raw = model.predict([{"user_id": 1, "movie_id": 2}, {"user_id": 10**9, "movie_id": -1}])
    assert raw.shape == (2,) and np.all((raw > 0) & (raw < 1))


def test_same_seed_gives_identical_metrics(tiny_ml, tmp_path):
    a = train_tiny(tiny_ml, tmp_path / "a", "--epochs", "2")
    b = train_tiny(tiny_ml, tmp_path / "b", "--epochs", "2")
    assert a["test_auc"] == b["test_auc"] and a["test_logloss"] == b["test_logloss"]


def test_malformed_file_gives_one_line_error_without_traceback(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::2::5::978300760\n1::3::five::978300760\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepfm",
            "train",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'ratings.dat'}, line 2, field 'rating': 'five' is not a number "
        "(use --on-bad-lines skip to drop bad rows)"
    ]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["--embed-dim", "-2"], "--embed-dim must be >= 1"),
        (["--model", "nope"], "--model must be one of"),
        (["--fm-warmup-epochs", "-1"], "--fm-warmup-epochs must be >= 0"),
    ],
)
def test_impossible_options_are_refused_up_front(tmp_path, capsys, args, needle):
    assert main(["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), *args]) == 2
    assert needle in capsys.readouterr().err


def test_missing_data_dir_file_is_named(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no ratings.dat in" in capsys.readouterr().err


def test_yaml_config_sets_options_and_cli_overrides(tiny_ml, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("model: fm\nepochs: 1\nembed-dim: 4\n")
    assert (
        main(
            [
                "train",
                "--config",
                str(cfg),
                "--data-dir",
                str(tiny_ml),
                "--out",
                str(tmp_path / "r"),
                "--embed-dim",
                "6",
                "--no-progress",
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "r" / "metrics.json").read_text())["config"]
    assert (config["model"], config["epochs"], config["embed_dim"]) == ("fm", 1, 6)


def test_python_dash_m_matches_console_entry_point():
    proc = subprocess.run([sys.executable, "-m", "deepfm", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "train" in proc.stdout


def test_ids_model_keeps_movie_titles_for_recommend(tiny_ml, tmp_path):
    from deepfm.artifact.recommend import recommend

    titles = [f"{m}::Movie {m} (1999)::Drama" for m in range(1, 201)]
    (tiny_ml / "movies.dat").write_text("\n".join(titles) + "\n", encoding="latin-1")
    train_tiny(tiny_ml, tmp_path / "run", "--epochs", "1")
    model = deepfm.load(str(tmp_path / "run"))
    assert model.feature_map.fields[1].name == "movie_id" and len(model.feature_map.fields) == 2
    items = recommend(model, 1, k=3).items
    assert items["title"].tolist() == [f"Movie {m} (1999)" for m in items["movie_id"]]


def test_deepfm_fm_warmup_epoch_trains_only_the_fm_part(tiny_ml):
    import torch

    from deepfm.artifact.checkpoint import model_from_config
    from deepfm.config import TrainConfig
    from deepfm.training.loop import train_epoch
    from deepfm.training.optim import optimizer_for
    from deepfm.training.run import frozen_parameters, load_data

    config = TrainConfig(data_dir=str(tiny_ml), fm_warmup_epochs=1, batch_size=256, progress=False)
    data = load_data(config)
    torch.manual_seed(0)
    model = model_from_config(config, data.feature_map)
    optimizer = optimizer_for(model, config)
    generator = torch.Generator().manual_seed(0)

    def mlp_weights():
        return torch.cat([p.detach().flatten() for p in model.mlp.parameters()])

    mlp, table = mlp_weights(), model.features.sparse.table.weight.detach().clone()
    train_epoch(model, data.train, optimizer, 256, generator, frozen=frozen_parameters(model, config, 1))
    assert torch.equal(mlp_weights(), mlp)  # frozen: no update, no weight decay
    assert not torch.equal(model.features.sparse.table.weight, table)  # the FM part learns
    assert model.mlp.norm0.running_var.ne(1).all()  # the MLP still runs forward (BatchNorm statistics)
    train_epoch(model, data.train, optimizer, 256, generator, frozen=frozen_parameters(model, config, 2))
    assert not torch.equal(mlp_weights(), mlp)  # epoch 2: everything trains
    assert frozen_parameters(model, TrainConfig(model="deepfm", fm_warmup_epochs=0), 1) == []
    fm = model_from_config(TrainConfig(model="fm"), data.feature_map)
    assert frozen_parameters(fm, TrainConfig(model="fm"), 1) == []  # FM declares no warm-up


@pytest.mark.parametrize("fast", [True, False])
def test_cutting_the_frozen_mlp_out_of_the_backward_changes_no_update(tiny_ml, monkeypatch, fast):
    """The warm-up epoch with the frozen MLP cut out of autograd (one process) gives bit-identical
    weights to dropping its gradients after a full backward (what DDP does)."""
    import contextlib

    import torch

    from deepfm import fast as fast_layer
    from deepfm.artifact.checkpoint import model_from_config
    from deepfm.config import TrainConfig
    from deepfm.training import loop
    from deepfm.training.optim import optimizer_for
    from deepfm.training.run import frozen_parameters, load_data

    config = TrainConfig(data_dir=str(tiny_ml), fm_warmup_epochs=1, batch_size=256, progress=False)
    data = load_data(config)

    def one_epoch() -> tuple[torch.nn.Module, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = model_from_config(config, data.feature_map)
        net = fast_layer.trainable(model, data.train, enabled=fast)
        optimizer = optimizer_for(model, config)
        generator = torch.Generator().manual_seed(0)
        frozen = frozen_parameters(model, config, 1)
        loop.train_epoch(net, data.train, optimizer, 256, generator, frozen=frozen)
        return model, [p.requires_grad for p in model.parameters()]

    cut, flags = one_epoch()
    assert all(flags)  # requires_grad restored after the epoch
    monkeypatch.setattr(loop, "skip_frozen_backward", lambda *_: contextlib.nullcontext())
    full, _ = one_epoch()
    for (name, a), b in zip(cut.state_dict().items(), full.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
