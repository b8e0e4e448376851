"""LoRA training: configs, schedule, optimiser, dataset preparation, the training-loss parity,
checkpoints, kill/resume, the NaN guard, the loss log and plot (tiny-a fixture, a few steps)."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
from safetensors import safe_open
from safetensors.numpy import load_file

from acestep_mlx.checkpoint import load_component
from acestep_mlx.configs import ConfigError
from acestep_mlx.lora import LORA_FILE, load_lora_into
from acestep_mlx.parity import run_parity
from acestep_mlx.train.config import LoRAConfig, TrainConfig
from acestep_mlx.train.dataset import (
    DatasetError,
    PreparedDataset,
    SkipItem,
    is_silent,
    load_training_audio,
    make_prompt,
    prepare_dataset,
    split_tags,
    training_lyric_ids,
)
from acestep_mlx.train.plot import png_bytes, render_loss_plot
from acestep_mlx.train.trainer import (
    LOG_FILE,
    PLOT_FILE,
    AdamW,
    LoRATrainer,
    ResumeError,
    _lock_output_dir,
    clip_grads,
    enable_gradient_checkpointing,
    list_checkpoints,
    lora_grads,
    lr_factor,
    timesteps_from_normal,
    total_norm,
)

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-a"
LORA_CONFIG = FIXTURE / "lora" / "lora_config.json"
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train-cache")


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    """Three short synthetic songs (44.1 kHz, one mono) + a silent one + one without prompt."""
    d = tmp_path_factory.mktemp("songs")
    rng = np.random.default_rng(0)
    for i, (f, dur, sr) in enumerate([(220, 4.0, 44100), (330, 2.0, 48000), (440, 5.0, 44100)]):
        t = np.arange(int(sr * dur)) / sr
        x = 0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(t.shape)
        data = x[:, None] if i == 1 else np.stack([x, 0.8 * x], 1)
        sf.write(d / f"song{i}.wav", data.astype(np.float32), sr)
        (d / f"song{i}_prompt.txt").write_text("pop, piano, upbeat, 120 bpm\n")
    (d / "song2_lyrics.txt").write_text("[verse]\nNeon lights they flicker bright\n")
    sf.write(d / "silent.wav", np.zeros((48000 * 4, 2), np.float32), 48000)
    (d / "silent_prompt.txt").write_text("quiet")
    sf.write(d / "orphan.wav", np.full((48000, 2), 0.1, np.float32), 48000)
    return d


@pytest.fixture(scope="module")
def dataset(songs, cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dataset")
    report = prepare_dataset(songs, out, FIXTURE, cache_dir=cache)
    assert len(report.items) == 3
    return out


def _config(tmp: Path, dataset: Path, cache: Path, **kw) -> TrainConfig:
    data = {
        "checkpoint": str(FIXTURE),
        "cache_dir": str(cache),
        "dataset": str(dataset),
        "output_dir": str(tmp / "run"),
        "lora_config": str(LORA_CONFIG),
        "max_steps": 8,
        "save_every_n_steps": 4,
        "plot_every_n_steps": 2,
        "learning_rate": 1e-3,
    }
    data.update(kw)
    return TrainConfig.from_dict(data, "test")


def _adapter(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / LORA_FILE))


# ------------------------------------------------------------------------------- configs


def test_lora_config_validation(tmp_path):
    cfg = LoRAConfig.from_file(LORA_CONFIG)
    assert (cfg.r, cfg.lora_alpha, cfg.use_rslora, cfg.scale) == (4, 4, True, 2.0)
    base = {"r": 8, "lora_alpha": 16, "target_modules": ["to_q"]}
    assert LoRAConfig.from_dict(base).scale == 2.0  # alpha / r without rsLoRA
    bad = [
        ({"r": 0}, "r must be a positive integer"),
        ({"r": 2.5}, "r must be a positive integer"),
        ({"lora_alpha": -1}, "lora_alpha must be a positive"),
        ({"use_rslora": "yes"}, "use_rslora must be true or false"),
        ({"target_modules": []}, "non-empty list"),
        ({"target_modules": ".*attn.*"}, "regular expression"),
        ({"lora_dropout": 0.1}, "lora_dropout=0.1 is not supported"),
        ({"ranks": 3}, "unknown key 'ranks'"),
    ]
    for change, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            LoRAConfig.from_dict({**base, **change})
    with pytest.raises(ConfigError, match="target_modules is required"):
        LoRAConfig.from_dict({"r": 4})
    assert LoRAConfig.from_dict({**base, "lora_dropout": 0.0, "task_type": None}).r == 8


def test_train_config_validation(tmp_path):
    (tmp_path / "train.json").write_text(
        json.dumps({"dataset": "ds", "output_dir": "out", "lora_config": str(LORA_CONFIG)})
    )
    cfg = TrainConfig.from_file(tmp_path / "train.json")
    assert cfg.dataset == str((tmp_path / "ds").resolve())  # relative to the JSON
    assert (cfg.learning_rate, cfg.betas, cfg.weight_decay, cfg.eps) == (
        1e-4,
        (0.8, 0.9),
        1e-2,
        1e-8,
    )
    assert (cfg.warmup_steps, cfg.gradient_clip_val, cfg.max_steps) == (10, 0.5, 2_000_000)
    assert (cfg.cfg_dropout_text, cfg.cfg_dropout_speaker, cfg.cfg_dropout_lyrics) == (
        0.15,
        0.5,
        0.15,
    )
    ok = {"dataset": "d", "output_dir": "o", "lora": {"target_modules": ["to_q"]}}
    bad = [
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"betas": [0.9]}, "betas must be a list of two"),
        ({"dtype": "float16"}, "dtype must be"),
        ({"accumulate_grad_batches": 0}, "accumulate_grad_batches must be >= 1"),
        ({"cfg_dropout_text": 1.5}, "probability"),
        ({"max_steps": "10"}, "max_steps must be an integer"),
        ({"ssl_coeff": 1.0}, "MERT/mHuBERT"),
        ({"colour": 1}, "unknown key"),
        ({"lora_config": "x.json"}, "exactly one of lora"),
    ]
    for change, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            TrainConfig.from_dict({**ok, **change})
    with pytest.raises(ConfigError, match="dataset is required"):
        TrainConfig.from_dict({"output_dir": "o", "lora": ok["lora"]})


# ------------------------------------------------------------------------------- schedule


def test_lr_schedule_is_the_originals():
    f = [lr_factor(s, 10, 110) for s in (0, 1, 5, 10, 60, 110, 200)]
    assert f == [0.0, 0.1, 0.5, 1.0, 0.5, 0.0, 0.0]


def test_timesteps_on_single_shift_grid():
    from acestep_mlx.sampling.schedulers import training_grid

    grid_t, grid_s = training_grid(1000, 3.0)
    t, s, k = timesteps_from_normal(np.array([0.35, -50.0, 50.0], np.float32), grid_t, grid_s)
    assert list(k) == [586, 0, 999]
    assert t[0] == pytest.approx(679.431, abs=1e-3)  # the training reference
    assert t[1] == 1000.0 and s[1] == 1.0
    assert s[0] == pytest.approx(t[0] / 1000, rel=1e-6)


def _torch_adamw(p, grads, lrs, b1, b2, eps, wd):
    """torch.optim.AdamW's update rule written out in float64."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for step, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        p = p * (1 - lr * wd)
        m = m + (1 - b1) * (g - m)
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / math.sqrt(1 - b2**step) + eps
        p = p - lr / (1 - b1**step) * m / denom
    return p


