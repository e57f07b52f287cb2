"""Serving throughput: the real ``deepfm serve`` (uvicorn on 127.0.0.1) and offline prediction.

1. Starts ``python -m deepfm serve`` on a free loopback port, waits for ``/health``, then a
   separate client process sends ``--single`` one-record requests and ``--batches`` requests of
   ``--batch-rows`` records each to ``POST /predict`` (one keep-alive connection, sequential by
   default, ``--concurrency`` threads otherwise) and ``--recommend`` ``GET /recommend`` requests.
   Reports requests/s, rows/s and p50 / p99 latency.
2. Offline: the same encoded rows through PyTorch (``predict_split``) and ONNX Runtime (the
   exported graph), side by side with the same thread count, plus raw records end to end
   (``model.predict``: join, encode, forward). Reports rows/s and the ONNX / PyTorch ratio.

    python benchmarks/serving.py --model runs/ml1m
    python benchmarks/serving.py --data-dir ../shared/data/ml-1m-half   # trains 1 epoch first

Without ``--model`` a model is trained for one epoch on ``--data-dir`` (default: the shared
ml-1m-half when present, else generated MovieLens-format data) into a temporary folder.

Robustness (issue 16), against the same real server:

    python benchmarks/serving.py --model runs/ml1m --soak 20000          # mixed valid / invalid
    python benchmarks/serving.py --model runs/ml1m --chunked-mb 1024     # a 1 GB chunked body

``--soak N`` sends N requests, a fixed mix of valid and invalid ones (malformed JSON, lone
surrogates, NaN literals, missing fields, objects for ids, overflowing numbers, too many records,
bodies over the limit, bad ``/recommend`` queries), from ``--soak-concurrency`` (16) threads each
with its own keep-alive connection, stopping after ``--soak-seconds``; it reports the status counts
(any 5xx fails the run), ``/health`` afterwards and the server's RSS growth. ``--chunked-mb``
streams that many MB with ``Transfer-Encoding: chunked`` and reports the reply, how much was
sent before the server stopped reading, and the server's peak RSS growth while it streamed.
Latency runs use one ``http.client`` keep-alive connection (a light client: the numbers are the
server's, not the client library's), with request bodies JSON-encoded before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ml-1m-half"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="run folder of 'deepfm train' (default: train one for 1 epoch)")
    p.add_argument("--data-dir", help="data to train on when --model is not given")
    p.add_argument("--single", type=int, default=2000, help="one-record requests (default 2000)")
    p.add_argument("--batches", type=int, default=200, help="batch requests (default 200)")
    p.add_argument("--batch-rows", type=int, default=1000, help="records a batch request (default 1000)")
    p.add_argument("--recommend", type=int, default=200, help="GET /recommend requests (default 200)")
    p.add_argument("--concurrency", type=int, default=1, help="client threads (default 1)")
    p.add_argument("--threads", type=int, default=1, help="PyTorch / ONNX Runtime threads (default 1)")
    p.add_argument("--offline-rows", type=int, default=500_000, help="rows for offline predict")
    p.add_argument("--soak", type=int, default=0, help="mixed valid/invalid requests to send (0: skip)")
    p.add_argument("--soak-concurrency", type=int, default=16, help="soak client threads (default 16)")
    p.add_argument("--soak-seconds", type=float, default=600, help="soak time bound (default 600)")
    p.add_argument("--soak-rounds", type=int, default=1, help="repeat the soak (RSS after each round)")
    p.add_argument("--chunked-mb", type=int, default=0, help="MB of one chunked body to send (0: skip)")
    p.add_argument("--skip-latency", action="store_true", help="only the robustness runs")
    p.add_argument("--client", help=argparse.SUPPRESS)  # internal: run as the client process
    p.add_argument("--records", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        return client(args)

    sys.path.insert(0, str(ROOT / "src"))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else train_model(args, Path(tmp))
        records = sample_records(model_dir, max(args.single, args.batches * args.batch_rows), seed=0)
        (Path(tmp) / "records.json").write_text(json.dumps(records))
        server = serve_and_measure(args, model_dir, Path(tmp) / "records.json")
        if not args.skip_latency:
            server["in process"] = in_process(args, model_dir, Path(tmp) / "records.json")
        offline = offline_predict(args, model_dir, Path(tmp)) if not args.skip_latency else None
    print_report(args, server, offline)
    robust = server.pop("robustness", {})
    return 1 if robust.get("failed") else 0


def train_model(args: argparse.Namespace, tmp: Path) -> Path:
    data_dir = Path(args.data_dir) if args.data_dir else SHARED if (SHARED / "ratings.dat").exists() else None
    if data_dir is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import write_movielens

        data_dir = write_movielens(tmp / "ml" / "ratings.dat", n_users=6000, n_movies=3700, n=400_000).parent
    from deepfm.cli.main import main as deepfm_main

    out = tmp / "run"
    code = deepfm_main(
        ["train", "--data-dir", str(data_dir), "--out", str(out), "--epochs", "1", "--no-progress"]
    )
    if code != 0:
        raise SystemExit(code)
    return out


def sample_records(model_dir: Path, n: int, seed: int) -> list[dict]:
    """Raw records drawn from the model's vocabularies (ids as in the data)."""
    import pandas as pd

    import deepfm
    from deepfm.data.records import raw_columns

    model = deepfm.load(str(model_dir))
    rng = np.random.default_rng(seed)
    columns = {}
    for c in raw_columns(model.feature_map, model.tables):
        vocab = model.feature_map.field(c.name).vocab
        columns[c.name] = np.asarray(vocab)[rng.integers(0, len(vocab), n)]
    return json.loads(pd.DataFrame(columns).to_json(orient="records"))  # plain JSON, as a client sends


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_measure(args: argparse.Namespace, model_dir: Path, records: Path) -> dict:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "deepfm", "serve", "--model", str(model_dir), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--threads", str(args.threads), "--max-batch", str(args.batch_rows)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        results: dict = {}
        if not args.skip_latency:
            client_cmd = [sys.executable, __file__, "--client", url, "--records", str(records)]
            for flag in ("single", "batches", "batch_rows", "recommend", "concurrency"):
                client_cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            done = subprocess.run(client_cmd, env=env, capture_output=True, text=True, check=True)
            results = json.loads(done.stdout)
        if args.soak or args.chunked_mb:
            results["robustness"] = robustness(args, port, server.pid, records)
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)


