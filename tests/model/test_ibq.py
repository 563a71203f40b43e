"""Tests for the IBQ vision tokenizer (services/model/ibq, spec §3.3 and §7).

Reference computations (attention, full-logits quantization) are written out here in
plain torch, independently of the package's forward code.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from services.model.ibq import (
    IBQ,
    IBQConfig,
    VisionTokenizer,
    quantize_argmax,
    smart_resize,
    smart_resize_size,
)
from services.model.ibq.modules import AttnBlock

from .ibq_fixtures import N_EMBED, copy_tokenizer, random_image  # noqa: F401


REPO_ROOT = Path(__file__).resolve().parents[2]

# The released tokenizer (spec §7.1): 455.3M parameters.
RELEASED = IBQConfig(
    n_embed=131072, embed_dim=256, ch=256, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=4,
    attn_resolutions=(16,), resolution=256, z_channels=256,
)



# ------------------------------------------------------------------- architecture/names


def test_state_dict_names_follow_the_checkpoint_layout():
    cfg = IBQConfig(n_embed=64, embed_dim=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2,
                    attn_resolutions=(32,), resolution=64, z_channels=32)
    sd = IBQ(cfg).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    present = {
        "encoder.conv_in.weight": (32, 3, 3, 3),
        "encoder.down.0.block.0.norm1.weight": (32,),
        "encoder.down.0.block.1.conv2.bias": (32,),
        "encoder.down.1.block.0.nin_shortcut.weight": (64, 32, 1, 1),  # 32 -> 64
        "encoder.down.1.attn.1.proj_out.weight": (64, 64, 1, 1),  # level 1 is nominal res 32
        "encoder.down.0.downsample.conv.weight": (32, 32, 3, 3),
        "encoder.down.1.downsample.conv.bias": (64,),
        "encoder.mid.block_1.conv1.weight": (64, 64, 3, 3),
        "encoder.mid.attn_1.q.weight": (64, 64, 1, 1),
        "encoder.mid.block_2.norm2.bias": (64,),
        "encoder.norm_out.weight": (64,),
        "encoder.conv_out.weight": (32, 64, 3, 3),
        "quant_conv.weight": (8, 32, 1, 1),
        "quantize.embedding.weight": (64, 8),
        "post_quant_conv.weight": (32, 8, 1, 1),
        "decoder.conv_in.weight": (64, 32, 3, 3),
        "decoder.mid.attn_1.k.bias": (64,),
        "decoder.up.2.block.2.conv1.weight": (64, 64, 3, 3),  # num_res_blocks + 1 blocks
        "decoder.up.2.upsample.conv.weight": (64, 64, 3, 3),
        "decoder.up.1.attn.2.v.weight": (64, 64, 1, 1),
        "decoder.up.1.upsample.conv.weight": (64, 64, 3, 3),
        "decoder.up.0.block.0.nin_shortcut.weight": (32, 64, 1, 1),  # 64 -> 32
        "decoder.norm_out.bias": (32,),
        "decoder.conv_out.weight": (3, 32, 3, 3),
    }
    for key, shape in present.items():
        assert shapes.get(key) == shape, key
    absent = [
        "encoder.down.0.block.0.nin_shortcut.weight", "encoder.down.1.block.1.nin_shortcut.weight",
        "encoder.down.2.downsample.conv.weight", "encoder.down.0.attn.0.q.weight",
        "encoder.down.2.attn.0.q.weight", "decoder.up.0.upsample.conv.weight",
        "decoder.up.0.block.3.conv1.weight", "decoder.up.2.block.0.nin_shortcut.weight",
        "decoder.up.0.attn.0.q.weight", "decoder.up.2.attn.0.q.weight",
    ]
    assert not [k for k in absent if k in shapes]
    assert not [k for k in shapes if "temb" in k]
    prefixes = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
    assert all(k.startswith(prefixes) for k in shapes)


def test_released_config_has_455m_parameters():
    with torch.device("meta"):
        model = IBQ(RELEASED)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.encoder) == 184_533_760
    assert count(model.decoder) == 237_117_187
    assert count(model.quantize) == 131072 * 256
    assert abs(count(model) - 455.3e6) < 0.1e6
    assert RELEASED.downsample_factor == 16


def reference_attention(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """The taming-transformers AttnBlock: explicit bmm + softmax over (hw)^2 scores."""
    h = F.group_norm(x, 32, block.norm.weight, block.norm.bias, eps=1e-6)
    q, k, v = (F.conv2d(h, m.weight, m.bias) for m in (block.q, block.k, block.v))
    b, c, hh, ww = q.shape
    q = q.reshape(b, c, hh * ww).permute(0, 2, 1)  # [b, hw, c]
    scores = torch.bmm(q, k.reshape(b, c, hh * ww)) * (int(c) ** -0.5)  # [b, hw_q, hw_k]
    attn = torch.softmax(scores, dim=2)
    out = torch.bmm(v.reshape(b, c, hh * ww), attn.permute(0, 2, 1)).reshape(b, c, hh, ww)
    return x + F.conv2d(out, block.proj_out.weight, block.proj_out.bias)


@pytest.mark.parametrize("shape", [(2, 32, 4, 4), (1, 64, 6, 10)])
def test_attn_block_matches_plain_reference(shape):
    torch.manual_seed(0)
    block = AttnBlock(shape[1]).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
        x = torch.randn(shape)
        torch.testing.assert_close(block(x), reference_attention(block, x), atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------- quantization


def reference_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Spec §7.3 as the reference does it: full [B, N, h, w] logits, softmax, max."""
    logits = torch.einsum("bdhw,nd->bnhw", z.float(), codebook.float())
    return torch.softmax(logits, dim=1).max(dim=1)[1]