def test_adamw_matches_torch_rule_and_clipping():
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((5, 3))
    grads = [rng.standard_normal((5, 3)) for _ in range(4)]
    lrs = [0.0, 1e-2, 2e-2, 1e-2]
    opt = AdamW((0.8, 0.9), 1e-8, 1e-2)
    p = {"w": mx.array(p0.astype(np.float32))}
    for g, lr in zip(grads, lrs, strict=True):
        p = opt.update(p, {"w": mx.array(g.astype(np.float32))}, lr)
    expected = _torch_adamw(p0, grads, lrs, 0.8, 0.9, 1e-8, 1e-2)
    np.testing.assert_allclose(np.array(p["w"]), expected, rtol=1e-5, atol=1e-6)
    g = {"a": mx.array([3.0, 4.0]), "b": mx.array([0.0, 12.0])}
    n = total_norm(g)
    assert float(n.item()) == pytest.approx(13.0)
    c = clip_grads(g, 0.5, n)
    assert float(total_norm(c).item()) == pytest.approx(0.5, rel=1e-6)
    small = clip_grads(g, 100.0, n)
    np.testing.assert_array_equal(np.array(small["a"]), [3.0, 4.0])


# ------------------------------------------------------------------------------- parity


def test_training_loss_parity_harness():
    """Every tensor of reference/training.safetensors, through the trainer's own functions."""
    summary = run_parity(FIXTURE, only=["training"], verbose=False)
    failed = [r.line() for r in summary.results if not r.passed]
    assert not failed, "\n".join(failed)
    assert summary.n_not_covered == 0, summary.not_covered
    assert summary.passed >= 358 + 18  # every LoRA gradient + the losses/norms/intermediates


