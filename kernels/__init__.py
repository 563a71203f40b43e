"""Device kernels the model calls, each with a plain torch reference that defines it.

- :mod:`kernels.paged_attention`: KV-cache writes and causal attention over a paged KV cache
  (decode rows and prefill chunks in one call); reference, Triton and optional flash-attn paths.
- :mod:`kernels.fused_norm`: the decoder's elementwise work (RMSNorm with the residual add,
  QK-norm + RoPE, SwiGLU's silu(gate) * up): torch references and the op bundles;
  :mod:`kernels.triton_norm` holds their fused Triton kernels.
- :mod:`kernels.registry`: picks the attention implementation and the elementwise ops for a
  device (``EMU35_ATTENTION``, ``EMU35_FUSED``; lazy imports, so CPU-only use never imports
  Triton).

This package imports only torch (and Triton / flash-attn lazily, when asked for).
"""
