"""Classifier-free guidance rules of ACE-Step v1 (spec section 8): APG, CFG, CFG-Zero*, double
condition, and the guidance interval / decay schedule.

Pure functions on `mx.array` (plus the small `MomentumBuffer` state object, created once per
generation). They keep the input dtype like the original: in bf16 mode every tensor operation is
rounded to bf16; a Python-scalar factor is applied in float32 and rounded once (PyTorch's rule for
a scalar times a low-precision tensor), and reductions accumulate in float32 by pairwise
summation (`pairwise_sum`).

APG projection: the original runs `project` in float64 (on CPU for Apple MPS). Metal has no
float64, so here it runs in float32 on whatever device MLX uses (with pairwise sums); on the
fixture the APG outputs (|x| ~ 4, guidance 15) differ from the float64 original by <= 2e-6,
inside the 1e-5 tolerance (tests/test_sampling.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx

from acestep_mlx.sampling.schedulers import pairwise_sum

__all__ = [
    "CFG_TYPES",
    "MomentumBuffer",
    "project",
    "apg_forward",
    "cfg_forward",
    "cfg_double_condition_forward",
    "optimized_scale",
    "cfg_zero_star",
    "check_cfg_type",
    "apply_guidance",
    "guidance_interval",
    "guidance_active",
    "guidance_scale_at",
    "use_double_condition",
]

CFG_TYPES = ("apg", "cfg", "cfg_star")


def _scale(x: mx.array, factor: float) -> mx.array:
    """`factor * x` as PyTorch does for a Python scalar: float32 product, rounded to x's dtype."""
    if x.dtype == mx.float32:
        return x * factor
    return (x.astype(mx.float32) * factor).astype(x.dtype)


def _sum(x: mx.array, axes, keepdims: bool = True) -> mx.array:
    """Sum with float32 accumulation, result in x's dtype."""
    return pairwise_sum(x, axes, keepdims).astype(x.dtype)


def _norm(x: mx.array, axes, keepdims: bool = True) -> mx.array:
    """L2 norm over `axes` with float32 accumulation, result in x's dtype."""
    x32 = x.astype(mx.float32)
    return mx.sqrt(pairwise_sum(x32 * x32, axes, keepdims)).astype(x.dtype)


def _axes(dims: Sequence[int] | int) -> list[int]:
    return [dims] if isinstance(dims, int) else list(dims)


def _check_pair(a: mx.array, b: mx.array, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names}: shapes differ, {a.shape} vs {b.shape}")


class MomentumBuffer:
    """APG momentum state: `running = update + momentum * running` (starts at 0).

    Create ONE per generation and pass it to every guided `apg_forward` call (both Heun sub-steps
    included); steps outside the guidance interval do not touch it.
    """

    def __init__(self, momentum: float = -0.75):
        self.momentum = float(momentum)
        self.running_average: mx.array | None = None

    def update(self, update_value: mx.array) -> None:
        if self.running_average is None:  # original: value + momentum * 0 (a -0.0 scalar)
            self.running_average = update_value
        else:
            if self.running_average.shape != update_value.shape:
                raise ValueError(
                    f"MomentumBuffer: update shape {update_value.shape} != running average shape "
                    f"{self.running_average.shape}; use one buffer per generation"
                )
            self.running_average = update_value + _scale(self.running_average, self.momentum)


def project(
    v0: mx.array, v1: mx.array, dims: Sequence[int] | int = (-1, -2)
) -> tuple[mx.array, mx.array]:
    """Split v0 into (parallel, orthogonal) parts w.r.t. v1 over `dims`, per remaining index.

    Computed in float32 (the original uses float64) and cast back to v0's dtype.
    """
    _check_pair(v0, v1, "project(v0, v1)")
    axes = _axes(dims)
    a = v0.astype(mx.float32)
    b = v1.astype(mx.float32)
    unit = b / mx.maximum(mx.sqrt(pairwise_sum(b * b, axes, keepdims=True)), 1e-12)
    parallel = pairwise_sum(a * unit, axes, keepdims=True) * unit
    orthogonal = a - parallel
    return parallel.astype(v0.dtype), orthogonal.astype(v0.dtype)


def apg_forward(
    pred_cond: mx.array,
    pred_uncond: mx.array,
    guidance_scale: float,
    momentum_buffer: MomentumBuffer | None = None,
    eta: float = 0.0,
    norm_threshold: float = 2.5,
    dims: Sequence[int] | int = (-1, -2),
) -> mx.array:
    """Adaptive projected guidance (default `cfg_type="apg"`), tensors [B, C, H, W].

    diff = cond - uncond -> momentum running average (if a buffer is given) -> rescaled to an L2
    norm <= norm_threshold over `dims` -> only its part orthogonal to cond (+ eta * parallel) is
    added: `cond + (scale - 1) * (orth + eta * par)`.
    """
    _check_pair(pred_cond, pred_uncond, "apg_forward(pred_cond, pred_uncond)")
    axes = _axes(dims)
    diff = pred_cond - pred_uncond
    if momentum_buffer is not None:
        momentum_buffer.update(diff)
        diff = momentum_buffer.running_average
    if norm_threshold > 0:
        # PyTorch evaluates `threshold / norm` as reciprocal(norm) * threshold
        limit = _scale(mx.reciprocal(_norm(diff, axes)), norm_threshold)
        diff = diff * mx.minimum(mx.ones_like(diff), limit)
    parallel, orthogonal = project(diff, pred_cond, axes)
    update = orthogonal + _scale(parallel, eta)
    return pred_cond + _scale(update, guidance_scale - 1)


