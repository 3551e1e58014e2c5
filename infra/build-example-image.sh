#!/usr/bin/env bash
# Build the example software's OCI image on this host (no registry) and write the example
# pipeline spec pinned to its digest. Installs Debian's podman, runc and debootstrap if
# they are missing. Cached: when nothing the image is made from changed, it only re-tags.
#   infra/build-example-image.sh [PYTHON] [SPEC_OUT]
# PYTHON: the interpreter whose installed packages the image copies (default .venv's).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"
spec_out="${2:-examples/specs/generated/chai-demo-podman.yaml}"

missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "[image] installing ${missing[*]} from Debian"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
exec "$python" -m infra.example_image --spec-out "$spec_out"
