"""The HTTP application behind ``deepfm serve`` (FastAPI): predict, recommend, health, docs.

``create_app(model)`` builds the app for one :class:`TrainedModel`. ``POST /predict`` parses the
body with orjson (strict JSON: NaN, Infinity and lone surrogates are ``json_invalid``) and encodes
the records with the model's precompiled :class:`~deepfm.serving.encoder.RecordEncoder` (the same
rules as ``TrainedModel.predict``: unknown ids -> OOV row, null / ``""`` numeric -> missing,
non-finite or out-of-range numbers -> 422 naming the field); the OpenAPI schema of a record is
still generated from the model's raw columns. Batches over ``max_batch`` records get 413; bodies
over ``max_bytes`` get 413 while they stream (:class:`BodyLimit` counts the bytes received,
chunked or not). The network runs in eval mode under ``torch.inference_mode()``; an unexpected
failure becomes a 500 reply, never a crash.
"""

# No ``from __future__ import annotations``: FastAPI must see the real (locally built) Record type.
import logging
import math
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import orjson
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from deepfm.artifact.recommend import DISCOUNT, can_recommend, recommend
from deepfm.artifact.trained import TrainedModel
from deepfm.data.records import RawColumn, raw_columns
from deepfm.errors import DeepFMError
from deepfm.evaluation.scoring import non_finite
from deepfm.serving import MAX_BATCH
from deepfm.serving.encoder import RecordEncoder, RecordError
from deepfm.serving.graph import serving_forward
from deepfm.version import __version__

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
    rare: int = Field(description="items skipped because fewer than min_item_count users rated them")
    discount: float = Field(description="the discount the items were ranked with (0 for an unknown user)")
    items: list[dict[str, Any]] = Field(
        description="best first: the item id (e.g. movie_id), its title when the model has one, score, "
        "and rank_score when discount > 0"
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
    """A pydantic model of one raw record, for the OpenAPI page: one required field per raw column.

    Ids take any scalar (an unknown one scores as the field's OOV row); numeric values take a
    number, numeric text, or null / ``""`` for missing. The server validates with its encoder.
    """
    scalar: dict[str, Any] = {"int": int | str | None, "float": float | str | None, "str": str | int | None}
    scalar["any"] = int | float | str | None
    fields: dict[str, Any] = {}
    for i, c in enumerate(columns):
        kind = scalar[c.dtype]
        if c.kind == "numeric":
            kind = float | str | None
        elif c.kind == "multi":
            kind = list[kind]
        fields[f"f{i}"] = (kind, Field(alias=c.name))
    config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, populate_by_name=False)
    return create_model("Record", __config__=config, **fields)


Handler = Callable[[bytes], tuple[int, bytes]]
JSON_HEADERS = [(b"content-type", b"application/json")]


