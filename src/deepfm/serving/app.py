"""The HTTP application behind ``deepfm serve`` (FastAPI): predict, recommend, health, docs.

``create_app(model)`` builds the app for one :class:`TrainedModel`; the request model of
``POST /predict`` is generated from the model's raw columns (:func:`deepfm.data.records.raw_columns`),
so a missing field or a value of the wrong type is refused by pydantic with 422 naming the field.
Batches over ``max_batch`` records (or bodies over ``max_bytes``) get 413. The network runs in eval
mode under ``torch.inference_mode()``; an unexpected failure becomes a 500 reply, never a crash.
"""

# No ``from __future__ import annotations``: FastAPI must see the real (locally built) Record type.
import logging
import math
from typing import Annotated, Any

import numpy as np
import pandas as pd
import torch
from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from deepfm import __version__
from deepfm.data.records import RawColumn, raw_columns
from deepfm.errors import DeepFMError
from deepfm.serving import MAX_BATCH
from deepfm.serving.recommend import can_recommend, recommend
from deepfm.training.checkpoint import TrainedModel

log = logging.getLogger("deepfm.serve")

BYTES_PER_RECORD = 2048  # default body limit: max_batch records of this size
MAX_K = 1000


class Probabilities(BaseModel):
    probabilities: list[float] = Field(description="click probability of each record, in order")


class RecommendResponse(BaseModel):
    user: Any
    known_user: bool = Field(description="false: the user was not in training (scored as OOV)")
    excluded: int = Field(description="items skipped because the user rated them in training")
    candidates: int = Field(description="items scored")
    items: list[dict[str, Any]] = Field(
        description="best first: the item id (e.g. movie_id), its title when the model has one, score"
    )


class Health(BaseModel):
    status: str
    version: str
    model: str
    fields: list[str]
    record_columns: list[str]
    max_batch: int
    recommend: bool


def record_model(columns: list[RawColumn]) -> type[BaseModel]:
    """A pydantic model of one raw record: one required field per raw column, extra keys ignored."""
    scalar: dict[str, Any] = {"int": int, "float": float, "str": str, "any": int | float | str}
    fields: dict[str, Any] = {}
    for i, c in enumerate(columns):
        kind = scalar[c.dtype]
        if c.kind == "numeric":
            kind = float | None
        elif c.kind == "sequence":
            kind = list[kind]
        fields[f"f{i}"] = (kind, Field(alias=c.name))
    config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, populate_by_name=False)
    return create_model("Record", __config__=config, **fields)


class BodyLimit:
    """Pure ASGI middleware: 413 for a declared ``Content-Length`` over ``max_bytes``, before reading."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_bytes:
                detail = f"request body of {int(length):,} bytes is over the limit of {self.max_bytes:,}"
                await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(model: TrainedModel, max_batch: int = MAX_BATCH, max_bytes: int | None = None) -> FastAPI:
    """The FastAPI app serving ``model`` (use ``uvicorn.run(app)`` or FastAPI's ``TestClient``)."""
    model.module.eval()
    columns = raw_columns(model.feature_map, model.tables)
    names = [c.name for c in columns]
    Record = record_model(columns)  # noqa: N806 (a class)
    max_bytes = max_bytes if max_bytes is not None else max_batch * BYTES_PER_RECORD
    example = {c.name: _example(model, c) for c in columns}
    app = FastAPI(
        title="deepfm",
        version=__version__,
        description=f"{model.config.model} click-through-rate model; a record carries {names}.",
    )

    app.add_middleware(BodyLimit, max_bytes=max_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler fails (500) when the echoed input holds NaN / Infinity
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(DeepFMError)
    async def deepfm_error(request: Request, exc: DeepFMError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/health", response_model=Health, summary="liveness and what the model expects")
    def health() -> Health:
        return Health(
            status="ok",
            version=__version__,
            model=model.config.model,
            fields=[f.name for f in model.feature_map.fields],
            record_columns=names,
            max_batch=max_batch,
            recommend=can_recommend(model),
        )

    @app.post(
        "/predict",
        response_model=Probabilities,
        summary="click probabilities of raw records",
        responses={
            413: {"description": f"more than {max_batch} records"},
            422: {"description": "bad record"},
        },
    )
    def predict(records: Annotated[list[Record], Body(examples=[[example]])]) -> Probabilities:  # type: ignore[valid-type]
        if len(records) > max_batch:
            raise HTTPException(413, f"{len(records):,} records is over the limit of {max_batch:,} a request")
        if not records:
            return Probabilities(probabilities=[])
        frame = pd.DataFrame({c: [getattr(r, f"f{i}") for r in records] for i, c in enumerate(names)})
        return Probabilities(probabilities=_run(lambda: model.predict(frame)).tolist())

    @app.get(
        "/recommend",
        response_model=RecommendResponse,
        summary="top-k items the user has not rated in training",
        responses={404: {"description": "the model has no user and item fields"}},
    )
    def recommend_items(
        user: Annotated[str, Query(description="user id, as in the training data")],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="how many items")] = 10,
        exclude_rated: Annotated[bool, Query(description="skip items rated in training")] = True,
    ) -> RecommendResponse:
        if not can_recommend(model):
            raise HTTPException(404, "this model has no user and item fields to recommend from")
        result = _run(lambda: recommend(model, user, k, exclude_rated))
        return RecommendResponse(**result.to_dict())

    return app


def _run(call: Any) -> Any:
    """Run the model under ``inference_mode``; user errors -> 422, anything else -> 500."""
    try:
        with torch.inference_mode():
            return call()
    except DeepFMError as exc:
        raise HTTPException(422, str(exc)) from None
    except Exception as exc:  # never let a request take the server down
        log.exception("prediction failed")
        raise HTTPException(500, f"internal error: {type(exc).__name__}") from None


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats as strings, so it renders as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _example(model: TrainedModel, column: RawColumn) -> Any:
    if column.kind == "numeric":
        return 0.0
    try:
        vocab = model.feature_map.field(column.name).vocab
    except KeyError:
        vocab = model.tables[column.name][column.name].head(1).tolist()
    value = vocab[0] if vocab else 0
    value = value.item() if isinstance(value, np.generic) else value
    return [value] if column.kind == "sequence" else value
