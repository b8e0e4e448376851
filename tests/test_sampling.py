"""Schedulers and guidance against the original (fixtures) and the spec's worked examples."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from acestep_mlx.parity import run_parity
from acestep_mlx.sampling.guidance import (
    MomentumBuffer,
    apg_forward,
    apply_guidance,
    cfg_double_condition_forward,
    cfg_forward,
    check_cfg_type,
    guidance_active,
    guidance_interval,
    guidance_scale_at,
    use_double_condition,
)
from acestep_mlx.sampling.schedulers import (
    FlowMatchEulerScheduler,
    FlowMatchHeunScheduler,
    FlowMatchPingPongScheduler,
    make_scheduler,
    omega_remap,
    oss_sigmas,
    oss_timesteps,
    pairwise_sum,
    parse_oss_steps,
    retrieve_timesteps,
    training_grid,
)

TINY = Path(__file__).parent / "fixtures" / "tiny-a"
FIXTURES = json.loads((TINY / "fixtures.json").read_text())
SCHED_ATOL = FIXTURES["files"]["reference/schedulers.safetensors"]["tolerance"]["atol"]
GUIDE_ATOL = FIXTURES["files"]["reference/guidance.safetensors"]["tolerance"]["atol"]


@pytest.fixture(scope="module")
def sched_ref() -> dict[str, np.ndarray]:
    return load_file(str(TINY / "reference" / "schedulers.safetensors"))


@pytest.fixture(scope="module")
def guide_ref() -> dict[str, np.ndarray]:
    return load_file(str(TINY / "reference" / "guidance.safetensors"))


def bf16(x) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even) -> float32, in numpy (finite values)."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


# ---------------------------------------------------------------------------------------------
# parity through the harness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, n_compared", [("schedulers", 125), ("guidance", 20)])
def test_parity_harness(name, n_compared):
    summary = run_parity(TINY, only=[name], verbose=False)
    failed = [r.line() for r in summary.results if not r.passed]
    assert not failed, "\n".join(failed)
    assert summary.n_not_covered == 0, summary.not_covered
    assert summary.passed == n_compared  # every output tensor (+ the step counts) compared


# ---------------------------------------------------------------------------------------------
# grids
# ---------------------------------------------------------------------------------------------

# spec 7.2, copied verbatim (fp32 timesteps, shift 3)
SPEC_N60 = """1000.0, 994.30304, 988.47473, 982.5105, 976.4056, 970.1549, 963.7531, 957.1948,
950.47406, 943.5848, 936.5206, 929.2748, 921.84015, 914.2092, 906.37427, 898.32684, 890.0582,
881.55914, 872.8198, 863.8301, 854.5788, 845.0545, 835.2449, 825.13696, 814.7169, 803.97003,
792.88074, 781.4323, 769.6071, 757.3862, 744.7494, 731.675, 718.14, 704.11957, 689.5871,
674.51404, 658.86975, 642.621, 625.732, 608.16437, 589.8762, 570.8224, 550.95355, 530.2165,
508.55304, 485.89954, 462.18665, 437.33823, 411.27072, 383.89215, 355.10107, 324.78528,
292.8204, 259.06802, 223.37393, 185.56563, 145.44955, 102.80772, 57.393852, 8.928572"""
SPEC_N27 = """1000.0, 986.8825, 973.0582, 958.46844, 943.0477, 926.723, 909.41235, 891.0238,
871.4534, 850.5833, 828.27966, 804.3896, 778.73755, 751.1211, 721.3056, 689.0175, 653.9361,
615.6823, 573.8055, 527.7653, 476.90857, 420.4376, 357.3684, 286.4729, 206.19786, 114.5501,
8.928572"""


def floats(text: str) -> np.ndarray:
    return np.array([float(s) for s in text.split(",")], dtype=np.float32)


@pytest.mark.parametrize("cls", [FlowMatchEulerScheduler, FlowMatchPingPongScheduler])
@pytest.mark.parametrize("n, expected", [(60, SPEC_N60), (27, SPEC_N27)])
def test_spec_test_vectors(cls, n, expected):
    timesteps, num = retrieve_timesteps(cls(1000, 3.0), n)
    assert num == n and timesteps.dtype == np.float32
    np.testing.assert_array_equal(timesteps, floats(expected))


def test_grids_bit_exact(sched_ref):
    for kind in ("euler", "heun", "pingpong"):
        sched = make_scheduler(kind)
        np.testing.assert_array_equal(sched.timesteps, sched_ref[f"{kind}.init_shift3.timesteps"])
        np.testing.assert_array_equal(sched.sigmas, sched_ref[f"{kind}.init_shift3.sigmas"])
        retrieve_timesteps(sched, 27)
        np.testing.assert_array_equal(
            sched.timesteps, sched_ref[f"{kind}.steps27_shift3.timesteps"]
        )
    t, s = training_grid(1000, 3.0)
    np.testing.assert_array_equal(t, sched_ref["euler.init_shift3.timesteps"])
    np.testing.assert_array_equal(s, sched_ref["euler.init_shift3.sigmas"])
    assert s[-1] == np.float32(0.0029940120875835) and s[0] == 1.0


def test_sigma_max_is_shifted():
    sched = FlowMatchEulerScheduler(1000, 3.0, sigma_max=0.5)
    assert sched.sigma_max == 0.75
    assert FlowMatchEulerScheduler().sigma_max == 1.0


def test_heun_grid():
    n = 8
    heun = FlowMatchHeunScheduler(1000, 3.0)
    timesteps, num = retrieve_timesteps(heun, n)
    euler_t, _ = retrieve_timesteps(euler := FlowMatchEulerScheduler(1000, 3.0), n)
    assert num == n  # N, not 2N-1: the guidance interval is computed on N
    assert len(timesteps) == 2 * n - 1 and len(heun.sigmas) == 2 * n
    np.testing.assert_array_equal(timesteps[0::2], euler_t)
    np.testing.assert_array_equal(timesteps[1::2], euler_t[1:])
    np.testing.assert_array_equal(heun.sigmas[0::2], euler.sigmas[:-1])
    np.testing.assert_array_equal(heun.sigmas[1::2], euler.sigmas[1:])
    assert heun.sigmas[-1] == 0 and heun.sigmas[-2] == euler.sigmas[-2]


def test_heun_refuses_custom_sigmas():
    sigmas = np.array([0.9, 0.5, 0.1], dtype=np.float32)
    with pytest.raises(ValueError, match="custom sigmas"):
        FlowMatchHeunScheduler().set_timesteps(sigmas=sigmas)
    with pytest.raises(ValueError, match="custom sigmas"):
        retrieve_timesteps(FlowMatchHeunScheduler(), sigmas=sigmas)
    with pytest.raises(ValueError, match="euler"):
        oss_timesteps(FlowMatchHeunScheduler, "16, 29, 52")


def test_custom_sigmas_are_shifted(sched_ref):
    sched = FlowMatchEulerScheduler()
    timesteps, n = retrieve_timesteps(sched, sigmas=sched_ref["euler.custom_sigmas.input"])
    assert n == 4
    np.testing.assert_array_equal(timesteps, sched_ref["euler.custom_sigmas.timesteps"])


def test_oss_example_bf16():
    oss = [16, 29, 52, 96, 129, 158, 172, 183, 189, 200]
    full, _ = retrieve_timesteps(FlowMatchEulerScheduler(), max(oss))
    picked, sigmas = oss_sigmas(full, oss, "bfloat16")
    np.testing.assert_array_equal(
        picked, np.array([972, 948, 896, 768, 628, 448, 334, 225, 156, 8.9375], np.float32)
    )
    assert sigmas.dtype == np.float32
    np.testing.assert_array_equal(sigmas, bf16(picked / np.float32(1000)))
    sched = FlowMatchPingPongScheduler()
    timesteps, n = oss_timesteps(sched, "16, 29, 52, 96, 129, 158, 172, 183, 189, 200", "bfloat16")
    assert n == 10
    expected = floats("""990.7162, 982.4798, 962.1849, 909.2308, 835.64014, 708.24744,
        600.7026, 464.95956, 357.14285, 26.265291""")
    np.testing.assert_array_equal(timesteps, expected)
    np.testing.assert_array_equal(sched.timesteps, timesteps)
    assert sched.sigmas[-1] == 0 and len(sched.sigmas) == 11


def test_oss_float32_differs_from_bf16():
    t32, _ = oss_timesteps(FlowMatchEulerScheduler, [16, 29, 200], "float32")
    t16, _ = oss_timesteps(FlowMatchEulerScheduler, [16, 29, 200], "bfloat16")
    assert not np.array_equal(t32, t16)


def test_oss_parsing_and_errors():
    assert parse_oss_steps("16, 29,52") == [16, 29, 52]
    assert parse_oss_steps("") == [] and parse_oss_steps(None) == []
    with pytest.raises(ValueError, match="comma-separated"):
        parse_oss_steps("16; 29")
    with pytest.raises(ValueError, match="1-based"):
        oss_timesteps(FlowMatchEulerScheduler, [0, 5])
    with pytest.raises(ValueError, match="empty"):
        oss_timesteps(FlowMatchEulerScheduler, "")


def test_unknown_names():
    with pytest.raises(ValueError, match="euler, heun, pingpong"):
        make_scheduler("ddim")
    with pytest.raises(ValueError, match="apg, cfg, cfg_star"):
        check_cfg_type("cfg_plus")
    x = mx.zeros((1, 8, 16, 3))
    with pytest.raises(ValueError, match="unknown cfg_type"):
        apply_guidance("APG", x, x, 15.0, 0)
    with pytest.raises(ValueError, match="dtype"):
        oss_timesteps(FlowMatchEulerScheduler, [3], "float8")


# ---------------------------------------------------------------------------------------------
# step()
# ---------------------------------------------------------------------------------------------


def test_omega_remap():
    for omega, expected in [
        (0, 1.0),
        (5, 1.0244919),
        (10, 1.0462117),
        (20, 1.0761594),
        (-10, 0.9537883),
    ]:
        assert omega_remap(omega) == pytest.approx(expected, abs=1e-7)


def _loop(ref, kind, omega, dtype=mx.float32, **kw):
    prefix = f"step.{kind}.omega{omega}"
    calls = len([k for k in ref if k.startswith(f"{prefix}.model_output.")])
    sched = make_scheduler(kind)
    timesteps, _ = retrieve_timesteps(sched, (calls + 1) // 2 if kind == "heun" else calls)
    x = mx.array(ref["step.initial_sample"]).astype(dtype)
    outs = []
    for k, t in enumerate(timesteps):
        noise = ref.get(f"{prefix}.noise.{k}")
        noise = None if noise is None else mx.array(noise)
        v = mx.array(ref[f"{prefix}.model_output.{k}"]).astype(dtype)
        x = sched.step(v, mx.array(t), x, omega=float(omega), noise=noise, **kw)
        outs.append((np.array(x.astype(mx.float32)), ref[f"{prefix}.prev_sample.{k}"]))
    return outs


@pytest.mark.parametrize("kind", ["euler", "heun", "pingpong"])
def test_step_loops(sched_ref, kind):
    for omega in (0, 10):
        for got, want in _loop(sched_ref, kind, omega):
            np.testing.assert_allclose(got, want, atol=SCHED_ATOL, rtol=0)


def test_bf16_euler_dx_in_bf16():
    rng = np.random.default_rng(0)
    v = bf16(rng.standard_normal((2, 8, 16, 5)).astype(np.float32) * 2 + 0.3)
    x = bf16(rng.standard_normal((2, 8, 16, 5)).astype(np.float32))
    sched = FlowMatchEulerScheduler()
    timesteps, _ = retrieve_timesteps(sched, 27)
    sched.step(mx.array(v), timesteps[0], mx.array(x))  # advance to step 1
    out = sched.step(
        mx.array(v).astype(mx.bfloat16), timesteps[1], mx.array(x).astype(mx.bfloat16), omega=10.0
    )
    assert out.dtype == mx.bfloat16
    got = np.array(out.astype(mx.float32))

    omega = np.float32(omega_remap(10.0))
    dsigma = sched.sigmas[2] - sched.sigmas[1]
    dx = bf16(v * bf16(dsigma))  # dx in bf16
    m = bf16(np.float32(dx.astype(np.float64).mean()))  # ONE global mean, rounded to bf16
    dx_ = bf16(bf16(bf16(dx - m) * omega) + m)
    np.testing.assert_array_equal(got, bf16(x + dx_))

    # the same step with a float32 update would differ: the test sees the bf16 rounding
    dx32 = v * dsigma
    m32 = np.float32(dx32.astype(np.float64).mean())
    assert not np.array_equal(got, bf16(x + ((dx32 - m32) * omega + m32)))


def test_euler_mean_is_global_over_batch():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((2, 8, 16, 4)).astype(np.float32)
    v[1] += 5.0  # a batch item with a very different mean
    x = np.zeros_like(v)
    sched = FlowMatchEulerScheduler()
    timesteps, _ = retrieve_timesteps(sched, 10)
    got = np.array(sched.step(mx.array(v), timesteps[0], mx.array(x), omega=10.0))
    dx = (sched.sigmas[1] - sched.sigmas[0]) * v.astype(np.float64)
    expected = (dx - dx.mean()) * omega_remap(10.0) + dx.mean()
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["euler", "heun", "pingpong"])
def test_bf16_loops_close_to_float32(sched_ref, kind):
    """bf16 mode follows float32 within 1% of the signal (max abs error / max abs value)."""
    for got, want in _loop(sched_ref, kind, 10, dtype=mx.bfloat16):
        assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()


def test_pingpong_noise_sources():
    x = mx.ones((1, 8, 16, 3))
    v = mx.full((1, 8, 16, 3), 0.5)

    def run(**kw):
        sched = FlowMatchPingPongScheduler()
        timesteps, _ = retrieve_timesteps(sched, 5)
        return np.array(sched.step(v, timesteps[0], x, **kw))

    with pytest.raises(ValueError, match="noise"):
        run()
    a = run(key=mx.random.key(3))
    np.testing.assert_array_equal(a, run(key=mx.random.key(3)))
    assert not np.array_equal(a, run(key=mx.random.key(4)))
    zero = run(noise=mx.zeros((1, 8, 16, 3)))
    sched = FlowMatchPingPongScheduler()
    retrieve_timesteps(sched, 5)
    np.testing.assert_allclose(
        zero, (1 - sched.sigmas[1]) * (1.0 - 0.5 * sched.sigmas[0]), rtol=1e-6
    )
    with pytest.raises(ValueError, match="noise shape"):
        run(noise=mx.zeros((1, 8, 16, 4)))


def test_step_index_and_timestep_errors():
    sched = FlowMatchEulerScheduler()
    timesteps, _ = retrieve_timesteps(sched, 5)
    x = mx.zeros((1, 8, 16, 2))
    with pytest.raises(ValueError, match="integer"):
        sched.step(x, 0, x)
    with pytest.raises(ValueError, match="not in scheduler.timesteps"):
        sched.step(x, 123.5, x)
    sched.step(x, timesteps[2], x)  # starting mid-schedule looks the timestep up
    assert sched.step_index == 3
    sched.step(x, timesteps[3], x)
    sched.step(x, timesteps[4], x)
    with pytest.raises(ValueError, match="past the end"):
        sched.step(x, timesteps[4], x)
    heun = FlowMatchHeunScheduler()
    t, _ = retrieve_timesteps(heun, 5)
    heun.init_step_index(t[1])  # duplicated timestep -> its second occurrence
    assert heun.step_index == 2


# ---------------------------------------------------------------------------------------------
# guidance
# ---------------------------------------------------------------------------------------------


def test_guidance_interval_examples():
    assert guidance_interval(60, 0.5) == (15, 45)
    assert guidance_interval(60, 1.0) == (0, 60)
    assert guidance_interval(27, 0.5) == (6, 20)
    assert guidance_interval(5, 1.0) == (0, 5)
    start, end = guidance_interval(60, 0.5)
    assert guidance_active(15, start, end, 15.0) and not guidance_active(45, start, end, 15.0)
    assert not guidance_active(14, start, end, 15.0)
    assert not guidance_active(20, start, end, 1.0) and not guidance_active(20, start, end, 0.0)
    assert use_double_condition(5.0, 1.5) and not use_double_condition(5.0, 1.0)
    assert not use_double_condition(None, 2.0)


def test_guidance_decay_formula():
    start, end = guidance_interval(60, 0.5)
    assert guidance_scale_at(15, start, end, 15.0, 0.0, 3.0) == 15.0
    assert guidance_scale_at(30, start, end, 15.0, 0.0, 3.0) == 15.0
    assert guidance_scale_at(15, start, end, 15.0, 1.0, 3.0) == 15.0
    assert guidance_scale_at(44, start, end, 15.0, 1.0, 3.0) == pytest.approx(3.0)
    # gs - (gs - min) * (i - start) / (end - start - 1) * decay
    assert guidance_scale_at(25, start, end, 15.0, 0.5, 3.0) == pytest.approx(
        15.0 - 12.0 * (10 / 29) * 0.5
    )
    with pytest.raises(ValueError, match="at least 2 steps"):
        guidance_scale_at(0, 0, 1, 15.0, 1.0, 3.0)


def test_apg_momentum_buffer(guide_ref):
    buf = MomentumBuffer()
    assert buf.momentum == -0.75
    for i in range(4):
        cond = mx.array(guide_ref[f"apg.cond.{i}"])
        uncond = mx.array(guide_ref[f"apg.uncond.{i}"])
        out = apply_guidance("apg", cond, uncond, 15.0, step_index=i, momentum_buffer=buf)
        np.testing.assert_allclose(
            np.array(buf.running_average),
            guide_ref[f"apg.momentum.running_average.{i}"],
            atol=GUIDE_ATOL,
            rtol=0,
        )
        np.testing.assert_allclose(
            np.array(out), guide_ref[f"apg.momentum.out.{i}"], atol=GUIDE_ATOL, rtol=0
        )
    cond = mx.array(guide_ref["apg.cond.0"])
    with pytest.raises(ValueError, match="one buffer per generation"):
        buf.update(cond[..., :3])


def test_cfg_dispatch(guide_ref):
    cond, uncond = mx.array(guide_ref["apg.cond.0"]), mx.array(guide_ref["apg.uncond.0"])
    out = apply_guidance("cfg", cond, uncond, 15.0, step_index=0)
    np.testing.assert_allclose(np.array(out), guide_ref["cfg.out"], atol=GUIDE_ATOL, rtol=0)
    cond3, uncond3 = mx.array(guide_ref["apg.cond.3"]), mx.array(guide_ref["apg.uncond.3"])
    out = apply_guidance("cfg_star", cond3, uncond3, 15.0, step_index=2)
    np.testing.assert_allclose(
        np.array(out), guide_ref["cfg_zero_star.i2"], atol=GUIDE_ATOL, rtol=0
    )
    assert not np.any(np.array(apply_guidance("cfg_star", cond3, uncond3, 15.0, step_index=1)))


def test_bf16_guidance_close_to_float32(guide_ref):
    cond = mx.array(guide_ref["apg.cond.0"]).astype(mx.bfloat16)
    uncond = mx.array(guide_ref["apg.uncond.0"]).astype(mx.bfloat16)
    for out, want in [
        (apg_forward(cond, uncond, 7.5), guide_ref["apg.no_momentum.out.0"]),
        (cfg_forward(cond, uncond, 15.0), guide_ref["cfg.out"]),
    ]:
        assert out.dtype == mx.bfloat16
        got = np.array(out.astype(mx.float32))
        assert np.abs(got - want).max() <= 2e-2 * np.abs(want).max()


def test_pairwise_sum_accuracy():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 8, 16, 333)) + 4.0).astype(np.float32)
    exact = x.astype(np.float64).sum(axis=(1, 3), keepdims=True)
    got = np.array(pairwise_sum(mx.array(x), (1, 3), keepdims=True))
    assert got.shape == (3, 1, 16, 1)
    np.testing.assert_allclose(got, exact, rtol=2e-7)
    assert float(pairwise_sum(mx.array(x))) == pytest.approx(x.astype(np.float64).sum(), rel=2e-7)


# ---------------------------------------------------------------------------------------------
# the loop composition, checked on the recorded pipeline runs (DiT outputs used as inputs)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "pipeline_text2music",  # euler + APG (momentum across steps), interval 0.5
        "pipeline_text2music_heun_cfg_double",  # heun: 2N-1 calls, interval on N, double cond.
        "pipeline_text2music_pingpong_cfgstar_oss",  # pingpong + CFG-Zero* + OSS grid
    ],
)
def test_recorded_pipeline_guidance_and_steps(name):
    ref = load_file(str(TINY / "reference" / f"{name}.safetensors"))
    kw = json.loads((TINY / "reference" / f"{name}.json").read_text())["call_kwargs"]
    sched = make_scheduler(kw["scheduler_type"])
    if kw["oss_steps"]:
        timesteps, n = oss_timesteps(sched, kw["oss_steps"], "float32")
    else:
        timesteps, n = retrieve_timesteps(sched, kw["infer_step"])
    start, end = guidance_interval(n, kw["guidance_interval"])
    double = use_double_condition(kw["guidance_scale_text"], kw["guidance_scale_lyric"])
    buf, d = MomentumBuffer(), 0
    x = mx.array(ref["injected_noise.0"])
    for i, t in enumerate(timesteps):
        step = f"scheduler_step.{i}."
        assert ref[step + "timestep"].reshape(()) == t
        decoded = []
        n_calls = (
            (3 if double else 2) if guidance_active(i, start, end, kw["guidance_scale"]) else 1
        )
        for _ in range(n_calls):
            decoded.append(mx.array(ref[f"dit_decode.{d}.sample"]))
            d += 1
        if n_calls == 1:
            v = decoded[0]
        elif double:
            c, text_only, u = decoded
            v = cfg_double_condition_forward(
                c, u, text_only, kw["guidance_scale_text"], kw["guidance_scale_lyric"]
            )
        else:
            gs = guidance_scale_at(
                i,
                start,
                end,
                kw["guidance_scale"],
                kw["guidance_interval_decay"],
                kw["min_guidance_scale"],
            )
            v = apply_guidance(kw["cfg_type"], decoded[0], decoded[1], gs, i, buf)
        np.testing.assert_allclose(np.array(v), ref[step + "model_output"], atol=GUIDE_ATOL, rtol=0)
        noise = ref.get(step + "pingpong_noise")
        x = sched.step(
            mx.array(ref[step + "model_output"]),
            t,
            x,
            omega=kw["omega_scale"],
            noise=None if noise is None else mx.array(noise),
        )
        np.testing.assert_allclose(np.array(x), ref[step + "prev_sample"], atol=SCHED_ATOL, rtol=0)
    assert d == len([k for k in ref if k.startswith("dit_decode.") and k.endswith(".sample")])
