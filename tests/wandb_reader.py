"""Read back what an offline W&B run wrote: its ``run-*.wandb`` file (LevelDB-style log of protobuf records).

The newer wandb releases write this file from their Go core and no longer ship a Python reader.
"""

import glob
import json
import os
import struct
import time

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as pb

_BLOCK, _HEADER = 32768, 7  # LevelDB log blocks; each record: crc32, length (uint16), type (uint8)


def records(path):
    """Every whole record of the file; a record still being written (the file is read while wandb's service
    writes it) is left out, and a record that is whole but does not parse raises ``DecodeError``."""
    data = open(path, "rb").read()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending, raw = _HEADER, b"", []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        if len(chunk) < length:  # the writer is still writing this record: read only what is whole
            break
        pos += _HEADER + length
        if kind == 1:  # full
            raw.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            raw.append(pending + chunk)
    for r in raw:
        record = pb.Record()
        record.ParseFromString(r)
        yield record


def history(save_dir, timeout=60.0):
    """Every logged row of the single offline run under ``save_dir``, values decoded from JSON.

    wandb's service writes the file in the background: wait (up to ``timeout`` s) for the run's exit record,
    reading again while a record is half written (CI once read one that was).
    """
    deadline = time.monotonic() + timeout
    while True:
        paths = glob.glob(os.path.join(save_dir, "wandb", "offline-run-*", "run-*.wandb"))
        try:
            kinds = [r.WhichOneof("record_type") for r in records(paths[0])] if len(paths) == 1 else []
        except DecodeError:  # a block's chunk caught mid-write; the exit record comes after it
            kinds = []
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    (path,) = paths
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return rows


def artifact_files(save_dir):
    """``{artifact name: {path in the artifact: local file}}`` for the artifacts the offline run under ``save_dir``
    logged; call after :func:`history` has seen the run end.

    A table logged to a run goes (with the images in its cells) into a ``run_table`` artifact, staged under
    ``$WANDB_DATA_DIR`` until a sync; the run's ``media/table`` file holds only the cells' type names.
    """
    (path,) = glob.glob(os.path.join(save_dir, "wandb", "offline-run-*", "run-*.wandb"))
    found = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "artifact":
            found[r.artifact.name] = {c.path: c.local_path for c in r.artifact.manifest.contents}
    return found
