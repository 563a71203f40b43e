"""benchmarks/sweep_ibq.py end to end on the CPU with a tiny model (the GPU run is the lead's)."""
from __future__ import annotations

from benchmarks.sweep_ibq import VARIANTS, _table, sweep
from services.model.ibq.tiny import tiny_config


def test_sweep_runs_every_variant_and_reproduces_the_plain_forward():
    result = sweep(quick=True, device="cpu", cfg=tiny_config(64), side=32, iters=1)  # no timing
    rows = result["rows"]
    assert {r["variant"] for r in rows} == set(VARIANTS)
    assert len(rows) == len(VARIANTS) * 2 * 2  # ops x batches
    for r in rows:
        assert r["ms_per_image"] > 0 and r["rel_diff"] < 0.1, r  # bf16 tiny model: rounding only
    assert "quantizer 1 image" in _table(result)
