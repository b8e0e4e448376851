"""Flow-matching samplers of ACE-Step v1: Euler (default), Heun and PingPong (spec section 7).

Flow matching with sigma in [0, 1]: x_sigma = sigma * noise + (1 - sigma) * x0 and the DiT predicts
v ~ noise - x0 at the model timestep t = 1000 * sigma.

Grids are built exactly like the original, in numpy, and kept as numpy float32 arrays:

* construction (`training_grid`): 1000 training timesteps, shifted once;
* `set_timesteps(N)`: a float64 linspace between the (already shifted) sigma_max / sigma_min,
  shifted a second time, then rounded to float32 (quirk: the last sigma is 0.00892857);
* custom `sigmas` (the OSS path, Euler/PingPong only): the shift is applied to the given values in
  their own numpy dtype (float32 in the pipeline), i.e. a third time for `oss_timesteps`.

`step()` works on `mx.array`s with the original's precision: the sample is upcast to float32, the
update `dx = (sigma_next - sigma) * v` and its global mean stay in the model-output dtype (bf16 in
bf16 mode), the sum is float32 and the result is cast back to the model-output dtype.
Scalar factors follow PyTorch's rule for a Python scalar times a low-precision tensor (product in
float32, rounded once). A 0-dim float32 sigma times a bf16 tensor is taken as on CUDA (the sigma
is rounded to bf16 first); PyTorch on CPU would keep it in float32 (a last-bit difference in bf16
mode only). No global RNG: PingPong takes its noise or an explicit `mx.random` key per call.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import numpy as np

__all__ = [
    "FlowMatchScheduler",
    "FlowMatchEulerScheduler",
    "FlowMatchHeunScheduler",
    "FlowMatchPingPongScheduler",
    "SCHEDULERS",
    "scheduler_class",
    "make_scheduler",
    "training_grid",
    "shift_sigmas",
    "omega_remap",
    "pairwise_sum",
    "retrieve_timesteps",
    "parse_oss_steps",
    "oss_sigmas",
    "oss_timesteps",
]


# ---------------------------------------------------------------------------------------------
# small numeric helpers
# ---------------------------------------------------------------------------------------------


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The flow-matching time shift `shift * s / (1 + (shift - 1) * s)`, in the dtype of `sigmas`.

    Evaluated with numpy's promotion rules (a Python float against a float32 array stays float32),
    which reproduces both the float32 torch arithmetic of the constructor and the float64 numpy
    arithmetic of `set_timesteps`.
    """
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def pairwise_sum(
    x: mx.array, axes: Sequence[int] | int | None = None, keepdims: bool = False
) -> mx.array:
    """Float32 sum over `axes` (all when None) by pairwise (tree) addition.

    PyTorch's float32 reductions (cascade sums on CPU, tree reductions on CUDA) are accurate to an
    ulp or so; a sequential float32 sum over thousands of elements is not (its error grows with
    the length), and e.g. the CFG-Zero* scale then misses the 1e-5 tolerance after being
    multiplied by the guidance scale. Result is float32.
    """
    x = x.astype(mx.float32)
    ndim = x.ndim
    if axes is None:
        axes = list(range(ndim))
    elif isinstance(axes, int):
        axes = [axes]
    red = sorted({a % ndim for a in axes})
    kept = [a for a in range(ndim) if a not in red]
    lead = [x.shape[a] for a in kept]
    y = x.transpose(kept + red).reshape(*lead, -1)
    while y.shape[-1] > 1:
        if y.shape[-1] % 2:
            y = mx.concatenate([y, mx.zeros((*lead, 1), dtype=mx.float32)], axis=-1)
        y = y.reshape(*lead, y.shape[-1] // 2, 2).sum(axis=-1)
    if y.shape[-1] == 0:
        y = mx.zeros((*lead, 1), dtype=mx.float32)
    out = y.reshape(lead)
    if keepdims:
        out = out.reshape([1 if a in red else x.shape[a] for a in range(ndim)])
    return out


def _mean_all(x: mx.array) -> mx.array:
    """Mean over every element (float32 pairwise sum / count), in x's dtype."""
    return (pairwise_sum(x) / max(x.size, 1)).astype(x.dtype)


def omega_remap(omega: float) -> float:
    """The "granularity" logistic remap of omega used by every `step()` (numpy float64).

    `0.9 + 0.2 / (1 + exp(-0.1 * omega))`: 0 -> 1.0, 10 -> 1.0462117 (pipeline default).
    """
    lower, upper, midpoint, steepness = 0.9, 1.1, 0.0, 0.1
    return float(lower + (upper - lower) / (1 + np.exp(-steepness * (omega - midpoint))))


def training_grid(
    num_train_timesteps: int = 1000, shift: float = 3.0, sigma_max: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The construction-time grid (used by training): `(timesteps, sigmas)`, float32, descending.

    `linspace(1, sigma_max * n, n)` in float32, reversed, divided by n, shifted once (float32
    arithmetic); timesteps = sigmas * n.
    """
    n = _check_num_train_timesteps(num_train_timesteps)
    top = 1.0 if sigma_max is None else float(sigma_max)
    u = np.linspace(1.0, top * n, n, dtype=np.float32)[::-1].copy()
    sigmas = shift_sigmas(u / n, float(shift)).astype(np.float32)
    timesteps = (sigmas * n).astype(np.float32)
    return timesteps, sigmas


def _check_num_train_timesteps(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {n!r}")
    return int(n)


def _timestep_value(timestep) -> np.float32:
    """A timestep taken from `scheduler.timesteps` as a float32 scalar (integers are refused)."""
    if isinstance(timestep, mx.array):
        if timestep.size == 1 and mx.issubdtype(timestep.dtype, mx.floating):
            return np.float32(timestep.astype(mx.float32).item())
    elif isinstance(timestep, np.ndarray):
        if timestep.size == 1 and np.issubdtype(timestep.dtype, np.floating):
            return np.float32(timestep.reshape(()))
    elif isinstance(timestep, (float, np.floating)):
        return np.float32(timestep)
    raise ValueError(
        f"timestep must be one value of `scheduler.timesteps` (a float scalar), got {timestep!r}; "
        "integer step indices (e.g. from enumerate(timesteps)) are not accepted"
    )


# ---------------------------------------------------------------------------------------------
# schedulers
# ---------------------------------------------------------------------------------------------


class FlowMatchScheduler:
    """Shared grid and step-index logic of the three flow-matching schedulers.

    Attributes (numpy float32): `timesteps`, `sigmas` (construction grid until `set_timesteps`,
    then the inference grid with a trailing 0 in `sigmas`); Python floats `sigma_max` (the
    shifted top sigma, used by audio2audio noising) and `sigma_min`.
    """

    name = "base"
    supports_custom_sigmas = True

    def __init__(
        self, num_train_timesteps: int = 1000, shift: float = 3.0, sigma_max: float | None = None
    ):
        self.num_train_timesteps = _check_num_train_timesteps(num_train_timesteps)
        self.shift = float(shift)
        self.timesteps, self.sigmas = training_grid(self.num_train_timesteps, self.shift, sigma_max)
        self.sigma_min = float(self.sigmas[-1])
        self.sigma_max = float(self.sigmas[0])
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # --- grid ---------------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        sigmas: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Build the inference grid from N steps, or from explicit (unshifted) `sigmas`."""
        if sigmas is None:
            n = self._check_steps(num_inference_steps)
            self.num_inference_steps = n
            t = np.linspace(
                self.sigma_max * self.num_train_timesteps,
                self.sigma_min * self.num_train_timesteps,
                n,
            )
            base = t / self.num_train_timesteps
        else:
            if not self.supports_custom_sigmas:
                raise ValueError(
                    f"{type(self).__name__} does not support custom sigmas (oss_steps): use the "
                    "'euler' or 'pingpong' scheduler, or drop oss_steps"
                )
            base = np.asarray(sigmas)
            if base.ndim != 1 or base.size == 0:
                raise ValueError(f"sigmas must be a non-empty 1-D sequence, got shape {base.shape}")
            if not np.issubdtype(base.dtype, np.floating):
                base = base.astype(np.float64)
        grid = shift_sigmas(base, self.shift).astype(np.float32)
        self._set_grid(grid)
        self._step_index = None
        self._begin_index = None

    def _set_grid(self, sigmas: np.ndarray) -> None:
        self.timesteps = (sigmas * self.num_train_timesteps).astype(np.float32)
        self.sigmas = np.concatenate([sigmas, np.zeros(1, np.float32)])

    @staticmethod
    def _check_steps(num_inference_steps) -> int:
        if num_inference_steps is None:
            raise ValueError("set_timesteps needs num_inference_steps or sigmas")
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, (int, np.integer))
            or num_inference_steps < 0
        ):
            raise ValueError(
                f"num_inference_steps must be a non-negative integer, got {num_inference_steps!r}"
            )
        return int(num_inference_steps)

    # --- step index -----------------------------------------------------------------------------

    @property
    def step_index(self) -> int | None:
        """Index into `sigmas` of the next step (None before the first `step()`)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Force the index the first `step()` starts from (instead of looking up the timestep)."""
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep) -> int:
        """Position of `timestep` in `timesteps`; the second one when it occurs more than once."""
        value = _timestep_value(timestep)
        hits = np.flatnonzero(self.timesteps == value)
        if hits.size == 0:
            raise ValueError(
                f"timestep {float(value)!r} is not in scheduler.timesteps; pass a "
                "value taken from scheduler.timesteps"
            )
        return int(hits[1] if hits.size > 1 else hits[0])

    def init_step_index(self, timestep) -> None:
        """Set the step index from `timestep` (or from the begin index when one was set)."""
        if self._begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _prepare(self, timestep) -> int:
        _timestep_value(timestep)  # refuse integer indices even when the index is known
        if self._step_index is None:
            self.init_step_index(timestep)
        if self._step_index + 1 >= len(self.sigmas):
            raise ValueError(
                f"step() called past the end of the schedule "
                f"({len(self.timesteps)} timesteps); call set_timesteps again"
            )
        return self._step_index

    def step(
        self,
        model_output: mx.array,
        timestep,
        sample: mx.array,
        omega: float = 0.0,
        noise: mx.array | None = None,
        key: mx.array | None = None,
    ) -> mx.array:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_train_timesteps


