#!/usr/bin/env bash
# Create .venv (if missing) and install geoseg with its test extra, pinned by
# constraints.txt. Idempotent: does nothing when the install is up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
[[ -n "$PY" ]] || { echo "setup: need Python >= 3.11" >&2; exit 1; }
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [[ "$(cat .venv/.geoseg-stamp 2>/dev/null)" != "$stamp" ]]; then
  echo "setup: installing geoseg and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]' 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c 'import geoseg, ray, torch, rasterio, zarr, segmentation_models_pytorch, moto, onnxruntime, geopandas, pyogrio, rio_tiler, ukis_csmask' \
    || { echo "setup: install failed" >&2; exit 1; }
  echo "$stamp" > .venv/.geoseg-stamp
fi
# A headless Chromium for the test that looks at geoseg view as a person would (Debian's package;
# nothing of geoseg's own needs it). Where apt-get cannot run, that one test says so and skips.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && command -v apt-get >/dev/null \
   && [[ "$(id -u)" == 0 ]]; then
  echo "setup: installing chromium (headless browser for tests/test_view.py)"
  (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
    apt-get install -y -q chromium >/dev/null 2>&1; }) || echo "setup: chromium could not be installed" >&2
fi
# SLURM (Debian's slurm-wlm and munge) for tests/test_slurm.py, which starts its own slurmctld and slurmd
# on loopback and submits cluster/slurm/geoseg.sbatch to them.
if [[ ! -x /usr/sbin/slurmctld || ! -x /usr/sbin/munged ]] && command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
  echo "setup: installing slurm-wlm and munge (a real SLURM for tests/test_slurm.py)"
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1; }) \
    || echo "setup: slurm-wlm could not be installed" >&2
fi
