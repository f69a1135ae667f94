#!/usr/bin/env bash
# On a CUDA GPU, in one short run (well under 8 minutes): encodings there against float32 on the
# CPU plus the automatic token budget (gpu_check.py), then the encode benchmark in float32 and
# bfloat16. Needs a python with a CUDA build of torch, transformers and tokenizers; factrace runs
# from src/ (nothing is installed):
#   bash benchmarks/gpu.sh
set -euo pipefail
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$PY" benchmarks/gpu_check.py --device cuda
for dtype in float32 bfloat16; do
  "$PY" benchmarks/encode.py --device cuda --dtype "$dtype" --passages 2000 --dim 65536 \
    --batch-tokens 65536 --repeats 3
done
