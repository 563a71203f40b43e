"""Device kernels the model calls, each with a plain torch reference that defines it.

- :mod:`kernels.paged_attention`: KV-cache writes and causal attention over a paged KV cache
  (decode rows and prefill chunks in one call); reference, Triton and optional flash-attn paths.
- :mod:`kernels.fused_norm`: the decoder's elementwise work (RMSNorm with the residual add,
  QK-norm + RoPE, SwiGLU's silu(gate) * up): torch references and the op bundles;
  :mod:`kernels.triton_norm` holds their fused Triton kernels.
- :mod:`kernels.sampling`: guided sampling scores (log-softmax CFG, grammar mask, temperature)
  over [R, V] logits; reference and Triton (:mod:`kernels.triton_sampling`).
- :mod:`kernels.token_draw`: top-k / top-p and the seeded inverse-CDF draw without full sorts
  of the vocabulary, against a plain full-vocabulary definition.
- :mod:`kernels.registry`: picks the attention implementation, the elementwise ops and the
  sampling implementation for a device (``EMU35_ATTENTION``, ``EMU35_FUSED``,
  ``EMU35_SAMPLING``; lazy imports, so CPU-only use never imports Triton).

This package imports only torch (and Triton / flash-attn lazily, when asked for).
"""
