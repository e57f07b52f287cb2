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
        (["--fm-warmup-steps", "-1"], "--fm-warmup-steps must be >= 0"),
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
    from deepfm.training.loop import epoch_steps, train_epoch
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

    def epoch(number: int) -> None:
        frozen, steps = frozen_parameters(model, config, number, epoch_steps(data.train, 256), 0)
        train_epoch(model, data.train, optimizer, 256, generator, frozen=frozen, frozen_steps=steps)

    mlp, table = mlp_weights(), model.features.sparse.table.weight.detach().clone()
    epoch(1)
    assert torch.equal(mlp_weights(), mlp)  # frozen: no update, no weight decay
    assert not torch.equal(model.features.sparse.table.weight, table)  # the FM part learns
    assert model.mlp.norm0.running_var.ne(1).all()  # the MLP still runs forward (BatchNorm statistics)
    epoch(2)
    assert not torch.equal(mlp_weights(), mlp)  # epoch 2: everything trains
    no_warmup = TrainConfig(model="deepfm", fm_warmup_epochs=0, fm_warmup_steps=0)
    assert frozen_parameters(model, no_warmup, 1, 10, 0) == ([], 0)
    fm = model_from_config(TrainConfig(model="fm"), data.feature_map)
    assert frozen_parameters(fm, TrainConfig(model="fm"), 1, 10, 5) == ([], 0)  # FM declares no warm-up


def test_fm_warmup_steps_stay_in_the_first_epoch_and_a_tenth_of_a_one_pass_run(tiny_ml):
    """--fm-warmup-steps counts optimizer steps from the start of the run, within the first epoch
    and, in a one-epoch run, within its first tenth, so a one-pass run trains the MLP for at
    least 90% of it; --fm-warmup-epochs, when set, freezes whole epochs instead."""
    from deepfm.config import TrainConfig
    from deepfm.models import DeepFM
    from deepfm.training.run import frozen_parameters, warmup_steps

    model = DeepFM(num_rows=20, num_fields=2)
    mlp = list(model.mlp.parameters())

    def steps(epoch: int, per_epoch: int, **options) -> int:
        config = TrainConfig(**options)
        warmup = warmup_steps(config, per_epoch)
        frozen, count = frozen_parameters(model, config, epoch, per_epoch, warmup)
        assert frozen == (mlp if count else [])
        return count

    assert steps(1, 381, fm_warmup_steps=100) == 100
    assert steps(2, 381, fm_warmup_steps=100) == 0
    assert steps(1, 381, fm_warmup_steps=1000) == 381  # the whole first epoch, not more
    assert steps(2, 381, fm_warmup_steps=1000) == 0
    assert steps(1, 195, fm_warmup_steps=1000, epochs=1) == 19  # a tenth of a one-epoch run
    assert steps(1, 195, fm_warmup_steps=10, epochs=1) == 10
    assert steps(1, 195, fm_warmup_steps=50, epochs=1) == 19
    assert steps(1, 195, fm_warmup_steps=1000, epochs=2) == 195
    assert steps(1, 9, fm_warmup_steps=100, epochs=1) == 0  # under 10 steps: everything trains
    assert steps(1, 381, fm_warmup_steps=0) == 0
    assert steps(2, 381, fm_warmup_epochs=2) == 381  # whole epochs instead of steps
    assert steps(3, 381, fm_warmup_epochs=2) == 0
    assert steps(1, 195, fm_warmup_epochs=1, epochs=1) == 195  # as asked, even a one-epoch run
    assert steps(1, 381, fm_warmup_epochs=0) == 0  # no warm-up (what 0 always meant)
    assert steps(1, 381, fm_warmup_steps=100, init_from="runs/day1") == 0  # a warm start is trained


def test_step_warmup_thaws_the_mlp_mid_epoch(tiny_ml):
    """The MLP is frozen for exactly the epoch's first ``frozen_steps`` steps: the same weights as
    a run that trains those steps frozen and the rest in a second call with nothing frozen."""
    import torch

    from deepfm.artifact.checkpoint import model_from_config
    from deepfm.config import TrainConfig
    from deepfm.data.batching import Split
    from deepfm.training.loop import EpochPosition, train_epoch
    from deepfm.training.optim import optimizer_for
    from deepfm.training.run import load_data

    config = TrainConfig(data_dir=str(tiny_ml), batch_size=64, progress=False)
    data = load_data(config)
    assert isinstance(data.train, Split)

    def fresh():
        torch.manual_seed(0)
        model = model_from_config(config, data.feature_map)
        return model, optimizer_for(model, config), torch.Generator().manual_seed(0)

    model, optimizer, generator = fresh()
    mlp = [p.detach().clone() for p in model.mlp.parameters()]
    stats = train_epoch(
        model, data.train, optimizer, 64, generator, frozen=list(model.mlp.parameters()), frozen_steps=3
    )
    assert stats.warmup_samples == 3 * 64 and 0 < stats.warmup_seconds < stats.seconds
    assert not all(torch.equal(a, b) for a, b in zip(model.mlp.parameters(), mlp, strict=True))

    # the same epoch in two parts: steps 1-3 frozen (a crash after step 3), then resumed unfrozen
    twin, optimizer, generator = fresh()
    state = generator.get_state()

    class Stop(Exception):
        pass

    def stop(pos: EpochPosition) -> None:
        if pos.step == 3:
            raise Stop

    frozen = list(twin.mlp.parameters())
    with pytest.raises(Stop):
        train_epoch(
            twin,
            data.train,
            optimizer,
            64,
            generator,
            frozen=frozen,
            frozen_steps=3,
            on_step=stop,
            step_every=1,
        )
    assert all(torch.equal(a, b) for a, b in zip(twin.mlp.parameters(), mlp, strict=True))
    assert all(p.requires_grad for p in twin.parameters())  # restored on the way out
    generator.set_state(state)
    train_epoch(
        twin,
        data.train,
        optimizer,
        64,
        generator,
        start=EpochPosition(1, 3, None, 0),
        frozen=frozen,
        frozen_steps=3,
    )
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


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
        frozen, steps = frozen_parameters(model, config, 1, loop.epoch_steps(data.train, 256), 0)
        loop.train_epoch(net, data.train, optimizer, 256, generator, frozen=frozen, frozen_steps=steps)
        return model, [p.requires_grad for p in model.parameters()]

    cut, flags = one_epoch()
    assert all(flags)  # requires_grad restored after the epoch
    monkeypatch.setattr(loop, "skip_frozen_backward", lambda *_: contextlib.nullcontext())
    full, _ = one_epoch()
    for (name, a), b in zip(cut.state_dict().items(), full.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
