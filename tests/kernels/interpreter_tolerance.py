"""How close a fused kernel must come to the unfused pair it replaces when both run under the
Triton interpreter (TRITON_INTERPRET=1, CPU); compiled on CUDA they must be bit-identical.

Why not bit-identical on the CPU: the interpreter computes ``tl.dot`` with ``np.matmul``, so
OpenBLAS's sgemm kernel decides each element's summation order, and some of its kernels sum an
element differently by its column position in the tile. The fused gate_up GEMM interleaves
gate and up rows (kernels/skinny_swiglu.py), so the same dot lands in another column than in
the plain GEMM. With numpy 2.4.6 (OpenBLAS 0.3.31, DYNAMIC_ARCH) and triton 3.9.0, the
SkylakeX, Cooperlake, Sandybridge, Nehalem and Prescott kernels give identical results; the
Haswell and Zen kernels (an AVX2 CPU, or ``OPENBLAS_CORETYPE=Haswell``) do not. Measured with
``OPENBLAS_CORETYPE=Haswell`` / ``Zen`` as max |fused - unfused| / (eps(dtype) * max |unfused|):

- tests/kernels/test_decode_fusion.py::test_gemm_silu_mul_is_the_unfused_pair, all 32 cases:
  fp32 5.95 (2.5e-6 absolute; 65% of elements differ in the worst case), fp16 0.29 (a last
  bit of at most 0.63% of the elements, 1.95e-3 absolute);
- tests/engine/test_decode_fusion.py (two-layer model, four steps): logits fp32 4.77, fp16
  0.45; KV cache fp32 2.66, fp16 0.

For scale, the same kernels differ from the torch reference (another summation order again)
by up to 6.8 eps (fp32) and 0.29 eps (fp16) in the same units. The bounds below keep a margin
of about 2.7x (fp32) and 4x (fp16) over the worst figure; a wrong fusion (a swapped gate/up
row, a missed rounding, a lost split) is off by far more.
"""
from __future__ import annotations

import torch

# In units of eps(dtype) times the reference's largest magnitude (see above).
INTERPRETER_EPS = {torch.float32: 16.0, torch.float16: 2.0, torch.bfloat16: 2.0}
# 16-bit outputs: the share of elements that may differ at all (measured at most 0.63%).
INTERPRETER_MISMATCH = 0.025


def assert_fused_matches(fused: torch.Tensor, unfused: torch.Tensor,
                         compute_dtype: torch.dtype | None = None) -> None:
    """Bit-identical when compiled (CUDA); under the interpreter within INTERPRETER_EPS of
    ``compute_dtype`` (default: the tensors' own; fp32 logits of an fp16 model: fp16)."""
    assert fused.shape == unfused.shape and fused.dtype == unfused.dtype
    if fused.is_cuda:
        assert torch.equal(fused, unfused)
        return
    assert torch.isfinite(fused).all() and torch.isfinite(unfused).all()
    dtype = compute_dtype or unfused.dtype
    eps = torch.finfo(dtype).eps
    scale = unfused.float().abs().max().item()
    err = (fused.float() - unfused.float()).abs().max().item()
    bound = INTERPRETER_EPS[dtype] * eps * scale
    assert err <= bound, f"max |fused - unfused| {err:.3g} > {bound:.3g} " \
                         f"({err / (eps * scale):.2f} eps of the largest magnitude)"
    if unfused.dtype != torch.float32:  # a flip of a last bit is rare; a missed rounding is not
        frac = (fused != unfused).float().mean().item()
        assert frac <= INTERPRETER_MISMATCH, f"{frac:.2%} of elements differ"
