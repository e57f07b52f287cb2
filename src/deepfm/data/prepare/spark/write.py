"""The encoded rows written into the prepared folder's ``.npy`` files by the Spark executors.

The rows are sorted by part, file and line (the default engine's order) into range partitions;
one job counts each partition's rows per part, the driver writes every ``.npy`` header with the
final shape (the file is preallocated), and each task then writes its rows at their offsets with
positional writes: no row passes through the driver. The folder must therefore be one that every
executor sees at the same path (any folder with ``local[N]``; shared storage on a cluster): each
task first checks for a marker file the driver wrote there, so a folder the executors do not
see is an error, not a silently empty file.

With ``shards`` > 0 the training split is written as that many shards in the layout of
:mod:`deepfm.data.shards` (training row ``k`` is row ``k // N`` of shard ``k % N``): a task's rows
are consecutive training rows, so each shard's share of them is every ``N``-th row, written as one
consecutive run of that shard's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deepfm.data.features import FeatureMap
from deepfm.data.shards import shard_part, shard_sizes
from deepfm.data.spec import PARTS
from deepfm.errors import ConfigError, DataError

RESULT = "pid int, part int, rows long, seen boolean"
ROWS_PER_PARTITION = 250_000  # rows each writing task handles (at least one task per core)


Target = tuple[str, int, int, str]  # a file's path, data offset, bytes per row, dtype


def write_arrays(
    encoded: DataFrame, dtype: Any, fmap: FeatureMap, counts: np.ndarray, out: Path, shards: int = 0
) -> None:
    """``{part}_{ids,bags,dense,label}.npy`` of ``encoded`` in ``out`` (``counts``: rows per part;
    ``shards`` > 0: the training split as that many shards)."""
    multi = fmap.multi
    width = max((f.max_len for f in multi), default=0)
    arrays: dict[str, tuple[tuple[int, ...], Any]] = {
        "ids": ((len(fmap.categorical),), dtype),
        "label": ((), np.float32),
    }
    if multi:
        arrays["bags"] = ((len(multi), width), dtype)
    if fmap.numerics:
        arrays["dense"] = ((len(fmap.numerics),), np.float32)
    layout: dict[tuple[int, str], list[Target]] = {}  # (part, name) -> one file, or one per shard
    for p, part in enumerate(PARTS):
        files = [(part, int(counts[p]))]
        if p == 0 and shards:
            sizes = shard_sizes(int(counts[p]), shards)
            files = [(shard_part(part, s, shards), m) for s, m in enumerate(sizes)]
        for name, (shape, kind) in arrays.items():
            layout[(p, name)] = []
            for stem, m in files:
                path = out / f"{stem}_{name}.npy"
                header = np.lib.format.open_memmap(path, mode="w+", dtype=kind, shape=(m, *shape))
                size = header.itemsize * int(np.prod(shape))
                layout[(p, name)].append((str(path.resolve()), int(header.offset), size, header.dtype.str))
                del header
    total = int(counts.sum())
    spark = encoded.sparkSession
    k = max(spark.sparkContext.defaultParallelism, -(-total // ROWS_PER_PARTITION))
    # The range partitioning samples its input in a job of its own: without the encoded rows kept,
    # that job would run every vocabulary join a second time.
    encoded = encoded.persist(StorageLevel.MEMORY_AND_DISK)
    ordered = encoded.repartitionByRange(k, "_part", "_key").sortWithinPartitions("_part", "_key")
    ordered = ordered.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        per = ordered.groupBy(F.spark_partition_id().alias("pid"), "_part").count().collect()
        encoded.unpersist()  # the sorted rows are kept now
        offsets: dict[tuple[int, int], int] = {}
        before = np.zeros(3, dtype=np.int64)
        expected: dict[tuple[int, int], int] = {}
        for row in sorted(per, key=lambda r: (r["pid"], r["_part"])):
            offsets[(row["pid"], row["_part"])] = int(before[row["_part"]])
            expected[(row["pid"], row["_part"])] = int(row["count"])
            before[row["_part"]] += row["count"]
        if not np.array_equal(before, counts):
            raise DataError("input files changed during preparation; run again")
        marker = out / f".spark-{uuid.uuid4().hex}"
        marker.write_text("deepfm prepare: executors write here\n")
        written = ordered.mapInArrow(
            _writer(str(marker.resolve()), layout, offsets, list(arrays)), RESULT
        ).collect()
        marker.unlink()
    finally:
        ordered.unpersist()
        encoded.unpersist()
    if any(not r["seen"] for r in written):
        raise ConfigError(
            f"--out {out.parent}: the Spark executors do not see this folder; with a cluster, write to "
            "storage every node mounts at the same path (NFS, a shared volume)"
        )
    done = {(r["pid"], r["part"]): r["rows"] for r in written}
    if done != expected:
        raise DataError("the Spark executors wrote other rows than counted; run again")


def _writer(
    marker: str,
    layout: dict[tuple[int, str], list[Target]],
    offsets: dict[tuple[int, int], int],
    names: list[str],
) -> Any:
    """The task function: writes one partition's rows at their offsets (numpy and pyarrow only)."""

    def write(batches: Iterator[Any]) -> Iterator[Any]:
        import os

        import numpy as np
        import pyarrow as pa
        from pyspark import TaskContext

        pid = TaskContext.get().partitionId()
        result = {"pid": [], "part": [], "rows": [], "seen": []}
        if not os.path.exists(marker):
            result.update(pid=[pid], part=[-1], rows=[0], seen=[False])
            yield pa.RecordBatch.from_pydict(result, schema=_schema())
            return
        files: dict[str, int] = {}

        def put(target: Any, values: Any, row: int) -> None:
            path, header, size, kind = target
            if path not in files:
                files[path] = os.open(path, os.O_WRONLY)
            data = memoryview(np.ascontiguousarray(values, dtype=np.dtype(kind)).tobytes())
            at = header + row * size
            while data:  # pwrite may write less than asked
                n = os.pwrite(files[path], data, at)
                data, at = data[n:], at + n

        cursor: dict[int, int] = {}
        try:
            for batch in batches:
                parts = batch.column("_part").to_numpy()
                for p in np.unique(parts).tolist():
                    rows = np.flatnonzero(parts == p)
                    start = cursor.setdefault(p, offsets[(pid, p)])
                    for name in names:
                        targets = layout[(p, name)]
                        column = batch.column(name).take(pa.array(rows))
                        values = column.to_numpy() if name == "label" else column.flatten().to_numpy()
                        values = values.reshape(len(rows), -1)
                        if len(targets) == 1:
                            put(targets[0], values, start)
                            continue
                        count = len(targets)  # rows start, start + 1, ...: row k to shard k % count
                        for s, target in enumerate(targets):
                            first = (s - start) % count
                            if first < len(rows):
                                put(target, values[first::count], (start + first) // count)
                    cursor[p] = start + len(rows)
        finally:
            for fd in files.values():
                os.close(fd)
        for p, end in sorted(cursor.items()):
            result["pid"].append(pid)
            result["part"].append(p)
            result["rows"].append(end - offsets[(pid, p)])
            result["seen"].append(True)
        yield pa.RecordBatch.from_pydict(result, schema=_schema())

    def _schema() -> Any:
        import pyarrow as pa

        return pa.schema(
            [("pid", pa.int32()), ("part", pa.int32()), ("rows", pa.int64()), ("seen", pa.bool_())]
        )

    return write
