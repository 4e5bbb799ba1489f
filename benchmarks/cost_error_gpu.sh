#!/usr/bin/env bash
# The cost-error benchmark on a GPU, with larger ladders (5 levels, batch 256).
# Results land beside the CPU ones as benchmarks/results/cost_error_<problem>_gpu.json
# (and .png), with the machine, versions and seed recorded in each file.
#
#   bash benchmarks/cost_error_gpu.sh            # needs an NVIDIA GPU and CUDA 12 drivers
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -e . "jax[cuda12]"
python -c "import jax; assert jax.default_backend() == 'gpu', jax.devices()"
python benchmarks/cost_error.py --large --gamma 2.5 3 4 "$@"