@pytest.mark.parametrize("chunk_bytes", [4, 100, 4096, 64 * 1024, 256 * 1024 * 1024])
def test_chunked_argmax_equals_full_argmax(chunk_bytes):
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(2, 24, 5, 7, generator=gen)
    book = torch.randn(300, 24, generator=gen)
    expected = torch.einsum("bdhw,nd->bnhw", z, book).argmax(dim=1)
    got = quantize_argmax(z, book, max_chunk_bytes=chunk_bytes)
    assert got.dtype == torch.long and got.shape == (2, 5, 7)
    assert torch.equal(got, expected)
    assert torch.equal(got, reference_codes(z, book))


@pytest.mark.parametrize("chunk_bytes", [4, 64, 1000, 1 << 20])
def test_ties_go_to_the_lowest_index(chunk_bytes):
    # Small integers make every dot product exact, so ties are genuine and many.
    gen = torch.Generator().manual_seed(2)
    z = torch.randint(-1, 2, (1, 4, 6, 6), generator=gen).float()
    book = torch.randint(-1, 2, (90, 4), generator=gen).float()
    book[70] = book[3] = book[40] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # best for z > 0 sums
    logits = torch.einsum("bdhw,nd->bnhw", z, book)
    best = logits.max(dim=1, keepdim=True).values
    first_max = (logits == best).float().argmax(dim=1)  # lowest index attaining the max
    assert int((logits == best).sum(dim=1).max()) > 1  # the test really has ties
    assert torch.equal(quantize_argmax(z, book, max_chunk_bytes=chunk_bytes), first_max)


def test_bf16_inputs_quantize_in_fp32():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(1, 64, 4, 4, generator=gen).bfloat16()
    book = torch.randn(1000, 64, generator=gen).bfloat16()
    expected = torch.einsum("bdhw,nd->bnhw", z.float(), book.float()).argmax(dim=1)
    assert torch.equal(quantize_argmax(z, book, max_chunk_bytes=8192), expected)


def test_quantize_argmax_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="codebook"):
        quantize_argmax(torch.zeros(1, 8, 2, 2), torch.zeros(10, 4))


