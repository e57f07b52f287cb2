import itertools

import torch

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
    mlp_bias = deep.mlp.tensors()[-1]
    torch.testing.assert_close(deep(ids), fm.eval()(ids) + mlp_bias)
