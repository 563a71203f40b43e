"""The bf16-screened quantizer (services/model/ibq/quantize.py) against the fp32 argmax."""
from __future__ import annotations

import pytest
import torch

from services.model.ibq import quantize as q
from services.model.ibq.quantize import quantize_argmax, quantize_screened


def _near_tie(z: torch.Tensor, book: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    zz = z.permute(0, 2, 3, 1).double()
    sa, sb = (zz * book.double()[a]).sum(-1), (zz * book.double()[b]).sum(-1)
    return (sa - sb).abs() <= 1e-5 * torch.maximum(sa.abs(), sb.abs())


@pytest.mark.parametrize("chunk_bytes", [64, 4096, 1 << 20])
@pytest.mark.parametrize("z_dtype", [torch.float32, torch.bfloat16])
def test_screened_equals_fp32_argmax(chunk_bytes, z_dtype):
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(2, 32, 6, 5, generator=gen).to(z_dtype)
    # 64-byte tiles are 21 positions by one code, so the loops run per code: 600 codes there
    # (still three ragged position tiles, one rescored pair at a time); 3,000 there took 213 s
    # of a loaded 2-core run.
    n = 600 if chunk_bytes == 64 else 3000
    book = torch.randn(n, 32, generator=gen) * (1 + torch.rand(n, 1, generator=gen))
    expected = quantize_argmax(z, book, chunk_bytes)
    got = quantize_screened(z, book, chunk_bytes)
    assert got.dtype == torch.long and got.shape == (2, 6, 5)
    differ = got != expected
    assert _near_tie(z.float(), book, got, expected)[differ].all()


def test_crowded_window_falls_back_to_the_exact_search(monkeypatch):
    # Codes that differ by less than the screen's error: the window holds far more than k,
    # so the screen cannot decide; the fallback must still find the exact (lowest) winner.
    gen = torch.Generator().manual_seed(6)
    base = torch.randn(1, 16, generator=gen)
    book = base + 1e-4 * torch.randn(400, 16, generator=gen)
    book = torch.cat([torch.randn(100, 16, generator=gen), book])
    z = base.T.reshape(1, 16, 1, 1).repeat(1, 1, 3, 2) + 0.01 * torch.randn(1, 16, 3, 2,
                                                                           generator=gen)
    calls = []
    real = q.quantize_argmax
    monkeypatch.setattr(q, "quantize_argmax", lambda *a: calls.append(1) or real(*a))
    got = quantize_screened(z, book, 4096, k=4)
    assert calls, "the crowded window did not reach the fallback"
    assert torch.equal(got, real(z, book, 4096))


def test_ties_go_to_the_lowest_index():
    gen = torch.Generator().manual_seed(2)
    z = torch.randint(-1, 2, (1, 4, 6, 6), generator=gen).float()
    book = torch.randint(-1, 2, (90, 4), generator=gen).float()
    book[70] = book[3] = book[40] = torch.tensor([5.0, 5.0, 5.0, 5.0])
    assert torch.equal(quantize_screened(z, book, 1000, k=4), quantize_argmax(z, book, 1000))


def test_screened_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="codebook"):
        quantize_screened(torch.zeros(1, 8, 2, 2), torch.zeros(10, 4))


def test_every_position_falls_back_when_no_candidate_is_allowed():
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(1, 16, 3, 4, generator=gen)
    book = torch.randn(500, 16, generator=gen)
    assert torch.equal(quantize_screened(z, book, 2048, k=0), quantize_argmax(z, book, 2048))


def test_near_duplicate_rows_are_rescored_exactly_without_fallback(monkeypatch):
    # Groups of rows closer than the screen can tell apart: all land in the window, and the
    # exact fp32 rescoring (not the fallback) must pick the fp32 argmax.
    gen = torch.Generator().manual_seed(9)
    base = torch.randn(40, 32, generator=gen)
    book = (base[:, None] + 1e-3 * torch.randn(40, 5, 32, generator=gen)).reshape(200, 32)
    z = torch.randn(2, 32, 4, 4, generator=gen)
    monkeypatch.setattr(q, "quantize_argmax", lambda *a: pytest.fail("fell back"))
    got = quantize_screened(z, book, 1 << 20, k=200)  # never over k
    expected = torch.stack([(z.permute(0, 2, 3, 1).double() @ book.double().T).argmax(-1)])[0]
    differ = got != expected
    assert _near_tie(z, book, got, expected)[differ].all()