class Reply:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code = status
        self.content = body

    def json(self) -> object:
        return json.loads(self.content)

    def raise_for_status(self) -> Reply:
        if self.status_code >= 400:
            raise RuntimeError(f"HTTP {self.status_code}: {self.content[:200]!r}")
        return self


class Http:
    """One keep-alive ``http.client`` connection per thread (reconnects after the server closes)."""

    def __init__(self, base_url: str, timeout: float = 60) -> None:
        import threading
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.local = threading.local()

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        connection = getattr(self.local, "connection", None)
        if connection is not None:
            connection.close()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> Reply:
        import http.client

        for attempt in range(2):
            connection = getattr(self.local, "connection", None)
            if connection is None:
                connection = self.local.connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout
                )
            try:
                connection.request(method, path, body=body, headers=headers or {})
                response = connection.getresponse()
                reply = Reply(response.status, response.read())
                if response.will_close:
                    connection.close()
                    self.local.connection = None
                return reply
            except (http.client.HTTPException, ConnectionError, OSError):
                connection.close()
                self.local.connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def post(self, path: str, json: object = None, content: bytes | None = None) -> Reply:
        import json as json_module

        body = content if content is not None else json_module.dumps(json).encode()
        return self.request("POST", path, body, {"content-type": "application/json"})

    def get(self, path: str, params: dict | None = None) -> Reply:
        from urllib.parse import urlencode

        return self.request("GET", path + (f"?{urlencode(params)}" if params else ""))


