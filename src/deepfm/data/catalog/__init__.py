"""The built-in data sets (``--dataset NAME``): each a dataset spec built from its folder.

``dataset_spec(options)`` is the spec a run prepares: the built-in ``options.dataset`` in
``options.data_dir`` (or the download cache) shaped by its catalog options, or the spec file
``options.spec``. Every data set then goes through the same prepare stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepfm.data.catalog import ctr, movielens
from deepfm.data.catalog.entry import CATALOG_OPTIONS, Entry
from deepfm.data.options import PrepareOptions
from deepfm.data.spec import DatasetSpec, load_spec
from deepfm.errors import ConfigError

CATALOG: dict[str, Entry] = {e.name: e for e in [*movielens.ENTRIES, *ctr.ENTRIES]}


def dataset_names() -> list[str]:
    return sorted(CATALOG)


def entry(name: str) -> Entry:
    if name not in CATALOG:
        raise ConfigError(f"unknown dataset {name!r}; built-in data sets are {dataset_names()}")
    return CATALOG[name]


def check_catalog_options(options: PrepareOptions, takes: tuple[str, ...], what: str) -> None:
    """Catalog options the data set does not read must keep their defaults (never silently dropped)."""
    defaults = PrepareOptions()
    for name in CATALOG_OPTIONS:
        if name not in takes and getattr(options, name) != getattr(defaults, name):
            flag = "--" + name.replace("_", "-")
            value = getattr(options, name)
            raise ConfigError(
                f"{flag} {value if not isinstance(value, bool) else ''}".rstrip()
                + f" is for the built-in MovieLens data sets; {what} does not read it"
                + (
                    ""
                    if name != "split"
                    else ": declare the split in the spec, e.g. "
                    "split: {method: leave_last, group: user_id, time: timestamp}"
                )
            )


def dataset_spec(options: PrepareOptions) -> DatasetSpec:
    """The spec ``options`` name: a spec file, or a built-in data set in its folder."""
    if options.spec:
        spec = load_spec(options.spec)
        check_catalog_options(options, (), f"{spec.name} (declared by a spec)")
        return spec
    found = entry(options.dataset)
    check_catalog_options(options, found.options, options.dataset)
    return found.spec(Path(options.data_dir) if options.data_dir is not None else None, options)


def template(name: str, options: PrepareOptions | None = None) -> dict[str, Any]:
    """Built-in ``name`` as a spec mapping with its own file names (``deepfm datasets --show``)."""
    found = entry(name)
    options = options or PrepareOptions(dataset=name)
    check_catalog_options(options, found.options, name)
    return found.template(options)


__all__ = ["CATALOG", "Entry", "dataset_names", "dataset_spec", "entry", "template"]
