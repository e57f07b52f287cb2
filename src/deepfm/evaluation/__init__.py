"""Evaluation: metrics, the evaluator of an encoded split, file evaluation and plots."""
