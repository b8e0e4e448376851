"""Parity case `guidance`: APG (with and without the momentum buffer, its state after each call),
`project`, CFG, double-condition CFG, CFG-Zero* and `optimized_scale` against the original.

The call arguments are those recorded in fixtures.json / guidance.json for each output.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from acestep_mlx.sampling.guidance import (
    MomentumBuffer,
    apg_forward,
    cfg_double_condition_forward,
    cfg_forward,
    cfg_zero_star,
    optimized_scale,
    project,
)


def _np(x: mx.array) -> np.ndarray:
    return np.array(x)


def run(ref, ctx) -> None:
    apg = ref.json["apg"]
    dims = tuple(apg["dims"])
    n_calls = len(ref.names("apg.cond."))
    cond = [mx.array(ref.input(f"apg.cond.{i}")) for i in range(n_calls)]
    uncond = [mx.array(ref.input(f"apg.uncond.{i}")) for i in range(n_calls)]

    # one MomentumBuffer shared by the calls, guidance_scale 15, defaults otherwise
    buf = MomentumBuffer(momentum=apg["momentum"])
    for i in range(len(ref.names("apg.momentum.out."))):
        out = apg_forward(
            cond[i],
            uncond[i],
            apg["guidance_scale"],
            momentum_buffer=buf,
            eta=apg["eta"],
            norm_threshold=apg["norm_threshold"],
            dims=dims,
        )
        ref.check(f"apg.momentum.out.{i}", _np(out))
        ref.check(f"apg.momentum.running_average.{i}", _np(buf.running_average))

    for i in range(len(ref.names("apg.no_momentum.out."))):
        out = apg_forward(cond[i], uncond[i], 7.5, momentum_buffer=None)
        ref.check(f"apg.no_momentum.out.{i}", _np(out))

    out = apg_forward(cond[0], uncond[0], 4.0, eta=0.5, norm_threshold=0.0)
    ref.check("apg.eta0.5_nothreshold.out", _np(out))

    parallel, orthogonal = project(cond[1] - uncond[1], cond[1], dims=(-1, -2))
    ref.check("project.parallel", _np(parallel))
    ref.check("project.orthogonal", _np(orthogonal))

    ref.check("cfg.out", _np(cfg_forward(cond[0], uncond[0], 15.0)))

    only_text = mx.array(ref.input("cfg_double.only_text"))
    out = cfg_double_condition_forward(
        cond[2], uncond[2], only_text, guidance_scale_text=5.0, guidance_scale_lyric=2.5
    )
    ref.check("cfg_double.out", _np(out))

    for i in (0, 1, 2):
        out = cfg_zero_star(cond[3], uncond[3], 15.0, i=i, zero_steps=1, use_zero_init=True)
        ref.check(f"cfg_zero_star.i{i}", _np(out))
    out = cfg_zero_star(cond[3], uncond[3], 15.0, i=0, zero_steps=1, use_zero_init=False)
    ref.check("cfg_zero_star.no_zero_init", _np(out))

    b = cond[3].shape[0]
    scale = optimized_scale(cond[3].reshape(b, -1), uncond[3].reshape(b, -1))
    ref.check("optimized_scale.out", _np(scale))
