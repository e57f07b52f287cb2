"""Warm start (``--init-from RUN``): a new run on new data starting from a trained run's weights.

The new vocabulary is the old one plus the new data's values (built by the data preparation
with ``base=`` the old feature map, see :func:`deepfm.data.features.choose_vocab`), so every old
value keeps an embedding row. Weights are carried over generically, by ``state_dict`` key:

* embedding tables (every ``nn.Embedding`` / ``nn.EmbeddingBag`` weight whose rows are the
  feature map's rows; and any 2-D tensor whose first dimension is the old and new row count)
  are remapped row by row through old -> new vocabulary: each value (and each field's OOV row,
  and each bucket of a hashed field with the same bucket count) takes its old row exactly; new
  rows keep the model's fresh initialisation;
* every other tensor with the same key and shape is copied (MLP, biases, numeric-field vectors,
  BatchNorm statistics); a tensor whose shape changed (e.g. another ``--mlp``) stays fresh and
  is reported.

The model's per-field input blocks (the MLP's and cross network's input columns, the numeric
fields' vectors) follow the feature map's field order. The prepare stage keeps the base's fields
in the base's order (new fields after them), so the same fields listed in another order line up
by name. When the fields themselves changed (one dropped and another added, a rename) but the
field count did not, a tensor shaped by the field layout (a dimension of fields x embedding
size, or the numeric fields' ``[K, 1 + D]`` vectors) would line up by position only: it stays
fresh and is reported.

With ``--init-optimizer`` the optimizer state of ``RUN/state.pt`` (Adam moments and step counts)
is carried over the same way, table rows remapped, new rows' moments zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfm.artifact.checkpoint import model_from_config, resolve
from deepfm.artifact.trained import TrainedModel, load_model
from deepfm.config import TrainConfig
from deepfm.data.features import FeatureMap
from deepfm.errors import CheckpointError, brief
from deepfm.training import auto
from deepfm.training.optim import optimizer_for
from deepfm.training.state import STATE_FILE, read_state


@dataclass
class Carried:
    """What a warm start carried over, for the log line and ``metrics.json``."""

    source: str
    tensors: int = 0
    tables: list[str] = field(default_factory=list)
    rows_carried: int = 0
    rows_new: int = 0
    rows_dropped: int = 0
    fresh: list[str] = field(default_factory=list)  # keys left at their initialisation
    optimizer: bool = False

    def describe(self) -> str:
        fresh = f"; left fresh (new, reshaped or laid out by other fields): {', '.join(self.fresh)}"
        fresh = fresh if self.fresh else ""
        opt = "; optimizer state carried" if self.optimizer else ""
        rows = (
            f"table rows: {self.rows_carried:,} carried, {self.rows_new:,} new, {self.rows_dropped:,} dropped"
            if self.tables
            else "no table rows carried (the embedding table has another shape: it starts fresh)"
        )
        return f"warm start from {self.source}: {self.tensors} tensors carried, {rows}{opt}{fresh}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Base:
    """What a warm start needs from the run it starts from, read before ``--out`` is cleared
    (``--init-from RUN --out RUN`` retrains in place)."""

    feature_map: FeatureMap
    model: TrainedModel | None = None  # None when resuming: the weights come from our state.pt
    optimizer_state: dict[str, Any] | None = None  # RUN/state.pt's optimizer (--init-optimizer)
    source: str = ""


def load_base(config: TrainConfig) -> Base | None:
    """The base of a warm-started run (None without ``--init-from``).

    A resumed warm-started run takes the base vocabulary saved in its own ``state.pt``, so it
    prepares exactly the data it started with even if ``RUN`` has changed (or is ``--out``).
    """
    if not config.init_from:
        return None
    if config.resume:
        saved = (read_state(Path(config.out) / STATE_FILE).get("run") or {}).get("base_feature_map")
        if saved:
            return Base(FeatureMap.from_dict(saved), source=config.init_from)
    model = load_model(config.init_from)
    optimizer_state = None
    if config.init_optimizer:
        path = resolve(config.init_from).parent / STATE_FILE
        optimizer_state = read_state(path).get("optimizer")
        if optimizer_state is None:
            raise CheckpointError(f"{path} holds no optimizer state for --init-optimizer")
    return Base(model.feature_map, model, optimizer_state, str(config.init_from))


def row_map(old: FeatureMap, new: FeatureMap) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new_rows, old_rows)``: the global rows of every value both maps know, paired.

    Matched per field name and kind: each field's OOV row, each vocabulary value, and the buckets
    of a hashed field whose bucket count did not change. The padding row 0 is left out.
    """
    new_rows: list[np.ndarray] = []
    old_rows: list[np.ndarray] = []
    for f in new.fields:
        if f.kind == "numeric":
            continue
        try:
            g = old.field(f.name)
        except KeyError:
            continue
        if g.kind != f.kind or bool(g.hash_buckets) != bool(f.hash_buckets):
            continue
        new_rows.append(np.array([f.offset]))  # OOV rows
        old_rows.append(np.array([g.offset]))
        if f.hash_buckets:
            if f.hash_buckets == g.hash_buckets:
                local = np.arange(1, f.hash_buckets + 1)
                new_rows.append(f.offset + local)
                old_rows.append(g.offset + local)
            continue
        where = g.index().get_indexer(np.asarray(f.vocab, dtype=object)) if f.vocab else np.zeros(0, int)
        known = where >= 0
        new_rows.append(f.offset + 1 + np.nonzero(known)[0])
        old_rows.append(g.offset + 1 + where[known])
    if not new_rows:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return (
        torch.from_numpy(np.concatenate(new_rows).astype(np.int64)),
        torch.from_numpy(np.concatenate(old_rows).astype(np.int64)),
    )


