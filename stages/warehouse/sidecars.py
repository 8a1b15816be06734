"""Stats sidecars: each staged file's ``FileStats``, recorded when the file is written, read by its commit.

    <warehouse>/_staging/<table>/<ds>/<run_id>/stats/<file name>.json   {"path": ..., "size": ..., "stats": {...}}

``PartitionStager.write`` writes a file's sidecar right after the file, from the footer pyarrow hands back on
write (temp file + move: a sidecar is whole or absent), so the day's one commit builds every add action
without opening a parquet footer. A sidecar that is absent (the writer died between the file and its sidecar,
or staged before sidecars existed), unreadable or naming another path is not used: ``read_sidecars`` leaves
that file out and the commit reads its footer instead (``stages.warehouse.commit.files_stats``, logged), as it
does for a file whose size differs from the recorded one. They live in the run's staging folder, never in
the table's, and go with it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import pyarrow.fs as pafs

from stages.warehouse.stats import FileStats

log = logging.getLogger(__name__)

FOLDER = "stats"  # under the run's staging folder; manifests are the folder's own *.json files


def sidecar_path(stage_root: str, relpath: str) -> str:
    """The sidecar of the staged file ``relpath`` (its name is unique: run, shard, attempt token, index)."""
    return f"{stage_root}/{FOLDER}/{relpath.rsplit('/', 1)[-1]}.json"


def write_sidecar(fs: pafs.FileSystem, stage_root: str, relpath: str, stats: FileStats, token: str) -> None:
    """Write ``relpath``'s sidecar atomically (``token``: this attempt, names the temp file)."""
    target = sidecar_path(stage_root, relpath)
    fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    tmp = f"{target}.{token}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(json.dumps({"path": relpath, **stats.to_json()}, allow_nan=False).encode())
    fs.move(tmp, target)


def read_sidecars(fs: pafs.FileSystem, stage_root: str, relpaths: Sequence[str]) -> dict[str, FileStats]:
    """``FileStats`` by relpath of every file of ``relpaths`` with a usable sidecar (one small read each)."""
    out: dict[str, FileStats] = {}
    for rel in relpaths:
        try:
            with fs.open_input_stream(sidecar_path(stage_root, rel)) as handle:
                data = json.loads(handle.read().decode())
            if data.get("path") != rel:
                raise ValueError(f"sidecar names {data.get('path')!r}")
            out[rel] = FileStats.from_json(data)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, AttributeError) as exc:  # garbled: the footer is the truth
            log.warning("stats sidecar of %s is unusable (%s); its footer will be read", rel,
                        (str(exc).splitlines() or [type(exc).__name__])[0])
    return out
