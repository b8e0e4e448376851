"""The pipeline: parity of whole runs with the original's noise, bad input, outputs, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from acestep_mlx.parity import run_parity
from acestep_mlx.pipeline import ACEStepPipeline, GenerationCancelled, validate_params

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-a"
TEXT2MUSIC = ["pipeline_text2music", "pipeline_text2music_heun_cfg_double",
              "pipeline_text2music_pingpong_cfgstar_oss"]
EDITING = ["pipeline_retake", "pipeline_repaint", "pipeline_extend", "pipeline_audio2audio",
           "pipeline_edit"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def pipe(cache):
    return ACEStepPipeline(FIXTURE, dtype="float32", cache_dir=cache, verbose=False)


@pytest.mark.parametrize("name", TEXT2MUSIC + EDITING)
def test_pipeline_parity(name, cache):
    summary = run_parity(FIXTURE, only=[name], cache_dir=cache, verbose=False)
    failed = [r.line() for r in summary.results if not r.passed]
    assert not failed, "\n".join(failed)
    assert summary.n_not_covered == 0, summary.not_covered
    assert summary.passed > 10


def base_params(**over) -> dict:
    p = dict(format="wav", audio_duration=1.2, prompt="pop, piano", lyrics="[verse]\nla la",
             infer_step=3, guidance_scale=15.0, scheduler_type="euler", cfg_type="apg",
             omega_scale=10.0, guidance_interval=0.5, guidance_interval_decay=0.0,
             min_guidance_scale=3.0, guidance_scale_text=0.0, guidance_scale_lyric=0.0,
             retake_variance=0.5, ref_audio_strength=0.5, edit_n_min=0.0, edit_n_max=1.0,
             edit_n_avg=1, batch_size=1, task="text2music", src_audio_path=None,
             ref_audio_input=None, repaint_start=0, repaint_end=0, edit_target_prompt=None,
             edit_target_lyrics=None)
    p.update(over)
    return p


@pytest.mark.parametrize("over, message", [
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": None}, "prompt is empty"),
    ({"infer_step": 0}, "infer_step must be an integer from 1"),
    ({"infer_step": 1000}, "infer_step must be an integer from 1"),
    ({"guidance_scale": -1.0}, "guidance_scale must be a number >= 0"),
    ({"scheduler_type": "ddim"}, "unknown scheduler_type 'ddim'"),
    ({"cfg_type": "magic"}, "unknown cfg_type 'magic'"),
    ({"batch_size": 0}, "batch_size must be an integer from 1"),
    ({"audio_duration": 300.0}, "at most 240"),
    ({"format": "aiff"}, "unknown format"),
    ({"task": "repaint"}, "needs src_audio_path"),
    ({"task": "repaint", "src_audio_path": "x.wav", "repaint_start": 5, "repaint_end": 2},
     "must be before repaint_end"),
    ({"task": "edit", "src_audio_path": "x.wav"}, "edit needs edit_target_prompt"),
    ({"ref_audio_strength": 1.5}, "between 0 and 1"),
    ({"lyrics": None}, "lyrics must be a string"),
])
def test_bad_parameters_are_refused(over, message):
    with pytest.raises(ValueError, match=message):
        validate_params(base_params(**over))


def test_unwritable_output_dir(pipe, tmp_path):
    """A folder that cannot be created (a file stands in its path; this holds for root too) or
    a file given as the folder: clear errors before any work, nothing written."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not writable .*choose another with --output-dir"):
        pipe.generate(prompt="pop", lyrics="", audio_duration=1.0, infer_step=2,
                      output_dir=blocker / "sub")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        pipe.generate(prompt="pop", lyrics="", audio_duration=1.0, infer_step=2,
                      output_dir=blocker)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
    assert blocker.read_text() == "x"


def test_generation_writes_48k_stereo_and_metadata_and_never_overwrites(pipe, tmp_path):
    kw = dict(prompt="pop, piano", lyrics="[verse]\nhello", audio_duration=1.5, infer_step=3,
              manual_seeds="7", output_dir=tmp_path)
    r1 = pipe.generate(**kw)
    r2 = pipe.generate(**kw)
    assert len(r1.paths) == 1 and r1.paths[0] != r2.paths[0]
    data, sr = sf.read(r1.paths[0], always_2d=True)
    assert sr == 48000 and data.shape[1] == 2 and data.shape[0] > 48000
    assert np.isfinite(data).all()
    meta = json.loads(Path(r1.paths[0]).with_name(
        Path(r1.paths[0]).stem + "_input_params.json").read_text())
    assert list(meta)[:4] == ["format", "lora_name_or_path", "lora_weight", "task"]
    assert meta["actual_seeds"] == [7] and meta["audio_path"] == r1.paths[0]
    # same seed -> same audio (MLX noise is deterministic per seed)
    np.testing.assert_array_equal(data, sf.read(r2.paths[0], always_2d=True)[0])
    assert not list(tmp_path.glob(".*tmp*"))


