"""`lum bench cluster`: every spill codec sorts the same day to the same rows; the report's shape and checks."""

from __future__ import annotations

import pytest

from stages.bench import cluster
from stages.bench.cluster import Config


def test_every_codec_writes_the_same_rows_and_compression_shrinks_the_spill(tmp_path):
    report = cluster.run(Config(users=3_000, conditions=4, dim=8, sort_mb=1, mixed=True), warehouse=None)
    rows = {r["spill"]: r for r in report["table"]}
    assert list(rows) == ["none", "lz4", "zstd", "lz4_unbuffered"]
    assert all(r["seconds"] > 0 and r["cpu_seconds"] > 0 and r["peak_rss_mb"] > 0 for r in rows.values())
    assert rows["none"]["cpu_x_baseline"] == 1 and rows["none"]["spill_x_baseline"] == 1
    assert rows["lz4"]["spill_peak_mb"] < rows["none"]["spill_peak_mb"]  # the spill is compressed
    assert rows["zstd"]["spill_peak_mb"] < rows["none"]["spill_peak_mb"]
    assert rows["none"]["spill_x_parquet"] > 1  # uncompressed Arrow rows: more than the zstd parquet
    assert report["summary"]["rows"] == 12_000 and report["summary"]["baseline"] == "none"


def test_a_codec_that_writes_other_rows_fails_the_bench(monkeypatch):
    digests = iter(["a", "b"])
    monkeypatch.setattr(cluster, "_digest", lambda wh: (next(digests), 1))
    with pytest.raises(RuntimeError, match="spill lz4 wrote other rows than none"):
        cluster.run(Config(users=500, conditions=2, dim=4, sort_mb=1, codecs=("none", "lz4"), unbuffered=False),
                    warehouse=None)


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="codecs must name some of lz4, zstd, none, got \\['gzip'\\]"):
        cluster.run(Config(codecs=("gzip",)), warehouse=None)
    with pytest.raises(ValueError, match="sort_mb must be >= 1, got 0"):
        cluster.run(Config(sort_mb=0), warehouse=None)