def test_quantize_peak_memory_is_bounded():
    """1024^2 image (64x64 latents) against the released 131072x256 codebook: < 1 GB extra."""
    script = textwrap.dedent(
        """
        import resource, torch
        from services.model.ibq import quantize_argmax
        torch.manual_seed(0)
        z = torch.randn(1, 256, 64, 64)
        book = torch.randn(131072, 256)
        quantize_argmax(torch.randn(1, 256, 1, 1), book[:8])  # warm up kernels / thread pools
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        codes = quantize_argmax(z, book)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert codes.shape == (1, 64, 64)
        print((after - before) * 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300, check=True)
    extra_bytes = int(out.stdout.strip().splitlines()[-1])
    assert extra_bytes < 1_000_000_000, f"quantize_argmax used {extra_bytes / 2**20:.0f} MiB extra"


# ------------------------------------------------------------------------ smart_resize


@pytest.mark.parametrize(
    "size, area, grid",
    [((1792, 1184), 518_400, (37, 55)), ((1792, 1184), 1_048_576, (52, 79)),
     ((768, 496), 1_048_576, (51, 80)), ((432, 768), 1_048_576, (85, 48)),
     ((720, 720), 518_400, (45, 45)), ((100, 100), 1_048_576, (64, 64))],
)
def test_smart_resize_size_matches_spec_examples(size, area, grid):
    new_w, new_h = smart_resize_size(*size, area=area)
    assert (new_h // 16, new_w // 16) == grid


def test_smart_resize_converts_to_rgb_first_and_uses_bicubic():
    image = random_image(50, 70, mode="RGBA")
    out = smart_resize(image, 64 * 64)
    assert out.mode == "RGB" and out.size == smart_resize_size(70, 50, 64 * 64)
    expected = image.convert("RGB").resize(out.size, Image.BICUBIC)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_smart_resize_rejects_degenerate_targets():
    with pytest.raises(ValueError, match="elongated"):
        smart_resize_size(10_000, 10, area=256)


# ------------------------------------------------------------------- tokenizer roundtrip


def test_preprocess_normalises_like_the_reference(vision):
    image = random_image(32, 48)
    x = vision.preprocess(image)
    expected = torch.tensor(np.array(image) / 127.5 - 1.0).to(torch.float32).permute(2, 0, 1)
    assert x.dtype == torch.float32 and x.shape == (3, 32, 48)
    assert torch.equal(x, expected)
    # 60x40 at area 48^2: new_h = int(sqrt(2304 / 1.5)) = 39 -> 32, new_w = int(39 * 1.5) = 58 -> 64
    assert vision.preprocess(random_image(40, 60), area=48 * 48).shape == (3, 32, 64)


def test_encode_decode_shapes_and_determinism(vision):
    images = [random_image(48, 64, seed=1), random_image(32, 32, seed=2)]
    codes = vision.encode(images)
    assert [c.shape for c in codes] == [(3, 4), (2, 2)]
    assert all(c.dtype == torch.long and c.device.type == "cpu" for c in codes)
    assert all(int(c.min()) >= 0 and int(c.max()) < N_EMBED for c in codes)
    assert len(torch.unique(codes[0])) > 3  # random weights still spread codes
    assert all(torch.equal(a, b) for a, b in zip(codes, vision.encode(images)))

    pixels = vision.decode(codes[0][None])
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 48, 64, 3)
    assert torch.equal(pixels, vision.decode(codes[0][None]))
    mixed = vision.decode(codes)
    assert isinstance(mixed, list) and [m.shape for m in mixed] == [(48, 64, 3), (32, 32, 3)]
    assert torch.equal(mixed[0], pixels[0])
    pil = vision.decode_to_pil(codes[1])
    assert pil.mode == "RGB" and pil.size == (32, 32)


def test_batched_encode_equals_per_image_encode(vision):
    images = [random_image(32, 48, seed=s) for s in range(3)] + [random_image(16, 16, seed=9)]
    batched = vision.encode(images, max_batch=2)
    for image, codes in zip(images, batched):
        assert torch.equal(vision.encode([image])[0], codes)
    together = vision.decode(torch.stack(batched[:3]), max_batch=3)
    alone = vision.decode(list(batched[:3]), max_batch=1)
    # Batched convolutions may round differently in the last float bit, which can move a
    # truncated pixel across an integer boundary: at most 1 LSB, and rarely.
    diff = (together.int() - alone.int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01


def test_tensor_input_matches_pil_input_and_area_resizes(vision):
    images = [random_image(32, 48, seed=s) for s in range(2)]
    x = torch.stack([vision.preprocess(im) for im in images])
    assert all(torch.equal(a, b) for a, b in zip(vision.encode(x), vision.encode(images)))
    (resized,) = vision.encode([random_image(30, 61, seed=4)], area=32 * 64)
    assert resized.shape == (2, 4)


def test_decode_truncates_like_the_reference(vision):
    codes = torch.randint(0, N_EMBED, (1, 2, 3), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        raw = vision.model.decode_codes(codes)
    expected = ((raw + 1.0) * 127.5).clamp(0, 255).permute(0, 2, 3, 1).numpy().astype(np.uint8)
    assert np.array_equal(vision.decode(codes).numpy(), expected)


def test_bf16_tokenizer_runs(tiny_dir, vision):
    bf16 = VisionTokenizer.from_dir(tiny_dir, dtype=torch.bfloat16)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    images = [random_image(48, 48, seed=s) for s in range(2)]
    codes = bf16.encode(images)
    assert [c.shape for c in codes] == [(3, 3), (3, 3)]
    agree = np.mean([(a == b).float().mean().item() for a, b in zip(codes, vision.encode(images))])
    assert agree > 0.5  # bf16 activations perturb near-ties only
    assert bf16.decode(torch.stack(codes)).shape == (2, 48, 48, 3)


def test_invalid_inputs_are_named(vision):
    with pytest.raises(ValueError, match="image"):
        vision.encode([random_image(30, 32)])
    with pytest.raises(ValueError, match="image"):
        vision.encode(torch.zeros(1, 3, 20, 32))
    with pytest.raises(ValueError, match="codes"):
        vision.decode(torch.full((1, 2, 2), N_EMBED))
    with pytest.raises(ValueError, match="codes"):
        vision.decode(torch.full((1, 2, 2), -1))
    with pytest.raises(ValueError, match="codes"):
        vision.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="codes"):
        vision.decode(torch.zeros(1, 2, 2))
