# Sourced by the scripts that run on a machine other than this one (a lent GPU machine): picks the
# Python, puts this checkout's fkt first on the path, and installs fkt's other packages aside from
# wheels carried in .whl where that machine lacks them (pip download --no-deps ...; see
# /work/.library/device). Sets REPO and PY.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"
else PY="$(command -v python3 || command -v python)"; fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # fkt from this checkout, installed or not
if [[ -d "$REPO/.whl" ]] && ! "$PY" -c 'import lightly, pytorch_lightning, kornia, captum, pydantic' 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fkt-site \
    "$REPO"/.whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/fkt-site"
fi
export PYTHONUNBUFFERED=1
