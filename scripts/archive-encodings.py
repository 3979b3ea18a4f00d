#!/usr/bin/env python3
"""Parquet size of one archived month under different column encodings, with pyarrow.

Exports the partition once with psql, then writes it with each layout and prints the file size,
its share of a `pg_dump -Fc -t` size given on the command line, and the compressed size of each
column. The archive itself is written by the Rust parquet crate (src/engine/ops/archive.rs);
this script is for choosing its layout, not for measuring it.

    scripts/archive-encodings.py DATABASE_URL download_events_y2026m07 DUMP_BYTES
"""
import collections
import math
import os
import subprocess
import sys
import tempfile

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

url, partition, dump_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
if not partition.replace("_", "").isalnum():
    sys.exit(f"bad partition name {partition!r}")
work = tempfile.mkdtemp(prefix="archive-encodings.")
csv = os.path.join(work, "month.csv")
subprocess.run(
    ["psql", url, "-qc",
     f"\\copy (SELECT id, (extract(epoch FROM occurred_at) * 1000000)::bigint AS occurred_at, "
     f"file_id, cache_hit, bytes, duration_ms, status FROM {partition}) TO '{csv}' csv header"],
    check=True)
types = {"id": pa.int64(), "occurred_at": pa.int64(), "file_id": pa.int64(), "cache_hit": pa.bool_(),
         "bytes": pa.int64(), "duration_ms": pa.int32(), "status": pa.int16()}
table = pcsv.read_csv(csv, convert_options=pcsv.ConvertOptions(
    column_types=types, true_values=["t"], false_values=["f"]))
table = table.set_column(1, "occurred_at", table["occurred_at"].cast(pa.timestamp("us", tz="UTC")))
os.remove(csv)
n = table.num_rows
print(f"{partition}: {n} rows; pg_dump -Fc: {dump_bytes} B")
for col in ["file_id", "bytes", "duration_ms"]:
    counts = collections.Counter(table[col].to_pylist())
    entropy = -sum(c / n * math.log2(c / n) for c in counts.values())
    print(f"  {col}: {len(counts)} distinct, order-0 entropy {entropy:.2f} bits/row "
          f"= {entropy * n / 8e6:.2f} MB")

D, B = "DELTA_BINARY_PACKED", "BYTE_STREAM_SPLIT"
SMALL = ["cache_hit", "duration_ms", "status"]
LAYOUTS = [
    # name, table order, column encodings, dictionary columns, zstd level
    ("time order; file_id, bytes dictionary (falls back to PLAIN)", None,
     {"id": D, "occurred_at": D}, ["file_id", "bytes"] + SMALL, 3),
    ("time order; file_id, bytes PLAIN", None,
     {"id": D, "occurred_at": D, "file_id": "PLAIN", "bytes": "PLAIN"}, SMALL, 3),
    ("time order; file_id, bytes DELTA_BINARY_PACKED", None,
     {"id": D, "occurred_at": D, "file_id": D, "bytes": D}, SMALL, 3),
    ("time order; file_id, bytes BYTE_STREAM_SPLIT", None,
     {"id": D, "occurred_at": D, "file_id": B, "bytes": B}, SMALL, 3),
    ("time order; file_id, bytes BYTE_STREAM_SPLIT; zstd 9", None,
     {"id": D, "occurred_at": D, "file_id": B, "bytes": B}, SMALL, 9),
    ("sorted by (file_id, occurred_at); file_id delta, bytes dictionary",
     [("file_id", "ascending"), ("occurred_at", "ascending")],
     {"id": D, "occurred_at": D, "file_id": D}, ["bytes"] + SMALL, 3),
]
path = os.path.join(work, "month.parquet")
for name, order, encodings, dictionary, level in LAYOUTS:
    t = table.sort_by(order) if order else table
    pq.write_table(t, path, compression="zstd", compression_level=level,
                   row_group_size=512 * 1024, use_dictionary=dictionary,
                   column_encoding=encodings)
    md = pq.ParquetFile(path).metadata
    per_col = collections.Counter()
    for rg in range(md.num_row_groups):
        for ci in range(md.num_columns):
            c = md.row_group(rg).column(ci)
            per_col[c.path_in_schema] += c.total_compressed_size
    size = os.path.getsize(path)
    cols = " ".join(f"{k} {v / 1e6:.2f}" for k, v in per_col.items())
    print(f"| {name} | {size} | {size / dump_bytes:.1%} | {cols} |")
os.remove(path)
os.rmdir(work)