def client(args: argparse.Namespace) -> int:
    """The client process: timed requests against ``args.client``; prints JSON results."""
    records = json.loads(Path(args.records).read_text())
    users = sorted({r["user_id"] for r in records[:1000]}) if records and "user_id" in records[0] else []
    results = {}
    with Http(args.client) as http:
        for r in records[:20]:  # warm-up
            http.post("/predict", json=[r]).raise_for_status()

        def run(name: str, count: int, send, rows: int) -> None:
            if count <= 0:
                return
            latencies = np.zeros(count)

            def one(i: int) -> None:
                start = time.perf_counter()
                send(i).raise_for_status()
                latencies[i] = time.perf_counter() - start

            start = time.perf_counter()
            if args.concurrency > 1:
                with ThreadPoolExecutor(args.concurrency) as pool:
                    list(pool.map(one, range(count)))
            else:
                for i in range(count):
                    one(i)
            seconds = time.perf_counter() - start
            results[name] = {
                "requests": count,
                "rows_per_request": rows,
                "requests_per_s": count / seconds,
                "rows_per_s": count * rows / seconds,
                "p50_ms": float(np.percentile(latencies, 50) * 1e3),
                "p99_ms": float(np.percentile(latencies, 99) * 1e3),
            }

        n, b = len(records), args.batch_rows
        # bodies encoded before the clock starts: the client's own JSON encoding is not server latency
        singles = [json.dumps([records[i % n]]).encode() for i in range(args.single)]
        run("predict, 1 record", args.single, lambda i: http.post("/predict", content=singles[i]), 1)
        batches = [json.dumps(records[(i * b) % n : (i * b) % n + b]).encode() for i in range(args.batches)]
        run(f"predict, {b} records", args.batches, lambda i: http.post("/predict", content=batches[i]), b)
        if users and http.get("/health").json()["recommend"]:
            rec = lambda i: http.get("/recommend", params={"user": users[i % len(users)], "k": 10})  # noqa: E731
            run("recommend, k=10", args.recommend, rec, 1)
    print(json.dumps(results))
    return 0


def soak_requests(records: list[dict], n: int, max_batch: int) -> list[tuple[str, str, bytes | None, str]]:
    """``n`` requests (method, path, body, kind) cycling through a fixed mix of valid and invalid ones."""
    rng = np.random.default_rng(0)
    good = records[:1000]
    first = good[0]
    key = next(iter(first))
    user = first.get("user_id", first[key])
    mix: list[tuple[str, str, bytes | None, str]] = []
    for i in range(n):
        r = good[i % len(good)]
        kind = i % 16
        if kind < 6:
            mix.append(("POST", "/predict", json.dumps([r]).encode(), "valid 1 record"))
        elif kind == 6:
            start = int(rng.integers(0, len(good) - 100))
            mix.append(
                ("POST", "/predict", json.dumps(good[start : start + 100]).encode(), "valid 100 records")
            )
        elif kind == 7:
            mix.append(("GET", f"/recommend?user={user}&k=10", None, "valid recommend"))
        elif kind == 8:
            mix.append(("POST", "/predict", json.dumps([r])[:-5].encode(), "malformed JSON"))
        elif kind == 9:
            body = json.dumps([{**r, key: "SURROGATE"}]).replace('"SURROGATE"', r'"\ud800"').encode()
            mix.append(("POST", "/predict", body, "lone surrogate"))
        elif kind == 10:
            mix.append(("POST", "/predict", json.dumps([{**r, key: float("nan")}]).encode(), "NaN literal"))
        elif kind == 11:
            mix.append(
                (
                    "POST",
                    "/predict",
                    json.dumps([{k: v for k, v in r.items() if k != key}]).encode(),
                    "missing field",
                )
            )
        elif kind == 12:
            mix.append(
                ("POST", "/predict", json.dumps([{**r, key: {"a": [1]}}]).encode(), "object for an id")
            )
        elif kind == 13:
            mix.append(
                ("POST", "/predict", json.dumps([{**r, key: 1e308}, "x"]).encode(), "bad record shape")
            )
        elif kind == 14:
            mix.append(("POST", "/predict", json.dumps([r] * (max_batch + 1)).encode(), "too many records"))
        else:
            mix.append(("GET", "/recommend?user=abc&k=0", None, "bad recommend query"))
    return mix