class BodyLimit:
    """Pure ASGI middleware: 413 once a request body is over ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before reading; otherwise the body is
    counted while it streams (chunked uploads included) and refused as soon as the count passes
    the limit, so memory never holds more than ``max_bytes`` of a body. The app sees the body only
    once it is complete and within the limit.
    """

    def __init__(self, app: Any, max_bytes: int, fast: dict[str, Handler] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.fast = fast or {}  # POST path -> handler answering from the body (see Predictor)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await _too_large(scope, receive, send, f"request body of {int(length):,} bytes", self.max_bytes)
            return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                parts.clear()
                await _too_large(
                    scope, receive, send, f"request body of over {self.max_bytes:,} bytes", self.max_bytes
                )
                return
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        parts.clear()
        handler = self.fast.get(scope["path"]) if scope.get("method") == "POST" else None
        if handler is not None:  # the hot path: no routing or dependency solving per request
            ctype = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
            if not is_json(ctype):
                status, content = unsupported(ctype)
            elif len(body) > OFF_LOOP_BYTES:  # a large batch: score it in a worker thread
                status, content = await run_in_threadpool(handler, body)
            else:  # a small one is quicker on the loop than a thread hop
                status, content = handler(body)
            await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
            await send({"type": "http.response.body", "body": content})
            return
        delivered = False

        async def replay() -> Any:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


OFF_LOOP_BYTES = 64 * 1024  # bodies larger than this are scored off the event loop (/health stays live)


def is_json(content_type: str) -> bool:
    """Whether a Content-Type declares JSON (``application/json``, ``application/*+json``)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def unsupported(content_type: str) -> tuple[int, bytes]:
    """415 for a body not declared as JSON (a form, text/plain, no Content-Type)."""
    shown = content_type or "none"
    detail = f"Content-Type {shown!r} is not JSON; send the records as application/json"
    return 415, orjson.dumps({"detail": detail})


async def _too_large(scope: Any, receive: Any, send: Any, what: str, limit: int) -> None:
    detail = f"{what} is over the limit of {limit:,}"
    response = JSONResponse({"detail": detail}, status_code=413, headers={"connection": "close"})
    await response(scope, receive, send)


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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler fails (500) when the echoed input holds NaN / Infinity or a lone
        # surrogate: make the detail strict, encodable JSON
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(DeepFMError)
    async def deepfm_error(request: Request, exc: DeepFMError) -> JSONResponse:
        return JSONResponse({"detail": _finite(str(exc))}, status_code=422)

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

    predictor = Predictor(model, max_batch)
    schema = {"type": "array", "items": Record.model_json_schema(by_alias=True), "example": [example]}
    app.add_middleware(BodyLimit, max_bytes=max_bytes, fast={"/predict": predictor})

    @app.post(
        "/predict",
        response_model=Probabilities,
        summary="click probabilities of raw records",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
        },
        responses={
            413: {"description": f"more than {max_batch} records, or a body over {max_bytes:,} bytes"},
            415: {"description": "the body is not declared as JSON (Content-Type)"},
            422: {"description": "bad record: detail[].loc names the record and field"},
        },
    )
    async def predict(request: Request) -> Response:
        # BodyLimit answers POST /predict itself (the same Predictor); this route documents it and
        # serves it when the app is mounted without that middleware
        ctype = request.headers.get("content-type", "")
        if not is_json(ctype):
            status, content = unsupported(ctype)
        else:
            status, content = await run_in_threadpool(predictor, await request.body())
        return Response(content, status_code=status, media_type="application/json")

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
        min_item_count: Annotated[
            int | None,
            Query(
                ge=0,
                description="only items at least this many users rated in training (default: 2% of them)",
            ),
        ] = None,
        discount: Annotated[
            float,
            Query(
                ge=0.0,
                le=1.0,
                description="rank by the log-odds of the user's score less this times an unknown "
                "user's (0: by score; 1: by lift)",
            ),
        ] = DISCOUNT,
    ) -> RecommendResponse:
        if not can_recommend(model):
            raise HTTPException(404, "this model has no user and item fields to recommend from")
        result = _run(lambda: recommend(model, user, k, exclude_rated, min_item_count, discount))
        return RecommendResponse(**result.to_dict())

    return app


class Predictor:
    """``POST /predict`` on a raw body: parse (orjson), encode (:class:`RecordEncoder`), one
    forward pass of the traced serving graph (:func:`serving_forward`), orjson reply.

    Returns ``(status, JSON bytes)``: 200 with the probabilities, 413 for too many records, 422 in
    FastAPI's shape (``{"detail": [{"type", "loc", "msg"}]}``) naming the record and field, 500
    (logged) for anything unexpected; it never raises.
    """

    def __init__(self, model: TrainedModel, max_batch: int) -> None:
        self.model = model
        self.max_batch = max_batch
        self.encoder = RecordEncoder(model.feature_map, model.tables)
        self.forward = serving_forward(model.module, model.feature_map)

    def __call__(self, body: bytes) -> tuple[int, bytes]:
        try:
            return self._predict(body)
        except Exception as exc:  # never let a request take the server down
            log.exception("prediction failed")
            return 500, orjson.dumps({"detail": f"internal error: {type(exc).__name__}"})

    def _predict(self, body: bytes) -> tuple[int, bytes]:
        try:
            records = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _invalid("json_invalid", ["body", exc.pos], f"JSON decode error: {exc.msg}")
        if isinstance(records, list) and len(records) > self.max_batch:
            detail = f"{len(records):,} records is over the limit of {self.max_batch:,} a request"
            return 413, orjson.dumps({"detail": detail})
        try:
            arrays = self.encoder.encode(records)
        except RecordError as exc:
            loc = ["body"] + ([exc.record] if exc.record is not None else [])
            loc += [exc.field] if exc.field is not None else []
            return _invalid(exc.kind, loc, exc.reason)
        if not records:
            probs = np.zeros(0, dtype=np.float32)
        elif self.encoder.uses_side_columns(records):  # the caller's side values win: pandas path
            try:
                with torch.inference_mode():
                    probs = self.model.predict(records)
            except DeepFMError as exc:
                return 422, orjson.dumps({"detail": _finite(str(exc))})
        else:
            probs = self.forward(arrays)
        # a numeric value so far out that the model overflows: 422 naming it, never a null
        found = non_finite(probs, arrays.get("dense"), self.model.feature_map, lambda i, c: records[i].get(c))
        if found is not None:
            record, column, reason = found
            return _invalid("value_error", ["body", record] + ([column] if column else []), reason)
        return 200, orjson.dumps({"probabilities": probs.tolist()})


def _invalid(kind: str, loc: list[Any], message: str) -> tuple[int, bytes]:
    """A 422 in FastAPI's shape: ``{"detail": [{"type", "loc", "msg"}]}``."""
    return 422, orjson.dumps({"detail": [{"type": kind, "loc": loc, "msg": _finite(message)}]})


def _run(call: Any) -> Any:
    """Run the model under ``inference_mode``; user errors -> 422, anything else -> 500."""
    try:
        with torch.inference_mode():
            return call()
    except DeepFMError as exc:
        raise HTTPException(422, _finite(str(exc))) from None
    except Exception as exc:  # never let a request take the server down
        log.exception("prediction failed")
        raise HTTPException(500, f"internal error: {type(exc).__name__}") from None


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats as strings, so it renders as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
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
    return [value] if column.kind == "multi" else value