def _mean_shift_update(dx: mx.array, omega: float) -> mx.array:
    """`(dx - m) * omega' + m` with m the mean over ALL elements (whole batch), in dx's dtype."""
    m = _mean_all(dx)
    centred = dx - m
    return (centred.astype(mx.float32) * omega_remap(omega)).astype(dx.dtype) + m


def _check_shapes(model_output: mx.array, sample: mx.array) -> None:
    if model_output.shape != sample.shape:
        raise ValueError(f"model_output shape {model_output.shape} != sample shape {sample.shape}")


class FlowMatchEulerScheduler(FlowMatchScheduler):
    """Euler with the omega mean-shift (the pipeline default, `scheduler_type="euler"`)."""

    name = "euler"

    def step(
        self,
        model_output: mx.array,
        timestep,
        sample: mx.array,
        omega: float = 0.0,
        noise: mx.array | None = None,
        key: mx.array | None = None,
    ) -> mx.array:
        """One Euler step from `timestep` to the next sigma; returns the sample in v's dtype.

        `noise`/`key` are accepted for a uniform call signature and ignored.
        """
        _check_shapes(model_output, sample)
        k = self._prepare(timestep)
        dtype = model_output.dtype
        x = sample.astype(mx.float32)
        dsigma = mx.array(self.sigmas[k + 1] - self.sigmas[k], dtype=mx.float32)
        dx = dsigma.astype(dtype) * model_output
        prev = x + _mean_shift_update(dx, omega).astype(mx.float32)
        self._step_index = k + 1
        return prev.astype(dtype)