# ------------------------------------------------------------------------------- dataset


def test_audio_checks(tmp_path):
    sf.write(tmp_path / "a.wav", np.full((44100, 1), 0.5, np.float32), 44100)
    w = load_training_audio(tmp_path / "a.wav")
    assert w.shape == (2, 3 * 48000)  # mono duplicated, resampled, padded to 3 s
    np.testing.assert_array_equal(w[0], w[1])
    sf.write(tmp_path / "b.wav", np.full((48000 * 5, 2), 2.0, np.float32), 48000, "FLOAT")
    w = load_training_audio(tmp_path / "b.wav", max_seconds=4)
    assert w.shape == (2, 4 * 48000) and w.max() == 1.0  # clamped, first 4 s
    x = np.zeros((2, 100), np.float32)
    x[1, :5] = 0.1
    assert not is_silent(x)  # exactly 95 % silent: kept (the test is "> 95 %")
    x[1, 4] = 0.0
    assert is_silent(x)  # 96 % silent: rejected
    sf.write(tmp_path / "c.wav", np.zeros((48000, 2), np.float32), 48000)
    with pytest.raises(SkipItem, match="silent"):
        load_training_audio(tmp_path / "c.wav")


def test_prompt_and_lyrics_rules():
    assert split_tags("pop, piano,rock , x\n") == ["pop", "piano,rock ", "x"]
    assert make_prompt([], None) == "music"
    rng = np.random.default_rng(0)
    p = make_prompt(["a", "b", "c", "d"], rng)
    assert sorted(p.split(", ")) == ["a", "b", "c", "d"]
    assert len(make_prompt(["x" * 300], None)) == 256

    class Tok:
        def encode(self, line, lang):
            return [1] if lang == "zh" and "bad" in line else [100 + len(line), ord(lang[0])]

    class Seg:
        def __init__(self, lang, text):
            self.lang, self.text = lang, text

    class Det:
        def __init__(self, segs, counts):
            self.segs, self.c = segs, counts

        def analyse(self, text):
            return self.segs, self.c

        def counts(self, text):
            return self.c

    det = Det([Seg("en", "[verse]\nbad line\n"), Seg("xx", "ok")], [("zh", 9), ("en", 3)])
    ids = training_lyric_ids("anything", Tok(), det)
    # [START]; tag line in en; "bad line" in zh has [UNK] -> re-encoded in the segment's
    # language (en); empty piece -> [SPACE]; unknown segment language -> en fallback only on UNK
    assert ids == [261, 107, ord("e"), 2, 108, ord("e"), 2, 2, 102, ord("z"), 2]
    assert training_lyric_ids("write a pop song that genre is rock", Tok(), det) == [0]
    assert training_lyric_ids("  \n ", Tok(), det) == [0]
    with pytest.raises(SkipItem, match="not supported"):
        training_lyric_ids("x", Tok(), Det([], [("sw", 3)]))


