"""The striped channels_last IBQ forward (services/model/ibq/striped.py) against the plain one.

CPU tests run both paths in fp32 on random-weight models (the tiny released layout and a
mid-size config) with strips down to one row, so every halo, edge and padding case is hit.
``-m gpu`` runs the released shape at 1024^2 in bf16: time, extra peak memory, batching.
"""
from __future__ import annotations

import importlib.util
import os
import statistics
import time

import pytest
import torch

if not torch.cuda.is_available():  # must be set before triton.jit decorates the kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

from services.model.ibq import IBQ, IBQConfig, VisionTokenizer  # noqa: E402
from services.model.ibq.attention import attn_block  # noqa: E402
from services.model.ibq.model import SINGLE_IMAGE_LAYOUT  # noqa: E402
from services.model.ibq.modules import AttnBlock, Upsample  # noqa: E402
from services.model.ibq.striped import (StripPlan, decode_striped, encode_striped,  # noqa: E402
                                        kept_rows, resnet_block)
from services.model.ibq.strips import upsample  # noqa: E402
from services.model.ibq.tiny import init_random_weights, tiny_config  # noqa: E402

MID = IBQConfig(n_embed=512, embed_dim=32, ch=64, ch_mult=(1, 2, 2), num_res_blocks=2,
                attn_resolutions=(16,), resolution=64, z_channels=32)
RELEASED_1024 = IBQConfig(n_embed=131072, embed_dim=256, ch=256, ch_mult=(1, 1, 2, 2, 4),
                          num_res_blocks=4, attn_resolutions=(64,), resolution=1024,
                          z_channels=256)


def _model(config: IBQConfig, seed: int = 0) -> IBQ:
    model = IBQ(config).eval()
    init_random_weights(model, seed)
    return model


def _pixels(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=gen) * 2 - 1


