#!/usr/bin/env bash
# Train the models of the cascade benchmark for equal total wall-clock, then measure them: a direct
# 32x32 model, the 16 -> 32 cascade (its 16 -> 32 stage with and without noise-conditioning
# augmentation) and the 8 -> 16 -> 32 cascade, which shares that 16 -> 32 stage (budgets below).
# Each run is stopped by SIGTERM at its budget, which saves the step in progress (exit 143).
#
#   S=600 WIDTH=small bash benchmarks/train_cascade_fashionmnist.sh      # S: seconds of the 16 -> 32 SR stage
set -u
S=${S:-600}
WIDTH=${WIDTH:-small}
OUT=${OUT:-workdirs/cascade_bench}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"
train() {  # workdir, seconds, config
  timeout -s TERM "$2" python main.py --mode train --config "$3" --workdir "$OUT/$1" $EXTRA \
    --config.training.n_iters=100000000 --config.training.snapshot_freq=100000000 > "$OUT/$1.log" 2>&1
  echo "$1: $(ls -v "$OUT/$1/checkpoints" 2>/dev/null | tail -n 1)"
}
# Budgets: the 16 -> 32 cascade gets S / 2 (base) + S (SR) = 1.5 S; the direct model the same 1.5 S;
# the 8 -> 16 -> 32 cascade S / 4 (base) + S / 4 (8 -> 16) + S (the shared 16 -> 32 stage) = 1.5 S.
train base16 $((S / 2)) "configs/fashionmnist_vp_ddpmpp_16.py:$WIDTH"
train sr_aug "$S" "configs/fashionmnist_vp_ddpmpp_sr.py:$WIDTH"
train sr_plain "$S" "configs/fashionmnist_vp_ddpmpp_sr.py:$WIDTH,noaug"
train direct32 $((3 * S / 2)) "configs/fashionmnist_vp_ddpmpp.py:$WIDTH"
train base8 $((S / 4)) "configs/fashionmnist_vp_ddpmpp_16.py:$WIDTH,size8"
train sr8 $((S / 4)) "configs/fashionmnist_vp_ddpmpp_sr.py:$WIDTH,from8"
python benchmarks/bench_cascade_fashionmnist.py --base "$OUT/base16" --sr aug="$OUT/sr_aug" --sr plain="$OUT/sr_plain" \
  --direct direct="$OUT/direct32" --chain c16="$OUT/base16,$OUT/sr_aug" --chain c8="$OUT/base8,$OUT/sr8,$OUT/sr_aug" \
  ${BENCH_ARGS:-}