def table_keys(module: nn.Module, num_rows: int) -> set[str]:
    """``state_dict`` keys of the embedding tables: modules whose ``num_embeddings`` is ``num_rows``."""
    keys = set()
    for name, m in module.named_modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.num_embeddings == num_rows:
            keys.add(f"{name}.weight" if name else "weight")
    return keys


def _is_table(
    key: str, new: torch.Tensor, old: torch.Tensor, tables: set[str], rows: tuple[int, int]
) -> bool:
    """A named table, or any 2-D tensor with the new / old row counts as its first dimension."""
    if key in tables:
        return True
    same_width = new.shape[1:] == old.shape[1:]
    return new.dim() == 2 and old.dim() == 2 and (new.shape[0], old.shape[0]) == rows and same_width


def slots(feature_map: FeatureMap) -> list[str]:
    """Field names in the order of the model's input blocks (categorical, multi, numeric)."""
    return [f.name for f in (*feature_map.categorical, *feature_map.multi, *feature_map.numerics)]


def layout_shapes(old: FeatureMap, new: FeatureMap, embed_dim: int) -> tuple[set[int], set[tuple[int, ...]]]:
    """What marks a tensor shaped by the field layout when the fields changed but their count did
    not: ``(dimensions, shapes)`` (fields x ``embed_dim``; the numeric vectors ``[K, 1 + D]``);
    empty when the layouts are the same field by field (carrying by position is by name then)."""
    dims: set[int] = set()
    shapes: set[tuple[int, ...]] = set()
    if slots(old) != slots(new) and len(slots(old)) == len(slots(new)):
        dims.add(len(slots(new)) * embed_dim)
    old_numeric = [f.name for f in old.numerics]
    new_numeric = [f.name for f in new.numerics]
    if old_numeric != new_numeric and len(old_numeric) == len(new_numeric):
        shapes.add((len(new_numeric), 1 + embed_dim))
    return dims, shapes


def carry_state(
    new_state: dict[str, torch.Tensor],
    old_state: dict[str, torch.Tensor],
    tables: set[str],
    rows: tuple[int, int],
    pairs: tuple[torch.Tensor, torch.Tensor],
    report: Carried | None = None,
    layout: tuple[set[int], set[tuple[int, ...]]] = (set(), set()),
) -> dict[str, torch.Tensor]:
    """``new_state`` with every compatible tensor of ``old_state`` carried over (tables row by row;
    tensors marked by ``layout`` (:func:`layout_shapes`) stay fresh)."""
    out = dict(new_state)
    new_rows, old_rows = pairs
    dims, shapes = layout
    for key, fresh in new_state.items():
        old = old_state.get(key)
        if old is None or not isinstance(old, torch.Tensor):
            if report is not None:
                report.fresh.append(key)
            continue
        table = _is_table(key, fresh, old, tables, rows)
        if not table and (tuple(fresh.shape) in shapes or dims.intersection(fresh.shape)):
            if report is not None:
                report.fresh.append(key)
            continue
        if table and old.shape[1:] == fresh.shape[1:]:
            value = fresh.detach().clone()
            value[new_rows.to(value.device)] = old[old_rows].to(value)
            out[key] = value
            if report is not None:
                report.tensors += 1
                report.tables.append(key)
        elif old.shape == fresh.shape:
            out[key] = old.detach().clone().to(fresh)
            if report is not None:
                report.tensors += 1
        elif report is not None:
            report.fresh.append(key)
    return out