def test_prepare_reports_and_caches(dataset, songs, cache):
    ds = PreparedDataset(dataset)
    m = ds.manifest
    assert [e["key"] for e in ds.entries] == ["song0", "song1", "song2"]
    reasons = {Path(s["file"]).name: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"silent.wav", "orphan.wav"}
    assert "prompt" in reasons["orphan.wav"] and "silent" in reasons["silent.wav"]
    item = ds.item(1)
    assert item.latents.shape == (8, 16, 33) and item.latents.dtype == np.float32  # 3 s
    assert item.tags == ["pop", "piano", "upbeat", "120 bpm"]
    assert list(ds.item(0).lyric_ids) == [0]
    lyr = list(ds.item(2).lyric_ids)
    assert lyr[:3] == [261, 259, 6683] and lyr[-1] == 2
    t = load_file(str(dataset / "items" / "song0.safetensors"))
    assert t["prompt_token_ids"][-1] == 1  # </s>
    # unchanged songs are reused, not encoded again
    report = prepare_dataset(songs, dataset, FIXTURE, cache_dir=cache)
    assert report.reused == 3


def test_prepare_refuses_nan_latents(songs, cache, tmp_path, monkeypatch):
    from acestep_mlx.codec import MusicDCAE

    def nan_encode(self, wave, sample_rate=48000, return_intermediates=False):
        return mx.full((1, 8, 16, 4), mx.nan), np.array([4])

    monkeypatch.setattr(MusicDCAE, "encode", nan_encode)
    report = prepare_dataset(songs, tmp_path, FIXTURE, cache_dir=cache)
    assert not report.items
    assert all(
        "NaN" in s["reason"] for s in report.skipped if Path(s["file"]).name.startswith("song")
    )
    assert not list((tmp_path / "items").glob("*.safetensors"))
    with pytest.raises(DatasetError, match="no usable item"):
        PreparedDataset(tmp_path)


# ------------------------------------------------------------------------------- training


def test_run_writes_adapters_log_plot_and_adapter_loads(dataset, cache, tmp_path):
    cfg = _config(tmp_path, dataset, cache)
    res = LoRATrainer(cfg, verbose=False).run()
    assert res.status == "finished" and res.step == 8
    out = Path(cfg.output_dir)
    steps = [s for s, _ in list_checkpoints(out)]
    assert steps == [4, 8]
    assert (out / "checkpoints" / "epoch=2-step=8_lora" / LORA_FILE).is_file()
    assert (out / "checkpoints" / "epoch=1-step=4_lora" / LORA_FILE).is_file()
    recs = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 9))
    assert recs[0]["lr"] == 0.0 and recs[1]["lr"] == pytest.approx(1e-4)  # warm-up
    assert all(math.isfinite(r["loss"]) and r["sec_per_step"] > 0 for r in recs)
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the adapter loads back (original format) and changes the DiT output
    dit = load_component(FIXTURE, "dit", "float32", cache_dir=cache)
    ref = load_file(str(FIXTURE / "reference" / "dit.safetensors"))
    args = [
        mx.array(ref[f"input.{k}"])
        for k in (
            "hidden_states",
            "attention_mask",
            "encoder_text_hidden_states",
            "text_attention_mask",
            "speaker_embeds",
            "lyric_token_idx",
            "lyric_mask",
            "timestep",
        )
    ]
    base = np.array(dit(*args))
    load_lora_into(dit, res.checkpoint, 1.0)
    assert np.abs(np.array(dit(*args)) - base).max() > 1e-4
    # the original trainer's file layout: same keys, shapes, dtype and metadata as the fixture
    # adapter (written by the original's save_lora_adapter for the same LoRA config)
    ours, theirs = _adapter(res.checkpoint), _adapter(FIXTURE / "lora")
    assert {k: (v.shape, v.dtype) for k, v in ours.items()} == {
        k: (v.shape, v.dtype) for k, v in theirs.items()
    }
    with safe_open(str(res.checkpoint / LORA_FILE), "np") as f:
        assert f.metadata() == {"format": "pt"}