class FlowMatchHeunScheduler(FlowMatchScheduler):
    """Heun (2nd order): timesteps `[t0, t1, t1, ..., t_{N-1}, t_{N-1}]`, 2N-1 model calls.

    Calls alternate between a first-order (Euler) predictor, which stores derivative, dt and the
    sample, and a corrector that averages the two derivatives and restarts from the stored sample.
    The last call is a first-order step to sigma 0. No custom sigmas (no OSS).
    """

    name = "heun"
    supports_custom_sigmas = False

    def __init__(
        self, num_train_timesteps: int = 1000, shift: float = 3.0, sigma_max: float | None = None
    ):
        super().__init__(num_train_timesteps, shift, sigma_max)
        self._reset_state()

    def _reset_state(self) -> None:
        self.prev_derivative: mx.array | None = None
        self.dt: mx.array | None = None
        self.sample: mx.array | None = None

    def _set_grid(self, sigmas: np.ndarray) -> None:
        n = self.num_train_timesteps
        t = (sigmas * n).astype(np.float32)
        self.timesteps = np.concatenate([t[:1], np.repeat(t[1:], 2)])
        full = np.concatenate([sigmas, np.zeros(1, np.float32)])
        self.sigmas = np.concatenate([full[:1], np.repeat(full[1:-1], 2), full[-1:]])
        self._reset_state()

    @property
    def state_in_first_order(self) -> bool:
        return self.dt is None

    def step(
        self,
        model_output: mx.array,
        timestep,
        sample: mx.array,
        omega: float = 0.0,
        noise: mx.array | None = None,
        key: mx.array | None = None,
    ) -> mx.array:
        """One Heun half-step (predictor or corrector); returns the sample in v's dtype."""
        _check_shapes(model_output, sample)
        k = self._prepare(timestep)
        dtype = model_output.dtype
        x = sample.astype(mx.float32)
        if self.state_in_first_order:
            sigma = mx.array(self.sigmas[k], dtype=mx.float32)
            sigma_next = mx.array(self.sigmas[k + 1], dtype=mx.float32)
            denoised = x - (model_output * sigma.astype(dtype)).astype(mx.float32)
            derivative = (x - denoised) / sigma
            dt = sigma_next - sigma
            self.prev_derivative, self.dt, self.sample = derivative, dt, x
        else:
            sigma_next = mx.array(self.sigmas[k], dtype=mx.float32)
            denoised = x - (model_output * sigma_next.astype(dtype)).astype(mx.float32)
            derivative = (x - denoised) / sigma_next
            derivative = 0.5 * (self.prev_derivative + derivative)
            dt, x = self.dt, self.sample
            self._reset_state()
        prev = x + _mean_shift_update(derivative * dt, omega)
        self._step_index = k + 1
        return prev.astype(dtype)


