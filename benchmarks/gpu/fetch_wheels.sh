#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (it reaches no registry) into DEST (default .whl,
# git-ignored through .git/info/exclude). PYVER is the device's Python (3.12 there; 3.11 for a
# dry run on this machine). One version of each; ~12 MB in all.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DEST="${DEST:-.whl}" PYVER="${PYVER:-3.12}"
grep -qs '^/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
WHEELS=(
    grpcio==1.85.3 protobuf==7.36.2 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1
    grpcio-status==1.85.3 googleapis-common-protos==1.76.0 structlog==26.1.0
    hdrhistogram==0.10.8 pbr==7.1.3 asyncio-throttle==1.0.2 typing_extensions==4.16.0
    # The strict JPEG decode (engines/jpeg.py) and the REST endpoint server/app.py imports.
    simplejpeg==1.9.0 aiohttp==3.14.5 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 attrs==26.1.0
    frozenlist==1.8.0 multidict==7.2.1 propcache==0.5.4 yarl==1.25.1 idna==3.20
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 any; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${platforms[@]}" -d "$DEST" "${WHEELS[@]}"
ls -la "$DEST"
