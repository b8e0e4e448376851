"""The app's REST API over real HTTP: a server (`python app.py --demo`) runs in a child process
on 127.0.0.1 with an API key, temporary folders and a 1 MB upload limit.

Covers: key checks (missing, wrong, Bearer, X-API-Key), generate -> poll -> download, the
editing tasks from an upload and from a previous job, cancel (queued and running), bad
requests of every route, upload safety (extensions, size, content, names, traversal), dataset
upload -> prepare -> train -> LoRA load/strength/unload. Plus the queue and the name checks as
plain unit tests.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from app_server import AppServer, wait_job

from acestep_mlx.app import security
from acestep_mlx.app.jobs import CANCELLED, DONE, FAILED, JobCancelled, JobQueue

KEY = "test-key-0123456789"
FAST = {"audio_duration": 2.0, "infer_step": 3, "lyrics": "[inst]"}


def wav_bytes(seconds: float = 1.0, sr: int = 48000, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None].repeat(2, axis=1)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), sr, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = AppServer(tmp_path_factory.mktemp("app_api"), api_key=KEY,
                    args=("--max_upload_mb", "1"))
    with srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def first_job(client):
    r = client.post("/v1/generate", json={"prompt": "lofi, piano, 70 bpm", **FAST,
                                          "manual_seeds": "7"})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    return job


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------ API key
def test_api_key_required(server):
    url = server.url
    r = httpx.get(url + "/health")
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(url + "/health", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json()["detail"] == "wrong API key"
    r = httpx.get(url + "/health", headers={"X-API-Key": "wrong"})
    assert r.status_code == 403
    assert httpx.get(url + "/health", headers={"X-API-Key": KEY}).status_code == 200
    r = httpx.get(url + "/health", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["demo"] is True
    # no job is created by an unauthenticated request
    before = len(httpx.get(url + "/v1/jobs", headers=server.headers).json())
    r = httpx.post(url + "/v1/generate", json={"prompt": "x", **FAST})
    assert r.status_code == 401
    r = httpx.post(url + "/v1/dataset/upload", files={"files": ("a.wav", wav_bytes(0.1))},
                   headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403
    assert len(httpx.get(url + "/v1/jobs", headers=server.headers).json()) == before
    for path in ("/v1/jobs", "/v1/train/status", "/v1/lora", "/v1/datasets", "/v1/history"):
        assert httpx.get(url + path).status_code == 401, path


def test_openapi_documents_every_route(server):
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    expected = {
        "/health": "get", "/v1/generate": "post", "/v1/jobs/{job_id}": "get",
        "/v1/jobs/{job_id}/audio": "get", "/v1/audio/upload": "post",
        "/v1/dataset/upload": "post", "/v1/dataset/prepare": "post", "/v1/train": "post",
        "/v1/train/status": "get", "/v1/train/stop": "post", "/v1/lora/load": "post",
        "/v1/lora/unload": "post", "/v1/lora/strength": "post"}
    for path, method in expected.items():
        assert method in paths[path], path
    assert "delete" in paths["/v1/jobs/{job_id}"]


def test_web_page_asks_for_the_key(server):
    r = httpx.get(server.url + "/", follow_redirects=True)
    assert r.status_code == 200
    assert httpx.get(server.url + "/config").status_code == 401
    bad = httpx.post(server.url + "/login", data={"username": "me", "password": "wrong"})
    assert bad.status_code == 400
    with httpx.Client(base_url=server.url) as browser:
        ok = browser.post("/login", data={"username": "me", "password": KEY})
        assert ok.status_code == 200
        assert browser.get("/config").status_code == 200


# ------------------------------------------------------------------------------ generation
def test_generate_poll_download(client, first_job, server):
    job = first_job
    assert job["progress"]["fraction"] == 1.0 and job["error"] is None
    assert job["request"]["infer_step"] == 3 and job["request"]["task"] == "text2music"
    files = job["result"]["files"]
    assert len(files) == 1 and files[0]["name"].endswith(".wav")
    assert job["audio_urls"] == [f"/v1/jobs/{job['id']}/audio?index=0"]
    r = client.get(job["audio_urls"][0])
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    wave, sr = sf.read(io.BytesIO(r.content))
    assert sr == 48000 and wave.shape[1] == 2 and abs(wave.shape[0] / sr - 2.0) < 0.1
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0
    meta = job["result"]["params"]
    assert meta["actual_seeds"] == [7] and meta["audio_path"] == files[0]["name"]
    assert (server.output_dir / files[0]["metadata"]).is_file()
    hist = client.get("/v1/history").json()
    assert files[0]["metadata"] in [h["name"] for h in hist]
    item = client.get(f"/v1/history/{files[0]['metadata']}").json()
    assert item["prompt"] == "lofi, piano, 70 bpm" and item["infer_step"] == 3
    assert client.get(f"/v1/jobs/{job['id']}/audio?index=1").status_code == 404


def test_generate_bad_requests(client, first_job):
    jobs_before = len(client.get("/v1/jobs?limit=500").json())
    cases = [
        ({"prompt": "   ", **FAST}, 400, "prompt is empty"),
        ({**FAST}, 422, "prompt"),
        ({"prompt": "x", **FAST, "save_path": "/tmp/x.wav"}, 422, "save_path"),
        ({"prompt": "x", **FAST, "infer_step": 0}, 422, "infer_step"),
        ({"prompt": "x", **FAST, "audio_duration": 500}, 400, "at most 240"),
        ({"prompt": "x", **FAST, "scheduler_type": "ddim"}, 422, "scheduler_type"),
        ({"prompt": "x", **FAST, "manual_seeds": "1,a"}, 400, "seeds"),
        ({"prompt": "x", **FAST, "oss_steps": "5, 2000"}, 400, "oss_steps"),
        ({"prompt": "x", **FAST, "task": "repaint", "repaint_end": 1}, 400, "src_audio"),
        ({"prompt": "x", **FAST, "task": "repaint", "src_audio": "/etc/passwd"}, 400,
         "src_audio"),
        ({"prompt": "x", **FAST, "task": "edit", "src_audio": "upload:../../etc/passwd"}, 400,
         "upload:<name>"),
        ({"prompt": "x", **FAST, "task": "repaint", "src_audio": "upload:nothere.wav"}, 404,
         "gone"),
        ({"prompt": "x", **FAST, "task": "extend", "src_audio": "job:" + "0" * 32}, 404,
         "no generation job"),
        ({"prompt": "x", **FAST, "task": "audio2audio"}, 400, "ref_audio"),
        ({"prompt": "x", **FAST, "task": "retake"}, 400, "manual_seeds"),
        ({"prompt": "x", **FAST, "lora_name_or_path": "/etc"}, 400, "local paths"),
        ({"prompt": "x", **FAST, "lora_name_or_path": "../loras/x"}, 400, "local paths"),
        ({"prompt": "x", **FAST, "lora_name_or_path": "mine"}, 404, "no trained LoRA"),
    ]
    cases.append(({"prompt": "x", **FAST, "task": "repaint", "src_audio": f"job:{first_job['id']}",
                   "repaint_start": 1, "repaint_end": 30}, 400, "outside the source audio"))
    cases.append(({"prompt": "x", **FAST, "task": "extend", "src_audio": f"job:{first_job['id']}"},
                  400, "extend_left and/or extend_right"))
    for body, status, words in cases:
        r = client.post("/v1/generate", json=body)
        assert r.status_code == status, (body, r.text)
        assert words in json.dumps(r.json()), (body, r.text)
    assert len(client.get("/v1/jobs?limit=500").json()) == jobs_before


def test_jobs_bad_requests(client, first_job):
    assert client.get("/v1/jobs/not-a-job").status_code == 400
    assert client.get("/v1/jobs/" + "a" * 32).status_code == 404
    assert client.get("/v1/jobs/" + "a" * 32 + "/audio").status_code == 404
    assert client.delete("/v1/jobs/" + "a" * 32).status_code == 404
    assert client.delete("/v1/jobs/../../etc").status_code in (400, 404)
    r = client.delete(f"/v1/jobs/{first_job['id']}")
    assert r.status_code == 409 and "already finished" in r.json()["detail"]
    assert client.get(f"/v1/jobs/{first_job['id']}/audio?index=-1").status_code == 422


def test_cancel_running_and_queued(client, server):
    outputs_before = files_under(server.output_dir)
    long = client.post("/v1/generate", json={"prompt": "slow", "lyrics": "[inst]",
                                             "audio_duration": 60, "infer_step": 200}).json()
    queued = client.post("/v1/generate", json={"prompt": "queued", **FAST}).json()
    view = client.get(f"/v1/jobs/{queued['id']}").json()
    assert view["state"] == "queued" and view["position"] is not None
    r = client.delete(f"/v1/jobs/{queued['id']}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    # wait until the long job is inside the diffusion loop, then cancel it
    end = time.monotonic() + 60
    while time.monotonic() < end:
        view = client.get(f"/v1/jobs/{long['id']}").json()
        if view["state"] == "running" and view["progress"]["stage"] == "diffusion":
            break
        time.sleep(0.1)
    assert view["progress"]["stage"] == "diffusion", view
    assert client.get(f"/v1/jobs/{long['id']}/audio").status_code == 409
    r = client.delete(f"/v1/jobs/{long['id']}")
    assert r.status_code in (200, 202)
    view = wait_job(client, long["id"], timeout=60)
    assert view["state"] == "cancelled" and view["progress"]["step"] < 200
    assert client.get(f"/v1/jobs/{long['id']}/audio").status_code == 409
    assert files_under(server.output_dir) == outputs_before  # nothing written
    # the queue goes on after a cancel
    after = client.post("/v1/generate", json={"prompt": "after", **FAST}).json()
    assert wait_job(client, after["id"])["state"] == "done"


def test_editing_tasks(client, first_job):
    up = client.post("/v1/audio/upload", files={"file": ("My Song (live).wav", wav_bytes(3.0))})
    assert up.status_code == 201, up.text
    ref = up.json()["ref"]
    assert ref.startswith("upload:") and "/" not in ref and up.json()["duration"] == 3.0
    src_job = f"job:{first_job['id']}"
    bodies = [
        {"task": "repaint", "src_audio": ref, "repaint_start": 0.5, "repaint_end": 2.0},
        {"task": "extend", "src_audio": src_job, "extend_right": 1.0},
        {"task": "edit", "src_audio": src_job + "/0", "edit_target_prompt": "rock",
         "edit_preset": "remix"},
        {"task": "retake", "manual_seeds": "7", "retake_seeds": "3", "retake_variance": 0.3},
        {"task": "audio2audio", "ref_audio": ref, "ref_audio_strength": 0.3},
    ]
    ids = []
    for body in bodies:
        r = client.post("/v1/generate", json={"prompt": "pop", **FAST, **body})
        assert r.status_code == 202, (body, r.text)
        ids.append(r.json()["id"])
    for body, job_id in zip(bodies, ids, strict=True):
        job = wait_job(client, job_id)
        assert job["state"] == "done", (body, job["error"])
        meta = job["result"]["params"]
        assert meta["task"] == body["task"]
        if body["task"] in ("repaint", "edit"):
            assert meta["src_audio_path"] and "/" not in meta["src_audio_path"]
        if body["task"] == "extend":  # 2 s source + 1 s on the right
            r = client.get(f"/v1/jobs/{job_id}/audio")
            seconds = sf.info(io.BytesIO(r.content)).duration
            assert abs(seconds - 3.0) < 0.2, seconds
        if body["task"] == "edit":
            assert meta["edit_n_min"] == 0.2 and meta["edit_n_max"] == 0.4


# ------------------------------------------------------------------------------ uploads
def test_bad_uploads(client, server):
    before = files_under(server.data_dir / "uploads")
    big = b"RIFF" + b"\0" * 1_100_000
    cases = [
        ({"file": ("notes.txt", b"hello")}, 415, "not an audio file"),
        ({"file": ("fake.wav", b"this is not audio at all")}, 415, "not a readable audio"),
        ({"file": ("../../evil.wav", wav_bytes(0.2))}, 400, "path"),
        ({"file": ("/etc/evil.wav", wav_bytes(0.2))}, 400, "path"),
        ({"file": ("..\\evil.wav", wav_bytes(0.2))}, 400, "path"),
        ({"file": (".hidden.wav", wav_bytes(0.2))}, 400, "must not start"),
        ({"file": ("...wav", wav_bytes(0.2))}, 400, "'..'"),
        ({"file": ("big.wav", big)}, 413, "larger than"),
        ({"files": ("a.wav", wav_bytes(0.2))}, 400, "exactly one"),
        ({"file": ("a.wav", wav_bytes(0.2)), "other": ("b.wav", wav_bytes(0.2))}, 413,
         "too many files"),
    ]
    for files, status, words in cases:
        r = client.post("/v1/audio/upload", files=files)
        assert r.status_code == status, (files.keys(), r.text)
        assert words in r.json()["detail"], r.text
    r = client.post("/v1/audio/upload", json={"file": "x"})
    assert r.status_code == 415
    r = client.post("/v1/audio/upload", content=b"--x\r\nbroken",
                    headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400
    assert files_under(server.data_dir / "uploads") == before
    assert not list((server.data_dir / "incoming").iterdir())  # partial files are removed
    for p in (server.tmp.parent, Path("/etc"), Path("/tmp")):
        assert not (p / "evil.wav").exists()


def test_dataset_upload_and_bad_requests(client, server):
    files = [("files", ("Song One.wav", wav_bytes(3.0))), ("files", ("two.flac",
                                                                    wav_bytes(3.0, fmt="FLAC")))]
    r = client.post("/v1/dataset/upload", files=files,
                    data={"dataset": "tiny", "prompt": "pop, piano", "lyrics": "[inst]"})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["dataset"] == "tiny" and [s["name"] for s in info["songs"]] == ["Song_One.wav",
                                                                               "two.flac"]
    folder = server.data_dir / "datasets" / "tiny"
    assert (folder / "Song_One_prompt.txt").read_text().strip() == "pop, piano"
    assert (folder / "two_lyrics.txt").read_text().strip() == "[inst]"
    listed = {d["dataset"] for d in client.get("/v1/datasets").json()}
    assert "tiny" in listed
    bad = [
        ({"dataset": "tiny"}, files, 400, "prompt"),
        ({"dataset": "tiny", "prompt": ["a", "b", "c"]}, files, 400, "prompt(s)"),
        ({"dataset": "tiny", "prompt": ""}, files, 400, "empty"),
        ({"dataset": "../escape", "prompt": "x"}, files, 400, "path"),
        ({"dataset": "tiny", "prompt": "x"}, [("files", ("x.exe", b"MZ"))], 415, "not an audio"),
        ({"dataset": "tiny", "prompt": "x", "extra": "1"}, files, 400, "unexpected"),
        ({"dataset": "tiny", "prompt": "x"}, [], 415, "multipart"),
    ]
    for data, fls, status, words in bad:
        r = client.post("/v1/dataset/upload", data=data, files=fls or None)
        assert r.status_code == status, (data, r.text)
        assert words in r.json()["detail"], r.text
    assert not (server.data_dir / "escape").exists()
    assert sorted(p.name for p in folder.iterdir()) == [
        "Song_One.wav", "Song_One_lyrics.txt", "Song_One_prompt.txt", "two.flac",
        "two_lyrics.txt", "two_prompt.txt"]


def test_training_and_lora_routes(client, server):
    # bad requests first
    r = client.post("/v1/dataset/prepare", json={"dataset": "missing"})
    assert r.status_code == 404
    r = client.post("/v1/train", json={"dataset": "missing"})
    assert r.status_code == 404
    assert client.post("/v1/train/stop").status_code == 409
    assert client.post("/v1/lora/strength", json={"strength": 0.5}).status_code == 409
    assert client.post("/v1/lora/load", json={"name": "none"}).status_code == 400
    assert client.post("/v1/lora/load", json={"name": "/etc"}).status_code == 400
    assert client.post("/v1/lora/load", json={"name": "nope"}).status_code == 404
    assert client.post("/v1/lora/load", json={"name": "x", "strength": 9}).status_code == 422
    if not (server.data_dir / "datasets" / "tiny").is_dir():
        r = client.post("/v1/dataset/upload", data={"dataset": "tiny", "prompt": "pop"},
                        files=[("files", ("a.wav", wav_bytes(3.0)))])
        assert r.status_code == 201
    r = client.post("/v1/train", json={"dataset": "tiny", "max_steps": 2})
    assert r.status_code == 409 and "not prepared" in r.json()["detail"]

    t0 = time.monotonic()
    prep = client.post("/v1/dataset/prepare", json={"dataset": "tiny"})
    assert prep.status_code == 202
    train = client.post("/v1/train", json={"dataset": "tiny", "name": "tiny_lora",
                                           "max_steps": 3, "save_every_n_steps": 3, "r": 4,
                                           "lora_alpha": 4})
    assert train.status_code == 202, train.text
    r = client.post("/v1/train", json={"dataset": "tiny", "name": "other", "max_steps": 3})
    assert r.status_code == 409 and "already queued or running" in r.json()["detail"]
    prep_job = wait_job(client, prep.json()["id"], timeout=180)
    assert prep_job["state"] == "done", prep_job["error"]
    assert prep_job["result"]["items"] == 2
    job = wait_job(client, train.json()["id"], timeout=240)
    assert job["state"] == "done", job["error"]
    status = client.get("/v1/train/status").json()
    assert status["state"] == "done" and status["adapter_ready"] and status["name"] == "tiny_lora"
    assert [row["step"] for row in status["losses"]] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) for row in status["losses"])
    r = client.post("/v1/train", json={"dataset": "tiny", "name": "tiny_lora", "max_steps": 3})
    assert r.status_code == 409 and "resume" in r.json()["detail"]
    print(f"prepare + train: {time.monotonic() - t0:.1f} s")

    load = client.post("/v1/lora/load", json={"name": "tiny_lora", "strength": 0.8})
    assert load.status_code == 202, load.text
    assert wait_job(client, load.json()["id"])["state"] == "done"
    lora = client.get("/v1/lora").json()
    assert lora["loaded"] and lora["name"] == "tiny_lora" and lora["strength"] == 0.8
    assert {"name": "tiny_lora", "ready": True} in lora["available"]
    gen = client.post("/v1/generate", json={"prompt": "with lora", **FAST}).json()
    done = wait_job(client, gen["id"])
    assert done["state"] == "done" and done["result"]["params"]["lora_name_or_path"] == (
        "tiny_lora") and done["result"]["params"]["lora_weight"] == 0.8
    s = client.post("/v1/lora/strength", json={"strength": 0.25}).json()
    assert wait_job(client, s["id"])["result"]["strength"] == 0.25
    u = client.post("/v1/lora/unload").json()
    assert wait_job(client, u["id"])["state"] == "done"
    assert client.get("/v1/lora").json()["loaded"] is False


# ------------------------------------------------------------------------------ unit tests
def test_safe_names():
    assert security.safe_name("My Song (live).wav") == "My_Song_live_.wav"
    assert security.safe_name("Café.flac") == "Cafe.flac"
    for bad in ("", "..", "../x.wav", "a/b.wav", "a\\b.wav", "/etc/passwd", ".env", "~root",
                "C:evil.wav", "a..b.wav", "x\x00.wav", "\u2028.wav", "日本.wav", "x" * 101):
        with pytest.raises(security.UnsafeRequest):
            security.safe_name(bad)
    with pytest.raises(security.UnsafeRequest) as e:
        security.audio_file_name("song.exe")
    assert e.value.status == 415
    assert security.audio_file_name("Song.WAV") == "Song.wav"
    with pytest.raises(security.UnsafeRequest):
        security.safe_join("/srv/data", "..", "etc")
    with pytest.raises(security.UnsafeRequest):
        security.safe_join("/srv/data", "/etc/passwd")
    assert security.safe_join("/srv/data", "a", "b.wav") == Path("/srv/data/a/b.wav")
    assert security.hub_repo_id("ACE-Step/ACE-Step-v1-chinese-rap-LoRA")
    for bad in ("../x", "a/../b", "/abs", "a/b/c", ".x/y", "a"):
        assert not security.hub_repo_id(bad), bad
    assert security.key_matches("k", None) and security.key_matches("k", "k")
    assert not security.key_matches(None, "k") and not security.key_matches("K", "k")
    assert security.key_from_headers({"authorization": "Bearer abc"}) == "abc"
    assert security.key_from_headers({"x-api-key": "abc"}) == "abc"
    assert security.key_from_headers({"authorization": "Basic abc"}) is None


def test_queue_order_cancel_failure_and_restore(tmp_path):
    ran = []

    def work(job, ctx):
        if job.params.get("fail"):
            raise ValueError("bad value")
        for i in range(job.params.get("steps", 1)):
            ctx.report("diffusion", i + 1, job.params.get("steps", 1))
            ctx.check()
            time.sleep(job.params.get("sleep", 0))
        ran.append(job.params["n"])
        return {"n": job.params["n"]}

    q = JobQueue({"w": work}, state_dir=tmp_path)
    jobs = [q.submit("w", {"n": i}) for i in range(3)]
    failing = q.submit("w", {"n": 9, "fail": True})
    slow = q.submit("w", {"n": 5, "steps": 1000, "sleep": 0.01})
    queued = q.submit("w", {"n": 6})
    q.cancel(queued.id)
    assert queued.state == CANCELLED
    q.start()
    assert q.wait(jobs[-1].id, 10).state == DONE
    assert q.wait(failing.id, 10).state == FAILED and failing.error == "bad value"
    q.wait(slow.id, 10, until=lambda j: j.progress["step"] > 2)
    q.cancel(slow.id)
    assert q.wait(slow.id, 10).state == CANCELLED
    assert ran == [0, 1, 2]  # in order; cancelled and failed jobs left no result
    # a job waiting when the server stops runs after the next start
    later = q.submit("w", {"n": 7, "steps": 1000, "sleep": 0.01})
    q.wait(later.id, 10, until=lambda j: j.state == "running")
    q.stop()
    assert later.state == "queued"
    q2 = JobQueue({"w": work}, state_dir=tmp_path)
    assert q2.get(later.id).state == "queued" and q2.get(jobs[0].id).state == DONE
    q2.runners["w"] = lambda job, ctx: {"n": job.params["n"]}
    q2.start()
    assert q2.wait(later.id, 10).result == {"n": 7}
    q2.stop()
    assert JobCancelled  # the runner's way to say "stopped"
