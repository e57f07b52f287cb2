"""Experiments over runs: hyper-parameter search (tune), model comparison (compare) and tracking."""