def test_kill_and_resume_is_exact(dataset, cache, tmp_path):
    """SIGKILL mid-run, run again: it resumes from the last checkpoint and ends bit-identical to
    an uninterrupted run, with one continuous loss log."""
    ref_cfg = _config(tmp_path / "a", dataset, cache, max_steps=12, save_every_n_steps=3)
    LoRATrainer(ref_cfg, verbose=False).run()
    cfg = _config(tmp_path / "b", dataset, cache, max_steps=12, save_every_n_steps=3)
    cfg_file = tmp_path / "train.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "acestep_mlx.train", "run", "--config", str(cfg_file), "--quiet"]
    out = Path(cfg.output_dir)
    log = out / LOG_FILE
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 7:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(log.read_text().splitlines())
    assert 7 <= killed_at < 12, "the run ended before it could be killed"
    last = list_checkpoints(out)[-1][0]
    assert last < killed_at  # steps after the last checkpoint are redone
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from step {last}" in r.stderr
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    ref_recs = [
        json.loads(line) for line in (Path(ref_cfg.output_dir) / LOG_FILE).read_text().splitlines()
    ]
    assert [x["step"] for x in recs] == list(range(1, 13))
    assert [x["loss"] for x in recs] == [x["loss"] for x in ref_recs]
    name = "checkpoints/epoch=3-step=12_lora"
    a, b = _adapter(Path(ref_cfg.output_dir) / name), _adapter(out / name)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_sigint_saves_and_exits_130(dataset, cache, tmp_path):
    cfg = _config(tmp_path, dataset, cache, max_steps=100000, save_every_n_steps=1000)
    cfg_file = tmp_path / "train.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    out = Path(cfg.output_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "acestep_mlx.train", "run", "--config", str(cfg_file), "--quiet"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / LOG_FILE).is_file():
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    ckpts = list_checkpoints(out)
    assert len(ckpts) == 1 and ckpts[0][0] == len((out / LOG_FILE).read_text().splitlines())


def test_nan_guard_stops_and_keeps_last_good_adapter(dataset, cache, tmp_path):
    cfg = _config(
        tmp_path,
        dataset,
        cache,
        learning_rate=1e30,
        warmup_steps=0,
        gradient_clip_val=0,
        max_steps=20,
        save_every_n_steps=1,
    )
    res = LoRATrainer(cfg, verbose=False).run()
    assert res.status == "diverged"
    assert "update was not applied" in res.message and "last finite step" in res.message
    out = Path(cfg.output_dir)
    info = json.loads((out / "diverged.json").read_text())
    assert info["step"] == res.step + 1
    for _, folder in list_checkpoints(out):
        assert all(np.isfinite(v).all() for v in _adapter(folder).values())
    assert list_checkpoints(out)[-1][0] == res.step
    recs = (out / LOG_FILE).read_text().splitlines()
    assert len(recs) == res.step


def test_resume_refuses_changed_settings_and_concurrent_runs(dataset, cache, tmp_path):
    cfg = _config(tmp_path, dataset, cache, max_steps=2, save_every_n_steps=1)
    LoRATrainer(cfg, verbose=False).run()
    changed = dataclasses.replace(cfg, learning_rate=5e-4)
    with pytest.raises(ResumeError, match="learning_rate"):
        LoRATrainer(changed, verbose=False).run()
    lock = _lock_output_dir(Path(cfg.output_dir))
    try:
        with pytest.raises(ResumeError, match="another training run"):
            _lock_output_dir(Path(cfg.output_dir))
    finally:
        lock.close()
    longer = dataclasses.replace(cfg, max_steps=3)  # extending a run is allowed
    assert LoRATrainer(longer, verbose=False).run().step == 3


