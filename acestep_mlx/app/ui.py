"""The web page (Gradio Blocks): the original demo's text2music controls, defaults and presets
with its retake / repainting / edit / extend sub-tabs, plus a cancel button, progress bars, a
history of past generations and a LoRA training tab.

Every button submits a job to the server's queue (the same queue as the REST API) and follows
it; nothing here runs the model directly.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import gradio as gr

from acestep_mlx.generate import DEFAULT_LYRICS, DEFAULT_PROMPT

from . import history, training
from .jobs import CANCELLED, DONE, FINAL
from .security import AUDIO_EXTENSIONS, UnsafeRequest
from .service import Service, audio_info

TITLE = "ACE-Step MLX"
HUB_LORAS = ["ACE-Step/ACE-Step-v1-chinese-rap-LoRA"]
# the original demo's genre presets (tags that fill the Tags box)
GENRE_PRESETS = {
    "Modern Pop": "pop, synth, drums, guitar, 120 bpm, upbeat, catchy, vibrant, female vocals, "
                  "polished vocals",
    "Rock": "rock, electric guitar, drums, bass, 130 bpm, energetic, rebellious, gritty, male "
            "vocals, raw vocals",
    "Hip Hop": "hip hop, 808 bass, hi-hats, synth, 90 bpm, bold, urban, intense, male vocals, "
               "rhythmic vocals",
    "Country": "country, acoustic guitar, steel guitar, fiddle, 100 bpm, heartfelt, rustic, warm, "
               "male vocals, twangy vocals",
    "EDM": "edm, synth, bass, kick drum, 128 bpm, euphoric, pulsating, energetic, instrumental",
    "Reggae": "reggae, guitar, bass, drums, 80 bpm, chill, soulful, positive, male vocals, smooth "
              "vocals",
    "Classical": "classical, orchestral, strings, piano, 60 bpm, elegant, emotive, timeless, "
                 "instrumental",
    "Jazz": "jazz, saxophone, piano, double bass, 110 bpm, smooth, improvisational, soulful, male "
            "vocals, crooning vocals",
    "Metal": "metal, electric guitar, double kick drum, bass, 160 bpm, aggressive, intense, heavy, "
             "male vocals, screamed vocals",
    "R&B": "r&b, synth, bass, drums, 85 bpm, sultry, groovy, romantic, female vocals, silky vocals",
}
# "Sample" button: a few starting points (the original samples its example JSON files)
SAMPLES = [
    ("lofi, hip hop, mellow piano, vinyl crackle, 75 bpm, relaxed, night", "[inst]"),
    ("synthwave, retro, analog synth, gated drums, 110 bpm, nostalgic, driving",
     "[verse]\nChrome reflections on the boulevard\nRadio glowing like a falling star\n\n"
     "[chorus]\nDrive, drive, into the neon light"),
    ("folk, acoustic guitar, harmonica, 95 bpm, warm, storytelling, male vocals",
     "[verse]\nDown the river where the willows lean\nI left a letter in the evergreen\n\n"
     "[chorus]\nCarry me home, carry me slow"),
    ("ambient, pads, soft piano, field recordings, 60 bpm, calm, spacious", "[inst]"),
]
# generation events: any number may wait (the server's queue orders them), not in the API
JOB = {"concurrency_limit": None, "api_visibility": "private"}
LYRICS_HINT = ("Use [verse], [chorus] and [bridge] lines to structure the lyrics; [inst] (or "
               "empty lyrics) makes instrumental music.")


def _none_if_blank(value):
    if value is None:
        return None
    if isinstance(value, str) and value.strip() == "":
        return None
    return value


def _desc(job) -> str:
    p = job.progress
    if job.state == "queued":
        return "waiting in the queue"
    if job.state == "done":
        return "finished" + (f" ({p['message']})" if p.get("message") and
                             job.kind == "train" else "")
    if job.state == "failed":
        return "failed"
    if p.get("total"):
        return f"{p['stage']} {p['step']}/{p['total']} {p.get('message', '')}".strip()
    return f"{p.get('stage', '')} {p.get('message', '')}".strip()


class UI:
    """Handlers of the page (kept on one object so they share the service)."""

    def __init__(self, service: Service):
        self.s = service
        self.demo = service.config.demo

    # ------------------------------------------------------------------ jobs
    def _submit(self, fields: dict, request: gr.Request | None):
        try:
            kw = self.s.generation_kwargs(fields)
            owner = request.session_hash if request is not None else None
            return self.s.submit_generation(kw, owner=owner)
        except (UnsafeRequest, ValueError) as e:
            raise gr.Error(str(e)) from e
        except RuntimeError as e:  # QueueFull
            raise gr.Error(str(e)) from e

    def _follow(self, job, progress, n_outputs: int):
        """Yield status updates until the job ends; returns the job."""
        queue = self.s.queue
        seen = None
        while True:
            current = job.progress
            if job.state == "queued":
                pos = queue.position(job)
                progress(0.0, desc=f"waiting in the queue (position {(pos or 0) + 1})")
            else:
                progress(float(current.get("fraction", 0.0)), desc=_desc(job))
            if job.state in FINAL:
                return job
            if current is not seen:
                seen = current
                yield (*([gr.skip()] * n_outputs), f"**{job.state}**: {_desc(job)}")
            queue.wait(job.id, timeout=1.0,
                       until=lambda j, c=current: j.state in FINAL or j.progress is not c)

    def run_job(self, fields: dict, request, progress):
        """Submit, follow, and end with (audio, params, state, status)."""
        job = self._submit(fields, request)
        job = yield from self._follow(job, progress, 3)
        if job.state == CANCELLED:
            yield None, None, None, "**cancelled**: nothing was written"
            return
        if job.state != DONE:
            raise gr.Error(job.error or f"the job {job.state}")
        files = job.result["files"]
        path = str(self.s.output_file(job, 0))
        meta = history.load_entry(self.s.config.output_dir, files[0]["metadata"])
        took = job.result.get("timings", {}).get("total")
        note = f"**done** in {took:.1f} s: {files[0]['name']}" if took else "**done**"
        if len(files) > 1:
            note += f" (+{len(files) - 1} more in the output folder)"
        yield path, self.s.public_params(meta), meta, note

    def cancel(self, request: gr.Request):
        owner = request.session_hash if request is not None else None
        active = [j for j in self.s.queue.list("generate")
                  if j.owner == owner and j.state not in FINAL]
        for job in active:
            self.s.queue.cancel(job.id)
        return "**cancelling** ..." if active else "nothing to cancel"

    # ------------------------------------------------------------------ field building
    @staticmethod
    def common(prompt, lyrics, infer_step, guidance_scale, scheduler_type, cfg_type, omega_scale,
               manual_seeds, guidance_interval, guidance_interval_decay, min_guidance_scale,
               use_erg_tag, use_erg_lyric, use_erg_diffusion, oss_steps, guidance_scale_text,
               guidance_scale_lyric) -> dict:
        return {
            "prompt": prompt, "lyrics": lyrics or "", "infer_step": int(infer_step),
            "guidance_scale": float(guidance_scale), "scheduler_type": scheduler_type,
            "cfg_type": cfg_type, "omega_scale": float(omega_scale),
            "manual_seeds": _none_if_blank(manual_seeds),
            "guidance_interval": float(guidance_interval),
            "guidance_interval_decay": float(guidance_interval_decay),
            "min_guidance_scale": float(min_guidance_scale), "use_erg_tag": bool(use_erg_tag),
            "use_erg_lyric": bool(use_erg_lyric), "use_erg_diffusion": bool(use_erg_diffusion),
            "oss_steps": _none_if_blank(oss_steps),
            "guidance_scale_text": float(guidance_scale_text),
            "guidance_scale_lyric": float(guidance_scale_lyric),
        }

    def lora_fields(self, name, weight) -> dict:
        name = (name or "none").strip() or "none"
        return {"lora_name_or_path": name, "lora_weight": float(weight if weight is not None
                                                                 else 1.0)}

    def source(self, kind: str, last_t2m, last_own, upload):
        """(audio path, duration, metadata) of a sub-tab's source, as the original picks it."""
        if kind == "upload":
            path = self.s.check_local_audio(upload, "uploaded audio")
            if path is None:
                raise gr.Error("upload an audio file first")
            return path, audio_info(Path(path))["duration"], None
        meta = last_t2m if kind == "text2music" else last_own
        if not meta or not meta.get("audio_path"):
            what = "text2music" if kind == "text2music" else kind.replace("_", " ")
            raise gr.Error(f"there is no {what} output yet: generate one first or upload a file")
        path = self.s.check_local_audio(meta["audio_path"], "source audio")
        return path, meta.get("audio_duration"), meta

    # ------------------------------------------------------------------ history
    def history_choices(self):
        return [e["name"] for e in history.list_history(self.s.config.output_dir)]

    def history_table(self):
        rows = []
        for e in history.list_history(self.s.config.output_dir):
            seconds = e["duration"]
            rows.append([time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"])),
                         e["task"], e["prompt"],
                         round(seconds, 1) if isinstance(seconds, (int, float)) else "",
                         e["name"]])
        return rows

    def load_params(self, name):
        if not name:
            raise gr.Error("choose a previous generation first")
        try:
            meta = history.load_entry(self.s.config.output_dir, name)
        except UnsafeRequest as e:
            raise gr.Error(str(e)) from e
        v = history.ui_values(meta)
        v["lora_name_or_path"] = _lora_spec(self.s, v["lora_name_or_path"])
        return [v[k] for k, _ in history.UI_FIELDS]

    def history_item(self, name):
        if not name:
            return None, None
        try:
            meta = history.load_entry(self.s.config.output_dir, name)
        except UnsafeRequest as e:
            raise gr.Error(str(e)) from e
        audio = None
        if meta.get("audio_path"):
            try:
                audio = str(self.s.check_local_audio(meta["audio_path"], "audio"))
            except UnsafeRequest:
                audio = None
        return audio, self.s.public_params(meta)

    # ------------------------------------------------------------------ training
    def add_songs(self, dataset, files, prompt, lyrics):
        if not files:
            raise gr.Error("choose one or more audio files first")
        staged = []
        try:
            for f in files:
                src = self.s.check_local_audio(f, "audio file", max_seconds=None)
                tmp = self.s.incoming / f"upload-{time.time_ns()}.part"
                shutil.copyfile(src, tmp)
                staged.append((tmp, Path(src).name))
            info = self.s.add_to_dataset((dataset or "default").strip(), staged,
                                         [prompt or ""], [lyrics] if lyrics else [])
        except (UnsafeRequest, ValueError) as e:
            raise gr.Error(str(e)) from e
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
        return self.dataset_table(info), f"{len(files)} song(s) added to **{info['dataset']}**"

    @staticmethod
    def dataset_table(info):
        return [[s["name"], s["prompt"] or "", "yes" if s["has_lyrics"] else "no"]
                for s in info["songs"]]

    def show_dataset(self, dataset):
        try:
            info = self.s.dataset_info((dataset or "default").strip())
        except UnsafeRequest:
            return [], "no such dataset yet: add songs to create it"
        prep = info["prepared"]
        note = (f"prepared: {prep['items']} song(s), {len(prep['skipped'])} skipped"
                if prep else "not prepared yet")
        return self.dataset_table(info), note

    def prepare(self, dataset):
        try:
            self.s.dataset_dir((dataset or "default").strip())
            job = self.s.queue.submit("prepare", {"dataset": (dataset or "default").strip()})
        except (UnsafeRequest, RuntimeError) as e:
            raise gr.Error(str(e)) from e
        return f"preparing **{job.params['dataset']}** (job {job.id[:8]})", gr.Timer(active=True)

    def train(self, dataset, name, max_steps, lr, r, alpha, save_every, dtype, resume):
        req = {"dataset": (dataset or "default").strip(), "name": (name or "").strip() or None,
               "max_steps": int(max_steps), "learning_rate": float(lr), "r": int(r),
               "lora_alpha": float(alpha), "save_every_n_steps": int(save_every),
               "dtype": dtype, "resume": bool(resume)}
        try:
            params = self.s.train_request(req)
            job = self.s.queue.submit("train", params)
        except (UnsafeRequest, ValueError, RuntimeError) as e:
            raise gr.Error(str(e)) from e
        return f"training **{params['name']}** queued (job {job.id[:8]})", gr.Timer(active=True)

    def stop_training(self):
        active = [j for j in self.s.queue.list("train") if j.state not in FINAL]
        if not active:
            return "no training is running"
        self.s.queue.cancel(active[-1].id)
        return "stopping: the trainer saves its state; resume later with the same name"

    def train_tick(self):
        jobs = [j for j in self.s.queue.list() if j.kind in ("prepare", "train")]
        if not jobs:
            return gr.skip(), gr.skip(), gr.Timer(active=False)
        job = jobs[-1]
        plot = gr.skip()
        if job.kind == "train":
            rows = training.read_losses(self.s.loras / job.params["name"])
            import pandas as pd

            plot = pd.DataFrame(rows or [], columns=["step", "loss"]) if rows else gr.skip()
        what = "preparing" if job.kind == "prepare" else f"training {job.params['name']}"
        status = f"**{job.state}** ({what}): {_desc(job)}"
        if job.error:
            status += f"\n\n{job.error}"
        timer = gr.Timer(active=job.state not in FINAL)
        return status, plot, timer

    def lora_choices(self):
        return ["none", *HUB_LORAS, *[x["name"] for x in self.s.list_loras() if x["ready"]]]


