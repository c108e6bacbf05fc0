#!/usr/bin/env bash
# Creates .cache/benchenv, the Python virtual environment of `medgen bench curate`'s baseline
# (scripts/bench/curate_baseline.py: PySceneDetect + OpenCV), from PyPI with pip. Every package,
# transitive ones included, is pinned to one version and installed with --no-deps, so the set is
# exactly this list. scenedetect 0.7 declares a dependency on the GUI build `opencv-python`; the
# same OpenCV as the headless wheel (`opencv-python-headless`, no X11/Qt libraries) is installed
# instead, which is why dependencies are not resolved by pip. Idempotent: a venv whose installed
# set already matches the pins is left alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
VENV=.cache/benchenv
PINS=(
  scenedetect==0.7.2
  opencv-python-headless==5.0.0.93
  numpy==2.4.6
  click==8.2.1
  platformdirs==4.14.8
  tqdm==4.70.1
)
log() { printf '\033[1m[benchenv]\033[0m %s\n' "$*" >&2; }

want=$(printf '%s\n' "${PINS[@]}" | tr 'A-Z_' 'a-z-' | sort)
if [ -x "$VENV/bin/python" ]; then
  have=$("$VENV/bin/python" -m pip freeze --all 2>/dev/null | tr 'A-Z_' 'a-z-' | grep -vE '^(pip|setuptools|wheel)==' | sort || true)
  if [ "$have" = "$want" ]; then
    log "$VENV is up to date"
    exit 0
  fi
  log "$VENV differs from the pins; reinstalling the pinned set"
else
  command -v python3 >/dev/null || { log "python3 is needed (apt-get install python3-venv)"; exit 1; }
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${PINS[@]}"
# Remove anything not in the pin list (e.g. left over from an earlier pin set).
extra=$("$VENV/bin/python" -m pip freeze --all | tr 'A-Z_' 'a-z-' | grep -vE '^(pip|setuptools|wheel)==' | sort \
  | comm -23 - <(printf '%s\n' "$want") | cut -d= -f1 || true)
if [ -n "$extra" ]; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip uninstall --quiet -y $extra
fi
"$VENV/bin/python" -c 'import cv2, numpy, scenedetect; print("[benchenv] scenedetect", scenedetect.__version__, "opencv", cv2.__version__, "numpy", numpy.__version__)' >&2
log "ready: $VENV/bin/python scripts/bench/curate_baseline.py FILES..."
