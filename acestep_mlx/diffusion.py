"""The diffusion loops of the original pipeline, as generators that yield after every step.

`text2music_steps` covers text2music, retake, repaint, extend and audio2audio (the original's
`text2music_diffusion_process`); `flowedit_steps` covers edit (`flowedit_diffusion_process`).
Both yield a `Step` after each executed step (so callers can show progress or stop early) and
return the final latents (`StopIteration.value`; `run_to_end` collects it).

`trace`, when given, is called with every intermediate the fixtures record (encoder states, each
DiT call, each scheduler step) so the parity harness can compare the whole trajectory.

Deviations from the original (marked DEVIATION in the code, listed in docs/deviations.md):
* extend: the latent frames removed by the 240 s cap are re-attached as they were (upstream
  re-attaches frames sliced from the already-trimmed window, and puts the left part on the batch
  axis, which fails);
* edit with the PingPong scheduler: the first FlowEdit phase updates the edited latent (upstream
  computes the update and drops it, so the latent never changes);
* a guidance decay with a guidance interval of one step is a clear error (upstream divides by 0);
* edit with batch_size > 1 edits the same source for every item (upstream fails);
* extend by more than the source's length draws the missing noise (upstream fails).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .noise import Randomness
from .sampling import guidance as G
from .sampling import schedulers as S

MAX_FRAMES = int(240 * 44100 / 512 / 8)  # 2583 latent frames = 240 s
Trace = Callable[..., None]


def frames_for(seconds: float) -> int:
    """Latent frames for a duration, truncated as the original does."""
    return int(seconds * 44100 / 512 / 8)


@dataclass
class Step:
    index: int  # executed step number (0-based, counts only executed steps)
    total: int  # steps that will be executed
    timestep: float
    latents: mx.array


@dataclass
class Conditions:
    """Prompt/lyric conditions, batch B (already repeated to the batch size)."""

    text: mx.array  # [B, Lt, D_text]
    text_mask: mx.array  # [B, Lt]
    text_null: mx.array | None  # ERG-tag text states, or None
    speaker: mx.array  # [B, 512]
    lyric_ids: mx.array  # [B, Ll] int
    lyric_mask: mx.array  # [B, Ll]


def _noop(*_a, **_k) -> None:
    return None


def make_scheduler(kind: str, sigma_max: float | None = None):
    if kind not in ("euler", "heun", "pingpong"):
        raise ValueError(f"unknown scheduler_type {kind!r}; choose euler, heun or pingpong")
    return S.make_scheduler(kind, shift=3.0, sigma_max=sigma_max)


def encoder_states(dit, c: Conditions, use_erg_lyric: bool, double_condition: bool,
                   trace: Trace = _noop):
    """(cond states, mask, null states, text-only states or None), in the original's call order."""
    enc_c, m_c = dit.encode(c.text, c.text_mask, c.speaker, c.lyric_ids, c.lyric_mask)
    trace("encode", encoder_hidden_states=enc_c, encoder_hidden_mask=m_c)
    zeros_spk = mx.zeros_like(c.speaker)
    if use_erg_lyric:
        text_u = c.text_null if c.text_null is not None else mx.zeros_like(c.text)
        enc_u, m_u = dit.encode(text_u, c.text_mask, zeros_spk, c.lyric_ids, c.lyric_mask,
                                erg_lyric=True)
    else:
        enc_u, m_u = dit.encode(mx.zeros_like(c.text), c.text_mask, zeros_spk,
                                mx.zeros_like(c.lyric_ids), c.lyric_mask)
    trace("encode", encoder_hidden_states=enc_u, encoder_hidden_mask=m_u)
    enc_t = None
    if double_condition:
        if use_erg_lyric:
            enc_t, m_t = dit.encode(c.text, c.text_mask, zeros_spk, c.lyric_ids, c.lyric_mask,
                                    erg_lyric=True)
        else:
            enc_t, m_t = dit.encode(c.text, c.text_mask, zeros_spk, mx.zeros_like(c.lyric_ids),
                                    c.lyric_mask)
        trace("encode", encoder_hidden_states=enc_t, encoder_hidden_mask=m_t)
    return enc_c, m_c, enc_u, enc_t


