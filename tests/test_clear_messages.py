"""Bad input a new user meets, each answered by one line that says what is wrong (exit status 2,
no traceback): header-only, empty and wrongly separated files, folders and FIFOs given as files,
files that are not checkpoints, a state from another deepfm, a batch of one, huge hash tables,
a full disk; and the server's content type and its event loop under a large batch."""

from __future__ import annotations

import errno
import http.client
import os
import threading
from pathlib import Path

import pytest
import torch
import yaml
from test_retraining import day_spec, write_days
from test_serving_robust import LiveServer

import deepfm
from deepfm.cli.main import main
from deepfm.config import TrainConfig
from deepfm.data.spec import spec_from_dict
from deepfm.errors import ConfigError
from deepfm.models import check_table_size


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained run on a CSV spec (label ``click``, fields ``user``, ``item``) and its data."""
    root = tmp_path_factory.mktemp("messages")
    write_days(root, days=1, n=1500)
    os.environ.setdefault("DEEPFM_CACHE", str(root / "cache"))
    args = ["train", "--spec", str(day_spec(root, 1)), "--out", str(root / "run"), "--epochs", "1"]
    (root / "day2.csv").write_text((root / "day1.csv").read_text())  # the spec's test file
    assert main([*args, "--batch-size", "256", "--no-progress", "--threads", "1"]) == 0
    return root / "run"


def one_line_error(capsys, args: list[str]) -> str:
    """The stderr of a command that must exit 2 with one line and no traceback."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_header_only_file_is_refused_not_scored_as_nan(run, tmp_path, capsys):
    path = tmp_path / "header.csv"
    path.write_text("click,user,item\n")
    err = one_line_error(capsys, ["evaluate", "--model", str(run), "--input", str(path)])
    assert "header.csv: holds no rows to evaluate" in err


def test_wrong_separator_and_empty_file_are_named_as_such(run, tmp_path, capsys):
    semi = tmp_path / "semi.csv"
    semi.write_text("click;user;item\n1;u1;i1\n")
    err = one_line_error(capsys, ["evaluate", "--model", str(run), "--input", str(semi)])
    assert "semi.csv: the header is one column 'click;user;item'" in err and "separated by ';'" in err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for command in ("evaluate", "predict"):
        extra = ["--output", str(tmp_path / "o.csv")] if command == "predict" else []
        err = one_line_error(capsys, [command, "--model", str(run), "--input", str(empty), *extra])
        assert "empty.csv: " in err and "empty" in err.split("empty.csv: ", 1)[1]
        assert "input.files" not in err


def test_a_folder_or_a_fifo_is_not_called_missing(run, tmp_path, capsys):
    folder = tmp_path / "adir"
    folder.mkdir()
    err = one_line_error(capsys, ["evaluate", "--model", str(run), "--input", str(folder)])
    assert "adir: is a folder, not a file" in err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    err = one_line_error(capsys, ["predict", "--model", str(run), "--input", str(fifo), "--output", "o.csv"])
    assert "fifo: is not a regular file" in err
    good = tmp_path / "good.csv"
    good.write_text("user,item\nu1,i1\n")
    args = ["predict", "--model", str(run), "--input", str(good), "--output", str(fifo)]
    err = one_line_error(capsys, args)
    assert "fifo: is not a regular file" in err and fifo.exists() and not fifo.is_file()  # not replaced


def test_predict_names_only_the_missing_feature_column(run, tmp_path, capsys):
    path = tmp_path / "users.csv"
    path.write_text("user\nu1\n")
    err = one_line_error(capsys, ["predict", "--model", str(run), "--input", str(path), "--output", "o.csv"])
    assert "users.csv: missing column(s) ['item']" in err and "click" not in err


