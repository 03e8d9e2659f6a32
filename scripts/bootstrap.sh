#!/usr/bin/env bash
# Create .venv in the repository (if missing) and install into it, in this order:
#   1. a matching torch + torchvision pair (default: torch==2.14.1 torchvision==0.29.1),
#   2. this project, editable, with the extras the tests need ([test,baselines]: pytest and MONAI; the demo
#      needs nothing beyond the core dependencies).
# Idempotent: a stamp in .venv records what was installed; a re-run with the same pyproject.toml and the same
# settings returns at once. Re-installs when either changes, or when forced with LIGHTMEDSEG_FORCE=1.
#
# Settings (environment variables):
#   PYTHON               the interpreter that creates .venv (default: python3; Python >= 3.10)
#   LIGHTMEDSEG_TORCH    the pip arguments that install torch and torchvision, e.g. for a CUDA build:
#                        LIGHTMEDSEG_TORCH="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu128"
#                        Keep the two a matching pair: a torchvision built for another torch breaks nnU-Net's
#                        trainer lookup ("operator torchvision::nms does not exist").
#   LIGHTMEDSEG_EXTRAS   the project's extras (default: test,baselines), e.g. "test,baselines,benchmarks"
#   LIGHTMEDSEG_FORCE=1  re-install even when the stamp matches
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
TORCH_ARGS="${LIGHTMEDSEG_TORCH:-torch==2.14.1 torchvision==0.29.1}"
EXTRAS="${LIGHTMEDSEG_EXTRAS:-test,baselines}"
VENV=.venv
STAMP="$VENV/.lightmedseg-bootstrap"

log() { echo "[bootstrap] $*" >&2; }
# pip warns about every missing folder of a machine-wide local package index; keep the rest of its output
quiet_pip() {
    COLUMNS=1000 "$VENV/bin/python" -m pip --disable-pip-version-check --quiet "$@" 2>&1 \
        | { grep -v "^WARNING: Location 'file://.*' is ignored: it is neither a file nor a directory" || true; }
}

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        log "error: $PYTHON is missing or older than Python 3.10; set PYTHON=/path/to/python3.10+"
        exit 1
    fi
    log "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

wanted="torch: $TORCH_ARGS
extras: $EXTRAS
pyproject: $(cksum < pyproject.toml)
python: $("$VENV/bin/python" --version 2>&1)"
check_imports() {  # prints torch's version when everything imports (a mismatched torchvision does not)
    "$VENV/bin/python" -c 'import torch, torchvision, nnunetv2, nnunetv2_lightmedseg; print(torch.__version__)'
}
if [ "${LIGHTMEDSEG_FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] \
        && version=$(check_imports 2>/dev/null); then
    log "$VENV is up to date (torch $version)"
    exit 0
fi

log "installing $TORCH_ARGS (can take a minute or more)"
# shellcheck disable=SC2086  # TORCH_ARGS is a list of pip arguments
quiet_pip install $TORCH_ARGS || { log "pip failed; retrying once"; quiet_pip install $TORCH_ARGS; }
log "installing this project editable, with extras [$EXTRAS]"
# one retry: a download from the package index can fail once and succeed the next time
quiet_pip install -e ".[$EXTRAS]" || { log "pip failed; retrying once"; quiet_pip install -e ".[$EXTRAS]"; }
version=$(check_imports) || { log "error: the installed packages do not import (see above)"; exit 1; }
echo "$wanted" > "$STAMP"
log "done: torch $version, nnunetv2-lightmedseg installed editable in $VENV"
