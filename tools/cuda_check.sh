#!/usr/bin/env bash
# The CUDA paths on a GPU machine, in minutes: build with `--features cuda`, run the diffusion
# and TAESD tests on the GPU build, then bench one in-process SD-Turbo keyframe on cuda:0 (f16).
# It has NOT been run yet: no GPU was available when it was written (see README, Dreaming in
# process). It needs the CUDA toolkit (nvcc, cicc/NVVM, and the runtime headers such as
# cuda_runtime.h and cuda_fp16.h). The PyPI `nvidia-cuda-nvcc` wheel alone is not enough: it has
# nvcc and ptxas but no NVVM and no runtime headers.
# Usage: tools/cuda_check.sh [COMPUTE_CAP]   (default 90, Hopper; 89 Ada, 86 Ampere, 80 A100)
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_COMPUTE_CAP="${1:-${CUDA_COMPUTE_CAP:-90}}"
target="${CARGO_TARGET_DIR:-target}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
time cargo build --release --features cuda
cargo test --release --features cuda --lib -- diffusion taesd
config="$(mktemp --suffix .toml)"
trap 'rm -f "$config"' EXIT
printf '[generation]\ndevice = "cuda:0"\n[diffusion]\ndtype = "f16"\n' > "$config"
for size in "512 256" "512 512"; do
    set -- $size
    "$target/release/dreamd" bench diffusion --config "$config" --model sd-turbo \
        --width "$1" --height "$2" --runs 5
done
"$target/release/dreamd" bench diffusion --config "$config" --model sdxl-turbo \
    --width 512 --height 512 --runs 5