class FlowMatchPingPongScheduler(FlowMatchScheduler):
    """PingPong (stochastic): denoise fully, then re-noise to the next sigma with fresh noise.

    `x_next = (1 - sigma_next) * (x - sigma * v) + sigma_next * noise`; omega is unused. The noise
    (float32, shape of the sample) is either given (`noise`, e.g. recorded from the original) or
    drawn with `mx.random.normal(key=key)`; one of them is required (no hidden global RNG). The
    original draws noise on the last step as well (then multiplied by sigma_next = 0).
    """

    name = "pingpong"

    def step(
        self,
        model_output: mx.array,
        timestep,
        sample: mx.array,
        omega: float = 0.0,
        noise: mx.array | None = None,
        key: mx.array | None = None,
    ) -> mx.array:
        _check_shapes(model_output, sample)
        if noise is None:
            if key is None:
                raise ValueError(
                    "FlowMatchPingPongScheduler.step needs `noise` or an explicit "
                    "`key` (mx.random.key) to draw its noise"
                )
            noise = mx.random.normal(sample.shape, dtype=mx.float32, key=key)
        elif noise.shape != sample.shape:
            raise ValueError(f"noise shape {noise.shape} != sample shape {sample.shape}")
        k = self._prepare(timestep)
        dtype = model_output.dtype
        x = sample.astype(mx.float32)
        sigma = self.sigmas[k]
        sigma_next = self.sigmas[k + 1]
        denoised = x - (mx.array(sigma, dtype=mx.float32).astype(dtype) * model_output).astype(
            mx.float32
        )
        keep = mx.array(np.float32(1) - sigma_next, dtype=mx.float32)
        prev = keep * denoised + mx.array(sigma_next, dtype=mx.float32) * noise.astype(mx.float32)
        self._step_index = k + 1
        return prev.astype(dtype)


SCHEDULERS: dict[str, type[FlowMatchScheduler]] = {
    "euler": FlowMatchEulerScheduler,
    "heun": FlowMatchHeunScheduler,
    "pingpong": FlowMatchPingPongScheduler,
}


def scheduler_class(scheduler_type: str) -> type[FlowMatchScheduler]:
    """The class for a pipeline `scheduler_type` ("euler", "heun", "pingpong")."""
    try:
        return SCHEDULERS[scheduler_type]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown scheduler_type {scheduler_type!r}; choose one of {', '.join(SCHEDULERS)}"
        ) from None


def make_scheduler(
    scheduler_type: str,
    shift: float = 3.0,
    sigma_max: float | None = None,
    num_train_timesteps: int = 1000,
) -> FlowMatchScheduler:
    """A scheduler as the pipeline builds it (1000 training steps, shift 3)."""
    return scheduler_class(scheduler_type)(num_train_timesteps, shift, sigma_max)


# ---------------------------------------------------------------------------------------------
# timestep retrieval (diffusers `retrieve_timesteps` semantics) and OSS steps
# ---------------------------------------------------------------------------------------------


