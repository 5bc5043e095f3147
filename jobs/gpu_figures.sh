#!/usr/bin/env bash
# The GPU figures of sda's speed targets in one command, about two minutes on an H200:
#
#     bash jobs/gpu_figures.sh
#
# Run it from anywhere with the project on PYTHONPATH and, on the Python found first in PATH,
# torch (CUDA) and torchaudio, numpy, tqdm, pytest, pyyaml, joblib, hydra-core, omegaconf,
# soundfile. Steps, each under its own time limit (a step that fails or runs out of time says so
# and the next one runs):
#   1. the GPU tests of the device paths (the chain kernel, metrics and pictures) and the
#      determinism bounds of a render against the CPU's and alone against in a batch;
#   2. `sda.bench --end-to-end`: 1024 x 10 s mono, 1024 x 10 s dual_seed, one 600 s latent_interp
#      file, each beside its pipeline-only figure, with where the wall time went
#      (targets: 2000, 1200 and 300 audio s/s end to end);
#   3. the plan of a 2000-file night at 96 kHz dual_seed with its estimate from those figures.
# Runs write into a temporary folder, removed at the end; the bench's JSON goes to bench/.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
work=$(mktemp -d)
export SDA_CACHE_DIR="$work/cache"  # the estimate in step 3 comes from step 2's figures only
trap 'rm -rf "$work"' EXIT
mkdir -p bench

step() {
    local limit=$1
    shift
    echo
    echo "== $* (limit ${limit} s)"
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    echo "== status $? after $((SECONDS - started)) s"
}

python - <<'EOF'
import os, platform, torch
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "missing: the locked start's chain runs in torch (slow for long files)"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, Triton {triton_version}")
print(f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device'}, "
      f"{len(os.sched_getaffinity(0))} cores, {platform.platform()}")
EOF

step 150 python -m pytest -o addopts="--strict-markers" -q -p no:cacheprovider -m gpu -s tests/test_gpu.py \
    -k "chain_kernel or metrics_and_report or exact_length or alone_is_near"
bench=(python -m sda.bench --end-to-end --device cuda --work-dir "$work" --timeout-s 120)
step 75 "${bench[@]}" --seeds 1024 --duration-s 10 --stereo mono --pipeline-seeds 256 --output bench/gpu-mono.json
step 100 "${bench[@]}" --seeds 1024 --duration-s 10 --stereo dual_seed --pipeline-seeds 256 \
    --output bench/gpu-dual_seed.json
step 75 "${bench[@]}" --seeds 1 --duration-s 600 --chunking latent_interp --stereo mono --pipeline-seeds 1 \
    --output bench/gpu-600s.json
step 40 python -m sda.run count=2000 stereo=dual_seed export.sample_rate=96000 device=cuda dry_run=true