def text2music_steps(
    dit,
    cond: Conditions,
    rand: Randomness,
    *,
    duration: float,
    infer_steps: int = 60,
    guidance_scale: float = 15.0,
    omega_scale: float = 10.0,
    scheduler_type: str = "euler",
    cfg_type: str = "apg",
    zero_steps: int = 1,
    use_zero_init: bool = True,
    guidance_interval: float = 0.5,
    guidance_interval_decay: float = 0.0,
    min_guidance_scale: float = 3.0,
    oss_steps: list[int] | None = None,
    use_erg_lyric: bool = False,
    use_erg_diffusion: bool = False,
    retake_variance: float = 0.5,
    add_retake_noise: bool = False,
    guidance_scale_text: float = 0.0,
    guidance_scale_lyric: float = 0.0,
    repaint_start: float = 0.0,
    repaint_end: float = 0.0,
    src_latents: mx.array | None = None,
    audio2audio_enable: bool = False,
    ref_audio_strength: float = 0.5,
    ref_latents: mx.array | None = None,
    dtype=mx.float32,
    batch_guidance: bool = True,
    trace: Trace = _noop,
) -> Generator[Step, None, mx.array]:
    """The original's text2music_diffusion_process (also retake, repaint, extend, audio2audio).

    `batch_guidance` runs the conditional, text-only and unconditional DiT passes of a guided
    step as one batch (the original makes separate calls; the numbers agree within the parity
    tolerance, see tests).
    """
    do_cfg = guidance_scale not in (0.0, 1.0)
    do_double = (guidance_scale_text is not None and guidance_scale_text > 1.0
                 and guidance_scale_lyric is not None and guidance_scale_lyric > 1.0)
    bsz = cond.text.shape[0]
    scheduler = make_scheduler(scheduler_type)

    frame_length = frames_for(duration)
    if src_latents is not None:
        frame_length = src_latents.shape[-1]
    if ref_latents is not None:
        frame_length = ref_latents.shape[-1]

    oss_steps = list(oss_steps or [])
    if oss_steps:
        infer_steps = max(oss_steps)
        timesteps, num_steps = S.oss_timesteps(scheduler, oss_steps, dtype)
    else:
        timesteps, num_steps = S.retrieve_timesteps(scheduler, infer_steps)

    target = rand.initial((bsz, 8, 16, frame_length), dtype)

    is_repaint = is_extend = False
    x0 = z0 = zt_edit = repaint_mask = None
    tail_frames = head_frames = None
    n_min = 0
    if add_retake_noise:
        n_min = int(infer_steps * (1 - retake_variance))
        phi = mx.array(retake_variance * math.pi / 2, dtype=dtype)
        retake = rand.retake((bsz, 8, 16, frame_length), dtype)
        start_f, end_f = frames_for(repaint_start), frames_for(repaint_end)
        x0 = src_latents
        is_repaint = end_f - start_f != frame_length
        is_extend = start_f < 0 or end_f > frame_length
        if is_extend:
            is_repaint = True
        if not is_repaint:
            target = mx.cos(phi) * target + mx.sin(phi) * retake
        elif not is_extend:
            t_idx = mx.arange(frame_length)
            repaint_mask = ((t_idx >= start_f) & (t_idx < end_f)).astype(dtype)
            repaint_mask = mx.broadcast_to(repaint_mask, (bsz, 8, 16, frame_length))
            mixed = mx.cos(phi) * target + mx.sin(phi) * retake
            z0 = mx.where(repaint_mask == 1.0, mixed, target)
            zt_edit = x0
        else:
            (x0, z0, repaint_mask, frame_length, tail_frames,
             head_frames) = _extend_setup(src_latents, target, retake, start_f, end_f, dtype,
                                          rand)
            zt_edit = x0

    if audio2audio_enable and ref_latents is not None:
        sigma_param = 1 - ref_audio_strength
        scheduler = make_scheduler(scheduler_type, sigma_max=sigma_param)
        timesteps, num_steps = S.retrieve_timesteps(scheduler, int(sigma_param * infer_steps))
        s_max = float(scheduler.sigma_max)
        # upstream quirk: the start noise level (singly shifted sigma_max) differs from the
        # first timestep (doubly shifted); reproduced
        target = ref_latents * (1 - s_max) + target * s_max

    attention_mask = mx.ones((bsz, frame_length), dtype=dtype)
    start_idx, end_idx = G.guidance_interval(num_steps, guidance_interval)
    momentum = G.MomentumBuffer()
    enc_c, m_c, enc_u, enc_t = encoder_states(dit, cond, use_erg_lyric, do_double, trace)

    ts = [float(t) for t in np.asarray(timesteps)]
    executed = [i for i in range(len(ts)) if not (is_repaint and i < n_min)]
    guided_steps = do_cfg and any(start_idx <= i < end_idx for i in executed)

    # cross-attention keys/values of the encoder states: computed once, reused every step. With
    # batched guidance the conditional branch's K/V are the first `bsz` rows of the guided
    # batch's, so they are sliced from it instead of being projected a second time.
    precompute = getattr(dit, "precompute_encoder_kv", None)
    branches = [(enc_c, False)]
    if do_double and enc_t is not None:
        branches.append((enc_t, False))
    branches.append((enc_u, use_erg_diffusion))
    n_br = len(branches)
    share_kv = batch_guidance and guided_steps
    kv = {}
    guided_states: list = [None]

    def guided_batch_states():
        if guided_states[0] is None:
            guided_states[0] = mx.concatenate([st for st, _ in branches], axis=0)
        return guided_states[0]

    def encoder_kv(key, states):
        if precompute is None:
            return {}
        if key not in kv:
            if key == "guided":
                kv[key] = precompute(guided_batch_states())
            elif key == "branch0" and share_kv:
                kv[key] = [(k[:bsz], v[:bsz]) for k, v in encoder_kv("guided", None)["encoder_kv"]]
            else:
                kv[key] = precompute(states)
        return {"encoder_kv": kv[key]}

    def decode(z, t_arr, key, states, erg=False):
        out = dit.decode(z, attention_mask, states, m_c, t_arr, erg_diffusion=erg,
                         **encoder_kv(key, states))
        trace("decode", hidden_states=z, timestep=t_arr, sample=out)
        return out

    def decode_guided(z, t_arr):
        """cond, [text-only], uncond velocities; one batched DiT call when `batch_guidance`."""
        if not batch_guidance:
            return [decode(z, t_arr, f"branch{k}", st, erg)
                    for k, (st, erg) in enumerate(branches)]
        states = guided_batch_states()
        erg = mx.array([e for _, e in branches for _ in range(bsz)])
        out = dit.decode(mx.concatenate([z] * n_br, axis=0),
                         mx.concatenate([attention_mask] * n_br), states,
                         mx.concatenate([m_c] * n_br), mx.concatenate([t_arr] * n_br),
                         erg_diffusion=erg if use_erg_diffusion else False,
                         **encoder_kv("guided", states))
        outs = [out[k * bsz:(k + 1) * bsz] for k in range(n_br)]
        for o in outs:
            trace("decode", hidden_states=z, timestep=t_arr, sample=o)
        return outs

    for n_done, i in enumerate(executed):
        t = ts[i]
        if is_repaint and i == n_min:
            t_i = _f32(t) / np.float32(1000)
            zt_src = (1 - t_i) * x0 + t_i * z0
            target = zt_edit + zt_src - x0
        t_arr = mx.full((bsz,), t, dtype=mx.float32)
        if start_idx <= i < end_idx and do_cfg:
            scale = G.guidance_scale_at(i, start_idx, end_idx, guidance_scale,
                                        guidance_interval_decay, min_guidance_scale)
            outs = decode_guided(target, t_arr)
            v_c, v_u = outs[0], outs[-1]
            v_t = outs[1] if len(outs) == 3 else None
            if v_t is not None:
                v = G.cfg_double_condition_forward(v_c, v_u, v_t, guidance_scale_text,
                                                   guidance_scale_lyric)
            elif cfg_type == "apg":
                v = G.apg_forward(v_c, v_u, scale, momentum_buffer=momentum)
            elif cfg_type == "cfg":
                v = G.cfg_forward(v_c, v_u, scale)
            elif cfg_type == "cfg_star":
                v = G.cfg_zero_star(v_c, v_u, scale, i=i, zero_steps=zero_steps,
                                    use_zero_init=use_zero_init)
            else:
                raise ValueError(f"unknown cfg_type {cfg_type!r}; choose apg, cfg or cfg_star")
        else:
            v = decode(target, t_arr, "branch0", enc_c)

        if is_repaint:
            t_i = _f32(t) / np.float32(1000)
            t_next = _f32(ts[i + 1]) / np.float32(1000) if i + 1 < len(ts) else np.float32(0)
            prev = (target.astype(mx.float32) + float(t_next - t_i) * v).astype(dtype)
            zt_src = float(1 - t_next) * x0 + float(t_next) * z0
            target = mx.where(repaint_mask == 1.0, prev, zt_src.astype(prev.dtype))
        else:
            noise = None
            if scheduler_type == "pingpong":
                noise = rand.sde(target.shape, mx.float32)
            prev = scheduler.step(v, t, target, omega=omega_scale, noise=noise)
            step_arrays = {"model_output": v, "timestep": mx.array([t], dtype=mx.float32),
                           "prev_sample": prev}
            if noise is not None:
                step_arrays["pingpong_noise"] = noise
            trace("scheduler_step", **step_arrays)
            target = prev
        yield Step(n_done, len(executed), t, target)

    if is_extend:
        # DEVIATION (upstream 9.8): re-attach the frames the 240 s cap removed, on the time axis
        if tail_frames is not None:
            target = mx.concatenate([target, tail_frames.astype(target.dtype)], axis=-1)
        if head_frames is not None:
            target = mx.concatenate([head_frames.astype(target.dtype), target], axis=-1)
    return target


