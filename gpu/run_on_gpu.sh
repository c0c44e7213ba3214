#!/usr/bin/env bash
# The one command on a lent GPU machine (results/gpu/README.md): the image's python3 and torch,
# the carried wheels (.whl/), the project from this checkout, then optbench.gpu_check.
# Arguments go to `python -m optbench.gpu_check`. Results: results/gpu/, and $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "run_on_gpu: installing the carried wheels failed" >&2; exit 2; }
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir -e . \
  || { echo "run_on_gpu: installing the checkout (editable, offline) failed" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
# Records go to .gpu_runs/ (git-ignored, so a warm machine keeps them for a rerun), seeded from
# results/gpu/runs/ (what an earlier run brought back and was committed), and come back in $OUT.
mkdir -p .gpu_runs results/gpu/runs
cp -rn results/gpu/runs/. .gpu_runs/
python3 -m optbench.gpu_check --runs-dir .gpu_runs "$@"
code=$?
if [ -n "${OUT:-}" ]; then
  cp results/gpu/GPU_CHECK.md results/gpu/gpu_check.csv "$OUT"/ 2>/dev/null
  tar czf "$OUT/gpu_runs.tgz" .gpu_runs
fi
exit $code
