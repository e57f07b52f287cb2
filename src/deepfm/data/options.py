"""The options that decide what a prepared data set holds: one frozen type, read everywhere.

``deepfm train`` / ``deepfm prepare`` flags, ``deepfm.fit`` keywords and ``TrainConfig`` fields of
the same names all become one :class:`PrepareOptions`; the prepared-data cache key and
``deepfm tune``'s in-memory cache are keyed by it, so two runs share prepared data exactly when
every option that changes it is equal. Light on purpose (no NumPy, Polars or torch): option
parsing imports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# The allowed values of the data options that take a name (argparse choices, validation, docs).
FEATURES = ("ids", "all", "all+time")  # built-in MovieLens: which fields (catalog option)
SPLITS = ("random", "leave-last")  # built-in MovieLens: how rows become train / valid / test
BAD_LINES = ("error", "skip")  # a malformed row stops the run, or is skipped and counted
CHOICES: dict[str, tuple[str, ...]] = {"features": FEATURES, "split": SPLITS, "on_bad_lines": BAD_LINES}
# how `deepfm predict` / `deepfm evaluate` read a file (deepfm.data.layouts): records, a built-in
# data set's ratings file by its name, or the model's own spec
LAYOUT_DATASETS = ("movielens-1m", "movielens-100k")
LAYOUTS = ("auto", "records", *LAYOUT_DATASETS, "spec")
# The engines that run the prepare stage (``deepfm prepare --engine``): both write the same folder.
ENGINES = ("polars", "spark")
ENGINE_CHOICES: dict[str, tuple[str, ...]] = {"engine": ENGINES}


@dataclass(frozen=True)
class PrepareOptions:
    """Where the data comes from and every option that changes what is prepared from it."""

    dataset: str = "movielens-1m"  # a built-in data set (``deepfm datasets``), when no spec is given
    data_dir: str | None = None  # its files (default: downloaded once into the cache folder)
    spec: str | None = None  # a dataset spec file (YAML/TOML); replaces ``dataset``
    features: str = "ids"  # built-in MovieLens: "ids", "all" (side features), "all+time"
    drop_neutral: bool = False  # built-in MovieLens: drop rating-3 rows instead of labelling them 0
    split: str = "random"  # built-in MovieLens: "random" 80/10/10 or "leave-last" per user
    min_count: int = 1  # values seen fewer times in training go to the out-of-vocabulary row
    max_vocab: int = 0  # keep at most this many values per field, the most frequent (0 = all)
    on_bad_lines: str = "error"  # "error" or "skip" malformed rows
    seed: int = 0  # the random split's seed (when the spec does not fix one)
    prune_below: int = 0  # warm start: drop base values seen fewer times in the new training rows

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, values: Any) -> PrepareOptions:
        """The options held by ``values``: any object with attributes of these names (a
        :class:`~deepfm.config.TrainConfig`) or a mapping; absent names keep their defaults."""
        get = values.get if isinstance(values, dict) else lambda n, d: getattr(values, n, d)
        defaults = cls()
        return cls(**{n: get(n, getattr(defaults, n)) for n in cls.names()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> tuple[Any, ...]:
        """A hashable identity (e.g. ``deepfm tune``'s cache of prepared data)."""
        return tuple(getattr(self, n) for n in self.names())


@dataclass(frozen=True)
class EngineOptions:
    """Which engine runs the prepare stage, and where. Not a :class:`PrepareOptions` field: both
    engines write the same prepared data (a parity contract), so no cache key depends on it."""

    engine: str = "polars"  # "polars" (one machine, streamed) or "spark" (Apache Spark jobs)
    master: str = "local[*]"  # spark: the cluster (local[N], spark://HOST:7077, yarn, local-cluster[...])
    conf: tuple[str, ...] = ()  # spark: settings passed through, each "key=value"

    def problems(self) -> list[str]:
        """What is wrong with these options (empty: nothing)."""
        found = []
        if self.engine not in ENGINES:
            found.append(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        for item in self.conf:
            if "=" not in item or not item.split("=", 1)[0].strip():
                found.append(f"--conf takes key=value (a Spark setting), got {item!r}")
        if self.engine != "spark" and (self.conf or self.master != EngineOptions.master):
            found.append("--master and --conf are options of --engine spark")
        return found

    def settings(self) -> dict[str, str]:
        """``conf`` as a mapping (a later key=value wins)."""
        return {k.strip(): v for k, v in (item.split("=", 1) for item in self.conf)}
