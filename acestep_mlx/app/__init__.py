"""The ACE-Step MLX app: a Gradio web page and a REST API on one server (`python app.py`).

Modules: `server` (FastAPI routes, `create_app`), `ui` (the Gradio page), `service` (folders,
the job queue's runners, request checks), `jobs` (the queue), `security` (API key, names,
paths), `uploads` (streaming multipart with limits), `history` (past generations),
`training` (the trainer as a child process), `weights` (download + convert before start).
"""
