#!/usr/bin/env bash
# Download the wheels of gpu/wheels.txt into .whl/ (git-ignored), for the device tool's `carry`.
# The lent machine runs Python 3.12 on x86-64 and has no network: wheels only, no dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 any; do platforms+=(--platform "$p"); done
grep -v '^\s*#' gpu/wheels.txt | grep -v '^\s*$' | while read -r spec; do
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
         "${platforms[@]}" -d .whl "$spec"; then
    python3 -m pip wheel -q --no-deps -w .whl "$spec"  # a pure-Python sdist (fira): build its wheel here
  fi
done
# bitsandbytes carries a library per CUDA/ROCm/XPU release (43 MB packed); the image's torch is
# built for CUDA 13, so only the CUDA 13 and CPU builds travel (7 MB).
python3 gpu/slim_wheel.py .whl/bitsandbytes-*.whl 'libbitsandbytes_cuda13*.so' 'libbitsandbytes_cpu.so'
ls -l .whl
tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{s+=$1} END {print s}')
wheels=$(du -sb .whl | cut -f1)
echo "travels: $tracked bytes tracked + $wheels bytes of wheels = $((tracked + wheels))" \
     "(the device tool takes 64 MiB = 67108864 bytes)"
if [ $((tracked + wheels)) -gt 67108864 ]; then echo "gather_wheels: over the device tool's limit" >&2; exit 1; fi