def warm_start(base: Base, module: nn.Module, feature_map: FeatureMap, optimizer: Any = None) -> Carried:
    """Load ``base``'s weights into ``module`` (built for ``feature_map``); with ``optimizer``, also
    the base run's optimizer state (``base.optimizer_state``)."""
    if base.model is None:
        raise CheckpointError(f"no model of {base.source} to start from")
    report = Carried(base.source)
    pairs = row_map(base.feature_map, feature_map)
    rows = (feature_map.num_rows, base.feature_map.num_rows)
    tables = table_keys(module, feature_map.num_rows)
    old_state = {k: v.detach().cpu() for k, v in base.model.module.state_dict().items()}
    layout = layout_shapes(base.feature_map, feature_map, base.model.config.embed_dim)
    merged = carry_state(module.state_dict(), old_state, tables, rows, pairs, report, layout)
    module.load_state_dict(merged)
    report.rows_carried = int(len(pairs[0])) if report.tables else 0  # a fresh table carried no row
    report.rows_new = feature_map.num_rows - 1 - report.rows_carried
    report.rows_dropped = base.feature_map.num_rows - 1 - report.rows_carried
    if optimizer is not None and base.optimizer_state is not None:
        carry_optimizer(base.model, base.optimizer_state, module, optimizer, tables, rows, pairs, layout)
        report.optimizer = True
    return report


def carry_optimizer(
    base: TrainedModel,
    saved: dict[str, Any],
    module: nn.Module,
    optimizer: Any,
    tables: set[str],
    rows: tuple[int, int],
    pairs: tuple[torch.Tensor, torch.Tensor],
    layout: tuple[set[int], set[tuple[int, ...]]] = (set(), set()),
) -> None:
    """Carry the base run's optimizer state ``saved`` onto ``optimizer``, by parameter name."""

    old_module = model_from_config(base.config, base.feature_map)  # same parameter order as base's
    # the base run's optimizer as it was built: ``auto`` resolved as that run resolved it
    choices = auto.resolve(base.config, old_module, base.feature_map)
    old_optimizer = optimizer_for(old_module, base.config, choices.optimizer)
    try:
        old_optimizer.load_state_dict(saved)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"the base run's optimizer state does not fit its model ({brief(exc)})"
        ) from None
    old_names = {id(p): n for n, p in old_module.named_parameters()}
    by_name: dict[str, dict[str, Any]] = {}
    for sub in _optimizers(old_optimizer):
        for group in sub.param_groups:
            for p in group["params"]:
                if sub.state.get(p):
                    by_name[old_names[id(p)]] = sub.state[p]
    new_names = {id(p): n for n, p in module.named_parameters()}
    for sub in _optimizers(optimizer):
        sd = sub.state_dict()
        index = 0
        for group in sub.param_groups:
            for p in group["params"]:
                name = new_names.get(id(p))
                old = by_name.get(name) if name else None
                if old:
                    sd["state"][index] = _carry_param_state(name, p, old, tables, rows, pairs, layout)
                index += 1
        sub.load_state_dict(sd)


def _carry_param_state(
    name: str,
    param: torch.Tensor,
    old: dict[str, Any],
    tables: set[str],
    rows: tuple[int, int],
    pairs: tuple[torch.Tensor, torch.Tensor],
    layout: tuple[set[int], set[tuple[int, ...]]] = (set(), set()),
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    dims, shapes = layout
    for key, value in old.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            table = value.dim() == 2 and (name in tables or (param.shape[0], value.shape[0]) == rows)
            moved = tuple(param.shape) in shapes or bool(dims.intersection(param.shape))
            if table and value.shape[1:] == param.shape[1:]:  # row by row, new rows' moments zero
                fresh = torch.zeros(param.shape, dtype=value.dtype)
                fresh[pairs[0]] = value[pairs[1]]
                state[key] = fresh
            elif value.shape == param.shape and not moved:
                state[key] = value.detach().clone()
            else:
                state[key] = torch.zeros(param.shape, dtype=value.dtype)
        else:
            state[key] = value.clone() if isinstance(value, torch.Tensor) else value
    return state


def _optimizers(optimizer: Any) -> list[Any]:
    return list(getattr(optimizer, "optimizers", None) or [optimizer])