def test_accumulation_checkpointing_and_bf16(dataset, cache, tmp_path):
    """Accumulated gradients = mean of the micro-batch gradients; gradient checkpointing gives
    the same gradients; a bf16 base keeps float32 adapters and a close loss."""
    cfg = _config(tmp_path, dataset, cache, accumulate_grad_batches=2)
    tr = LoRATrainer(cfg, verbose=False)
    grads, losses = [], []
    for micro in range(2):
        _, _, lat, cond, noise, t, s = tr.micro_batch(0, micro)
        loss, g = lora_grads(tr.dit, lat, cond, noise, mx.array(t), mx.array(s))
        grads.append(g)
        losses.append(float(loss.item()))
    rec = tr.train_step()
    assert rec["loss"] == pytest.approx(np.mean(losses), rel=1e-6)
    mean = {k: (grads[0][k] + grads[1][k]) / 2 for k in grads[0]}
    assert rec["grad_norm"] == pytest.approx(float(total_norm(mean).item()), rel=1e-5)

    _, _, lat, cond, noise, t, s = tr.micro_batch(1, 0)
    loss_a, ga = lora_grads(tr.dit, lat, cond, noise, mx.array(t), mx.array(s))
    assert enable_gradient_checkpointing(tr.dit) == 26  # 20 blocks + 6 conformer layers
    loss_b, gb = lora_grads(tr.dit, lat, cond, noise, mx.array(t), mx.array(s))
    assert float(loss_a.item()) == pytest.approx(float(loss_b.item()), rel=1e-6)
    for k in ga:
        np.testing.assert_allclose(np.array(gb[k]), np.array(ga[k]), rtol=1e-4, atol=1e-7)

    bf = LoRATrainer(
        dataclasses.replace(cfg, dtype="bfloat16", output_dir=str(tmp_path / "bf")), verbose=False
    )
    _, _, lat, cond, noise, t, s = bf.micro_batch(1, 0)
    loss_c, gc = lora_grads(bf.dit, lat, cond, noise, mx.array(t), mx.array(s))
    assert all(g.dtype == mx.float32 for g in gc.values())
    # measured 2e-3 relative; bound with margin
    assert abs(float(loss_c.item()) - float(loss_a.item())) < 2e-2 * float(loss_a.item())
    rec = bf.train_step()
    assert all(v.dtype == mx.float32 for v in bf.params().values())
    assert math.isfinite(rec["loss"])


# ------------------------------------------------------------------------------- plot, CLI


def test_loss_plot_png():
    img = render_loss_plot(list(range(1, 5001)), list(np.linspace(2, 0.5, 5000)))
    assert img.shape == (450, 800, 3) and img.dtype == np.uint8
    assert (img != 255).any()
    data = png_bytes(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    empty = render_loss_plot([], [])
    assert empty.shape == (450, 800, 3)


def test_cli_help_and_example():
    r = subprocess.run(
        [sys.executable, "-m", "acestep_mlx.train", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "prepare" in r.stdout and "resume" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "acestep_mlx.train", "run", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert "gradient_clip_val 0.5" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "acestep_mlx.train", "example-config"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    cfg = json.loads(r.stdout)
    assert cfg["lora"]["target_modules"][-1] == "to_out.0"


def test_interrupted_prepare_is_refused_then_completed(songs, cache, tmp_path, monkeypatch):
    from acestep_mlx.codec import MusicDCAE

    real = MusicDCAE.encode
    calls = []

    def failing_second(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a stop in the middle of the job
        return real(self, *a, **k)

    monkeypatch.setattr(MusicDCAE, "encode", failing_second)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(songs, tmp_path, FIXTURE, cache_dir=cache)
    with pytest.raises(DatasetError, match="did not finish"):
        PreparedDataset(tmp_path)
    monkeypatch.setattr(MusicDCAE, "encode", real)
    report = prepare_dataset(songs, tmp_path, FIXTURE, cache_dir=cache)
    assert report.reused == 1 and len(report.items) == 3
    assert len(PreparedDataset(tmp_path)) == 3
