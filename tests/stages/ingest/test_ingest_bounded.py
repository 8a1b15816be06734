"""The synthetic ingest's memory is bounded by its chunks: day buffers own only their rows, ``users`` is
generated and written chunk by chunk (the same rows as one draw of the whole table)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.ingest import staged, synthetic
from stages.ingest.movielens import ML1M_OCCUPATIONS
from stages.warehouse.facade import Warehouse


def test_day_buffers_hold_only_their_own_rows(tmp_path):
    events = synthetic.generate(synthetic.Config(users=300, items=30, categories=4, days=6, seed=1))["events"]
    stager = staged.DayStager(Warehouse(str(tmp_path / "wh")), "events", run_id="r1", file_rows=10 ** 6)
    stager.add(events)
    assert len(stager.buffers) == 6 and not stager.stagers  # everything buffered, nothing written yet
    for day, parts in stager.buffers.items():
        # a slice of the batch would keep (and count) the whole batch's buffers
        assert sum(t.get_total_buffer_size() for t in parts) < events.get_total_buffer_size() / 2
        assert pa.concat_tables(parts).equals(events.filter(pc.equal(events.column("ds"), day)))  # order kept


def _users_one_draw(cfg: synthetic.Config) -> pa.Table:
    """The users table drawn at once from one generator: ages, then genders, then occupations."""
    rng, n = np.random.default_rng([cfg.seed, 1]), cfg.users
    ids = np.arange(1, n + 1, dtype=np.int64)
    occupations = np.array(ML1M_OCCUPATIONS, dtype=object)
    return pa.table({
        "user_id": ids, "source_id": [f"syn_{i}" for i in ids],
        "age": rng.choice(synthetic.AGE_BUCKETS, size=n, p=synthetic.AGE_PROBS),
        "gender": pa.array(np.where(rng.random(n) < 0.5, "F", "M").astype(object), pa.string()),
        "occupation": pa.array(occupations[rng.integers(0, len(occupations), n)], pa.string()),
    })


def test_user_chunks_are_bounded_and_equal_one_draw():
    cfg = synthetic.Config(users=1003, seed=3, chunk_users=100)
    chunks = list(synthetic.user_chunks(cfg))
    assert [c.num_rows for c in chunks] == [100] * 10 + [3]
    assert pa.concat_tables(chunks).equals(_users_one_draw(cfg))
    one = synthetic.Config(users=1003, seed=3, chunk_users=5000)
    assert pa.concat_tables(list(synthetic.user_chunks(one))).equals(_users_one_draw(cfg))


def test_synthetic_run_writes_users_chunk_by_chunk(tmp_path, monkeypatch):
    cfg = synthetic.Config(users=50, items=20, categories=3, days=2, seed=2, chunk_users=20)
    real, rows = Warehouse.write_table, []

    def spy(self, name, table, **kwargs):
        if name == "users":
            assert not isinstance(table, pa.Table)  # a stream of chunks, never the whole table

            def counted(chunks):
                for chunk in chunks:
                    rows.append(chunk.num_rows)
                    yield chunk
            table = counted(table)
        return real(self, name, table, **kwargs)

    monkeypatch.setattr(Warehouse, "write_table", spy)
    summary = synthetic.run(cfg, warehouse=str(tmp_path / "wh"))
    assert rows == [20, 20, 10] and summary["users"] == 50
    got = Warehouse(str(tmp_path / "wh")).read("users").sort_by("user_id")
    assert got.equals(synthetic.generate(cfg)["users"].cast(got.schema))
