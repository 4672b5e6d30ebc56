#!/usr/bin/env bash
# Build geoseg's cluster image on Ray's images (cluster/docker/Dockerfile), and push it:
#   bash scripts/build-image.sh [cpu|gpu] [--push REGISTRY]
# Tags: geoseg:<version>-ray<ray>-<python>-<variant>, the tag cluster/kuberay/*.yaml and cluster/aws.yaml name
# (with --push: REGISTRY/geoseg:<tag>; put the registry in the manifests' image: fields too).
set -euo pipefail
cd "$(dirname "$0")/.."
variant="${1:-cpu}"
[[ "$variant" == cpu || "$variant" == gpu ]] || { echo "build-image: variant must be cpu or gpu" >&2; exit 2; }
shift || true
registry=""
if [[ "${1:-}" == --push ]]; then registry="${2:?build-image: --push needs a registry}"; fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
ray=$(sed -n 's/^ray==\(.*\)/\1/p' constraints.txt)
python=$(sed -n 's/^ARG PYTHON=\(.*\)/\1/p' cluster/docker/Dockerfile)
tag="geoseg:${version}-ray${ray}-${python}-${variant}"
docker build -f cluster/docker/Dockerfile --build-arg RAY_VERSION="$ray" --build-arg PYTHON="$python" \
  --build-arg VARIANT="$variant" -t "$tag" .
echo "built $tag"
if [[ -n "$registry" ]]; then
  docker tag "$tag" "$registry/$tag"
  docker push "$registry/$tag"
  echo "pushed $registry/$tag"
fi
