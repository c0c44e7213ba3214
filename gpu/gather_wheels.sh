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
ls -l .whl
du -sh .whl
echo "travels with the repository: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes tracked" \
     "+ $(du -sb .whl | cut -f1) bytes of wheels (the device tool takes 64 MiB = 67108864 bytes)"