def retrieve_timesteps(
    scheduler: FlowMatchScheduler,
    num_inference_steps: int | None = None,
    sigmas: Sequence[float] | np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Configure `scheduler` and return `(timesteps, N)`.

    With `num_inference_steps`, N is that number as passed (so N, not 2N-1, for Heun: the
    guidance interval uses it). With `sigmas` (Euler/PingPong only), `num_inference_steps` is
    ignored and N = len(timesteps).
    """
    if sigmas is not None:
        scheduler.set_timesteps(sigmas=sigmas)
        return scheduler.timesteps, len(scheduler.timesteps)
    scheduler.set_timesteps(num_inference_steps)
    return scheduler.timesteps, int(num_inference_steps)


def parse_oss_steps(oss_steps: str | Sequence[int] | None) -> list[int]:
    """`"16, 29, 52"` -> [16, 29, 52]; None or "" -> [] (OSS off), like the pipeline."""
    if oss_steps is None:
        return []
    if isinstance(oss_steps, str):
        if not oss_steps.strip():
            return []
        try:
            return [int(s) for s in oss_steps.split(",")]
        except ValueError:
            raise ValueError(
                f"oss_steps must be comma-separated integers like '16, 29, 52', got {oss_steps!r}"
            ) from None
    return [int(s) for s in oss_steps]


def _round_to_dtype(values: np.ndarray, dtype) -> np.ndarray:
    """float32 values rounded to `dtype` (an mx dtype or its name) and back to float32."""
    if isinstance(dtype, str):
        names = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(names)}")
        dtype = names[dtype]
    return np.array(mx.array(values).astype(dtype).astype(mx.float32))


def oss_sigmas(
    timesteps: np.ndarray,
    oss_steps: Sequence[int],
    dtype="float32",
    num_train_timesteps: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """OSS pick of spec 7.6: `(picked, sigmas)` from a max(oss)-step grid `timesteps`.

    `picked[k] = timesteps[oss_steps[k] - 1]` rounded to the pipeline `dtype` ("float32",
    "bfloat16", "float16" or an mx dtype); `sigmas = picked / 1000` computed in that dtype, as
    float32 (the custom sigmas handed to `set_timesteps`). Both float32 numpy arrays.
    """
    steps = np.asarray(list(oss_steps), dtype=np.int64)
    if steps.size == 0 or steps.min() < 1 or steps.max() > len(timesteps):
        raise ValueError(
            f"oss_steps must be 1-based step numbers in [1, {len(timesteps)}], got {steps.tolist()}"
        )
    picked = _round_to_dtype(timesteps[steps - 1], dtype)
    sigmas = _round_to_dtype((picked / np.float32(num_train_timesteps)).astype(np.float32), dtype)
    return picked, sigmas


def oss_timesteps(
    scheduler: FlowMatchScheduler | type[FlowMatchScheduler],
    oss_steps: str | Sequence[int],
    dtype="float32",
) -> tuple[np.ndarray, int]:
    """The OSS ("optimal steps") grid of spec 7.6; configures `scheduler`, returns (timesteps, N).

    Builds the max(oss)-step schedule, picks `t[k - 1]` for each k in the pipeline `dtype` (bf16
    quantises them), divides by 1000 in that dtype, and passes the float32 result as custom
    sigmas (shifted a third time); N = len(oss_steps). `scheduler` may be an instance
    (configured in place, as the pipeline does) or a class (a fresh `(1000, shift 3)` instance).
    Heun raises (no custom sigmas).
    """
    if isinstance(scheduler, type):
        scheduler = scheduler()
    steps = parse_oss_steps(oss_steps)
    if not steps:
        raise ValueError("oss_steps is empty; use retrieve_timesteps(scheduler, N) instead")
    if not scheduler.supports_custom_sigmas:
        raise ValueError(
            f"oss_steps cannot be used with {type(scheduler).__name__}: it has no "
            "custom-sigma schedule; use the 'euler' or 'pingpong' scheduler"
        )
    if min(steps) < 1:
        raise ValueError(f"oss_steps are 1-based step numbers (>= 1), got {steps}")
    full, _ = retrieve_timesteps(scheduler, max(steps))
    _, sigmas = oss_sigmas(full, steps, dtype, scheduler.num_train_timesteps)
    return retrieve_timesteps(scheduler, len(steps), sigmas=sigmas)