def _f32(x) -> np.float32:
    return np.float32(x)


def _extend_setup(src, target, retake, start_f, end_f, dtype, rand):
    """Window, mask and start noise of an extension (left and/or right), capped at 240 s."""
    gt = src
    src_len = gt.shape[-1]
    left = right = left_trim = right_trim = 0
    tail_frames = head_frames = None
    frame_length = src_len
    if start_f < 0:
        left = abs(start_f)
        frame_length = left + gt.shape[-1]
        padded = mx.pad(gt, [(0, 0), (0, 0), (0, 0), (left, 0)])
        if frame_length > MAX_FRAMES:
            right_trim = frame_length - MAX_FRAMES
            # DEVIATION: keep the frames actually removed (upstream slices the trimmed window)
            tail_frames = padded[..., MAX_FRAMES:]
            padded = padded[..., :MAX_FRAMES]
            frame_length = MAX_FRAMES
        gt = padded
    if end_f > src_len:
        # upstream quirk kept: measured against the already left-padded window, so with both
        # sides the right extension shrinks by the left one
        right = end_f - gt.shape[-1]
        frame_length = gt.shape[-1] + right
        padded = mx.pad(gt, [(0, 0), (0, 0), (0, 0), (0, right)])
        if frame_length > MAX_FRAMES:
            left_trim = frame_length - MAX_FRAMES
            head_frames = padded[..., :left_trim]  # DEVIATION: the frames actually removed
            padded = padded[..., -MAX_FRAMES:]
            frame_length = MAX_FRAMES
        gt = padded
    bsz = target.shape[0]
    idx = mx.arange(frame_length)
    mask = mx.zeros((frame_length,), dtype=mx.bool_)
    if left > 0:
        mask = mask | (idx < left)
    if right > 0:
        mask = mask | (idx >= frame_length - right)
    repaint_mask = mx.broadcast_to(mask.astype(dtype), (bsz, 8, 16, frame_length))
    need = max(left, right)
    if need > retake.shape[-1]:
        # DEVIATION: upstream takes the new frames' noise from a retake tensor as long as the
        # source, so extending by more than the source's length fails its shape assertion;
        # the missing noise is drawn as an extra retake draw (same values where upstream works)
        extra = rand.retake((bsz, 8, 16, need - retake.shape[-1]), dtype)
        retake = mx.concatenate([retake, extra], axis=-1)
    parts = []
    if left > 0:
        parts.append(retake[..., :left])
    parts.append(target[..., left_trim: target.shape[-1] - right_trim])
    if right > 0:
        parts.append(retake[..., -right:])
    z0 = mx.concatenate(parts, axis=-1)
    if z0.shape[-1] != gt.shape[-1]:
        raise RuntimeError(f"extend: noise length {z0.shape[-1]} != window {gt.shape[-1]}")
    x0 = mx.broadcast_to(gt, (bsz, *gt.shape[1:])) if gt.shape[0] != bsz else gt
    return x0, z0, repaint_mask, frame_length, tail_frames, head_frames


