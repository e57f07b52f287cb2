import itertools

import torch
from conftest import fit_map

from deepfm.models import MODELS, build_model
from deepfm.models.layers import FactorizationMachine, Features, SparseFeatures


def test_fm_two_way_term_equals_pairwise_dot_products():
    torch.manual_seed(0)
    emb = torch.randn(5, 4, 3, dtype=torch.float64)
    explicit = torch.stack(
        [sum((emb[b, i] * emb[b, j]).sum() for i, j in itertools.combinations(range(4), 2)) for b in range(5)]
    )
    torch.testing.assert_close(FactorizationMachine()(emb), explicit)


def test_sparse_features_linear_column_and_padding_row():
    layer = SparseFeatures(num_rows=10, embed_dim=3)
    with torch.no_grad():
        layer.table.weight[:, 0] = torch.arange(10, dtype=torch.float32)
    ids = torch.tensor([[1, 4], [2, 9]])
    rows = layer(ids)
    linear, emb = rows[..., 0].sum(1), rows[..., 1:]
    assert linear.tolist() == [5.0, 11.0]
    assert emb.shape == (2, 2, 3)
    assert layer.table.weight[0].abs().sum() == 0  # padding row


def test_bags_are_mean_pooled_ignoring_padding():
    layer = Features(num_rows=10, embed_dim=2)
    ids = torch.tensor([[1]])
    bags = torch.tensor([[[3, 5, 0, 0]]])
    _, emb = layer(ids, bags)
    table = layer.sparse.table.weight
    torch.testing.assert_close(emb[0, 1], (table[3, 1:] + table[5, 1:]) / 2)


def test_dense_fields_scale_their_own_vector_and_join_the_fields():
    layer = Features(num_rows=10, embed_dim=2, num_dense=2)
    ids = torch.tensor([[1]])
    dense = torch.tensor([[2.0, -1.0]])
    linear, emb = layer(ids, None, dense)
    w = layer.dense.weight
    assert emb.shape == (1, 3, 2)
    torch.testing.assert_close(emb[0, 1:], torch.stack([2 * w[0, 1:], -w[1, 1:]]))
    torch.testing.assert_close(linear[0], layer.sparse.table.weight[1, 0] + 2 * w[0, 0] - w[1, 0])


def test_every_registered_model_returns_one_logit_per_row():
    ids = torch.randint(1, 50, (8, 3))
    bags = torch.randint(0, 50, (8, 1, 4))
    dense = torch.randn(8, 2)
    for name in MODELS:
        model = build_model(name, num_rows=50, num_fields=6, num_dense=2, embed_dim=4, mlp=(8,), dropout=0.1)
        assert model(ids, bags, dense).shape == (8,), name


def test_deepfm_starts_as_its_fm_part():
    torch.manual_seed(0)
    deep = build_model("deepfm", num_rows=50, num_fields=3, embed_dim=4, mlp=(8,), dropout=0.0).eval()
    fm = build_model("fm", num_rows=50, num_fields=3, embed_dim=4)
    fm.load_state_dict({k: v for k, v in deep.state_dict().items() if not k.startswith("mlp.")})
    ids = torch.randint(1, 50, (16, 3))
    mlp_bias = deep.mlp.output.bias
    torch.testing.assert_close(deep(ids), fm.eval()(ids) + mlp_bias)


def test_checkpoints_with_the_old_flat_mlp_load_through_the_key_migration(tmp_path):
    """State dicts written by the flat-MLP version (``mlp.weights``, ``mlp.running_mean/var``,
    tests/data/flat_mlp_state_dicts.pt, with that version's eval logits) load and predict the same."""
    from pathlib import Path

    from deepfm.artifact.checkpoint import save_checkpoint
    from deepfm.artifact.migrate import migrate_state_dict
    from deepfm.artifact.trained import load_model
    from deepfm.config import TrainConfig

    old = torch.load(Path(__file__).parent / "data" / "flat_mlp_state_dicts.pt", weights_only=True)
    for name, case in old.items():
        assert "mlp.weights" in case["state_dict"]
        model = build_model(
            name, num_rows=30, num_fields=4, num_dense=1, embed_dim=4, mlp=(6, 5), dropout=0.5
        )
        state = migrate_state_dict(model, case["state_dict"])
        model.load_state_dict(state)  # strict: every key of the new layout is there
        assert "mlp.linear0.weight" in state and "mlp.norm1.running_var" in state
        logits = model.eval()(case["ids"], case["bags"], case["dense"])
        torch.testing.assert_close(logits, case["logits"])
        assert migrate_state_dict(model, model.state_dict()).keys() == model.state_dict().keys()

    # a whole old-layout checkpoint file goes through load_model
    import pandas as pd

    frame = pd.DataFrame({"user_id": [1, 2, 3, 4], "movie_id": [5, 6, 7, 8]})
    fmap = fit_map(frame, ["user_id", "movie_id"])
    config = TrainConfig(model="deepfm", embed_dim=4, mlp=(6, 5))
    model = build_model("deepfm", num_rows=fmap.num_rows, num_fields=2, embed_dim=4, mlp=(6, 5))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    params = dict(model.mlp.named_parameters())
    order = ["linear0.weight", "linear0.bias", "norm0.weight", "norm0.bias"]
    order += [k.replace("0", "1") for k in order] + ["output.weight", "output.bias"]
    flat_state = {k: v for k, v in model.state_dict().items() if not k.startswith("mlp.")}
    flat_state["mlp.weights"] = torch.cat([params[k].detach().flatten() for k in order])
    flat_state["mlp.running_mean"] = torch.cat([model.mlp.norm0.running_mean, model.mlp.norm1.running_mean])
    flat_state["mlp.running_var"] = torch.cat([model.mlp.norm0.running_var, model.mlp.norm1.running_var])
    path = save_checkpoint(tmp_path / "model.pt", model, fmap, config, state_dict=flat_state)
    loaded = load_model(path).module
    ids = torch.tensor([[1, 3], [2, 4]])
    torch.testing.assert_close(loaded(ids), model.eval()(ids))
