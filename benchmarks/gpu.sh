#!/usr/bin/env bash
# The encode benchmark on a CUDA GPU, fp32 and bf16, in one short run (well under 8 minutes).
# Run from the repository root on a machine whose python has a CUDA build of torch:
#   bash benchmarks/gpu.sh
set -euo pipefail
PY=${PY:-python3}
"$PY" -m pip install -q --no-deps -e .
"$PY" -m pip install -q tokenizers safetensors pyarrow tqdm 'transformers>=4.45' 2>/dev/null || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
for dtype in float32 bfloat16; do
  "$PY" benchmarks/encode.py --device cuda --dtype "$dtype" --passages 2000 --dim 65536 \
    --batch-tokens 65536 --repeats 3
done
