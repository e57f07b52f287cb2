"""Fused training forwards of the built-in models, registered by model class.

Each builder reads the model's plain structure (the shared input layer ``Features``, an
``MLP``, ...) once and returns a function ``(ids, bags, dense) -> logits`` made of the nodes
of ``deepfm.fast.kernels``: the input layer as one node (categorical ids: gather, first order,
FM and MLP input together; with bags / numeric fields: one gather node for ids and pooled bags,
the numeric fields' plain rows, then one node),
the MLP as one node, DeepFM / Wide & Deep on ids as a single node for the whole model. Dropout
masks are drawn from :mod:`deepfm.masks` in the plain modules' order, so both paths use the same.

On categorical ids alone, DeepFM, Wide & Deep, FM and LR also get a training step (``Fused.step``):
the same kernels with the BCE loss and the gradients computed in one call, no autograd graph.
Why: on a MovieLens-sized step (~1.4 ms, batch 1024) the graph (the node, the loss node, one
``AccumulateGrad`` per parameter) and the backward engine cost ~27% of the step (interleaved
epochs, same numbers; benchmarks/README.md).
"""

from __future__ import annotations

import torch
from torch import nn

from deepfm import masks
from deepfm.fast.kernels import (
    MLPNode,
    MLPSpec,
    RowsNode,
    SparseRowsNode,
    TableGrad,
    TableMLPNode,
    TableNode,
    assign_grads,
    bce_loss_grad,
    fm_consts,
    gather,
    rows_backward,
    rows_forward,
    scatter,
    table_mlp_backward,
    table_mlp_forward,
)
from deepfm.fast.registry import BatchLayout, Forward, Fused, register
from deepfm.models.dcnv2 import DCNv2
from deepfm.models.deepfm import DeepFM
from deepfm.models.fm import FM
from deepfm.models.layers import MLP, Dropout, Features
from deepfm.models.lr import LR
from deepfm.models.widedeep import WideDeep

Tensor = torch.Tensor


def mlp_spec(mlp: nn.Module) -> MLPSpec | None:
    """The :class:`MLPSpec` of a plain :class:`MLP` (Linear, BatchNorm?, ReLU, Dropout? per hidden
    layer, then an output Linear), or ``None`` for anything else."""
    if not isinstance(mlp, MLP):
        return None
    layers = list(mlp.children())
    spec = MLPSpec([], [], [], layers[-1])
    i = 0
    while i < len(layers) - 1:
        if not isinstance(layers[i], nn.Linear):
            return None
        spec.linears.append(layers[i])
        i += 1
        norm = layers[i] if isinstance(layers[i], nn.BatchNorm1d) else None
        if norm is not None and (norm.momentum is None or not norm.track_running_stats or not norm.affine):
            return None
        spec.norms.append(norm)
        i += norm is not None
        if not isinstance(layers[i], nn.ReLU):
            return None
        i += 1
        p = 0.0
        if i < len(layers) - 1 and isinstance(layers[i], nn.Dropout):
            if type(layers[i]) is not Dropout:  # masks from another source: not ours to reproduce
                return None
            p = layers[i].p
            i += 1
        spec.dropouts.append(p)
    return spec if isinstance(spec.output, nn.Linear) else None


def keep_masks(spec: MLPSpec, batch: int) -> list[Tensor | None]:
    """This step's keep masks, one per hidden layer, drawn as the plain ``Dropout`` layers would."""
    return [
        masks.keep((batch, linear.out_features), p, linear.weight.dtype) if p > 0 else None
        for linear, p in zip(spec.linears, spec.dropouts, strict=True)
    ]