def flowedit_steps(
    dit,
    src: Conditions,
    tar: Conditions,
    src_latents: mx.array,
    rand: Randomness,
    *,
    infer_steps: int = 60,
    guidance_scale: float = 15.0,
    n_min: float = 0.0,
    n_max: float = 1.0,
    n_avg: int = 1,
    scheduler_type: str = "euler",
    cfg_type: str = "apg",
    dtype=mx.float32,
    trace: Trace = _noop,
) -> Generator[Step, None, mx.array]:
    """FlowEdit (the original's flowedit_diffusion_process): edit `src_latents` from the source
    prompt/lyrics towards the target ones. Always Euler timesteps; guidance without interval."""
    do_cfg = guidance_scale not in (0.0, 1.0)
    scheduler = make_scheduler("euler")
    timesteps, num_steps = S.retrieve_timesteps(scheduler, infer_steps)
    bsz = src.text.shape[0]
    if src_latents.shape[0] != bsz:
        # DEVIATION: upstream fails for batch_size > 1 (batch-1 source vs batch-B conditions)
        src_latents = mx.broadcast_to(src_latents, (bsz, *src_latents.shape[1:]))
    frame_length = src_latents.shape[-1]
    attn = mx.ones((bsz, frame_length), dtype=dtype)

    def batched(c: Conditions) -> Conditions:
        if not do_cfg:
            return c
        cat = lambda a, b: mx.concatenate([a, b], axis=0)  # noqa: E731
        return Conditions(
            cat(c.text, mx.zeros_like(c.text)), cat(c.text_mask, c.text_mask), None,
            cat(c.speaker, mx.zeros_like(c.speaker)), cat(c.lyric_ids, mx.zeros_like(c.lyric_ids)),
            cat(c.lyric_mask, mx.zeros_like(c.lyric_mask)))

    src_c, tar_c = batched(src), batched(tar)
    if do_cfg:
        attn = mx.concatenate([attn, attn], axis=0)

    def velocity(z, t, c: Conditions, buffer):
        x = mx.concatenate([z, z], axis=0) if do_cfg else z
        t_arr = mx.full((x.shape[0],), t, dtype=mx.float32)
        states, mask = dit.encode(c.text, c.text_mask, c.speaker, c.lyric_ids, c.lyric_mask)
        trace("encode", encoder_hidden_states=states, encoder_hidden_mask=mask)
        out = dit.decode(x, attn, states, mask, t_arr)
        trace("decode", hidden_states=x, timestep=t_arr, sample=out)
        if not do_cfg:
            return out
        v_c, v_u = out[:bsz], out[bsz:]
        if cfg_type == "apg":
            return G.apg_forward(v_c, v_u, guidance_scale, momentum_buffer=buffer)
        if cfg_type == "cfg":
            return G.cfg_forward(v_c, v_u, guidance_scale)
        raise ValueError(f"edit supports cfg_type apg or cfg, not {cfg_type!r}")

    buf_src, buf_tar = G.MomentumBuffer(), G.MomentumBuffer()
    x_src = src_latents
    zt_edit = x_src
    xt_tar = None
    i_min, i_max = int(infer_steps * n_min), int(infer_steps * n_max)
    ts = [float(t) for t in np.asarray(timesteps)]
    executed = [i for i in range(len(ts)) if i >= i_min]
    for n_done, i in enumerate(executed):
        t = ts[i]
        t_i = np.float32(t) / np.float32(1000)
        t_next = np.float32(ts[i + 1]) / np.float32(1000) if i + 1 < len(ts) else np.float32(0)
        if i < i_max:
            delta = mx.zeros_like(x_src)
            for _ in range(n_avg):
                fwd = rand.edit(x_src.shape, dtype)
                zt_src = float(1 - t_i) * x_src + float(t_i) * fwd
                zt_tar = zt_edit + zt_src - x_src
                v_src = velocity(zt_src, t, src_c, buf_src)
                v_tar = velocity(zt_tar, t, tar_c, None)  # no momentum in this phase (upstream)
                delta = delta + (1 / n_avg) * (v_tar - v_src)
            z32 = zt_edit.astype(mx.float32)
            if scheduler_type != "pingpong":
                zt_edit = (z32 + float(t_next - t_i) * delta).astype(dtype)
            else:
                # DEVIATION (upstream 9.10): upstream computes this SDE update but never assigns
                # it, so the edited latent never moves; we apply it
                denoised = z32 - float(t_i) * delta
                noise = rand.edit_sde(zt_edit.shape, mx.float32)
                zt_edit = (float(1 - t_next) * denoised + float(t_next) * noise).astype(dtype)
            current = zt_edit
        else:
            if i == i_max:
                fwd = rand.edit(x_src.shape, dtype)
                sigma = float(scheduler.sigmas[i])
                xt_src = sigma * fwd + (1.0 - sigma) * x_src
                xt_tar = zt_edit + xt_src - x_src
            v_tar = velocity(xt_tar, t, tar_c, buf_tar)
            x32 = xt_tar.astype(mx.float32)
            if scheduler_type != "pingpong":
                xt_tar = (x32 + float(t_next - t_i) * v_tar).astype(dtype)
            else:
                prev = x32 - float(t_i) * v_tar
                noise = rand.edit_sde(zt_edit.shape, mx.float32)
                xt_tar = float(1 - t_next) * prev + float(t_next) * noise
            current = xt_tar
        yield Step(n_done, len(executed), t, current)
    del num_steps
    return zt_edit if xt_tar is None else xt_tar


def run_to_end(gen: Generator[Step, None, mx.array],
               callback: Callable[[Step], bool | None] | None = None) -> mx.array:
    """Drive a step generator; `callback(step)` returning True cancels (raises Cancelled)."""
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None and callback(step):
            gen.close()
            raise Cancelled(f"cancelled after step {step.index + 1} of {step.total}")


class Cancelled(RuntimeError):
    """The caller stopped a generation; nothing was written."""
