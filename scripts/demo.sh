#!/usr/bin/env bash
# README's first command: set up, then run the end-to-end demo on a generated scene.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/geoseg demo "$@"
