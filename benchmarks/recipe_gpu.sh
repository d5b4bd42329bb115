#!/usr/bin/env bash
# The recipe ablation (benchmarks/recipe.py) and the final-recipe models for MNIST and
# Fashion-MNIST on one GPU, within about 10 minutes, everything written under $OUT (issue 15).
# NOT RUN YET: written on a session without a device; the first device session must check the
# timings (a dry run on the CPU: DRY=1 bash benchmarks/recipe_gpu.sh) and tune PAR/STEPS.
#
# Prepare once on the CPU machine (the device has no network and starts bare):
#   mkdir -p runs/gpu_carry/fashion-mnist
#   cp ~/.cache/difflab/mnist.npz runs/gpu_carry/           # difflab data prepare mnist
#   cp /usr/share/datasets/fashion-mnist/*.gz runs/gpu_carry/fashion-mnist/   # apt dataset-fashion-mnist
#   cp -r ~/.cache/difflab/refstats runs/gpu_carry/         # fd-lenet reference statistics
#   omegaconf (+ antlr4-python3-runtime, PyYAML) as wheels in .whl/, see the device README
# Run (device tool): carry [".whl", "runs/gpu_carry"], command
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site bash benchmarks/recipe_gpu.sh
# Inception FID: the TorchScript (87 MB) exceeds one call's 64 MiB carry. Either carry it in two
# halves on a warm machine (split -b 44M; cat; sha256 as in results/mnist_10k/protocol.md) and
# set FID=1, or score the saved samples afterwards on the CPU:
#   python benchmarks/recipe.py --fid-only --out results/recipe/mnist --runs <runs folder>
# Fetched files (at most 8, 16 MiB each): recipe_<dataset>.tar.gz (results + logs),
# <dataset>_uvit.safetensors + .json (final EMA weights, provenance), final_samples.tar.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/recipe_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
[ -d runs/gpu_carry ] && export DIFFLAB_DATA="$PWD/runs/gpu_carry"
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -d runs/gpu_carry/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && cp -r runs/gpu_carry/fashion-mnist /usr/share/datasets/
fi
PY=${PY:-python3}
$PY -c "import omegaconf, safetensors, einops" ||
  { echo "recipe_gpu.sh: missing packages (carry omegaconf wheels, see the header)"; exit 2; }

DEVICE=${DEVICE:-cuda}
LABEL=${LABEL:-$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-') if torch.cuda.is_available() else 'cpu')")}
DATASETS=${DATASETS:-mnist fashion_mnist}
STEPS=${STEPS:-2000}             # per ablation row, batch 256 (configs/recipe_<dataset>.yaml)
PAR=${PAR:-5}                    # ablation processes per dataset sharing the GPU
NUM=${NUM:-10000}                # samples per sampler for fd-lenet
ROWS=${ROWS:-all}
SEED1_ROWS=${SEED1_ROWS:-sig-2,sig+1,sig0,v_mse,eps_mse,shifted,multiscale,residual_uvit}
FINAL_STEPS=${FINAL_STEPS:-40000}
FINAL_MINUTES=${FINAL_MINUTES:-6} # the final runs stop here with a checkpoint (train.max_minutes)
# the final recipe: the pilot's choice until the GPU ablation says otherwise
FINAL_OVERRIDES=${FINAL_OVERRIDES:-"optim.ema_decays=[0.9999,0.999] optim.ema_warmup=true train.compile=auto"}
FID_FLAG=""; [ "${FID:-0}" = 1 ] && FID_FLAG="--fid"
EXTRA=()
if [ "${DRY:-0}" = 1 ]; then         # a CPU dry run of the whole script in about a minute per row
  DEVICE=cpu; LABEL=cpu-dry; STEPS=4; NUM=50; FINAL_STEPS=4; PAR=1; ROWS=sig-2,v_mse
  SEED1_ROWS=sig-2; FINAL_OVERRIDES="train.compile=false"
  EXTRA=(--elbo-num 20 --batch 50)
fi
RUNS=${RUNS:-runs/recipe_gpu}
RESULTS=${RESULTS:-results/recipe}
[ "${DRY:-0}" = 1 ] && RESULTS="$RUNS/results"
LOGS="$RUNS/logs"
mkdir -p "$LOGS"
start=$(date +%s)

final_pids=()
for ds in $DATASETS; do             # the final models train beside the ablation
  cmd="$PY -m difflab.train configs/recipe_$ds.yaml train.steps=$FINAL_STEPS train.max_minutes=$FINAL_MINUTES train.ckpt_every=2000 train.out_dir=$RUNS/final_$ds $FINAL_OVERRIDES"
  echo "$cmd" > "$LOGS/final_$ds.cmd"
  ( t0=$(date +%s); $cmd > "$LOGS/final_$ds.log" 2>&1; echo $(( $(date +%s) - t0 )) > "$LOGS/final_$ds.wall" ) &
  final_pids+=($!)
done

ablation() {  # dataset, rows, seeds: PAR processes share the GPU, each every PAR-th row
  local pids=() i
  for i in $(seq 0 $((PAR - 1))); do
    $PY benchmarks/recipe.py --config "configs/recipe_$1.yaml" --rows "$2" --seeds "$3" \
      --shard "$i/$PAR" --device "$DEVICE" --num "$NUM" --batch 2500 $FID_FLAG \
      --out "$RESULTS/$1" --runs "$RUNS/$1" --machine-name "$LABEL" \
      --set "train.steps=$STEPS" "${EXTRA[@]}" \
      --title "$1 28x28, U-ViT 1.28M, $STEPS steps x 256 per row" >> "$LOGS/ablation_$1.log" 2>&1 &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
}
for seeds_rows in "0:$ROWS" "1:$SEED1_ROWS"; do
  pids=()
  for ds in $DATASETS; do ablation "$ds" "${seeds_rows#*:}" "${seeds_rows%%:*}" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
done
for p in "${final_pids[@]}"; do wait "$p"; done
echo "ablation + final training: $(( $(date +%s) - start )) s"

for ds in $DATASETS; do
  $PY benchmarks/recipe.py --final "$RUNS/final_$ds" --export "$OUT/${ds}_uvit.safetensors" \
    --final-command "$(cat "$LOGS/final_$ds.cmd")" --final-wall "$(cat "$LOGS/final_$ds.wall")" \
    --device "$DEVICE" --num "$NUM" --batch 2500 --save-samples $FID_FLAG \
    --out "$RESULTS/$ds" --config "configs/recipe_$ds.yaml" --machine-name "$LABEL" \
    "${EXTRA[@]}" >> "$LOGS/final_$ds.log" 2>&1
  tar czf "$OUT/recipe_$ds.tar.gz" "$RESULTS/$ds" "$LOGS"/*_"$ds".*
done
tar cf "$OUT/final_samples.tar" "$RUNS"/final_*/final_*.npz
echo "total: $(( $(date +%s) - start )) s"
ls -la "$OUT"
