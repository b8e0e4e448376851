"""The places where the port deliberately differs from the original (docs/deviations.md),
tested directly on the diffusion loops with a stand-in DiT whose velocity is known."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from acestep_mlx import diffusion as D
from acestep_mlx.noise import Randomness


class ConstantVelocityDiT:
    """encode -> the text states; decode -> a velocity that depends only on the conditions."""

    def __init__(self, velocity: float = 0.0):
        self.velocity = velocity

    def encode(self, text, text_mask, speaker, lyric_ids, lyric_mask, erg_lyric=False):
        states = text
        mask = mx.ones(text.shape[:2])
        return states, mask

    def decode(self, z, attention_mask, states, mask, timestep, erg_diffusion=False):
        # velocity proportional to the mean text state, so source and target prompts differ
        scale = mx.mean(states, axis=(1, 2)).reshape(-1, 1, 1, 1)
        return mx.zeros_like(z) + self.velocity * scale


def conditions(value: float, batch: int = 1) -> D.Conditions:
    return D.Conditions(
        text=mx.full((batch, 3, 4), value), text_mask=mx.ones((batch, 3)), text_null=None,
        speaker=mx.zeros((batch, 512)), lyric_ids=mx.zeros((batch, 2), dtype=mx.int32),
        lyric_mask=mx.ones((batch, 2)))


def run(gen):
    return D.run_to_end(gen)


@pytest.mark.parametrize("side", ["left", "right"])
def test_extend_past_the_cap_reattaches_the_removed_frames(side):
    src_frames = D.MAX_FRAMES - 3
    src = mx.array(np.random.default_rng(0).standard_normal((1, 8, 16, src_frames)),
                   dtype=mx.float32)
    fps = 44100 / 4096
    src_s = src_frames / fps
    add = 10  # frames
    if side == "left":
        start, end = -(add + 0.5) / fps, src_s
    else:
        start, end = 0.0, src_s + (add + 0.5) / fps
    gen = D.text2music_steps(
        ConstantVelocityDiT(0.0), conditions(1.0), Randomness.seeded([1], [2]),
        duration=src_s, infer_steps=3, guidance_scale=1.0, add_retake_noise=True,
        retake_variance=1.0, repaint_start=start, repaint_end=end, src_latents=src)
    out = np.array(run(gen))
    src_np = np.array(src)
    assert out.shape[-1] == src_frames + add  # window capped at 2583 + the removed frames
    if side == "left":
        # the source survives intact after the new frames (upstream duplicated window frames
        # in place of the source's removed tail)
        np.testing.assert_array_equal(out[..., add:], src_np)
    else:
        # the removed head is put back in front, on the time axis (upstream: batch axis, fails)
        np.testing.assert_array_equal(out[..., :src_frames], src_np)
    assert out.shape[0] == 1


def test_extend_reproduces_the_right_shrink_quirk():
    """With both sides, the original measures the right extension after the left padding."""
    src_frames = 20
    src = mx.zeros((1, 8, 16, src_frames))
    fps = 44100 / 4096
    start = -5.5 / fps  # 5 frames left
    end = (src_frames + 8.5) / fps  # frame 28: 8 frames right of the source
    gen = D.text2music_steps(
        ConstantVelocityDiT(0.0), conditions(1.0), Randomness.seeded([1], [2]),
        duration=1.0, infer_steps=2, guidance_scale=1.0, add_retake_noise=True,
        retake_variance=1.0, repaint_start=start, repaint_end=end, src_latents=src)
    out = run(gen)
    assert out.shape[-1] == 28  # 5 + 20 + (28 - 25) = 28, not 5 + 20 + 8


def test_flowedit_pingpong_moves_the_edited_latent():
    src = mx.zeros((1, 8, 16, 6))
    kwargs = dict(infer_steps=4, guidance_scale=1.0, n_min=0.0, n_max=1.0)
    edited = {}
    for sched in ("euler", "pingpong"):
        gen = D.flowedit_steps(ConstantVelocityDiT(1.0), conditions(0.0), conditions(2.0), src,
                               Randomness.seeded([1], [2]), scheduler_type=sched, **kwargs)
        edited[sched] = np.array(run(gen))
    # euler moves the latent by the velocity difference; pingpong (upstream: never assigned,
    # so it stayed equal to the source) now moves too
    assert np.abs(edited["euler"]).max() > 0.1
    assert np.abs(edited["pingpong"]).max() > 0.1


def test_guidance_decay_with_one_step_interval_is_a_clear_error():
    gen = D.text2music_steps(
        ConstantVelocityDiT(0.0), conditions(1.0), Randomness.seeded([1], [2]), duration=1.0,
        infer_steps=2, guidance_scale=5.0, guidance_interval=0.5, guidance_interval_decay=1.0)
    with pytest.raises(ValueError, match="guidance interval of at least 2 steps"):
        run(gen)
