#!/usr/bin/env bash
# Start the ACE-Step MLX app (web page + REST API) on a Mac with Apple Silicon.
#
#   scripts/start_macos.sh             # http://127.0.0.1:7865
#   scripts/start_macos.sh --demo      # tiny random demo checkpoint (no download; noise)
#
# What it does: checks the machine (Apple Silicon; Linux is accepted for testing) and Python
# (3.10+), creates or reuses a virtual environment (.venv, or $VENV), installs the package with
# its app extra (again only when pyproject.toml changed), reads .env, downloads and converts the
# weights on the first run (progress bars), then starts `app.py`.
#
# .env (KEY=VALUE lines; the environment wins over the file):
#   PORT=7865                    port to listen on
#   SERVER_NAME=127.0.0.1        0.0.0.0 to reach the app from your network (set a key then)
#   ACESTEP_API_KEY=...          require this key on the API (and as the page's password)
#   CHECKPOINT=...               checkpoint folder or hub repo id; "demo" for the demo one
# Other variables: PYTHON (interpreter to use), VENV (environment folder), ENV_FILE (.env path).
# Extra arguments are passed to app.py (see `python app.py --help`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- the machine
OS="$(uname -s)"
ARCH="$(uname -m)"
if [[ "$OS" == "Darwin" ]]; then
  if [[ "$ARCH" != "arm64" ]]; then
    if [[ "$(sysctl -n sysctl.proc_translated 2>/dev/null || echo 0)" == "1" ]]; then
      die "this shell runs under Rosetta (x86_64 emulation). Open a native arm64 terminal (or run: arch -arm64 $0)"
    fi
    die "MLX needs a Mac with Apple Silicon (M1 or newer); this Mac is $ARCH"
  fi
elif [[ "$OS" == "Linux" ]]; then
  say "note: Linux detected: running on the CPU build of MLX (slow; meant for testing)"
else
  die "unsupported system $OS: this script is for macOS on Apple Silicon (and Linux for testing)"
fi

# ---------------------------------------------------------------- .env
ENV_FILE="${ENV_FILE:-$ROOT/.env}"
read_env() {  # read_env KEY: the value of KEY in .env (no shell evaluation of the file)
  [[ -f "$ENV_FILE" ]] || return 0
  local line
  line="$(grep -E "^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=" "$ENV_FILE" | tail -n 1 || true)"
  [[ -n "$line" ]] || return 0
  line="${line#*=}"
  line="${line%%[[:space:]]#*}"
  line="$(printf '%s' "$line" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')"
  line="${line%\"}"; line="${line#\"}"; line="${line%\'}"; line="${line#\'}"
  printf '%s' "$line"
}
PORT="${PORT:-$(read_env PORT)}"
PORT="${PORT:-7865}"
SERVER_NAME="${SERVER_NAME:-$(read_env SERVER_NAME)}"
SERVER_NAME="${SERVER_NAME:-127.0.0.1}"
CHECKPOINT="${CHECKPOINT:-$(read_env CHECKPOINT)}"
if [[ -z "${ACESTEP_API_KEY:-}" ]]; then
  ACESTEP_API_KEY="$(read_env ACESTEP_API_KEY)"
fi
export ACESTEP_API_KEY
if ! [[ "$PORT" =~ ^[1-9][0-9]{0,4}$ ]] || (( PORT > 65535 )); then
  die "PORT=$PORT is not a port number (1-65535); fix it in $ENV_FILE"
fi

DEMO=0
for arg in "$@"; do [[ "$arg" == "--demo" ]] && DEMO=1; done
[[ "$CHECKPOINT" == "demo" ]] && DEMO=1

# ---------------------------------------------------------------- Python
find_python() {
  local candidates=("${PYTHON:-}" python3.12 python3.11 python3.10 python3.13 python3)
  local py
  for py in "${candidates[@]}"; do
    [[ -n "$py" ]] || continue
    command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        >/dev/null 2>&1; then
      if [[ "$OS" == "Darwin" ]] && \
          [[ "$("$py" -c 'import platform; print(platform.machine())')" != "arm64" ]]; then
        continue  # an x86_64 Python cannot load MLX
      fi
      command -v "$py"
      return 0
    fi
  done
  return 1
}
PY="$(find_python)" || die "no usable Python found: install Python 3.10 or newer for arm64 \
(e.g. 'brew install python@3.12' or python.org), or set PYTHON=/path/to/python3"
say "python: $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"

# ---------------------------------------------------------------- virtual environment
VENV="${VENV:-$ROOT/.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating the virtual environment $VENV"
  "$PY" -m venv "$VENV" || die "could not create $VENV (on Debian/Ubuntu: apt-get install python3-venv)"
fi
VPY="$VENV/bin/python"
"$VPY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "$VENV holds a Python older than 3.10: delete it and run again"

STAMP="$VENV/.acestep_mlx_installed"
WANT="$("$VPY" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$ROOT/pyproject.toml")"
if [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]] || ! "$VPY" -c 'import acestep_mlx, gradio, uvicorn' >/dev/null 2>&1; then
  say "installing acestep_mlx and the app's dependencies into $VENV (first run: a few minutes)"
  "$VPY" -m pip install --upgrade --disable-pip-version-check pip >/dev/null \
    || die "pip does not work in $VENV"
  "$VPY" -m pip install --disable-pip-version-check -e "${ROOT}[app]" \
    || die "installing the package failed (see the messages above)"
  printf '%s' "$WANT" > "$STAMP"
else
  say "virtual environment up to date: $VENV"
fi

# ---------------------------------------------------------------- the port
if ! "$VPY" - "$SERVER_NAME" "$PORT" <<'PYEOF'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((host, port))
except OSError:
    sys.exit(1)
finally:
    s.close()
PYEOF
then
  die "port $PORT on $SERVER_NAME is already in use (is the app already running?). Pick another \
port: PORT=$((PORT + 1)) $0   (or set PORT=$((PORT + 1)) in $ENV_FILE)"
fi

# ---------------------------------------------------------------- weights (first run)
APP_ARGS=(--server_name "$SERVER_NAME" --port "$PORT")
WEIGHT_ARGS=()
if (( DEMO )); then
  WEIGHT_ARGS+=(--demo)
  [[ " $* " == *" --demo "* ]] || APP_ARGS+=(--demo)
elif [[ -n "$CHECKPOINT" ]]; then
  WEIGHT_ARGS+=(--checkpoint "$CHECKPOINT")
  APP_ARGS+=(--checkpoint "$CHECKPOINT")
fi
say "preparing the weights (downloaded and converted once, then cached) ..."
"$VPY" -m acestep_mlx.app.weights ${WEIGHT_ARGS[@]+"${WEIGHT_ARGS[@]}"} \
  || die "the weights are not ready (see above); offline? set CHECKPOINT=/path/to/ACE-Step-v1-3.5B in $ENV_FILE"

# ---------------------------------------------------------------- start
if [[ -n "$ACESTEP_API_KEY" ]]; then
  say "API key: required (from ACESTEP_API_KEY)"
elif [[ "$SERVER_NAME" != "127.0.0.1" && "$SERVER_NAME" != "localhost" ]]; then
  say "warning: SERVER_NAME=$SERVER_NAME without ACESTEP_API_KEY: anyone on your network can use the app"
fi
say "starting the app on http://$SERVER_NAME:$PORT (Ctrl+C stops it)"
exec "$VPY" "$ROOT/app.py" "${APP_ARGS[@]}" "$@"