def robustness(args: argparse.Namespace, port: int, pid: int, records_path: Path) -> dict:
    """The soak and the chunked-body runs against the live server (``pid``), in this process."""
    import http.client
    import threading

    import psutil

    server = psutil.Process(pid)
    out: dict = {"failed": False}
    url = f"http://127.0.0.1:{port}"
    records = json.loads(Path(records_path).read_text())
    if args.soak:
        mix = soak_requests(records, args.soak, args.batch_rows)
        rss_before = server.memory_info().rss
        counts: dict[str, dict[int, int]] = {}
        errors: dict[str, int] = {}
        lock = threading.Lock()
        deadline = time.monotonic() + args.soak_seconds
        session = Http(url, timeout=60)

        def one(request: tuple[str, str, bytes | None, str]) -> None:
            if time.monotonic() > deadline:
                return
            method, path, body, kind = request
            try:
                status = session.request(method, path, body, {"content-type": "application/json"}).status_code
            except Exception as exc:  # a connection error is reported, not hidden
                with lock:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            with lock:
                counts.setdefault(kind, {})
                counts[kind][status] = counts[kind].get(status, 0) + 1

        start = time.perf_counter()
        rss_rounds = []
        for _ in range(args.soak_rounds):  # RSS after each round: growth that levels off is no leak
            with ThreadPoolExecutor(args.soak_concurrency) as pool:
                list(pool.map(one, mix))
            rss_rounds.append(server.memory_info().rss / 2**20)
        seconds = time.perf_counter() - start
        health = Http(url).get("/health").status_code
        sent = sum(sum(c.values()) for c in counts.values())
        five = sum(n for c in counts.values() for status, n in c.items() if status >= 500)
        out["soak"] = {
            "requests": sent,
            "planned": args.soak * args.soak_rounds,
            "rss_after_each_round_mb": rss_rounds,
            "seconds": seconds,
            "concurrency": args.soak_concurrency,
            "status_by_kind": counts,
            "connection_errors": errors,
            "5xx": five,
            "health_after": health,
            "rss_before_mb": rss_before / 2**20,
            "rss_after_mb": server.memory_info().rss / 2**20,
        }
        out["failed"] |= five > 0 or health != 200 or bool(errors)
    if args.chunked_mb:
        rss_before = server.memory_info().rss
        peak = [rss_before]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], server.memory_info().rss)
                except psutil.Error:  # the server is gone: reported by /health below
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        sent = [0]
        block = b"x" * (1 << 20)

        def body():
            yield b'[{"pad": "'
            for _ in range(args.chunked_mb):
                sent[0] += len(block)
                yield block
            yield b'"}]'

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        start = time.perf_counter()
        status, detail = None, ""
        try:
            connection.request(
                "POST",
                "/predict",
                body=body(),
                encode_chunked=True,
                headers={"content-type": "application/json"},
            )
        except OSError as exc:  # the server stopped reading and closed: expected
            detail = f"client write stopped: {type(exc).__name__}"
        try:
            response = connection.getresponse()
            status, detail = response.status, response.read().decode(errors="replace")[:200]
        except (OSError, http.client.HTTPException) as exc:
            detail = detail or f"no reply: {type(exc).__name__}"
        seconds = time.perf_counter() - start
        done.set()
        watcher.join()
        connection.close()
        health = Http(url).get("/health").status_code
        out["chunked"] = {
            "body_mb": args.chunked_mb,
            "sent_mb": sent[0] / 2**20,
            "status": status,
            "detail": detail,
            "seconds": seconds,
            "rss_before_mb": rss_before / 2**20,
            "rss_peak_growth_mb": (peak[0] - rss_before) / 2**20,
            "health_after": health,
        }
        out["failed"] |= health != 200 or (peak[0] - rss_before) > 50 * 2**20
    return out


def in_process(args: argparse.Namespace, model_dir: Path, records_path: Path) -> dict:
    """The server's own cost: ``POST /predict`` through the ASGI app in this process (no socket,
    no client), p50 of sequential calls; much less sensitive to a loaded machine than HTTP."""
    import asyncio

    import torch

    import deepfm
    from deepfm.serving.app import create_app

    torch.set_num_threads(args.threads)
    app = create_app(deepfm.load(str(model_dir)), max_batch=max(args.batch_rows, 1))
    records = json.loads(Path(records_path).read_text())

    async def call(body: bytes) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/predict",
            "raw_path": b"/predict",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        status = []

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        return status[0]

    async def measure(bodies: list[bytes]) -> float:
        for body in bodies[:20]:
            assert await call(body) == 200
        times = []
        for body in bodies:
            start = time.perf_counter()
            await call(body)
            times.append(time.perf_counter() - start)
        return float(np.percentile(times, 50) * 1e3)

    b = args.batch_rows
    singles = [json.dumps([records[i % len(records)]]).encode() for i in range(2000)]
    batches = [json.dumps(records[(i * b) % len(records) :][:b]).encode() for i in range(100)]
    return {
        "1 record": asyncio.run(measure(singles)),
        f"{b} records": asyncio.run(measure(batches)),
    }


