"""Read back what the trackers wrote (tests only): each returns {metric: [(step, value), ...]}."""

from __future__ import annotations

import json
import sqlite3
import struct
from collections import defaultdict
from pathlib import Path


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = defaultdict(list)
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[tag] += [(e.step, e.value) for e in acc.Scalars(tag)]
    return dict(out)


def trackio_scalars(trackio_dir: Path, project: str) -> dict[str, list[tuple[int, float]]]:
    """trackio keeps one SQLite file per project: rows of (step, metrics as JSON)."""
    out = defaultdict(list)
    for db in sorted(Path(trackio_dir).glob(f"{project}.db")):
        with sqlite3.connect(db) as conn:
            for step, metrics in conn.execute("select step, metrics from metrics order by id"):
                for k, v in json.loads(metrics).items():
                    if isinstance(v, (int, float)):
                        out[k].append((step, float(v)))
    return dict(out)


def wandb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """An offline W&B run is a LevelDB-format log (32 KiB blocks of CRC, length, type, data
    records after a 7-byte header) of protobuf `Record`s; history records hold the metrics."""
    from wandb.proto import wandb_internal_pb2

    out = defaultdict(list)
    for path in sorted(Path(log_dir).rglob("run-*.wandb")):
        buf, pos, cur, block = path.read_bytes(), 7, b"", 32768
        while pos + 7 <= len(buf):
            if block - pos % block < 7:  # a block's tail too short for a header is padding
                pos += block - pos % block
                continue
            _crc, length, kind = struct.unpack("<IHB", buf[pos : pos + 7])
            if kind == 0 and length == 0:
                break
            cur += buf[pos + 7 : pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # FULL or LAST: a whole record
                rec = wandb_internal_pb2.Record()
                rec.ParseFromString(cur)
                cur = b""
                if rec.WhichOneof("record_type") == "history":
                    items = {
                        i.key or "/".join(i.nested_key): json.loads(i.value_json)
                        for i in rec.history.item
                    }
                    for k, v in items.items():
                        if not k.startswith("_") and isinstance(v, (int, float)):
                            out[k].append((items["_step"], float(v)))
    return dict(out)
