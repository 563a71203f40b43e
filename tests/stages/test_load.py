"""LoadBoard: replica reports summed; a replica silent for longer than STALE_S drops out."""
from __future__ import annotations

import pytest

pytest.importorskip("ray")
from services.engine.scheduler import EngineLoad  # noqa: E402
from services.stages import load  # noqa: E402


def test_sums_fresh_reports_and_drops_stale_ones(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(load.time, "monotonic", lambda: now[0])
    board = load.LoadBoard()
    assert board.total() == load.GeneratorLoad()
    board.report("a", EngineLoad(waiting=1, running=2, kv_blocks_used=30, kv_blocks_total=100,
                                 max_waiting=4))
    now[0] += 2.0
    board.report("b", EngineLoad(0, 1, 5, 100, 4))
    assert board.total() == load.GeneratorLoad(2, 1, 3, 35, 200, 8)
    now[0] += load.STALE_S - 1.0  # "a" reported STALE_S + 1 s ago: crashed or scaled down
    assert board.total() == load.GeneratorLoad(1, 0, 1, 5, 100, 4)
    board.report("a", EngineLoad(0, 0, 0, 100, 4))  # back: counted again, latest report only
    assert board.total().replicas == 2 and board.total().kv_blocks_used == 5
    board.forget("b")
    assert board.total() == load.GeneratorLoad(1, 0, 0, 0, 100, 4)
