"""Device kernels the model calls, each with a plain torch reference that defines it.

- :mod:`kernels.paged_attention`: KV-cache writes and causal attention over a paged KV cache
  (decode rows and prefill chunks in one call); reference, Triton and optional flash-attn paths.
- :mod:`kernels.sampling`: guided sampling scores (log-softmax CFG, grammar mask, temperature)
  over [R, V] logits; reference and Triton (:mod:`kernels.triton_sampling`).
- :mod:`kernels.token_draw`: top-k / top-p and the seeded inverse-CDF draw without full sorts
  of the vocabulary, against a plain full-vocabulary definition.
- :mod:`kernels.registry`: picks the attention and sampling implementations for a device (lazy
  imports, so CPU-only use never imports Triton).

This package imports only torch (and Triton / flash-attn lazily, when asked for).
"""
