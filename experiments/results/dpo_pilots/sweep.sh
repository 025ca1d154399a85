#!/usr/bin/env bash
# one round on push, the same round-0 pairs (collected once by the shipped base) for every setting
cd /work/main
P=runs/bench_dpo/push/diffusion-dpo/seed0/prefs/round_000.hdf5
for spec in "diffusion-dpo 100 1e-5" "diffusion-dpo 100 1e-4" "diffusion-dpo 500 1e-5" "filtered-bc 1 1e-5" "filtered-bc 1 1e-4" "diffusion-dpo 20 1e-5"; do
  set -- $spec
  out=runs/dpo_sweep/$1_b$2_lr$3
  [ -f $out/final_eval.json ] && continue
  rm -rf $out
  OMP_NUM_THREADS=1 .venv/bin/python -m dpft.finetune.cli finetune dpo --base shipped:metaworld-push-v3 --prefs $P --rounds 1 \
    --loss $1 --beta $2 --lr $3 --steps-per-round 500 --eval-episodes 50 --envs 32 --out $out --no-progress 2>&1 | grep -E "round|error"
done
for spec in "d3po 10 1e-5" "d3po 10 1e-4"; do
  set -- $spec
  out=runs/dpo_sweep/$1_b$2_lr$3
  [ -f $out/final_eval.json ] && continue
  rm -rf $out
  OMP_NUM_THREADS=1 .venv/bin/python -m dpft.finetune.cli finetune dpo --base shipped:metaworld-push-v3 --sampler stochastic --rounds 1 \
    --states 32 --streams 4 --loss $1 --beta $2 --lr $3 --steps-per-round 500 --eval-episodes 50 --envs 32 --out $out --no-progress 2>&1 | grep -E "round|error"
done
