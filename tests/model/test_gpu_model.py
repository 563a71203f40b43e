"""Device-only checks of the model layer (run on the GPU machine: pytest -m gpu)."""
from __future__ import annotations

import pytest
import torch

from services.model.ibq import VisionTokenizer, quantize_argmax, write_tiny_vision_tokenizer

pytestmark = pytest.mark.gpu


def test_quantize_real_codebook_bounded_memory():
    """1024x1024 image = 64x64 latents against the released 131072x256 codebook: the chunked
    argmax must stay under 1 GB of extra device memory (the reference needs ~6 GiB) and pick
    the same codes as the full logits argmax."""
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    z = torch.randn(1, 256, 64, 64, device=dev, generator=gen)
    codebook = torch.randn(131072, 256, device=dev, generator=gen)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    codes = quantize_argmax(z, codebook)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 1 << 30, f"{extra / 2**20:.0f} MiB extra"
    flat = z.permute(0, 2, 3, 1).reshape(-1, 256)
    want = torch.cat([(c @ codebook.T).argmax(-1) for c in flat.split(512)]).view(1, 64, 64)
    assert torch.equal(codes, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vision_tokenizer_on_cuda_matches_cpu(tmp_path, dtype):
    write_tiny_vision_tokenizer(tmp_path, n_embed=512, seed=0)
    cpu = VisionTokenizer.from_dir(tmp_path)
    gpu = VisionTokenizer.from_dir(tmp_path, device="cuda", dtype=dtype)
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    codes_cpu, codes_gpu = cpu.encode(x), gpu.encode(x)
    agree = torch.stack([(a == b).float().mean() for a, b in zip(codes_cpu, codes_gpu)]).mean()
    print(f"{dtype}: codes agree {agree:.4f}")
    assert agree > (0.99 if dtype == torch.float32 else 0.8)
    px_cpu = cpu.decode(torch.stack(codes_cpu)).float()
    px_gpu = gpu.decode(torch.stack(codes_cpu)).float()
    assert (px_cpu - px_gpu).abs().mean() < (1.0 if dtype == torch.float32 else 4.0)
