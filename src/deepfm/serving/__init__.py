"""Using a trained model: batch prediction from files, recommendations, export and the HTTP app.

``predict`` reads raw records (CSV / Parquet / JSON Lines) and writes probabilities; ``recommend``
ranks every unrated item for a user in one forward pass; ``export`` writes ONNX / TorchScript
graphs over encoded index tensors; ``app`` is the FastAPI application behind ``deepfm serve``.
"""

MAX_BATCH = 10_000  # default most records one POST /predict may carry
