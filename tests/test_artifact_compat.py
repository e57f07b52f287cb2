"""Run folders written by an earlier version load and predict the same.

``tests/data/v1`` holds two run folders (``model.pt``, ``state.pt``, ``metrics.json``) written by
deepfm 0.1.0 before the data pipeline was unified: a MovieLens-format run (ids) and a spec run
with numeric, quantile, log2-bucketed, categorical, hashed, multi-valued and hour-of-day fields.
``expected.json`` holds the probabilities that version gave for a few raw records.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import deepfm

V1 = Path(__file__).resolve().parent / "data" / "v1"
EXPECTED = json.loads((V1 / "expected.json").read_text())


@pytest.mark.parametrize("run", sorted(EXPECTED))
def test_v1_model_predicts_what_it_predicted(run: str) -> None:
    model = deepfm.load(V1 / run)
    got = model.predict(EXPECTED[run]["records"])
    np.testing.assert_allclose(got, EXPECTED[run]["probabilities"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("run", sorted(EXPECTED))
def test_v1_state_holds_a_valid_config_and_the_best_weights(run: str, tmp_path: Path) -> None:
    from deepfm.training.state import resume_config

    folder = tmp_path / run
    shutil.copytree(V1 / run, folder)
    config = resume_config(folder, {})
    assert config.resume and config.out == str(folder)
    state = torch.load(folder / "state.pt", weights_only=True)
    model = deepfm.load(folder)
    best = state["early_stopping"]["best_state"]
    for key, value in model.module.state_dict().items():
        torch.testing.assert_close(best[key], value, rtol=0, atol=0)