def offline_predict(args: argparse.Namespace, model_dir: Path, tmp: Path) -> dict:
    import onnxruntime as ort
    import pandas as pd
    import torch

    import deepfm
    from deepfm.data.batching import Split
    from deepfm.data.records import prepare_records
    from deepfm.serving.export import export_model, input_names

    torch.set_num_threads(args.threads)
    model = deepfm.load(str(model_dir))
    frame = pd.DataFrame.from_records(sample_records(model_dir, args.offline_rows, seed=1))
    arrays = model.feature_map.encode(prepare_records(frame, model.feature_map, model.tables))
    split = Split.from_arrays(arrays, np.zeros(len(frame), np.float32))
    names = input_names(model.feature_map)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(export_model(model, "onnx", tmp / "model.onnx")), options, providers=["CPUExecutionProvider"]
    )
    out: dict = {"rows": len(frame), "threads": args.threads}
    for batch in (1024, 65536):

        def onnx_run(bs: int = batch) -> np.ndarray:
            parts = []
            for start in range(0, len(frame), bs):
                feeds = {k: arrays[k][start : start + bs] for k in names}
                parts.append(session.run(None, feeds)[0])
            return np.concatenate(parts)

        torch_s, torch_p = best_of(3, lambda bs=batch: model.predict_split(split, bs))
        onnx_s, onnx_p = best_of(3, onnx_run)
        out[f"pytorch, batch {batch}"] = len(frame) / torch_s
        out[f"onnxruntime, batch {batch}"] = len(frame) / onnx_s
        out[f"max |onnx - torch|, batch {batch}"] = float(np.abs(onnx_p - torch_p).max())
    raw_s, _ = best_of(3, lambda: model.predict(frame))
    out["raw records end to end (model.predict)"] = len(frame) / raw_s
    return out


def best_of(repeats: int, fn) -> tuple[float, np.ndarray]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def print_report(args: argparse.Namespace, server: dict, offline: dict | None) -> None:
    robust = server.get("robustness", {})
    if "soak" in robust:
        r = robust["soak"]
        print(
            f"\nsoak: {r['requests']:,} of {r['planned']:,} requests in {r['seconds']:.1f}s at concurrency "
            f"{r['concurrency']}: 5xx {r['5xx']}, connection errors {r['connection_errors'] or 0}, "
            f"/health after: {r['health_after']}, "
            f"server RSS {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB "
            f"({r['rss_after_mb'] - r['rss_before_mb']:+.1f} MB)"
        )
        if len(r["rss_after_each_round_mb"]) > 1:
            print(
                "  server RSS after each round: "
                + ", ".join(f"{v:.0f} MB" for v in r["rss_after_each_round_mb"])
            )
        for kind, statuses in r["status_by_kind"].items():
            print(f"  {kind:<22}" + "  ".join(f"{status}: {n:,}" for status, n in sorted(statuses.items())))
    if "chunked" in robust:
        r = robust["chunked"]
        print(
            f"\nchunked body of {r['body_mb']:,} MB: reply {r['status']} after {r['sent_mb']:.0f} MB sent "
            f"({r['seconds']:.2f}s); server RSS peak growth {r['rss_peak_growth_mb']:+.1f} MB "
            f"(from {r['rss_before_mb']:.0f} MB); /health after: {r['health_after']}; {r['detail']}"
        )
    if "failed" in robust:
        print(f"robustness: {'FAILED' if robust['failed'] else 'ok'}")
    if offline is None:
        return
    print(
        f"\nHTTP: uvicorn on 127.0.0.1, {args.concurrency} client connection(s), "
        f"{args.threads} torch thread(s)"
    )
    print(f"{'request':<24}{'requests':>9}{'req/s':>10}{'rows/s':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for name, r in server.items():
        if name in ("robustness", "in process"):
            continue
        print(
            f"{name:<24}{r['requests']:>9,}{r['requests_per_s']:>10,.0f}{r['rows_per_s']:>12,.0f}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
        )
    if "in process" in server:
        costs = ", ".join(f"{k} {v:.3f} ms" for k, v in server["in process"].items())
        print(f"server's own cost per POST /predict (ASGI in process, no socket, p50): {costs}")
    print(f"\noffline predict, {offline['rows']:,} rows, {offline['threads']} thread(s), best of 3")
    for batch in (1024, 65536):
        t, o = offline[f"pytorch, batch {batch}"], offline[f"onnxruntime, batch {batch}"]
        print(
            f"batch {batch:>6}: PyTorch {t:>12,.0f} rows/s   ONNX Runtime {o:>12,.0f} rows/s   "
            f"ratio {o / t:.2f}x   max |diff| {offline[f'max |onnx - torch|, batch {batch}']:.1e}"
        )
    raw = offline["raw records end to end (model.predict)"]
    print(f"raw records end to end (model.predict): {raw:,.0f} rows/s")
    print("\nnumbers are noisy on a shared machine; compare ratios measured in the same run")


if __name__ == "__main__":
    raise SystemExit(main())