def build_ui(service: Service) -> gr.Blocks:
    ui = UI(service)
    demo_mode = service.config.demo
    default_duration = 10.0 if demo_mode else -1.0
    default_steps = 27 if demo_mode else 60

    with gr.Blocks(title=TITLE) as page:
        gr.Markdown(f"# {TITLE}\nACE-Step v1 (3.5B) text-to-music on Apple MLX. "
                    "The same server has a REST API: [documentation](/docs)."
                    + ("\n\n**Demo checkpoint**: tiny random weights, the output is noise, not "
                       "music." if demo_mode else ""))
        last_t2m, last_repaint, last_edit, last_extend = (gr.State(None) for _ in range(4))

        with gr.Tab("text2music"):
            with gr.Row(equal_height=True):
                history_dd = gr.Dropdown(choices=ui.history_choices(), label="Select previous "
                                         "generated input params", scale=9, interactive=True)
                history_load = gr.Button("Load", variant="primary", scale=1)
                history_refresh = gr.Button("Refresh", scale=1)
            with gr.Row():
                with gr.Column():
                    with gr.Row(equal_height=True):
                        audio_duration = gr.Slider(
                            -1, 240.0, step=0.00001, value=default_duration,
                            label="Audio Duration", interactive=True, scale=7,
                            info="-1 means random duration (30 ~ 240).",
                            elem_id="audio_duration")
                        fmt = gr.Dropdown(choices=["mp3", "ogg", "flac", "wav"], value="wav",
                                          label="Format", scale=2)
                        sample_btn = gr.Button("Sample", variant="secondary", scale=1)
                    with gr.Row(equal_height=True):
                        a2a_enable = gr.Checkbox(label="Enable Audio2Audio", value=False,
                                                 info="Generate from a reference audio.")
                        lora_name = gr.Dropdown(label="Lora Name or Path",
                                                choices=ui.lora_choices(), value="none",
                                                allow_custom_value=True, min_width=300)
                        lora_weight = gr.Number(value=1.0, label="Lora weight", step=0.1,
                                                minimum=-3, maximum=3)
                    ref_audio = gr.Audio(type="filepath", label="Reference Audio (for "
                                         "Audio2Audio)", visible=False, buttons=["download"])
                    ref_strength = gr.Slider(0.0, 1.0, step=0.01, value=0.5,
                                             label="Refer audio strength", visible=False)
                    a2a_enable.change(lambda on: (gr.update(visible=on), gr.update(visible=on)),
                                      [a2a_enable], [ref_audio, ref_strength], queue=False)
                    with gr.Group():
                        with gr.Row():
                            preset = gr.Dropdown(choices=["Custom", *GENRE_PRESETS],
                                                 value="Custom", label="Preset", scale=1)
                            prompt = gr.Textbox(lines=1, max_lines=4, label="Tags", scale=9,
                                                value=DEFAULT_PROMPT, elem_id="tags",
                                                info="Tags, descriptions and scenes, separated "
                                                "by commas.")
                    preset.change(lambda p: "" if p == "Custom" else GENRE_PRESETS.get(p, ""),
                                  [preset], [prompt], queue=False)
                    lyrics = gr.Textbox(lines=9, max_lines=13, label="Lyrics",
                                        value=DEFAULT_LYRICS, info=LYRICS_HINT, elem_id="lyrics")
                    with gr.Accordion("Basic Settings", open=False):
                        infer_step = gr.Slider(1, 200, step=1, value=default_steps,
                                               label="Infer Steps", elem_id="infer_step")
                        guidance_scale = gr.Slider(
                            0.0, 30.0, step=0.1, value=15.0, label="Guidance Scale",
                            info="Not applied when guidance_scale_lyric > 1 and "
                            "guidance_scale_text > 1.")
                        gs_text = gr.Slider(0.0, 10.0, step=0.1, value=0.0,
                                            label="Guidance Scale Text",
                                            info="Text guidance (cfg only); try 5.0 with lyric "
                                            "1.5.")
                        gs_lyric = gr.Slider(0.0, 10.0, step=0.1, value=0.0,
                                             label="Guidance Scale Lyric")
                        manual_seeds = gr.Textbox(label="manual seeds (default None)",
                                                  placeholder="1,2,3,4", value=None,
                                                  info="Seed for the generation")
                    with gr.Accordion("Advanced Settings", open=False):
                        scheduler = gr.Radio(["euler", "heun", "pingpong"], value="euler",
                                             label="Scheduler Type",
                                             info="euler is recommended; heun is slower; "
                                             "pingpong is stochastic (SDE).")
                        cfg_type = gr.Radio(["cfg", "apg", "cfg_star"], value="apg",
                                            label="CFG Type", info="apg is recommended.")
                        erg_tag = gr.Checkbox(label="use ERG for tag", value=True,
                                              info="Entropy Rectifying Guidance on the tags.")
                        erg_lyric = gr.Checkbox(label="use ERG for lyric", value=False,
                                                info="The same on the lyric encoder.")
                        erg_diffusion = gr.Checkbox(label="use ERG for diffusion", value=True,
                                                    info="The same in the diffusion model.")
                        omega = gr.Slider(-100.0, 100.0, step=0.1, value=10.0,
                                          label="Granularity Scale",
                                          info="Higher values can reduce artifacts.")
                        g_interval = gr.Slider(0.0, 1.0, step=0.01, value=0.5,
                                               label="Guidance Interval",
                                               info="0.5: guidance only in the middle half of "
                                               "the steps.")
                        g_decay = gr.Slider(0.0, 1.0, step=0.01, value=0.0,
                                            label="Guidance Interval Decay",
                                            info="Decay from Guidance Scale to Min Guidance "
                                            "Scale inside the interval (0: none).")
                        min_gs = gr.Slider(0.0, 200.0, step=0.1, value=3.0,
                                           label="Min Guidance Scale")
                        oss_steps = gr.Textbox(label="OSS Steps", value=None,
                                               placeholder="16, 29, 52, 96, 129, 158, 172, 183, "
                                               "189, 200", info="Optimal Steps schedule.")
                    with gr.Row():
                        gen_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    status = gr.Markdown("", elem_id="status")

                with gr.Column():
                    out_audio = gr.Audio(type="filepath", label="Text2Music Generated Audio 1",
                                         buttons=["download"], elem_id="output_audio",
                                         interactive=False)
                    with gr.Accordion("Text2Music Parameters", open=False):
                        out_json = gr.JSON(label="Text2Music Parameters")

                    with gr.Tab("retake"):
                        rt_var = gr.Slider(0.0, 1.0, step=0.01, value=0.2, label="variance")
                        rt_seeds = gr.Textbox(label="retake seeds (default None)", value=None)
                        rt_btn = gr.Button("Retake", variant="primary")
                        rt_audio = gr.Audio(type="filepath", label="Retake Generated Audio 1",
                                            buttons=["download"], interactive=False)
                        with gr.Accordion("Retake Parameters", open=False):
                            rt_json = gr.JSON(label="Retake Parameters")
                        rt_status = gr.Markdown("")

                    with gr.Tab("repainting"):
                        rp_var = gr.Slider(0.0, 1.0, step=0.01, value=0.2, label="variance")
                        rp_seeds = gr.Textbox(label="repaint seeds (default None)", value=None)
                        rp_start = gr.Slider(0.0, 240.0, step=0.01, value=0.0,
                                             label="Repaint Start Time")
                        rp_end = gr.Slider(0.0, 240.0, step=0.01, value=30.0,
                                           label="Repaint End Time")
                        rp_source = gr.Radio(["text2music", "last_repaint", "upload"],
                                             value="text2music", label="Repaint Source")
                        rp_upload = gr.Audio(label="Upload Audio", type="filepath",
                                             visible=False, buttons=["download"])
                        rp_source.change(lambda x: gr.update(visible=x == "upload"),
                                         [rp_source], [rp_upload], queue=False)
                        rp_btn = gr.Button("Repaint", variant="primary")
                        rp_audio = gr.Audio(type="filepath", label="Repaint Generated Audio 1",
                                            buttons=["download"], interactive=False)
                        with gr.Accordion("Repaint Parameters", open=False):
                            rp_json = gr.JSON(label="Repaint Parameters")
                        rp_status = gr.Markdown("")

                    with gr.Tab("edit"):
                        ed_prompt = gr.Textbox(lines=2, max_lines=4, label="Edit Tags")
                        ed_lyrics = gr.Textbox(lines=9, max_lines=13, label="Edit Lyrics")
                        ed_seeds = gr.Textbox(label="edit seeds (default None)", value=None)
                        ed_type = gr.Radio(["only_lyrics", "remix"], value="only_lyrics",
                                           label="Edit Type",
                                           info="only_lyrics keeps the song and changes the "
                                           "words (keep changes small); remix can change melody "
                                           "and genre.")
                        ed_min = gr.Slider(0.0, 1.0, step=0.01, value=0.6, label="edit_n_min")
                        ed_max = gr.Slider(0.0, 1.0, step=0.01, value=1.0, label="edit_n_max")
                        ed_type.change(lambda t: (0.6, 1.0) if t == "only_lyrics" else (0.2, 0.4),
                                       [ed_type], [ed_min, ed_max], queue=False)
                        ed_source = gr.Radio(["text2music", "last_edit", "upload"],
                                             value="text2music", label="Edit Source")
                        ed_upload = gr.Audio(label="Upload Audio", type="filepath",
                                             visible=False, buttons=["download"])
                        ed_source.change(lambda x: gr.update(visible=x == "upload"),
                                         [ed_source], [ed_upload], queue=False)
                        ed_btn = gr.Button("Edit", variant="primary")
                        ed_audio = gr.Audio(type="filepath", label="Edit Generated Audio 1",
                                            buttons=["download"], interactive=False)
                        with gr.Accordion("Edit Parameters", open=False):
                            ed_json = gr.JSON(label="Edit Parameters")
                        ed_status = gr.Markdown("")

                    with gr.Tab("extend"):
                        ex_seeds = gr.Textbox(label="extend seeds (default None)", value=None)
                        ex_left = gr.Slider(0.0, 240.0, step=0.01, value=0.0,
                                            label="Left Extend Length")
                        ex_right = gr.Slider(0.0, 240.0, step=0.01, value=30.0,
                                             label="Right Extend Length")
                        ex_source = gr.Radio(["text2music", "last_extend", "upload"],
                                             value="text2music", label="Extend Source")
                        ex_upload = gr.Audio(label="Upload Audio", type="filepath",
                                             visible=False, buttons=["download"])
                        ex_source.change(lambda x: gr.update(visible=x == "upload"),
                                         [ex_source], [ex_upload], queue=False)
                        ex_btn = gr.Button("Extend", variant="primary")
                        ex_audio = gr.Audio(type="filepath", label="Extend Generated Audio 1",
                                            buttons=["download"], interactive=False)
                        with gr.Accordion("Extend Parameters", open=False):
                            ex_json = gr.JSON(label="Extend Parameters")
                        ex_status = gr.Markdown("")

            # ---------------------------------------------------------- handlers
            # (inputs given as a set: the handler gets one dict {component: value})
            common_map = {"prompt": prompt, "lyrics": lyrics, "infer_step": infer_step,
                          "guidance_scale": guidance_scale, "scheduler_type": scheduler,
                          "cfg_type": cfg_type, "omega_scale": omega,
                          "manual_seeds": manual_seeds, "guidance_interval": g_interval,
                          "guidance_interval_decay": g_decay, "min_guidance_scale": min_gs,
                          "use_erg_tag": erg_tag, "use_erg_lyric": erg_lyric,
                          "use_erg_diffusion": erg_diffusion, "oss_steps": oss_steps,
                          "guidance_scale_text": gs_text, "guidance_scale_lyric": gs_lyric}
            common_set = set(common_map.values())

            def common_from(v: dict) -> dict:
                return UI.common(**{k: v[c] for k, c in common_map.items()})

            def text2music(v: dict, request: gr.Request, progress=gr.Progress()):  # noqa: B008
                fields = {"task": "text2music", "format": v[fmt],
                          "audio_duration": float(v[audio_duration]), **common_from(v),
                          **ui.lora_fields(v[lora_name], v[lora_weight])}
                if v[a2a_enable]:
                    path = ui.s.check_local_audio(v[ref_audio], "reference audio")
                    if path is None:
                        raise gr.Error("Audio2Audio is on: upload a reference audio first")
                    fields.update(task="audio2audio", ref_audio_input=path,
                                  ref_audio_strength=float(v[ref_strength]))
                yield from ui.run_job(fields, request, progress)

            t2m_inputs = {fmt, audio_duration, a2a_enable, ref_strength, ref_audio, lora_name,
                          lora_weight} | common_set
            gen_event = gen_btn.click(text2music, t2m_inputs,
                                      [out_audio, out_json, last_t2m, status], **JOB)
            cancel_btn.click(ui.cancel, None, [status], queue=False, api_visibility="private")

            def retake(v: dict, request: gr.Request, progress=gr.Progress()):  # noqa: B008
                meta = v[last_t2m]
                if not meta:
                    raise gr.Error("there is no text2music output yet: generate one first")
                h = history.ui_values(meta)
                fields = {"task": "retake", "format": v[fmt],
                          "audio_duration": float(meta["audio_duration"]),
                          **UI.common(**{k: h[k] for k in common_map if k != "manual_seeds"},
                                      manual_seeds=h["actual_seeds"]),
                          "retake_seeds": _none_if_blank(v[rt_seeds]),
                          "retake_variance": float(v[rt_var]),
                          "lora_name_or_path": _lora_spec(service, h["lora_name_or_path"]),
                          "lora_weight": float(h["lora_weight"])}
                yield from ui.run_job(fields, request, progress)

            rt_event = rt_btn.click(retake, {last_t2m, rt_var, rt_seeds, fmt},
                                    [rt_audio, rt_json, gr.State(None), rt_status], **JOB)

            def _src_lora(meta, v: dict) -> dict:
                if meta is not None and meta.get("lora_name_or_path"):
                    return {"lora_name_or_path": _lora_spec(service, meta["lora_name_or_path"]),
                            "lora_weight": float(meta.get("lora_weight") or 1.0)}
                return ui.lora_fields(v[lora_name], v[lora_weight])

            def repaint(v: dict, request: gr.Request, progress=gr.Progress()):  # noqa: B008
                path, duration, meta = ui.source(v[rp_source], v[last_t2m], v[last_repaint],
                                                 v[rp_upload])
                fields = {"task": "repaint", "format": v[fmt], "audio_duration": float(duration),
                          **common_from(v), "retake_seeds": _none_if_blank(v[rp_seeds]),
                          "retake_variance": float(v[rp_var]),
                          "repaint_start": float(v[rp_start]), "repaint_end": float(v[rp_end]),
                          "src_audio_path": path, **_src_lora(meta, v)}
                yield from ui.run_job(fields, request, progress)

            rp_inputs = {last_t2m, last_repaint, rp_var, rp_seeds, rp_start, rp_end, rp_source,
                         rp_upload, fmt, lora_name, lora_weight} | common_set
            rp_event = rp_btn.click(repaint, rp_inputs,
                                    [rp_audio, rp_json, last_repaint, rp_status], **JOB)

            def edit(v: dict, request: gr.Request, progress=gr.Progress()):  # noqa: B008
                path, duration, meta = ui.source(v[ed_source], v[last_t2m], v[last_edit],
                                                 v[ed_upload])
                base = common_from(v)
                fields = {"task": "edit", "format": v[fmt], "audio_duration": float(duration),
                          **base, "src_audio_path": path,
                          "edit_target_prompt": v[ed_prompt] or base["prompt"],
                          "edit_target_lyrics": v[ed_lyrics] or base["lyrics"],
                          "edit_n_min": float(v[ed_min]), "edit_n_max": float(v[ed_max]),
                          "retake_seeds": _none_if_blank(v[ed_seeds]), **_src_lora(meta, v)}
                yield from ui.run_job(fields, request, progress)

            ed_inputs = {last_t2m, last_edit, ed_source, ed_upload, ed_prompt, ed_lyrics, ed_min,
                         ed_max, ed_seeds, fmt, lora_name, lora_weight} | common_set
            ed_event = ed_btn.click(edit, ed_inputs,
                                    [ed_audio, ed_json, last_edit, ed_status], **JOB)

            def extend(v: dict, request: gr.Request, progress=gr.Progress()):  # noqa: B008
                left, right = float(v[ex_left]), float(v[ex_right])
                if left <= 0 and right <= 0:
                    raise gr.Error("set a left and/or right extend length")
                path, duration, meta = ui.source(v[ex_source], v[last_t2m], v[last_extend],
                                                 v[ex_upload])
                fields = {"task": "extend", "format": v[fmt], "audio_duration": float(duration),
                          **common_from(v), "retake_seeds": _none_if_blank(v[ex_seeds]),
                          "src_audio_path": path, "extend_left": left, "extend_right": right,
                          **_src_lora(meta, v)}
                yield from ui.run_job(fields, request, progress)

            ex_inputs = {last_t2m, last_extend, ex_seeds, ex_left, ex_right, ex_source,
                         ex_upload, fmt, lora_name, lora_weight} | common_set
            ex_event = ex_btn.click(extend, ex_inputs,
                                    [ex_audio, ex_json, last_extend, ex_status], **JOB)

            ui_fields = [audio_duration, prompt, lyrics, infer_step, guidance_scale, scheduler,
                         cfg_type, omega, manual_seeds, g_interval, g_decay, min_gs, erg_tag,
                         erg_lyric, erg_diffusion, oss_steps, gs_text, gs_lyric, a2a_enable,
                         ref_strength, lora_name, lora_weight, fmt]
            history_load.click(ui.load_params, [history_dd], ui_fields, api_visibility="private")
            history_refresh.click(lambda: gr.update(choices=ui.history_choices()), None,
                                  [history_dd], queue=False, api_visibility="private")

            def sample(lora):
                tags, words = random.choice(SAMPLES)
                v = history.ui_values({"prompt": tags, "lyrics": words,
                                       "audio_duration": default_duration,
                                       "infer_step": default_steps, "lora_name_or_path": lora})
                return [v[k] for k, _ in history.UI_FIELDS]

            sample_btn.click(sample, [lora_name], ui_fields, queue=False,
                             api_visibility="private")

        with gr.Tab("History"):
            with gr.Row(equal_height=True):
                h_dd = gr.Dropdown(choices=ui.history_choices(), label="Past generations "
                                   "(newest first)", scale=9)
                h_refresh = gr.Button("Refresh", scale=1)
            h_audio = gr.Audio(type="filepath", label="Audio", interactive=False,
                               buttons=["download"])
            h_json = gr.JSON(label="Parameters (metadata JSON)")
            h_reload = gr.Button("Reload these parameters into text2music", variant="primary")
            h_table = gr.Dataframe(headers=["time", "task", "prompt", "seconds", "entry"],
                                   interactive=False, label="All generations")
            h_refresh.click(lambda: (gr.update(choices=ui.history_choices()), ui.history_table()),
                            None, [h_dd, h_table], queue=False, api_visibility="private")

            def pick(evt: gr.SelectData):
                row = evt.row_value if evt is not None else None
                return gr.update(value=row[-1]) if row else gr.skip()

            h_table.select(pick, None, [h_dd], api_visibility="private")
            h_dd.change(ui.history_item, [h_dd], [h_audio, h_json], api_visibility="private")
            h_reload.click(ui.load_params, [h_dd], ui_fields, api_visibility="private")

        with gr.Tab("LoRA training"):
            gr.Markdown("Add songs (audio + comma-separated tags, optional lyrics) to a dataset, "
                        "prepare it (the songs are encoded once), then train a LoRA. Stop keeps "
                        "the last saved state; tick *resume* and train again to continue. The "
                        "result appears in the text2music *Lora Name or Path* list.")
            with gr.Row():
                with gr.Column():
                    t_dataset = gr.Textbox(value="default", label="Dataset name")
                    t_files = gr.File(file_count="multiple", label="Audio files",
                                      file_types=list(AUDIO_EXTENSIONS))
                    t_prompt = gr.Textbox(label="Prompt (tags) for these files",
                                          placeholder="pop, piano, female vocals, 100 bpm")
                    t_lyrics = gr.Textbox(lines=4, label="Lyrics for these files (optional)")
                    with gr.Row():
                        t_add = gr.Button("Add to dataset", variant="primary")
                        t_show = gr.Button("Show dataset")
                        t_prepare = gr.Button("Prepare")
                    t_table = gr.Dataframe(headers=["file", "prompt", "lyrics"],
                                           interactive=False, label="Songs")
                    t_note = gr.Markdown("")
                with gr.Column():
                    t_name = gr.Textbox(label="LoRA name (default: the dataset name)")
                    with gr.Row():
                        t_steps = gr.Number(value=1000, precision=0, minimum=1,
                                            label="Max steps")
                        t_lr = gr.Number(value=1e-4, label="Learning rate")
                        t_save = gr.Number(value=100, precision=0, minimum=1,
                                           label="Save every N steps")
                    with gr.Row():
                        t_r = gr.Number(value=16, precision=0, minimum=1, label="Rank (r)")
                        t_alpha = gr.Number(value=32, label="Alpha")
                        t_dtype = gr.Radio(["float32", "bfloat16"], value="float32",
                                           label="Base model dtype")
                    t_resume = gr.Checkbox(value=False, label="Resume the run with this name")
                    with gr.Row():
                        t_train = gr.Button("Train", variant="primary")
                        t_stop = gr.Button("Stop", variant="stop")
                        t_use = gr.Button("Use this LoRA")
                    t_status = gr.Markdown("")
                    t_plot = gr.LinePlot(x="step", y="loss", label="Training loss", height=280)
            timer = gr.Timer(2.0, active=False)
            t_add.click(ui.add_songs, [t_dataset, t_files, t_prompt, t_lyrics],
                        [t_table, t_note], api_visibility="private")
            t_show.click(ui.show_dataset, [t_dataset], [t_table, t_note],
                         api_visibility="private")
            t_prepare.click(ui.prepare, [t_dataset], [t_status, timer], api_visibility="private")
            t_train.click(ui.train, [t_dataset, t_name, t_steps, t_lr, t_r, t_alpha, t_save,
                                     t_dtype, t_resume], [t_status, timer],
                          api_visibility="private")
            t_stop.click(ui.stop_training, None, [t_status], api_visibility="private")
            timer.tick(ui.train_tick, None, [t_status, t_plot, timer], api_visibility="private")

            def use_lora(name, dataset):
                chosen = (name or "").strip() or (dataset or "").strip()
                ready = {x["name"] for x in service.list_loras() if x["ready"]}
                if chosen not in ready:
                    raise gr.Error(f"no trained adapter called {chosen!r} yet")
                return gr.update(choices=ui.lora_choices(), value=chosen), \
                    f"**{chosen}** selected in text2music (Lora Name or Path)"

            t_use.click(use_lora, [t_name, t_dataset], [lora_name, t_status],
                        api_visibility="private")

        def refresh_history():
            names = ui.history_choices()
            return gr.update(choices=names), gr.update(choices=names), ui.history_table()

        for event in (gen_event, rt_event, rp_event, ed_event, ex_event):
            event.then(refresh_history, None, [history_dd, h_dd, h_table], queue=False,
                       api_visibility="private")
        page.load(lambda: (*refresh_history(), gr.update(choices=ui.lora_choices())),
                  None, [history_dd, h_dd, h_table, lora_name], queue=False,
                  api_visibility="private")
    return page


def _lora_spec(service: Service, spec):
    """A LoRA from a metadata file (maybe a path of a LoRA trained here) -> a name the server
    accepts."""
    if not spec or spec == "none":
        return "none"
    shown = service._display_lora(spec)
    return shown
