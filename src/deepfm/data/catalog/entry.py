"""What a built-in data set is: a name, a one-line description and the spec it builds.

A built-in data set is a dataset spec written by code: :attr:`Entry.spec` builds the spec of the
files in a folder (``--data-dir``, or the download cache) for the run's options, and
:attr:`Entry.template` the same spec with the data set's own file names, relative, which
``deepfm datasets --show NAME`` prints (saved beside the files, ``deepfm train --spec`` on it
prepares exactly what ``--dataset NAME`` prepares).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfm.data.options import PrepareOptions
from deepfm.data.spec import DatasetSpec

# the catalog options of PrepareOptions: they choose a built-in data set's fields, rows and split
CATALOG_OPTIONS = ("features", "drop_neutral", "split")


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    spec: Callable[[Path | None, PrepareOptions], DatasetSpec]  # (data_dir, options) -> spec
    template: Callable[[PrepareOptions], dict[str, Any]]  # options -> spec mapping, relative files
    options: tuple[str, ...] = ()  # the catalog options it reads; others must keep their defaults
