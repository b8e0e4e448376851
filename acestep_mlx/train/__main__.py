"""`python -m acestep_mlx.train`: LoRA fine-tuning of ACE-Step v1 on MLX.

1. prepare  cache DCAE latents + tokenised lyrics of a folder of songs
2. run      train a LoRA adapter (float32 by default) from a train.json
3. example-config  print a starting train.json
"""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
workflow:
  songs/NAME.wav (or .flac/.ogg/.mp3) + songs/NAME_prompt.txt ("tag1, tag2, ...")
  [+ songs/NAME_lyrics.txt]
  python -m acestep_mlx.train prepare --audio-dir songs --out my_dataset
  python -m acestep_mlx.train example-config > train.json      # edit it
  python -m acestep_mlx.train run --config train.json

The adapters land in OUTPUT_DIR/checkpoints/epoch=E-step=S_lora/pytorch_lora_weights.safetensors
(the original trainer's format: load them with `python -m acestep_mlx.generate --lora FOLDER`
or the original pipeline). Run the same `run` command again to resume after a stop, a crash
or a kill. Not included: the MERT/mHuBERT alignment (REPA) losses of the original trainer.
"""

PREPARE_HELP = """\
Load every NAME.{wav,flac,ogg,mp3} that has NAME_prompt.txt (tags separated by ", ") and an
optional NAME_lyrics.txt, and handle it as the original dataset does: 48 kHz stereo, clamped,
padded to 3 s, rejected when more than 95% of the samples are silent, first 240 s kept. The
latents are encoded with the DCAE (float32), the lyrics tokenised (training variant) and the
prompt tokenised; OUT/items/*.safetensors + OUT/manifest.json are written (every tensor checked
for NaN/Inf). Every skipped file is reported with the reason. Songs already cached and unchanged
are reused, so an interrupted prepare can simply be run again.
"""

RUN_HELP = """\
train.json keys (defaults = the original trainer.py):
  dataset (required)        folder written by `prepare`
  output_dir (required)     checkpoints/, loss_log.jsonl, loss_curve.png
  lora | lora_config        inline LoRA config or the path of one, e.g.
                            {"r": 256, "lora_alpha": 32, "use_rslora": true, "target_modules":
                             ["speaker_embedder", "linear_q", "linear_k", "linear_v", "to_q",
                              "to_k", "to_v", "to_out.0"]}
  checkpoint                model folder / hub id (default ACE-Step/ACE-Step-v1-3.5B), "demo"
  learning_rate 1e-4, betas [0.8, 0.9], eps 1e-8, weight_decay 0.01
  warmup_steps 10, max_steps 2000000 (linear decay to 0 at max_steps)
  gradient_clip_val 0.5, accumulate_grad_batches 1
  shift 3.0, num_train_timesteps 1000, logit_mean 0, logit_std 1
  cfg_dropout_text 0.15, cfg_dropout_speaker 0.5, cfg_dropout_lyrics 0.15, shuffle_tags true
  dtype "float32" | "bfloat16" (frozen base; adapters and AdamW stay float32)
  gradient_checkpointing false, seed 0
  save_every_n_steps 2000, keep_last_states 2, plot_every_n_steps 10, exp_name "lora"
Relative paths are relative to the train.json folder.
exit status: 0 finished, 130 stopped by a signal (resumable), 3 NaN/Inf (stopped before the
update; the last good adapter is kept), 2 bad config/data.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m acestep_mlx.train",
        description="LoRA fine-tuning of ACE-Step v1 (3.5B) on MLX, as the original trainer.py",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    pp = sub.add_parser(
        "prepare",
        help="encode a folder of songs into a training dataset",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=PREPARE_HELP,
    )
    pp.add_argument("--audio-dir", required=True, help="folder with the songs and text files")
    pp.add_argument("--out", required=True, help="dataset folder to write")
    pp.add_argument(
        "--checkpoint",
        default=None,
        help="model folder or hub id (default ACE-Step/ACE-Step-v1-3.5B)",
    )
    pp.add_argument("--demo", action="store_true", help="use the tiny random demo checkpoint")
    pp.add_argument("--cache-dir", default=None, help="converted-weights cache")
    pp.add_argument(
        "--max-seconds",
        type=float,
        default=240.0,
        help="keep the first N seconds of each song (the original: 240)",
    )

    pr = sub.add_parser(
        "run",
        help="train a LoRA adapter",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train (or resume) the run described by a train.json.",
        epilog=RUN_HELP,
    )
    pr.add_argument("--config", required=True, help="train.json")
    pr.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("example-config", help="print a starting train.json")
    return p


def _prepare(args) -> int:
    from acestep_mlx.train.dataset import DatasetError, prepare_dataset

    ckpt = args.checkpoint
    if args.demo:
        from acestep_mlx.demo import demo_checkpoint

        ckpt = demo_checkpoint(args.cache_dir)

    def on_item(key: str, status: str) -> None:
        print(f"  {key}: {status}", file=sys.stderr, flush=True)

    try:
        report = prepare_dataset(
            args.audio_dir,
            args.out,
            ckpt,
            cache_dir=args.cache_dir,
            max_seconds=args.max_seconds,
            on_item=on_item,
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.items else 2


def _run(args) -> int:
    import dataclasses

    from acestep_mlx.configs import ConfigError
    from acestep_mlx.train.config import TrainConfig
    from acestep_mlx.train.dataset import DatasetError
    from acestep_mlx.train.trainer import LoRATrainer, ResumeError

    try:
        cfg = TrainConfig.from_file(args.config)
        if args.max_steps is not None:
            cfg = dataclasses.replace(cfg, max_steps=args.max_steps)
            cfg.validate("--max-steps")
        trainer = LoRATrainer(cfg, verbose=not args.quiet)
        result = trainer.run()
    except (ConfigError, DatasetError, ResumeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.message, file=sys.stderr if result.status != "finished" else sys.stdout)
    return {"finished": 0, "interrupted": 130, "diverged": 3}[result.status]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "prepare":
        return _prepare(args)
    if args.command == "run":
        return _run(args)
    from acestep_mlx.train.config import example_config

    print(json.dumps(example_config(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
