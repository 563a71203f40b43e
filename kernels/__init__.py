"""Device kernels the model calls, each with a plain torch reference that defines it.

- :mod:`kernels.paged_attention`: KV-cache writes and causal attention over a paged KV cache
  (decode rows and prefill chunks in one call); reference, Triton and optional flash-attn paths.
- :mod:`kernels.registry`: picks the attention implementation for a device (lazy imports, so
  CPU-only use never imports Triton).

This package imports only torch (and Triton / flash-attn lazily, when asked for).
"""
