"""FLOP and byte floors of IBQ encode and decode, counted from the config (kernels/NOTES.md, IBQ).

Counts multiply-adds as 2 FLOPs: a 3x3 conv is 2 * Cin * Cout * 9 * H_out * W_out, a 1x1 conv
2 * Cin * Cout * H * W, attention 4 * (hw)^2 * C (QK^T and PV) plus its four 1x1 convs, the
quantizer 2 * n_embed * embed_dim per latent position. Bytes: every conv's input read once and
output written once in bf16 (what a fully fused forward would still move), weights once.
"""
from __future__ import annotations

from collections import defaultdict

from services.model.ibq.config import IBQConfig

ACT_BYTES = 2  # bf16


def _conv(cin: int, cout: int, k: int, h: int, w: int) -> float:
    return 2.0 * cin * cout * k * k * h * w


def _block(cin: int, cout: int, h: int, w: int) -> float:
    f = _conv(cin, cout, 3, h, w) + _conv(cout, cout, 3, h, w)
    return f + (_conv(cin, cout, 1, h, w) if cin != cout else 0.0)


def _attn(c: int, h: int, w: int) -> float:
    return 4 * _conv(c, c, 1, h, w) + 4.0 * (h * w) ** 2 * c


def encode_flops(cfg: IBQConfig, height: int, width: int) -> dict[str, float]:
    """FLOPs per stage of encoder + quant_conv + quantizer for one image."""
    out: dict[str, float] = defaultdict(float)
    h, w, res = height, width, cfg.resolution
    out["conv_in"] = _conv(cfg.in_channels, cfg.ch, 3, h, w)
    cin = cfg.ch
    for lvl, mult in enumerate(cfg.ch_mult):
        cout = cfg.ch * mult
        for b in range(cfg.num_res_blocks):
            out[f"L{lvl} {h}x{w}"] += _block(cin if b == 0 else cout, cout, h, w)
            if res in cfg.attn_resolutions:
                out[f"L{lvl} {h}x{w}"] += _attn(cout, h, w)
        cin = cout
        if lvl != cfg.num_levels - 1:
            h, w, res = h // 2, w // 2, res // 2
            out[f"down {h}x{w}"] = _conv(cout, cout, 3, h, w)
    out["mid"] = 2 * _block(cin, cin, h, w) + _attn(cin, h, w)
    out["conv_out+quant_conv"] = _conv(cin, cfg.z_channels, 3, h, w) + _conv(
        cfg.z_channels, cfg.embed_dim, 1, h, w)
    out["quantizer (fp32)"] = 2.0 * cfg.n_embed * cfg.embed_dim * h * w
    return dict(out)


def decode_flops(cfg: IBQConfig, height: int, width: int) -> dict[str, float]:
    """FLOPs per stage of post_quant_conv + decoder for one image of height x width pixels."""
    out: dict[str, float] = defaultdict(float)
    f = cfg.downsample_factor
    h, w = height // f, width // f
    res = cfg.resolution // f
    cin = cfg.ch * cfg.ch_mult[-1]
    out["post_quant_conv+conv_in"] = _conv(cfg.embed_dim, cfg.z_channels, 1, h, w) + _conv(
        cfg.z_channels, cin, 3, h, w)
    out["mid"] = 2 * _block(cin, cin, h, w) + _attn(cin, h, w)
    for lvl in reversed(range(cfg.num_levels)):
        cout = cfg.ch * cfg.ch_mult[lvl]
        for b in range(cfg.num_res_blocks + 1):
            out[f"L{lvl} {h}x{w}"] += _block(cin if b == 0 else cout, cout, h, w)
            if res in cfg.attn_resolutions:
                out[f"L{lvl} {h}x{w}"] += _attn(cout, h, w)
        cin = cout
        if lvl != 0:
            h, w, res = 2 * h, 2 * w, 2 * res
            out[f"up {h}x{w}"] = _conv(cout, cout, 3, h, w)
    out["conv_out"] = _conv(cin, cfg.out_ch, 3, h, w)
    return dict(out)


def subpixel_upsample_saving(cfg: IBQConfig, height: int, width: int) -> float:
    """FLOPs the 2x2 sub-pixel form of nearest-x2 + 3x3 conv saves (4 of 9 taps per output)."""
    return sum(v * 5 / 9 for k, v in decode_flops(cfg, height, width).items()
               if k.startswith("up "))


def min_activation_bytes(cfg: IBQConfig, height: int, width: int, decoder: bool) -> float:
    """Bytes of every 3x3 conv's input read once and output written once (bf16)."""
    total, h, w = 0.0, height, width
    levels = list(enumerate(cfg.ch_mult))
    blocks = cfg.num_res_blocks + (1 if decoder else 0)
    for lvl, mult in levels:
        c = cfg.ch * mult
        total += blocks * 2 * 2 * c * h * w * ACT_BYTES  # 2 convs, in + out
        h, w = h // 2, w // 2
    return total


def floors_ms(flops: float, bytes_: float, tflops: float = 790.0, tbps: float = 4.28) -> tuple:
    """(compute floor ms, bytes floor ms) at the measured H200 rates."""
    return flops / (tflops * 1e12) * 1e3, bytes_ / (tbps * 1e12) * 1e3


def main() -> None:
    cfg = IBQConfig(n_embed=131072, embed_dim=256, ch=256, ch_mult=(1, 1, 2, 2, 4),
                    num_res_blocks=4, attn_resolutions=(64,), resolution=1024, z_channels=256)
    for name, fn, dec in (("encode", encode_flops, False), ("decode", decode_flops, True)):
        parts = fn(cfg, 1024, 1024)
        total = sum(parts.values())
        by = min_activation_bytes(cfg, 1024, 1024, dec)
        print(f"{name}: {total / 1e12:.2f} TFLOP, conv bytes {by / 2**30:.1f} GiB, "
              "floors (ms, ms) = %.1f, %.1f" % floors_ms(total, by))
        for k, v in parts.items():
            print(f"  {k:24s} {v / 1e12:7.3f} TFLOP  {v / total * 100:5.1f}%  "
                  f"{v / 790e12 * 1e3:6.2f} ms")
    print(f"sub-pixel upsample saves {subpixel_upsample_saving(cfg, 1024, 1024) / 1e12:.2f} TFLOP")


if __name__ == "__main__":
    main()