def test_a_file_that_is_not_a_checkpoint_is_named_without_torch_text(run, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    err = one_line_error(capsys, ["evaluate", "--model", str(junk), "--input", str(junk)])
    assert "junk.pt is not a deepfm checkpoint (not a PyTorch file)" in err and "weights_only" not in err


def test_resume_of_a_state_from_another_deepfm_says_which(run, tmp_path, capsys):
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["deepfm"] == deepfm.__version__
    out = tmp_path / "old"
    out.mkdir()
    for writer in ("0.0.9", None):
        old = {k: v for k, v in state.items() if k not in ("early_stopping", "deepfm")}
        if writer:
            old["deepfm"] = writer
        torch.save(old, out / "state.pt")
        err = one_line_error(capsys, ["train", "--out", str(out), "--resume", "--no-progress"])
        by = f"deepfm {writer}" if writer else "an older deepfm (one that kept no version)"
        assert f"state.pt was written by {by}; deepfm {deepfm.__version__} cannot resume it" in err, err
        assert f"--init-from {out}" in err
    for version in (0, -1, True):
        torch.save({**state, "version": version}, out / "state.pt")
        err = one_line_error(capsys, ["train", "--out", str(out), "--resume", "--no-progress"])
        assert f"state.pt is damaged (state format {version!r}, expected 1 to 1)" in err, err
    torch.save({**state, "version": 2}, out / "state.pt")
    err = one_line_error(capsys, ["train", "--out", str(out), "--resume", "--no-progress"])
    assert "state.pt was written by a newer deepfm (state format 2)" in err, err


def test_a_batch_of_one_row_is_refused_up_front():
    with pytest.raises(ConfigError, match=r"--batch-size must be >= 2, got 1"):
        TrainConfig(batch_size=1).validate()
    TrainConfig(batch_size=2).validate()


@pytest.mark.parametrize("buckets", [2**62, 2**63 - 1, 2**64, 2**31 + 1])
def test_hash_buckets_beyond_a_table_are_refused_naming_the_field(buckets):
    raw = {"name": "x", "input": {"files": ["a.csv"]}, "label": "click", "fields": [{"name": "uid"}]}
    raw["fields"][0]["hash_buckets"] = buckets
    with pytest.raises(ConfigError, match=r"fields\[0\]\.hash_buckets: must be <= 2\^31"):
        spec_from_dict(yaml.safe_load(yaml.safe_dump(raw)))


def test_hash_buckets_as_a_float_is_refused(tmp_path):
    raw = {"name": "x", "input": {"files": ["a.csv"]}, "label": "click", "fields": [{"name": "uid"}]}
    raw["fields"][0]["hash_buckets"] = 1e10
    with pytest.raises(ConfigError, match=r"hash_buckets"):
        spec_from_dict(raw)


def test_a_table_larger_than_memory_is_refused_before_allocating():
    with pytest.raises(ConfigError, match=r"embedding table would need .* GiB .* lower hash_buckets"):
        check_table_size(2**40, 16)
    check_table_size(1000, 16)


def test_a_full_disk_while_writing_scores_is_one_line(run, tmp_path, capsys, monkeypatch):
    import deepfm.serving.predict as predict

    def full(frame, path):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(predict, "write_scores", full)
    good = tmp_path / "good.csv"
    good.write_text("user,item\nu1,i1\n")
    out = tmp_path / "scores.csv"
    err = one_line_error(capsys, ["predict", "--model", str(run), "--input", str(good), "--output", str(out)])
    assert f"{out}: No space left on device" in err


def post(port: int, body: bytes, content_type: str | None, timeout: float = 60) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"content-type": content_type} if content_type else {}
    connection.request("POST", "/predict", body=body, headers=headers)
    reply = connection.getresponse()
    return reply.status, reply.read()


def test_server_answers_415_unless_the_body_is_declared_json(run):
    from deepfm.serving.app import create_app

    body = b'[{"user": "u1", "item": "i1"}]'
    with LiveServer(create_app(deepfm.load(str(run)))) as server:
        for kind in ("text/plain", "application/x-www-form-urlencoded", None):
            status, content = post(server.port, body, kind)
            assert status == 415 and b"not JSON" in content, (kind, status, content)
        for kind in ("application/json", "application/json; charset=utf-8", "application/vnd.api+json"):
            assert post(server.port, body, kind)[0] == 200


def test_a_large_batch_is_scored_off_the_event_loop(run, monkeypatch):
    from deepfm.serving import app as serving

    release, started = threading.Event(), threading.Event()
    scored = serving.Predictor._predict

    def slow(self, body: bytes):  # noqa: ANN001, ANN202 - a batch that takes until released
        if len(body) > serving.OFF_LOOP_BYTES:
            started.set()
            assert release.wait(60)
        return scored(self, body)

    monkeypatch.setattr(serving.Predictor, "_predict", slow)
    body = ("[" + ",".join(['{"user": "u1", "item": "i1"}'] * 5000) + "]").encode()
    replies: list[int] = []
    with LiveServer(serving.create_app(deepfm.load(str(run)), max_batch=10_000)) as server:
        big = threading.Thread(target=lambda: replies.append(post(server.port, body, "application/json")[0]))
        big.start()
        try:
            assert started.wait(60)
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
            connection.request("GET", "/health")  # answered while the batch is being scored
            assert connection.getresponse().status == 200
            assert post(server.port, b'[{"user": "u1", "item": "i1"}]', "application/json", 20)[0] == 200
        finally:
            release.set()
            big.join(60)
    assert replies == [200]


@pytest.mark.parametrize(
    "option, where",
    [
        ("--out", "afile"),
        ("--out", "afile/run"),
        ("--tensorboard", "afile/tb"),
        ("--mlflow", "afile/mlruns"),
        ("--mlflow", "foo://bar"),
        ("--mlflow", "http://127.0.0.1:9"),  # nothing listens: refused quickly, not after minutes
    ],
)
def test_output_and_tracking_paths_are_checked_before_training(run, tmp_path, capsys, option, where):
    pytest.importorskip(
        "tensorboard" if option == "--tensorboard" else "mlflow"
    ) if option != "--out" else None
    (tmp_path / "afile").write_text("a file in the way")
    value = where if "://" in where else str(tmp_path / where)
    args = ["train", "--spec", str(run.parent / "day1.yaml"), "--epochs", "1", "--no-progress"]
    if option != "--out":
        args += ["--out", str(tmp_path / "run")]
    err = one_line_error(capsys, [*args, option, value])
    assert option in err or "afile" in err, err
    assert (tmp_path / "afile").read_text() == "a file in the way"
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize("version", [0, -1, True, "1", 2])
def test_a_checkpoint_format_version_that_is_not_1_or_more_is_refused(run, tmp_path, capsys, version):
    payload = torch.load(run / "model.pt", weights_only=True)
    torch.save({**payload, "version": version}, tmp_path / "model.pt")
    err = one_line_error(capsys, ["evaluate", "--model", str(tmp_path / "model.pt"), "--input", "x.csv"])
    if version == 2:  # from a newer deepfm
        assert "model.pt was written by a newer deepfm (format version 2)" in err, err
    else:
        assert f"model.pt is damaged (format version {version!r}, expected 1 to 1)" in err, err