def cfg_forward(cond_output: mx.array, uncond_output: mx.array, cfg_strength: float) -> mx.array:
    """Plain classifier-free guidance: `uncond + scale * (cond - uncond)`."""
    _check_pair(cond_output, uncond_output, "cfg_forward(cond, uncond)")
    return uncond_output + _scale(cond_output - uncond_output, cfg_strength)


def cfg_double_condition_forward(
    cond_output: mx.array,
    uncond_output: mx.array,
    only_text_cond_output: mx.array,
    guidance_scale_text: float,
    guidance_scale_lyric: float,
) -> mx.array:
    """Text + lyric guidance: `(1 - g_t) * u + (g_t - g_l) * text_only + g_l * cond`."""
    _check_pair(cond_output, uncond_output, "cfg_double_condition_forward(cond, uncond)")
    _check_pair(cond_output, only_text_cond_output, "cfg_double_condition_forward(cond, only_text)")
    gt, gl = guidance_scale_text, guidance_scale_lyric
    return (
        _scale(uncond_output, 1 - gt)
        + _scale(only_text_cond_output, gt - gl)
        + _scale(cond_output, gl)
    )


def optimized_scale(positive_flat: mx.array, negative_flat: mx.array) -> mx.array:
    """CFG-Zero* scale per row of [B, N]: `<pos, neg> / (||neg||^2 + 1e-8)`, shape [B, 1]."""
    _check_pair(positive_flat, negative_flat, "optimized_scale(positive, negative)")
    dot = _sum(positive_flat * negative_flat, 1)
    squared_norm = _sum(negative_flat * negative_flat, 1)
    squared_norm = (squared_norm.astype(mx.float32) + 1e-8).astype(squared_norm.dtype)
    return dot / squared_norm


def cfg_zero_star(
    noise_pred_with_cond: mx.array,
    noise_pred_uncond: mx.array,
    guidance_scale: float,
    i: int,
    zero_steps: int = 1,
    use_zero_init: bool = True,
) -> mx.array:
    """CFG-Zero* (`cfg_type="cfg_star"`); `i` is the absolute step index (quirk: with the default
    guidance interval the zero-init, `i <= zero_steps`, never fires)."""
    cond, uncond = noise_pred_with_cond, noise_pred_uncond
    _check_pair(cond, uncond, "cfg_zero_star(cond, uncond)")
    bsz = cond.shape[0]
    alpha = optimized_scale(cond.reshape(bsz, -1), uncond.reshape(bsz, -1))
    alpha = alpha.reshape((bsz,) + (1,) * (cond.ndim - 1))
    if i <= zero_steps and use_zero_init:
        return _scale(cond, 0.0)
    scaled_uncond = uncond * alpha
    return scaled_uncond + _scale(cond - scaled_uncond, guidance_scale)


def check_cfg_type(cfg_type: str) -> str:
    """Validate a pipeline `cfg_type` ("apg", "cfg", "cfg_star")."""
    if cfg_type not in CFG_TYPES:
        raise ValueError(f"unknown cfg_type {cfg_type!r}; choose one of {', '.join(CFG_TYPES)}")
    return cfg_type


def apply_guidance(
    cfg_type: str,
    cond: mx.array,
    uncond: mx.array,
    guidance_scale: float,
    step_index: int,
    momentum_buffer: MomentumBuffer | None = None,
    zero_steps: int = 1,
    use_zero_init: bool = True,
) -> mx.array:
    """The pipeline's single-condition dispatch: APG (with the buffer), CFG or CFG-Zero*."""
    check_cfg_type(cfg_type)
    if cfg_type == "apg":
        return apg_forward(cond, uncond, guidance_scale, momentum_buffer=momentum_buffer)
    if cfg_type == "cfg":
        return cfg_forward(cond, uncond, guidance_scale)
    return cfg_zero_star(cond, uncond, guidance_scale, step_index, zero_steps, use_zero_init)


def guidance_interval(num_steps: int, guidance_interval: float) -> tuple[int, int]:
    """Guided steps are `start <= i < end`: `(int(N*(1-gi)/2), int(N*(gi/2+0.5)))`.

    N is the `num_inference_steps` returned by `retrieve_timesteps` (N, not 2N-1, for Heun).
    gi 0.5, N 60 -> (15, 45).
    """
    start = int(num_steps * ((1 - guidance_interval) / 2))
    end = int(num_steps * (guidance_interval / 2 + 0.5))
    return start, end


def guidance_active(i: int, start: int, end: int, guidance_scale: float) -> bool:
    """True when step i is guided: inside [start, end) and guidance_scale is not 0.0 or 1.0."""
    return start <= i < end and guidance_scale not in (0.0, 1.0)


def guidance_scale_at(
    i: int, start: int, end: int, guidance_scale: float, decay: float, min_guidance_scale: float
) -> float:
    """Scale at guided step i: linear decay towards `min_guidance_scale` when decay > 0.

    `gs - (gs - min_gs) * (i - start) / (end - start - 1) * decay`.
    """
    if decay > 0:
        span = end - start - 1
        if span == 0:
            raise ValueError(
                "guidance_interval_decay > 0 needs a guidance interval of at least 2 steps "
                f"(start={start}, end={end}); widen guidance_interval or set the decay to 0"
            )
        progress = (i - start) / span
        return guidance_scale - (guidance_scale - min_guidance_scale) * progress * decay
    return guidance_scale


def use_double_condition(
    guidance_scale_text: float | None, guidance_scale_lyric: float | None
) -> bool:
    """Double-condition guidance is on iff both text and lyric scales are > 1."""
    return (
        guidance_scale_text is not None
        and guidance_scale_text > 1.0
        and guidance_scale_lyric is not None
        and guidance_scale_lyric > 1.0
    )
