"""FLOP accounting per stage, from the configs and the sequence lengths.

Convention: one multiply-add = 2 FLOPs; only matmuls, convolutions and the attention products
are counted (norms, activations, RoPE and other element-wise work are a few percent at most and
are memory-bound, not compute-bound). All counts are for batch 1 unless `batch` is given.

    python -m bench.flops            # the table for 30 s / 60 s / 240 s (T = 322 / 645 / 2583)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class DiTSizes:
    width: int  # D = heads * head_dim
    heads: int
    head_dim: int
    ff_hidden: int  # F = int(D * mlp_ratio)
    layers: int
    in_channels: int
    patch_height: int
    lyric_hidden: int
    lyric_heads: int
    lyric_units: int
    lyric_blocks: int
    text_dim: int
    speaker_dim: int

    @classmethod
    def from_config(cls, cfg: dict) -> DiTSizes:
        heads, hd = int(cfg["num_attention_heads"]), int(cfg["attention_head_dim"])
        width = heads * hd
        return cls(
            width=width,
            heads=heads,
            head_dim=hd,
            ff_hidden=int(width * float(cfg["mlp_ratio"])),
            layers=int(cfg["num_layers"]),
            in_channels=int(cfg["in_channels"]),
            patch_height=int(cfg["patch_size"][0]),
            lyric_hidden=int(cfg["lyric_hidden_size"]),
            lyric_heads=int(cfg.get("lyric_encoder_attention_heads", 16)),
            lyric_units=int(cfg.get("lyric_encoder_linear_units", 4096)),
            lyric_blocks=int(cfg.get("lyric_encoder_num_blocks", 6)),
            text_dim=int(cfg["text_embedding_dim"]),
            speaker_dim=int(cfg["speaker_embedding_dim"]),
        )


def mm(m: int, k: int, n: int) -> int:
    """FLOPs of an [m, k] @ [k, n] product."""
    return 2 * m * k * n


def dit_block_flops(s: DiTSizes, T: int, L: int) -> dict[str, int]:
    """One transformer block on T latent frames with L encoder tokens (encoder K/V excluded:
    they are computed once per generation, see `dit_encoder_kv_flops`)."""
    D, H, Dh, F = s.width, s.heads, s.head_dim, s.ff_hidden
    return {
        "self_attn_qkvo": 4 * mm(T, D, D),
        # linear attention: k^T [Dh, T] @ [v | 1] [T, Dh+1], then q [T, Dh] @ kv [Dh, Dh+1]
        "self_attn_core": H * (mm(Dh, T, Dh + 1) + mm(T, Dh, Dh + 1)),
        "cross_attn_qo": 2 * mm(T, D, D),
        # softmax attention: q k^T [T, L] and p v [T, Dh] per head
        "cross_attn_core": H * (mm(T, Dh, L) + mm(T, L, Dh)),
        # GLUMBConv: 1x1 D -> 2F, depthwise k=3 on 2F channels, 1x1 F -> D
        "ff": mm(T, D, 2 * F) + 2 * 3 * T * 2 * F + mm(T, F, D),
    }


def dit_outer_flops(s: DiTSizes, T: int) -> dict[str, int]:
    """Per step, outside the blocks: patch embedding, timestep MLPs, final layer."""
    D, C, p = s.width, s.in_channels, s.patch_height
    hidden = C * 256
    return {
        "proj_in": mm(T, C * p, hidden) + mm(T, hidden, D),
        "timestep": mm(1, 256, D) + mm(1, D, D) + mm(1, D, 6 * D),
        "final_layer": mm(T, D, p * C),
    }


def dit_step_flops(cfg: dict, T: int, L: int, batch: int = 1) -> dict[str, int]:
    """FLOPs of one `decode` call (the sampler's per-step DiT pass) with precomputed encoder
    K/V. Returns the parts summed over the blocks, and `total`."""
    s = DiTSizes.from_config(cfg)
    parts = {k: v * s.layers for k, v in dit_block_flops(s, T, L).items()}
    parts.update(dit_outer_flops(s, T))
    parts = {k: v * batch for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def dit_encoder_kv_flops(cfg: dict, L: int, batch: int = 1) -> int:
    """Cross-attention K and V projections of the encoder states, all blocks (once per run)."""
    s = DiTSizes.from_config(cfg)
    return batch * s.layers * 2 * mm(L, s.width, s.width)


def lyric_encode_flops(cfg: dict, L_text: int, L_lyric: int, batch: int = 1) -> dict[str, int]:
    """`dit.encode`: speaker/genre embedders, the Conformer lyric encoder, `lyric_proj`."""
    s = DiTSizes.from_config(cfg)
    d, U, Lq = s.lyric_hidden, s.lyric_units, L_lyric
    P = 2 * Lq - 1  # relative positions
    layer = (
        4 * mm(Lq, d, d)  # q, k, v, out
        + mm(P, d, d)  # linear_pos
        + mm(Lq, d, Lq)  # (q + u) k^T, all heads
        + mm(Lq, d, P)  # (q + v) p^T, all heads
        + mm(Lq, Lq, d)  # attention x values
        + mm(Lq, d, U)
        + mm(Lq, U, d)  # feed-forward
    )
    parts = {
        "embedders": mm(1, s.speaker_dim, s.width) + mm(L_text, s.text_dim, s.width),
        "conformer": mm(Lq, d, d) + s.lyric_blocks * layer,
        "lyric_proj": mm(Lq, d, s.width),
    }
    parts = {k: v * batch for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def umt5_flops(cfg: dict, L: int, batch: int = 1) -> int:
    """UMT5 encoder on L tokens: per layer q/k/v/o, scores and values, gated-GELU FF."""
    d, inner, dff = int(cfg["d_model"]), int(cfg["num_heads"]) * int(cfg["d_kv"]), int(cfg["d_ff"])
    layer = (
        3 * mm(L, d, inner)
        + mm(L, inner, d)
        + mm(L, inner, L)
        + mm(L, L, inner)
        + 2 * mm(L, d, dff)
        + mm(L, dff, d)
    )
    return batch * int(cfg["num_layers"]) * layer


def dit_calls(steps: int, guidance_interval: float = 0.5, guided: bool = True) -> dict[str, int]:
    """DiT `decode` calls of a text2music run: batch-2 (cond + uncond batched) on the guided
    steps `int(N (1 - gi) / 2) <= i < int(N (gi / 2 + 0.5))`, batch 1 elsewhere."""
    start = int(steps * ((1 - guidance_interval) / 2))
    end = int(steps * (guidance_interval / 2 + 0.5))
    n2 = max(0, end - start) if guided else 0
    return {"batch1": steps - n2, "batch2": n2}


def generation_dit_flops(cfg: dict, T: int, L: int, steps: int, gi: float = 0.5) -> int:
    calls = dit_calls(steps, gi)
    one = dit_step_flops(cfg, T, L)["total"]
    return one * (calls["batch1"] + 2 * calls["batch2"]) + dit_encoder_kv_flops(cfg, L, 2)


def main(argv: list[str] | None = None) -> int:
    from bench.common import full_config, latent_frames

    p = argparse.ArgumentParser(description="FLOPs per DiT step at the real size")
    p.add_argument("--seconds", type=float, nargs="+", default=[30, 60, 240])
    p.add_argument("--encoder-len", type=int, default=320, help="1 + L_text + L_lyric")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--codec",
        action="store_true",
        help="also count the DCAE decoder and vocoder FLOPs (runs them on 16 latent frames) and "
        "save bench/results/codec_flops.json",
    )
    args = p.parse_args(argv)
    if args.codec:
        from bench.common import RESULTS

        per = codec_flops_per_latent_frame()
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "codec_flops.json").write_text(json.dumps(per, indent=2) + "\n")
        for k, v in per.items():
            print(f"{k}: {v / 1e9:.2f} GFLOP per latent frame (both channels)")
    cfg = full_config("dit")
    rows = []
    for sec in args.seconds:
        T = latent_frames(sec)
        f = dit_step_flops(cfg, T, args.encoder_len)
        rows.append({"seconds": sec, "T": T, **{k: v / 1e12 for k, v in f.items()}})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"FLOPs (TFLOP) of one DiT decode, batch 1, L_enc = {args.encoder_len}")
    keys = [k for k in rows[0] if k not in ("seconds", "T")]
    print("seconds T " + " ".join(keys))
    for r in rows:
        print(f"{r['seconds']:g} {r['T']} " + " ".join(f"{r[k]:.4f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def count_module_flops(model, run) -> int:
    """FLOPs of the convolutions and linear layers that `run()` executes through `model`'s
    modules, counted from their output shapes and weights (per output element:
    2 * kernel taps * input channels / groups; transposed convolutions: per INPUT element
    2 * taps * out channels). Products written with `@` outside such modules are not
    counted (the DCAE's linear-attention products, < 1% of its work)."""
    import mlx.core as mx
    import mlx.nn as nn

    total = [0]
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d)
    classes = {type(m) for _, m in model.named_modules() if isinstance(m, kinds)}
    saved = {}

    def wrap(cls):
        orig = cls.__call__

        def call(self, x, *a, **k):
            y = orig(self, x, *a, **k)
            w = self.weight
            if isinstance(self, nn.ConvTranspose1d):
                total[0] += 2 * x.size * w.shape[0] * w.shape[1]
            elif isinstance(self, nn.Linear):
                total[0] += 2 * y.size * w.shape[-1]
            else:  # [O, *taps, I / groups]
                total[0] += 2 * y.size * (w.size // w.shape[0])
            return y

        saved[cls] = orig
        cls.__call__ = call

    for cls in classes:
        wrap(cls)
    try:
        mx.eval(run())
    finally:
        for cls, orig in saved.items():
            cls.__call__ = orig
    return total[0]


def codec_flops_per_latent_frame(frames: int = 16) -> dict[str, float]:
    """DCAE decoder and vocoder FLOPs per latent frame (both stereo channels), counted by
    running the real-size models (random float32 weights) on `frames` latent frames."""
    import mlx.core as mx

    from bench.common import full_config
    from convert.components import get_spec

    dcae = get_spec("dcae").build_model(full_config("dcae"))
    voc = get_spec("vocoder").build_model(full_config("vocoder"))
    z = mx.random.normal((1, 8, 16, frames))
    f_dcae = count_module_flops(dcae, lambda: dcae.decode_nchw(z))
    mel = mx.random.normal((1, 128, 8 * frames))
    f_voc = 2 * count_module_flops(voc, lambda: voc.decode(mel))  # two channels
    return {"dcae": f_dcae / frames, "vocoder": f_voc / frames}
