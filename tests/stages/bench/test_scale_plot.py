"""``lum plot scale``: per-stage values from ``lum bench scale`` reports, the PNG, and its errors."""

from __future__ import annotations

import json

import pytest

from stages.bench.scale_plot import scale_series


def _entry(seconds: float, driver: float, workers: float = 0.0, jvm: float = 0.0) -> dict:
    return {"seconds": seconds, "rows": 1, "peak_rss_mb": {"driver": driver, "workers": workers, "jvm": jvm}}


def _report(users: int, scale: float = 1.0) -> dict:
    """The shape `lum bench scale` writes: ingest, then two run days of two stages."""
    return {"users": users, "stages": {
        "ingest": _entry(10 * scale, 1000),
        "sequences@2000-01-02": _entry(40 * scale, 200, 500, 4000),
        "infer@2000-01-02": _entry(100 * scale, 800),
        "sequences@2000-01-03": _entry(30 * scale, 250, 450, 4100),
        "infer@2000-01-03": _entry(120 * scale, 790),
    }}


def test_each_stage_keeps_the_larger_day_per_measure_and_time_per_user():
    series = scale_series([_report(2_000_000, scale=2.0), _report(1_000_000)])
    assert list(series) == [1_000_000, 2_000_000]  # by user count, whatever the order given
    seq = series[1_000_000]["sequences"]
    assert (seq["driver"], seq["workers"], seq["jvm"]) == (250, 500, 4100)  # the max of each, not of one day
    assert seq["us_per_user"] == pytest.approx(40.0)  # 40 s / 1M users
    assert series[2_000_000]["infer"]["us_per_user"] == pytest.approx(120.0)  # 240 s / 2M users
    assert set(series[1_000_000]) == {"ingest", "sequences", "infer"}


@pytest.mark.parametrize("bad, message", [
    ({"users": 5}, "report 2 is not a `lum bench scale` report"),
    ({"users": 1_000_000, "stages": {"ingest": _entry(1, 1)}}, "two reports of 1000000 users"),
])
def test_a_report_that_does_not_fit_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        scale_series([_report(1_000_000), bad])


def test_cli_writes_a_png_and_names_a_file_that_is_not_json(tmp_path, capsys):
    from stages.cli.app import main

    paths = []
    for users in (1_000_000, 10_000_000):
        path = tmp_path / f"bench_scale_{users}.json"
        path.write_text(json.dumps(_report(users)))
        paths.append(str(path))
    out = tmp_path / "plots" / "scale.png"
    assert main(["plot", "scale", *paths, "--out", str(out), "--title", "two sizes"]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # four panels of bars, not an empty canvas
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reports"] == 2

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["plot", "scale", paths[0], str(broken), "--out", str(tmp_path / "x.png")]) == 2
    assert f"{broken} is not JSON" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
