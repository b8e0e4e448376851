"""Conversion benchmark: a REAL-SIZE random checkpoint in the hub layout, then timed conversion.

    python bench/convert_bench.py --dtype float32 bfloat16 --dit-layers 24

Writes `--src` (default /tmp/acestep_bench_ckpt): one folder per component with the real
config.json and a safetensors file holding every tensor the real file holds (names, dtypes and
shapes from `tests/fixtures/full-size-manifest.json`; bf16 for the DiT, DCAE and vocoder, f32
for UMT5, like the published files) filled with random values. Then converts each component with
`convert.core.convert_component` in a fresh subprocess and reports the seconds and the process's
peak RSS (the converter streams tensor by tensor, so its memory should stay near the largest
tensor, not the file size).

`--dit-layers N` < 24 writes only N transformer blocks (config num_layers = N) when the disk is
short; the 24-block time and output size are then EXTRAPOLATED in proportion to the bytes (the
conversion is a stream over the tensors), and the table says so. The script checks the free
space first and refuses to start when the files would not fit. `--keep` keeps the files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

COMPONENTS = ("text_encoder", "dit", "dcae", "vocoder")
BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8, "I32": 4}
FULL_LAYERS = 24


def _keep(key: str, layers: int) -> bool:
    if key.startswith("transformer_blocks."):
        return int(key.split(".")[1]) < layers
    return True


def component_tensors(component: str, layers: int) -> dict[str, dict]:
    entry = common.manifest()[common.MANIFEST_KEYS[component]]
    return {k: v for k, v in entry["tensors"].items() if _keep(k, layers)}


def source_bytes(component: str, layers: int) -> int:
    import numpy as np

    return sum(
        int(np.prod(v["shape"], dtype=np.int64)) * BYTES[v["dtype"]]
        for v in component_tensors(component, layers).values()
    )


def write_component(component: str, dst: Path, layers: int) -> float:
    """Random safetensors + config.json of `component` under dst/<subfolder>; returns seconds."""
    import numpy as np

    from convert.components import get_spec
    from convert.safetensors_io import StreamingWriter

    spec = get_spec(component)
    folder = dst / spec.subfolder
    folder.mkdir(parents=True, exist_ok=True)
    cfg = common.full_config(component)
    if component == "dit":
        cfg["num_layers"] = layers
    (folder / spec.config_file).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tensors = component_tensors(component, layers)
    pool = (np.random.default_rng(0).standard_normal(1 << 22) * 0.02).astype(np.float32)
    plan = [(k, v["dtype"], tuple(v["shape"])) for k, v in tensors.items()]
    t0 = time.perf_counter()
    writer = StreamingWriter(folder / spec.weights_file, plan, metadata={"format": "pt"})
    for k, v in tensors.items():
        shape = tuple(v["shape"])
        if v["dtype"].startswith("I"):
            arr = np.zeros(shape, {"I64": np.int64, "I32": np.int32}[v["dtype"]])
            writer.write(k, arr, "float32")
            continue
        n = int(np.prod(shape, dtype=np.int64))
        reps = -(-n // pool.size)
        arr = np.tile(pool, reps)[:n].reshape(shape) if reps > 1 else pool[:n].reshape(shape)
        writer.write(k, arr, {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[v["dtype"]])
    writer.close()
    return time.perf_counter() - t0


def child(src: Path, component: str, dtype: str, dst: Path) -> dict:
    from convert.components import get_spec
    from convert.core import convert_component

    spec = get_spec(component)
    t0 = time.perf_counter()
    report = convert_component(spec, src / spec.subfolder, dst, dtype)
    seconds = time.perf_counter() - t0
    out_bytes = sum(f.stat().st_size for f in dst.iterdir() if f.is_file())
    return {
        "component": component,
        "dtype": dtype,
        "seconds": round(seconds, 2),
        "stream_seconds": report.get("seconds"),
        "output_gb": common.gb(out_bytes),
        "process_peak_rss_gb": common.gb(common.peak_rss_bytes()),
    }


def table(rows: list[dict], env: dict, layers: int) -> str:
    lines = [
        "# Conversion benchmark (real-size random checkpoint in the hub layout)",
        "",
        common.env_line(env),
        "",
        "Source files written with the real tensor names, shapes and dtypes (random values); "
        "each component converted in a fresh process (`convert_component`); RSS = that "
        "process's peak resident memory."
        + (
            f" The DiT was written with {layers} of 24 blocks; its 24-block seconds and "
            "output size are EXTRAPOLATED by bytes (marked)."
            if layers < FULL_LAYERS
            else ""
        ),
        "",
    ]
    head = [
        "component",
        "dtype",
        "source GB",
        "seconds",
        "output GB",
        "peak RSS GB",
        "24-block seconds (est.)",
        "24-block output GB (est.)",
    ]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["component"], r["dtype"], "-", "-", "-", "-", "-", r["error"][:80]])
            continue
        body.append(
            [
                r["component"],
                r["dtype"],
                r["source_gb"],
                r["seconds"],
                r["output_gb"],
                r["process_peak_rss_gb"],
                r.get("seconds_24", "-"),
                r.get("output_gb_24", "-"),
            ]
        )
    return "\n".join(lines + common.md_table(head, body)) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--components", nargs="+", default=list(COMPONENTS), choices=COMPONENTS)
    p.add_argument("--dit-layers", type=int, default=FULL_LAYERS)
    p.add_argument("--src", default="/tmp/acestep_bench_ckpt")
    p.add_argument("--keep", action="store_true", help="keep the written files")
    p.add_argument("--out", default=str(common.RESULTS))
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument(
        "--child", nargs=3, metavar=("COMPONENT", "DTYPE", "DST"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    src = Path(args.src)
    if args.child:
        comp, dtype, dst = args.child
        print("RESULT " + json.dumps(child(src, comp, dtype, Path(dst))), flush=True)
        return 0
    if not 0 < args.dit_layers <= FULL_LAYERS:
        p.error(f"--dit-layers must be in 1..{FULL_LAYERS}")

    layers = args.dit_layers
    need = sum(source_bytes(c, layers) for c in args.components)
    # converted copies: float32 doubles the bf16 sources; one component's output at a time
    biggest_out = max(source_bytes(c, layers) * 2 for c in args.components)
    src.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(src).free
    if need + biggest_out > 0.9 * free:
        p.error(
            f"needs ~{(need + biggest_out) / 1e9:.1f} GB in {src}, {free / 1e9:.1f} GB free; "
            "pass a smaller --dit-layers or another --src"
        )
    env = common.environment()
    rows = []
    try:
        for comp in args.components:
            t = write_component(comp, src, layers)
            print(
                f"wrote {comp} ({source_bytes(comp, layers) / 1e9:.2f} GB) in {t:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            for dtype in args.dtype:
                dst = src.parent / f"{src.name}_converted" / f"{comp}_{dtype}"
                r = common.run_child(
                    __file__, ["--src", str(src), "--child", comp, dtype, str(dst)], args.timeout
                )
                r.update(component=comp, dtype=dtype)
                r["source_gb"] = common.gb(source_bytes(comp, layers))
                if comp == "dit" and layers < FULL_LAYERS and "error" not in r:
                    f = source_bytes(comp, FULL_LAYERS) / source_bytes(comp, layers)
                    r["seconds_24"] = round(r["seconds"] * f, 1)
                    r["output_gb_24"] = round(r["output_gb"] * f, 2)
                    r["dit_layers"] = layers
                print(json.dumps(r), file=sys.stderr, flush=True)
                rows.append(r)
                shutil.rmtree(dst, ignore_errors=True)
                common.write_results("convert", env, rows, table(rows, env, layers), Path(args.out))
            if not args.keep:
                shutil.rmtree(src / get_subfolder(comp), ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(src.parent / f"{src.name}_converted", ignore_errors=True)
    md = table(rows, env, layers)
    common.write_results("convert", env, rows, md, Path(args.out))
    print(md)
    return 0


def get_subfolder(component: str) -> str:
    from convert.components import get_spec

    return get_spec(component).subfolder


if __name__ == "__main__":
    sys.exit(main())
