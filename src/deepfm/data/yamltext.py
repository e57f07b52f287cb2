"""YAML text read with YAML 1.2's numbers: ``1e-3`` and ``1E5`` are floats, as users mean them.

PyYAML implements YAML 1.1, whose float pattern needs a dot (``1.0e-3``), so ``lr: 1e-3`` in a
config, a tune space or a spec would arrive as the text ``'1e-3'``. :func:`load` is
``yaml.safe_load`` with YAML 1.2's float resolver added; quoted text (``'1e-3'``) stays text.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads YAML 1.2 floats (``1e-3``, ``-2E+5``, ``.5e1``)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load(text: str) -> Any:
    """``text`` parsed like ``yaml.safe_load``, with YAML 1.2 floats."""
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
