"""Parity case `schedulers`: grids (construction, N steps, sigma_max, custom sigmas) and whole
`step()` loops of the Euler, Heun and PingPong schedulers against the original.

Every configuration is read from the reference tensor names, so each recorded tensor is either
an input (model outputs, initial sample, PingPong noise, custom sigmas) or compared. The
`num_inference_steps` returned by `retrieve_timesteps` is compared exactly with the count implied
by the recorded grid (N = len(timesteps); Heun: 2N - 1 = len(timesteps)).
"""

from __future__ import annotations

import re

import mlx.core as mx
import numpy as np

from acestep_mlx.sampling.schedulers import SCHEDULERS, omega_remap, retrieve_timesteps

_NUM = r"(\d+(?:\.\d+)?)"
_INIT = re.compile(rf"(\w+)\.init_shift{_NUM}\.(timesteps|sigmas)")
_STEPS = re.compile(rf"(\w+)\.steps(\d+)_shift{_NUM}\.(timesteps|sigmas)")
_SIGMA_MAX = re.compile(
    rf"(\w+)\.sigma_max{_NUM}_steps(\d+)_shift{_NUM}\."
    r"(timesteps|sigmas|sigma_max_attr)"
)
_CUSTOM = re.compile(r"(\w+)\.custom_sigmas\.(timesteps|sigmas)")
_LOOP = re.compile(rf"step\.(\w+)\.omega{_NUM}\.timesteps")


def _scalar(ref, name: str, value: float) -> np.ndarray:
    """A float32 scalar shaped like the (1-element) reference tensor."""
    shape = ref.tensors[name].shape
    if int(np.prod(shape)) != 1:
        raise ValueError(f"{name}: expected a 1-element reference, got shape {shape}")
    return np.full(shape, value, dtype=np.float32)


def _check_count(ref, name: str, kind: str, n: int, n_timesteps_ref: int) -> None:
    expected = 2 * n - 1 if kind == "heun" else n
    unit = f"{name}.num_inference_steps"
    ref.expect([unit])
    ref.check_value(
        unit,
        expected,
        n_timesteps_ref,
        note=f"N={n} -> {'2N-1' if kind == 'heun' else 'N'} timesteps",
    )


def _grids(ref) -> None:
    names = sorted(ref.tensors)
    done: set[str] = set()
    for name in names:
        if m := _INIT.fullmatch(name):
            kind, shift, attr = m.groups()
            sched = SCHEDULERS[kind](1000, float(shift))
            ref.check(name, getattr(sched, attr))
        elif m := _STEPS.fullmatch(name):
            kind, steps, shift, attr = m.groups()
            sched = SCHEDULERS[kind](1000, float(shift))
            timesteps, n = retrieve_timesteps(sched, int(steps))
            ref.check(name, getattr(sched, attr))
            prefix = name.rsplit(".", 1)[0]
            if prefix not in done:
                done.add(prefix)
                _check_count(ref, prefix, kind, n, len(ref.tensors[f"{prefix}.timesteps"]))
        elif m := _SIGMA_MAX.fullmatch(name):
            kind, sigma_max, steps, shift, attr = m.groups()
            sched = SCHEDULERS[kind](1000, float(shift), sigma_max=float(sigma_max))
            timesteps, n = retrieve_timesteps(sched, int(steps))
            if attr == "sigma_max_attr":
                ref.check(name, _scalar(ref, name, sched.sigma_max))
            else:
                ref.check(name, getattr(sched, attr))
        elif m := _CUSTOM.fullmatch(name):
            kind, attr = m.groups()
            sched = SCHEDULERS[kind](1000, 3.0)
            given = ref.input(f"{kind}.custom_sigmas.input")
            timesteps, n = retrieve_timesteps(sched, len(given), sigmas=given)
            ref.check(name, getattr(sched, attr))
            prefix = f"{kind}.custom_sigmas"
            if prefix not in done:
                done.add(prefix)
                _check_count(ref, prefix, kind, n, len(ref.tensors[f"{prefix}.timesteps"]))


def _loops(ref) -> None:
    for name in sorted(ref.tensors):
        m = _LOOP.fullmatch(name)
        if not m:
            continue
        kind, omega = m.group(1), float(m.group(2))
        prefix = f"step.{kind}.omega{m.group(2)}"
        calls = len(ref.names(f"{prefix}.model_output."))
        n = (calls + 1) // 2 if kind == "heun" else calls
        sched = SCHEDULERS[kind](1000, 3.0)
        timesteps, _ = retrieve_timesteps(sched, n)
        ref.check(name, timesteps)
        ref.check(
            f"{prefix}.omega_after_logistic",
            _scalar(ref, f"{prefix}.omega_after_logistic", omega_remap(omega)),
        )
        sample = mx.array(ref.input("step.initial_sample"))
        for k, t in enumerate(timesteps):
            v = mx.array(ref.input(f"{prefix}.model_output.{k}"))
            noise = None
            if ref.has(f"{prefix}.noise.{k}"):
                noise = mx.array(ref.input(f"{prefix}.noise.{k}"))
            sample = sched.step(v, t, sample, omega=omega, noise=noise)
            ref.check(f"{prefix}.prev_sample.{k}", np.array(sample))


def run(ref, ctx) -> None:
    _grids(ref)
    _loops(ref)