def test_cancel_writes_nothing(pipe, tmp_path):
    def cancel(ev):
        return ev.stage == "diffusion" and ev.step == 1

    with pytest.raises(GenerationCancelled):
        pipe.generate(prompt="pop", lyrics="", audio_duration=1.0, infer_step=4,
                      output_dir=tmp_path, callback=cancel)
    assert list(tmp_path.iterdir()) == []


def test_step_generator_yields_every_step(pipe):
    events = list(pipe.stream(prompt="pop", lyrics="[inst]", audio_duration=1.0, infer_step=4,
                              write_files=False))
    steps = [e.step for e in events if e.stage == "diffusion"]
    assert steps == [1, 2, 3, 4]


def test_batch_items_get_their_own_seeds(pipe):
    gen = pipe.stream(prompt="pop", lyrics="", audio_duration=1.0, infer_step=2, batch_size=2,
                      manual_seeds="1,2", write_files=False)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        result = stop.value
    lat = np.array(result.latents)
    assert lat.shape[0] == 2 and not np.allclose(lat[0], lat[1])
    assert result.params["actual_seeds"] == [1, 2]


def test_cli_demo_writes_playable_file(tmp_path, monkeypatch, capsys):
    from acestep_mlx.generate import main

    monkeypatch.setenv("ACESTEP_MLX_CACHE", str(tmp_path / "cache"))
    rc = main(["--demo", "--duration", "2", "--steps", "3", "--output-dir", str(tmp_path / "o")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    wavs = list((tmp_path / "o").glob("*.wav"))
    assert len(wavs) == 1
    info = sf.info(str(wavs[0]))
    assert info.samplerate == 48000 and info.channels == 2
    assert (tmp_path / "o" / (wavs[0].stem + "_input_params.json")).is_file()
    assert "noise, not music" in out.err + out.out


def test_cli_bad_input_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from acestep_mlx.generate import main

    monkeypatch.setenv("ACESTEP_MLX_CACHE", str(tmp_path / "cache"))
    rc = main(["--demo", "--steps", "0", "--output-dir", str(tmp_path)])
    assert rc != 0
    assert "infer_step must be an integer" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_low_memory_mode_gives_the_same_audio(cache, tmp_path):
    kw = dict(prompt="pop, piano", lyrics="[verse]\nhello", audio_duration=1.5, infer_step=3,
              manual_seeds="5", write_files=False)
    normal = ACEStepPipeline(FIXTURE, dtype="float32", cache_dir=cache, verbose=False)
    lean = ACEStepPipeline(FIXTURE, dtype="float32", cache_dir=cache, verbose=False,
                           low_memory=True)
    a = normal.generate(**kw)
    b = lean.generate(**kw)
    assert lean._dit is None and lean._text_encoder is None and lean._codec is None
    np.testing.assert_allclose(np.array(a.latents), np.array(b.latents), atol=1e-5)
    # chunked decode stays close to the plain decode
    chunked = ACEStepPipeline(FIXTURE, dtype="float32", cache_dir=cache, verbose=False,
                              chunked_decode=True).generate(**kw)
    assert chunked.waveforms[0].shape == a.waveforms[0].shape


@pytest.fixture(scope="module")
def src_wav(tmp_path_factory):
    from safetensors.numpy import load_file

    from acestep_mlx.audio.io import save_audio

    wave = load_file(str(FIXTURE / "reference" / "pipeline_src_audio.safetensors"))[
        "src_waveform_48k"]
    path = tmp_path_factory.mktemp("src") / "src.wav"
    save_audio(str(path), wave, 48000, "wav")
    return str(path)


@pytest.mark.parametrize("over, error, message", [
    ({"task": "repaint", "repaint_start": 0.2, "repaint_end": 9.0}, ValueError,
     "outside the source audio"),
    ({"task": "repaint", "repaint_start": 1.0, "repaint_end": 0.5}, ValueError,
     "must be before repaint_end"),
    ({"task": "extend", "repaint_start": 1.0, "repaint_end": 2.0}, ValueError,
     "extend lengths must be between 0 and 240"),
    ({"task": "extend", "repaint_start": -300.0, "repaint_end": 2.0}, ValueError,
     "extend lengths must be between 0 and 240"),
    ({"task": "edit", "edit_target_prompt": ""}, ValueError, "edit needs edit_target_prompt"),
    ({"task": "audio2audio", "ref_audio_strength": 1.5}, ValueError, "between 0 and 1"),
])
def test_task_bad_input(pipe, src_wav, tmp_path, over, error, message):
    kw = dict(prompt="pop", lyrics="", audio_duration=1.0, infer_step=2, output_dir=tmp_path,
              src_audio_path=src_wav, edit_target_lyrics="")
    if over.get("task") == "audio2audio":
        kw.update(audio2audio_enable=True, ref_audio_input=src_wav)
        kw.pop("src_audio_path")
    kw.update(over)
    with pytest.raises(error, match=message):
        pipe.generate(**kw)
    assert list(tmp_path.iterdir()) == []


def test_missing_or_unreadable_source(pipe, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match="nope.wav"):
        pipe.generate(prompt="pop", lyrics="", task="repaint", src_audio_path=str(
            tmp_path / "nope.wav"), repaint_start=0, repaint_end=1, infer_step=2,
            output_dir=tmp_path / "o")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="bad.wav"):
        pipe.generate(prompt="pop", lyrics="", task="repaint", src_audio_path=str(bad),
                      repaint_start=0, repaint_end=1, infer_step=2, output_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_source_longer_than_240s_is_refused(pipe):
    wave = np.zeros((2, 48000 * 241), np.float32)
    wave[:, ::100] = 0.1
    with pytest.raises(ValueError, match="at most 240"):
        pipe.encode_audio(wave, 48000)


def test_cli_extend_gives_the_lengths_asked_for(tmp_path, monkeypatch, src_wav):
    from acestep_mlx.generate import main

    monkeypatch.setenv("ACESTEP_MLX_CACHE", str(tmp_path / "cache"))
    rc = main(["--demo", "--task", "extend", "--src-audio", src_wav, "--extend-left", "1",
               "--extend-right", "2", "--steps", "3", "--output-dir", str(tmp_path / "o")])
    assert rc == 0
    (wav,) = (tmp_path / "o").glob("*.wav")
    # 1.5 s source + 1 s left + 2 s right, to latent-frame precision (0.093 s)
    assert abs(sf.info(str(wav)).duration - 4.5) < 0.2


@pytest.mark.parametrize("task_args, task", [
    (["--task", "retake", "--retake-variance", "0.4"], "retake"),
    (["--task", "repaint", "--repaint-start", "0.3", "--repaint-end", "1.0"], "repaint"),
    (["--task", "edit", "--edit-prompt", "rock, guitar"], "edit"),
    (["--task", "edit", "--edit-lyrics", "[verse]\nnew words", "--edit-preset", "only_lyrics"],
     "edit"),
    (["--task", "audio2audio", "--ref-strength", "0.6"], "audio2audio"),
])
def test_cli_editing_tasks_run_on_the_demo_checkpoint(tmp_path_factory, tmp_path, monkeypatch,
                                                     src_wav, task_args, task):
    from acestep_mlx.generate import main

    monkeypatch.setenv("ACESTEP_MLX_CACHE", str(tmp_path_factory.getbasetemp() / "cli-cache"))
    source = ["--ref-audio", src_wav] if task == "audio2audio" else ["--src-audio", src_wav]
    rc = main(["--demo", "--prompt", "pop", "--lyrics", "[inst]", "--steps", "3",
               "--output-dir", str(tmp_path / "o"), *source, *task_args])
    assert rc == 0
    (wav,) = (tmp_path / "o").glob("*.wav")
    info = sf.info(str(wav))
    assert info.samplerate == 48000 and info.channels == 2
    meta = json.loads(wav.with_name(wav.stem + "_input_params.json").read_text())
    assert meta["task"] == task
    if task == "audio2audio":
        assert meta["audio2audio_enable"] is True and meta["ref_audio_strength"] == 0.6
    else:
        assert meta["src_audio_path"] == src_wav


def test_lyrics_too_long_for_memory_are_refused_before_any_work(pipe, tmp_path, monkeypatch):
    from acestep_mlx import memory
    from acestep_mlx.memory import check_lyric_length, lyric_attention_gb

    monkeypatch.setattr(memory, "available_memory_gb", lambda: 24.0)

    assert lyric_attention_gb(1000, 16) == pytest.approx(16 * 6 * 1000**2 * 4 / 1024**3)
    check_lyric_length(2000, 16, available_gb=16)  # a long song's lyrics fit a 16 GB Mac
    with pytest.raises(ValueError, match=r"give 30000 tokens.*shorten the lyrics \(at most "
                                         r"about 7[0-9]{3} tokens fit here"):
        check_lyric_length(30000, 16, available_gb=24)
    lyrics = "[verse]\n" + "\n".join(["the night is long and the road is wide"] * 2500)
    with pytest.raises(ValueError, match="shorten the lyrics"):
        pipe.generate(prompt="pop", lyrics=lyrics, audio_duration=1.0, infer_step=2,
                      output_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []
