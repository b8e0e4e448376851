"""`python -m acestep_mlx.generate`: make music from a prompt and lyrics (and edit audio).

Examples:
  python -m acestep_mlx.generate --demo
  python -m acestep_mlx.generate --prompt "lofi, piano, rain, 70 bpm" --lyrics "[inst]" \\
      --duration 30 --steps 27
  python -m acestep_mlx.generate --task repaint --src-audio song.wav --repaint-start 10 \\
      --repaint-end 20 --prompt "rock, guitar" --lyrics-file lyrics.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_PROMPT = ("funk, pop, soul, rock, melodic, guitar, drums, bass, keyboard, percussion, "
                  "105 BPM, energetic, upbeat, groovy, vibrant, dynamic")
DEFAULT_LYRICS = """[verse]
Neon lights they flicker bright
City hums in dead of night

[chorus]
Turn it up and let it flow"""


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m acestep_mlx.generate",
        description="Generate or edit music with ACE-Step v1 (3.5B) on MLX. Defaults are the "
        "original's. The first run downloads the checkpoint (ACE-Step/ACE-Step-v1-3.5B, 8.3 GB) "
        "and converts it to MLX (cached).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", default=None,
                   help="checkpoint folder (hub layout), HF cache folder or hub repo id "
                   "(default ACE-Step/ACE-Step-v1-3.5B)")
    g.add_argument("--demo", action="store_true",
                   help="use a tiny RANDOM checkpoint built offline (no download): runs the "
                   "whole path in seconds, but the output is noise, not music")
    g.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype (default: bfloat16 on Apple GPUs, float32 elsewhere)")
    g.add_argument("--low-memory", action="store_true",
                   help="load each stage's weights only while it runs (text encoder, DiT, "
                   "decoder): slower start of each stage, much lower peak memory (16 GB Macs)")
    g.add_argument("--chunked-decode", choices=("auto", "on", "off"), default="auto",
                   help="bounded-memory decoding in overlapping windows (auto: above 48 s)")
    g.add_argument("--overlapped-decode", action="store_true",
                   help="the original's overlapped decode above 48 s (instead of chunked)")
    g.add_argument("--cache-limit-gb", type=float, default=None,
                   help="cap MLX's buffer cache (GB)")
    g.add_argument("--cache-dir", default=None,
                   help="where converted weights go (default $ACESTEP_MLX_CACHE or "
                   "~/.cache/acestep_mlx)")
    g.add_argument("--lora", dest="lora_name_or_path", default="none",
                   help="LoRA adapter: a folder with pytorch_lora_weights.safetensors or a hub "
                   "repo id, e.g. ACE-Step/ACE-Step-v1-chinese-rap-LoRA")
    g.add_argument("--lora-weight", dest="lora_weight", type=float, default=1.0,
                   help="LoRA strength (scales the adapter's delta)")

    g = p.add_argument_group("what to make")
    g.add_argument("--task", default="text2music",
                   choices=("text2music", "retake", "repaint", "extend", "edit", "audio2audio"),
                   help="text2music: new song; retake: a variation of the same seed; repaint: "
                   "regenerate a time range of --src-audio; extend: add audio before/after "
                   "--src-audio; edit: change prompt/lyrics of --src-audio (FlowEdit); "
                   "audio2audio: new song guided by --ref-audio")
    g.add_argument("--prompt", default=None,
                   help="comma-separated tags describing the music (genre, instruments, mood, "
                   "BPM)")
    g.add_argument("--lyrics", default=None,
                   help="lyrics; use [verse], [chorus], [bridge] lines; '' or [inst] for "
                   "instrumental")
    g.add_argument("--lyrics-file", default=None, help="read the lyrics from this text file")
    g.add_argument("--duration", dest="audio_duration", type=float, default=None,
                   help="seconds of audio (at most 240); 0 or less picks a random 30-240 s "
                   "(default 60; 10 with --demo)")
    g.add_argument("--format", default="wav", choices=("wav", "mp3", "ogg", "flac"),
                   help="output file format (48 kHz stereo)")
    g.add_argument("--batch", dest="batch_size", type=int, default=1,
                   help="songs to make at once (each with its own seed)")
    g.add_argument("--seeds", dest="manual_seeds", default=None,
                   help="seed or comma-separated seeds, one per batch item (random if unset)")
    g.add_argument("--output-dir", default="outputs", help="folder for audio and metadata")

    g = p.add_argument_group("sampling")
    g.add_argument("--steps", dest="infer_step", type=int, default=None,
                   help="diffusion steps (1-200); 27 is fast, 60 is best (default 60; 27 with "
                   "--demo)")
    g.add_argument("--scheduler", dest="scheduler_type", default="euler",
                   choices=("euler", "heun", "pingpong"), help="sampler")
    g.add_argument("--guidance-scale", dest="guidance_scale", type=float, default=15.0,
                   help="classifier-free guidance strength (0 or 1 disables guidance)")
    g.add_argument("--cfg-type", dest="cfg_type", default="apg",
                   choices=("apg", "cfg", "cfg_star"),
                   help="guidance rule: apg (adaptive projected), cfg, cfg_star (CFG-Zero*)")
    g.add_argument("--omega", dest="omega_scale", type=float, default=10.0,
                   help="granularity (omega) of the Euler mean-shift step; 0 = plain Euler")
    g.add_argument("--guidance-interval", dest="guidance_interval", type=float, default=0.5,
                   help="fraction of the steps (centred) where guidance is applied")
    g.add_argument("--guidance-interval-decay", dest="guidance_interval_decay", type=float,
                   default=0.0, help="linear decay of the guidance scale inside the interval")
    g.add_argument("--min-guidance-scale", dest="min_guidance_scale", type=float, default=3.0,
                   help="guidance scale reached at the end of the decay")
    g.add_argument("--erg-tag", dest="use_erg_tag", type=_bool, default=True,
                   help="entropy-rectifying guidance on the prompt encoder (true/false)")
    g.add_argument("--erg-lyric", dest="use_erg_lyric", type=_bool, default=True,
                   help="entropy-rectifying guidance on the lyric encoder (true/false)")
    g.add_argument("--erg-diffusion", dest="use_erg_diffusion", type=_bool, default=True,
                   help="entropy-rectifying guidance in the diffusion model (true/false)")
    g.add_argument("--oss-steps", dest="oss_steps", default=None,
                   help="optimal-step schedule, e.g. '16, 29, 52, 96, 129, 158, 172, 183, 189, "
                   "200' (euler/pingpong)")
    g.add_argument("--guidance-scale-text", dest="guidance_scale_text", type=float, default=0.0,
                   help="text guidance for double-condition guidance (with --guidance-scale-"
                   "lyric, both > 1)")
    g.add_argument("--guidance-scale-lyric", dest="guidance_scale_lyric", type=float,
                   default=0.0, help="lyric guidance for double-condition guidance")

    g = p.add_argument_group("editing tasks")
    g.add_argument("--src-audio", dest="src_audio_path", default=None,
                   help="source audio for repaint/extend/edit")
    g.add_argument("--retake-seeds", dest="retake_seeds", default=None,
                   help="seeds of the second noise (retake/repaint/extend/edit)")
    g.add_argument("--retake-variance", dest="retake_variance", type=float, default=0.5,
                   help="how far a retake/repaint departs from the source (0-1)")
    g.add_argument("--repaint-start", dest="repaint_start", type=float, default=0.0,
                   help="repaint: start of the range in seconds")
    g.add_argument("--repaint-end", dest="repaint_end", type=float, default=0.0,
                   help="repaint: end of the range in seconds")
    g.add_argument("--extend-left", type=float, default=0.0,
                   help="extend: seconds to add before the source")
    g.add_argument("--extend-right", type=float, default=0.0,
                   help="extend: seconds to add after the source")
    g.add_argument("--edit-prompt", dest="edit_target_prompt", default=None,
                   help="edit: the target prompt (default: the --prompt)")
    g.add_argument("--edit-lyrics", dest="edit_target_lyrics", default=None,
                   help="edit: the target lyrics (default: the --lyrics)")
    g.add_argument("--edit-preset", choices=("only_lyrics", "remix"), default=None,
                   help="edit presets of the original UI: only_lyrics (n_min 0.6, n_max 1.0), "
                   "remix (0.2, 0.4)")
    g.add_argument("--edit-n-min", dest="edit_n_min", type=float, default=0.0,
                   help="edit: fraction of steps skipped before editing starts")
    g.add_argument("--edit-n-max", dest="edit_n_max", type=float, default=1.0,
                   help="edit: fraction of steps after which plain sampling takes over")
    g.add_argument("--edit-n-avg", dest="edit_n_avg", type=int, default=1,
                   help="edit: velocity estimates averaged per step")
    g.add_argument("--ref-audio", dest="ref_audio_input", default=None,
                   help="audio2audio: the reference audio")
    g.add_argument("--ref-strength", dest="ref_audio_strength", type=float, default=0.5,
                   help="audio2audio: how much of the reference is kept (0-1)")
    return p


PIPELINE_KEYS = (
    "format", "audio_duration", "prompt", "lyrics", "infer_step", "guidance_scale",
    "scheduler_type", "cfg_type", "omega_scale", "manual_seeds", "guidance_interval",
    "guidance_interval_decay", "min_guidance_scale", "use_erg_tag", "use_erg_lyric",
    "use_erg_diffusion", "oss_steps", "guidance_scale_text", "guidance_scale_lyric",
    "ref_audio_strength", "ref_audio_input", "lora_name_or_path", "lora_weight", "retake_seeds",
    "retake_variance", "task", "repaint_start", "repaint_end", "src_audio_path",
    "edit_target_prompt", "edit_target_lyrics", "edit_n_min", "edit_n_max", "edit_n_avg",
    "batch_size",
)


def pipeline_kwargs(args: argparse.Namespace) -> dict:
    """Turn parsed flags into the pipeline's keyword arguments."""
    kw = {k: getattr(args, k) for k in PIPELINE_KEYS}
    if kw["infer_step"] is None:
        kw["infer_step"] = 27 if args.demo else 60
    if kw["audio_duration"] is None:
        kw["audio_duration"] = 10.0 if args.demo else 60.0
    if args.lyrics_file:
        path = Path(args.lyrics_file)
        if not path.is_file():
            raise ValueError(f"lyrics file not found: {path}")
        kw["lyrics"] = path.read_text(encoding="utf-8")
    if kw["prompt"] is None:
        kw["prompt"] = DEFAULT_PROMPT
    if kw["lyrics"] is None:
        kw["lyrics"] = DEFAULT_LYRICS
    if args.task == "audio2audio":
        kw["audio2audio_enable"] = True
    if args.task == "edit":
        if kw["edit_target_prompt"] is None:
            kw["edit_target_prompt"] = kw["prompt"]
        if kw["edit_target_lyrics"] is None:
            kw["edit_target_lyrics"] = kw["lyrics"]
        if args.edit_preset == "only_lyrics":
            kw["edit_n_min"], kw["edit_n_max"] = 0.6, 1.0
        elif args.edit_preset == "remix":
            kw["edit_n_min"], kw["edit_n_max"] = 0.2, 0.4
    if args.task == "extend":
        if args.extend_left < 0 or args.extend_right < 0:
            raise ValueError("--extend-left and --extend-right must be >= 0 seconds")
        if args.extend_left == 0 and args.extend_right == 0:
            raise ValueError("extend needs --extend-left and/or --extend-right (seconds)")
        if not args.src_audio_path:
            raise ValueError("extend needs --src-audio")
        from .audio.io import load_audio

        wave, rate = load_audio(args.src_audio_path)
        src = wave.shape[-1] / rate
        kw["repaint_start"] = -args.extend_left
        # the original measures the right extension after adding the left one (a quirk the
        # pipeline keeps for parity); adding the left length here gives the lengths asked for
        kw["repaint_end"] = src + args.extend_right + (
            args.extend_left if args.extend_right > 0 else 0.0)
        kw["retake_variance"] = 1.0
    return kw


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        kw = pipeline_kwargs(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from .pipeline import ACEStepPipeline, GenerationCancelled, validate_params

    try:
        check = dict(kw, src_latents=None, ref_latents=None)
        if check.get("audio2audio_enable"):
            check["task"] = "audio2audio"
        check.setdefault("audio2audio_enable", False)
        validate_params(check)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    checkpoint = args.checkpoint
    if args.demo:
        from .demo import DEMO_NOTICE, demo_checkpoint

        checkpoint = demo_checkpoint(args.cache_dir)
        print(f"NOTE: {DEMO_NOTICE}", file=sys.stderr)

    try:
        t0 = time.perf_counter()
        pipe = ACEStepPipeline.from_pretrained(
            checkpoint, dtype=args.dtype, cache_dir=args.cache_dir, low_memory=args.low_memory,
            overlapped_decode=args.overlapped_decode,
            chunked_decode={"auto": None, "on": True, "off": False}[args.chunked_decode],
            cache_limit_gb=args.cache_limit_gb)
        t_load = time.perf_counter() - t0
        from .memory import estimate

        est = estimate(pipe, kw["audio_duration"], kw["batch_size"],
                       guided=kw["guidance_scale"] not in (0.0, 1.0))
        print(est.message(), file=sys.stderr)
        bar = tqdm(total=kw["infer_step"], desc="diffusion", unit="step")

        def progress(ev) -> None:
            if ev.stage == "diffusion":
                bar.total = ev.total
                bar.update(ev.step - bar.n)
                bar.set_postfix_str(ev.message)
            elif ev.stage == "decode" and ev.step == 0:
                bar.close()
                print("decoding audio ...", file=sys.stderr)

        result = pipe.generate(callback=progress, output_dir=args.output_dir, **kw)
        bar.close()
    except GenerationCancelled as e:
        print(f"cancelled: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, OSError,
            NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    t = result.timings
    print(f"model load/convert {t_load:.2f}s | text+lyrics {t['preprocess']:.2f}s | "
          f"diffusion {t['diffusion']:.2f}s | decode {t['latent2audio']:.2f}s")
    seconds = result.latents.shape[-1] * 4096 / 44100
    rtf = seconds / max(t["diffusion"] + t["latent2audio"], 1e-9)
    print(f"{seconds:.1f} s of audio per item, {rtf:.2f}x real time (diffusion + decode)")
    for path in result.paths:
        print(f"wrote {path}  (+ {Path(path).stem}_input_params.json)")
    if args.demo:
        print("(demo checkpoint: random weights, so this is noise, not music)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