def _close(got: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(got.contiguous(), expected, atol=rel * scale, rtol=rel)


# One-row strips, a few rows, and whole-tensor strips.
STRIP_BYTES = [1, 16 * 1024, 1 << 30]


@pytest.mark.parametrize("strip_bytes", STRIP_BYTES)
@pytest.mark.parametrize("config, size", [(tiny_config(64), (48, 80)), (MID, (40, 24))])
def test_striped_encoder_and_decoder_equal_plain(config, size, strip_bytes):
    model = _model(config)
    x = _pixels(2, *size)
    plan = StripPlan(strip_bytes)
    with torch.no_grad():
        _close(encode_striped(model.encoder, x, plan), model.encoder(x), 1e-4)
        z = torch.randn(2, config.z_channels, size[0] // config.downsample_factor,
                        size[1] // config.downsample_factor,
                        generator=torch.Generator().manual_seed(1))
        _close(decode_striped(model.decoder, z, plan), model.decoder(z), 1e-4)


# The PR-1 layout (whole conv1 outputs, whole batch, nearest + 3x3 upsample); every budget
# forced (recompute conv1 tails, one image at a time); the default.
PLAN_OPTIONS = {
    "plain-layout": dict(level_bytes=None, group_bytes=None, subpixel=False),
    "tight": dict(level_bytes=1, group_bytes=1),
    "default": dict(),
    "unfused": dict(fused_epilogue=False, attention="module"),  # cuDNN bias, SDPA attention
}


@pytest.mark.parametrize("options", PLAN_OPTIONS.values(), ids=PLAN_OPTIONS.keys())
def test_striped_plans_equal_plain(options):
    model = _model(MID)
    x = _pixels(3, 40, 24, seed=7)
    plan = StripPlan(16 * 1024, **options)
    with torch.no_grad():
        _close(encode_striped(model.encoder, x, plan), model.encoder(x), 1e-4)
        z = torch.randn(3, MID.z_channels, 10, 6, generator=torch.Generator().manual_seed(8))
        _close(decode_striped(model.decoder, z, plan), model.decoder(z), 1e-4)


def test_tight_plan_with_triton_kernels_equals_plain():
    pytest.importorskip("triton")
    model = _model(tiny_config(64))
    x = _pixels(2, 32, 16)
    plan = StripPlan(8192, "triton", **PLAN_OPTIONS["tight"])
    with torch.no_grad():
        _close(encode_striped(model.encoder, x, plan), model.encoder(x), 1e-4)
        cfg = model.config
        z = torch.randn(2, cfg.z_channels, 32 // cfg.downsample_factor,
                        16 // cfg.downsample_factor, generator=torch.Generator().manual_seed(8))
        _close(decode_striped(model.decoder, z, plan), model.decoder(z), 1e-4)


@pytest.mark.parametrize("impl", ["reference", pytest.param("triton", marks=pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"))])
@pytest.mark.parametrize("shape", [(1, 64, 4, 4), (3, 32, 5, 3)])
def test_explicit_attention_equals_the_module(impl, shape):
    gen = torch.Generator().manual_seed(11)
    block = AttnBlock(shape[1]).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3, generator=gen)
        x = (torch.randn(shape, generator=gen) * 3).contiguous(memory_format=torch.channels_last)
        got = attn_block(block, x, impl)
        assert got.is_contiguous(memory_format=torch.channels_last)
        _close(got, block(x), 1e-5)


@pytest.mark.parametrize("height", [5, 6, 9, 17])
@pytest.mark.parametrize("strip_bytes", [1, 700, 1 << 20])
def test_recomputed_conv1_tail_equals_plain_block(height, strip_bytes):
    model = _model(MID)
    block = model.encoder.down[1].block[0]  # 64 -> 128 channels: with a shortcut
    same = model.encoder.down[1].block[1]
    x = torch.randn(2, 64, height, 7, generator=torch.Generator().manual_seed(height))
    x = x.contiguous(memory_format=torch.channels_last)
    plan = StripPlan(strip_bytes, level_bytes=1)
    assert kept_rows(same, torch.zeros(2, 128, height, 7), plan) < height
    with torch.no_grad():
        expected = block(x)
        got, stats = resnet_block(block, x.clone(), plan)
        _close(got, expected, 1e-5)
        expected2 = same(expected)
        got2, _ = resnet_block(same, got, plan, stats)  # consumes got, uses its moments
        _close(got2, expected2, 1e-5)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (8, 4)])
@pytest.mark.parametrize("strip_bytes", [1, 300, 1 << 20])
def test_subpixel_upsample_equals_nearest_then_conv(size, strip_bytes):
    gen = torch.Generator().manual_seed(9)
    module = Upsample(32)  # GroupNorm moments need C % 32 == 0
    with torch.no_grad():
        module.conv.weight.normal_(0, 0.2, generator=gen)
        module.conv.bias.normal_(0, 0.2, generator=gen)
        x = torch.randn(2, 32, *size, generator=gen).contiguous(memory_format=torch.channels_last)
        stats = []
        got = upsample(module.conv, x, StripPlan(strip_bytes), stats)
        _close(got, module(x), 1e-5)
        assert sum(int(s[0][0].sum()) for s in stats) == got[0].numel()  # every row counted once


def _near_tie(latents: torch.Tensor, book: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
              tol: float) -> torch.Tensor:
    """Per position: do codes a and b score within ``tol`` (relative) of each other?"""
    z = latents.permute(0, 2, 3, 1).float()  # [B, h, w, D]
    sa, sb = (z * book[a]).sum(-1), (z * book[b]).sum(-1)
    return (sa - sb).abs() <= tol * torch.maximum(sa.abs(), sb.abs())


def test_model_dispatch_codes_match_plain_except_near_ties():
    model = _model(tiny_config(256), seed=3)
    x = _pixels(2, 64, 48, seed=4)
    with torch.inference_mode():
        plain = model.encode_codes(x)
        latents = model.encode_latents(x)
        model.striped, model.strip_bytes = True, 8 * 1024
        striped = model.encode_codes(x)
        decoded = model.decode_codes(plain)
        model.striped = False
        expected = model.decode_codes(plain)
    differ = plain != striped
    book = model.quantize.embedding.weight.detach()
    assert _near_tie(latents, book, plain, striped, 1e-4)[differ].all()
    _close(decoded, expected, 1e-4)


def test_cpu_default_is_the_plain_forward():
    model = _model(tiny_config(64))
    assert model.strip_plan(torch.zeros(1)) is None
    model.striped = True
    # one image, or an encode batch: the single-image layout; a decode batch: the default plan
    single = StripPlan(model.strip_bytes, "reference", **SINGLE_IMAGE_LAYOUT)
    assert model.strip_plan(torch.zeros(1)) == single
    assert model.strip_plan(torch.zeros(2), bounded_batches=False) == single
    assert model.strip_plan(torch.zeros(2)) == StripPlan(model.strip_bytes, "reference")
    model.strip_options = {}
    assert model.strip_plan(torch.zeros(1)) == StripPlan(model.strip_bytes, "reference")
    model.train()
    assert model.strip_plan(torch.zeros(1)) is None  # training keeps the autograd-friendly path


def test_low_precision_tokenizer_keeps_an_fp32_codebook():
    vision = VisionTokenizer(_model(tiny_config(64)), dtype=torch.bfloat16)
    assert vision.model.quantize.embedding.weight.dtype == torch.float32
    assert vision.model.encoder.conv_in.weight.dtype == torch.bfloat16
    codes = vision.encode(_pixels(1, 32, 32))
    assert vision.decode(codes).shape == (1, 32, 32, 3)


def test_striped_with_triton_kernels_equals_plain():
    pytest.importorskip("triton")
    model = _model(tiny_config(64))
    x = _pixels(1, 32, 32)
    with torch.no_grad():
        _close(encode_striped(model.encoder, x, StripPlan(4096, "triton")), model.encoder(x), 1e-4)


# ------------------------------------------------------------------------------ GPU


def _timed(fn, iters: int = 5) -> tuple[float, int]:
    """(median seconds, extra peak bytes over what was allocated before the runs)."""
    fn()  # warm-up: cuDNN algorithm choice, Triton compilation
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() - base


@pytest.fixture(scope="module")
def released_vision():
    torch.manual_seed(0)
    model = IBQ(RELEASED_1024).eval()
    init_random_weights(model, seed=0)
    return VisionTokenizer(model, device="cuda", dtype=torch.bfloat16)


@pytest.mark.gpu
def test_released_striped_equals_plain_on_gpu(released_vision):
    model = released_vision.model
    x = (torch.rand(1, 3, 512, 512, device="cuda") * 2 - 1).bfloat16()
    with torch.inference_mode():
        model.striped = False
        plain = model.encode_latents(x)
        model.striped = None
        striped = model.encode_latents(x)
        z = torch.randn_like(plain)
        dec_striped = decode_striped(model.decoder, z, model.strip_plan(z))
        dec_plain = model.decoder(z)
    _close(striped.float(), plain.float(), 3e-2)
    _close(dec_striped.float(), dec_plain.float(), 3e-2)


@pytest.mark.gpu
def test_released_1024_memory_and_batching(released_vision):
    """Memory bounds and batched results at 1024^2; timings are the benchmark's
    (``python -m benchmarks.bench_ibq`` prints ms per image at batch 1 and 4), never asserted
    here. Issue 5 asks <= 1e9 bytes extra per image: not met yet, the bounds guard the
    2026-11-30 H200 figures (batch 1: 1.17e9 bytes extra; batch 4: encode 4.69e9, decode
    1.23e9) against regressions (benchmarks/RESULTS.md)."""
    vision = released_vision
    figures, outputs = {}, {}

    def kept(key, fn, arg):  # the call, keeping its (CPU) result for the checks below
        return lambda: outputs.__setitem__(key, fn(arg))

    for batch in (1, 4):
        pixels = torch.rand(batch, 3, 1024, 1024, device="cuda") * 2 - 1
        codes = torch.randint(0, vision.n_embed, (batch, 64, 64))
        figures["encode", batch] = _timed(kept(("encode", batch), vision.encode, pixels))
        figures["decode", batch] = _timed(kept(("decode", batch), vision.decode, codes))
    for (op, batch), (sec, extra) in figures.items():
        print(f"{op} batch {batch}: {sec * 1e3 / batch:.1f} ms/image (not asserted), "
              f"{extra / 2**30:.3f} GiB extra")
    for batch in (1, 4):
        grids = outputs["encode", batch]
        assert len(grids) == batch and all(g.shape == (64, 64) for g in grids)
        assert all(0 <= int(g.min()) and int(g.max()) < vision.n_embed for g in grids)
        assert outputs["decode", batch].shape == (batch, 1024, 1024, 3)
        assert outputs["decode", batch].dtype == torch.uint8
    for op in ("encode", "decode"):
        assert figures[op, 1][1] < 1.2e9, f"{op} {figures[op, 1][1] / 1e9:.3f} GB"
        assert figures[op, 4][1] / 4 < 1.2e9, f"{op}: batch 4 takes more memory per image"
