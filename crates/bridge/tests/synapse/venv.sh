#!/usr/bin/env bash
# Creates (once) the Python virtual environment with a pinned Synapse that the Matrix bridge's
# integration test runs (crates/cli/tests/bridge_matrix.rs). Prints the venv's python path.
#   usage: venv.sh [--check]   (venv: $CAIRN_SYNAPSE_VENV, default ~/.cache/cairn/synapse-venv-$VERSION)
#   --check: only print the python path if the venv is ready, else exit 1 (installs nothing).
set -euo pipefail
SYNAPSE_VERSION="1.163.2"
VENV="${CAIRN_SYNAPSE_VENV:-$HOME/.cache/cairn/synapse-venv-$SYNAPSE_VERSION}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import synapse, sys; sys.exit(0 if synapse.__version__ == '$SYNAPSE_VERSION' else 1)" 2>/dev/null; then
  echo "$VENV/bin/python"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  exit 1
fi
# A real interpreter, not a pyenv shim (a shim in front of a long-running server leaves the
# server behind when the shim is killed).
PY=""
for cand in /usr/bin/python3 "$(command -v python3 || true)"; do
  if [ -n "$cand" ] && [ -x "$cand" ] && "$cand" -c "import venv, ensurepip" 2>/dev/null; then PY="$cand"; break; fi
done
if [ -z "$PY" ]; then
  echo "venv.sh: no python3 with the venv module; install it (apt-get install -y python3-venv)" >&2
  exit 1
fi
mkdir -p "$(dirname "$VENV")"
rm -rf "$VENV"
"$PY" -m venv "$VENV" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION" >&2
echo "$VENV/bin/python"