class InputLayer:
    """``features`` as one node: ``(first order (+ FM) [B], MLP input [B, F*D] or None)``."""

    def __init__(self, features: Features, fm: bool, want_emb: bool) -> None:
        self.features, self.fm, self.want_emb = features, fm, want_emb
        self._consts: dict[tuple, tuple] = {}

    def consts(self, fields: int, like: Tensor) -> tuple | None:
        if not self.fm:
            return None
        key = (fields, like.shape[-1], like.device, like.dtype)
        if key not in self._consts:
            self._consts[key] = fm_consts(*key)
        return self._consts[key]

    def ids_only(self, bags: Tensor | None, dense: Tensor | None) -> bool:
        return bags is None and (dense is None or self.features.dense is None)

    def __call__(
        self, ids: Tensor, bags: Tensor | None, dense: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        embedding = self.features.sparse.table
        if self.ids_only(bags, dense):
            consts = self.consts(ids.shape[1], embedding.weight)
            return TableNode.apply(embedding.weight, ids, embedding, consts, self.want_emb)
        rows = SparseRowsNode.apply(embedding.weight, ids, bags, embedding)  # ids + pooled bags
        if dense is not None and self.features.dense is not None:
            rows = torch.cat([rows, self.features.dense(dense)], dim=1)
        out, emb = RowsNode.apply(rows, self.consts(rows.shape[1], rows), self.want_emb)
        if self.fm:  # the pairs inside sum-pooled (libsvm) bags, as the plain model adds them
            out = out + self.features.bag_pairs(bags)
        return out, emb


def deep_forward(model: nn.Module, layout: BatchLayout, fm: bool) -> Fused | None:
    """DeepFM (``fm``) and Wide & Deep: ``bias + first order (+ FM) + MLP(emb)``; on ids alone
    also a training step without autograd."""
    spec = mlp_spec(model.mlp)
    if spec is None:
        return None
    inputs = InputLayer(model.features, fm, want_emb=True)
    table = model.features.sparse.table
    grad_table_tensor = TableGrad()

    def forward(ids: Tensor, bags: Tensor | None, dense: Tensor | None) -> Tensor:
        if inputs.ids_only(bags, dense):  # the whole model as one node
            consts = inputs.consts(ids.shape[1], table.weight)
            keeps = keep_masks(spec, ids.shape[0])
            return TableMLPNode.apply(
                table.weight, model.bias, ids, table, consts, spec, keeps, *spec.params()
            )
        out, emb = inputs(ids, bags, dense)
        z = MLPNode.apply(emb, spec, keep_masks(spec, emb.shape[0]), *spec.params())
        return model.bias + out + z

    @torch.no_grad()
    def step(ids: Tensor, bags: Tensor | None, dense: Tensor | None, label: Tensor) -> Tensor | None:
        if not inputs.ids_only(bags, dense):
            return None
        consts = inputs.consts(ids.shape[1], table.weight)
        keeps = keep_masks(spec, ids.shape[0])
        params = spec.params()
        z, saved = table_mlp_forward(table.weight, model.bias, ids, consts, spec, keeps, params)
        loss, grad_z = bce_loss_grad(z, label)
        # a frozen MLP (warm-up): no backward through it, as autograd with its input detached
        train_mlp = any(p.requires_grad for p in params)
        grad_table, grad_bias, grads = table_mlp_backward(
            saved, table, consts, spec, keeps, params, grad_z, mlp=train_mlp, reuse=grad_table_tensor
        )
        assign_grads([table.weight, model.bias], [grad_table, grad_bias])
        if grads is not None:
            assign_grads(params, grads)
        return loss

    return Fused(forward, step)


@register(DeepFM)
def deepfm(model: DeepFM, layout: BatchLayout) -> Fused | None:
    return deep_forward(model, layout, fm=True)


@register(WideDeep)
def widedeep(model: WideDeep, layout: BatchLayout) -> Fused | None:
    return deep_forward(model, layout, fm=False)


def shallow_forward(model: nn.Module, fm: bool) -> Fused:
    """FM (``fm``) and logistic regression: ``bias + first order (+ FM)``, the input layer alone;
    on ids alone also a training step without autograd."""
    inputs = InputLayer(model.features, fm, want_emb=False)
    table = model.features.sparse.table
    grad_table_tensor = TableGrad()

    def forward(ids: Tensor, bags: Tensor | None, dense: Tensor | None) -> Tensor:
        return model.bias + inputs(ids, bags, dense)[0]

    @torch.no_grad()
    def step(ids: Tensor, bags: Tensor | None, dense: Tensor | None, label: Tensor) -> Tensor | None:
        if not inputs.ids_only(bags, dense):
            return None
        consts = inputs.consts(ids.shape[1], table.weight)
        rows, flat_ids = gather(table.weight, ids)
        out, _, s = rows_forward(rows, ids.shape[1], consts, False)
        loss, grad_z = bce_loss_grad(out.add_(model.bias), label)
        grad_rows = rows_backward(rows, s, ids.shape[1], consts, grad_z, None)
        grad_table = scatter(grad_rows, flat_ids, table, grad_table_tensor)
        assign_grads([table.weight, model.bias], [grad_table, grad_z.sum(0, keepdim=True)])
        return loss

    return Fused(forward, step)


@register(FM)
def fm(model: FM, layout: BatchLayout) -> Fused | None:
    return shallow_forward(model, fm=True)


@register(LR)
def lr(model: LR, layout: BatchLayout) -> Fused | None:
    return shallow_forward(model, fm=False)


@register(DCNv2)
def dcnv2(model: DCNv2, layout: BatchLayout) -> Forward | None:
    """Input layer and MLP as nodes; the cross network stays plain (GEMM-bound already)."""
    spec = mlp_spec(model.mlp)
    if spec is None:
        return None
    inputs = InputLayer(model.features, fm=False, want_emb=True)

    def forward(ids: Tensor, bags: Tensor | None, dense: Tensor | None) -> Tensor:
        linear, x0 = inputs(ids, bags, dense)
        cross = model.cross_head(model.cross(x0)).squeeze(1)
        z = MLPNode.apply(x0, spec, keep_masks(spec, x0.shape[0]), *spec.params())
        return linear + cross + z

    return forward
