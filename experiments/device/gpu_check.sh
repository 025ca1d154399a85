#!/usr/bin/env bash
# CUDA check, run on a lent GPU machine (torch with CUDA preinstalled, no network). Wheels for
# the simulators travel in .whl (see experiments/device/README.md for the download line).
#
#   bash experiments/device/gpu_check.sh            # writes logs and tables to $OUT
#
# 1. every CLI path on --device $DEV (collect, train-bc, eval, finetune dsrl/residual/find/dppo/dpo,
#    prefs collect, eval of the artifacts), short budgets; 2. the fast test tier with a GPU
#    visible, so every `--device auto` in it resolves to cuda; 3. the speed benchmark on cuda.
# Each part has its own time limit, so one that hangs leaves the others their time.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
W=/tmp/gpu_work; rm -rf $W; mkdir -p $W
DEV=${DEV:-cuda}
DPFT="timeout 100 python3 -m dpft.finetune"
SHORT="--eval-every 1024 --eval-episodes 4 --final last --no-progress --device $DEV"
cli() {
  nvidia-smi -L; python3 -c "import torch, mujoco; print('torch', torch.__version__, torch.cuda.get_device_name(), 'mujoco', mujoco.__version__)"
  set -x
  $DPFT collect --task metaworld:push-v3 --episodes 4 --action-noise 0.3 --out $W/demos.hdf5
  $DPFT train-bc --dataset $W/demos.hdf5 --out $W/bc --steps 300 --device $DEV --no-progress
  $DPFT eval --policy $W/bc --episodes 4 --envs 4 --device $DEV --json
  $DPFT eval --policy shipped:metaworld-push-v3 --episodes 20 --envs 4 --device $DEV
  $DPFT finetune dsrl --config experiments/configs/demo_dsrl.yaml --steps 3000 --warmup-steps 500 --eval-every 1500 --eval-episodes 4 --out $W/dsrl --device $DEV --no-progress
  $DPFT eval --policy $W/dsrl --episodes 10 --envs 4 --device $DEV
  $DPFT finetune residual --base shipped:metaworld-push-v3 --algo td3 --steps 2000 --warmup-steps 500 --critic-warmup-steps 500 --explore-ramp-steps 1000 --out $W/res $SHORT
  $DPFT finetune residual --base $W/dsrl --algo ppo --envs 4 --steps 2048 --rollout-steps 256 --out $W/res_ppo $SHORT
  $DPFT eval --policy $W/res --episodes 10 --envs 4 --device $DEV
  $DPFT finetune find --base shipped:metaworld-push-v3-mh --steps 2048 --envs 4 --rollout-steps 32 --out $W/find $SHORT
  $DPFT eval --policy $W/find/policy --episodes 10 --envs 4 --device $DEV --json
  $DPFT finetune dppo --base shipped:metaworld-push-v3-mh --steps 2048 --envs 4 --rollout-steps 32 --out $W/dppo $SHORT
  $DPFT eval --policy $W/dppo/policy --episodes 10 --envs 4 --device $DEV --json
  $DPFT prefs collect --policy shipped:metaworld-push-v3-mh --states 4 --streams 3 --out $W/p.hdf5 --device $DEV
  $DPFT finetune dpo --base shipped:metaworld-push-v3-mh --prefs $W/p.hdf5 --rounds 1 --steps-per-round 20 --eval-episodes 4 --out $W/dpo --device $DEV --no-progress
  $DPFT eval --policy $W/dpo/policy --episodes 10 --envs 4 --device $DEV --json
  set +x
}
timeout 180 bash -c "$(declare -f cli); DPFT='$DPFT' SHORT='$SHORT' DEV=$DEV W=$W cli" > "$OUT/cli.log" 2>&1
echo "cli exit $?"; grep -E "^\+ |Traceback|Error|error:|success" "$OUT/cli.log" | head -60
timeout 130 python3 -m pytest -q -n 14 -p no:cacheprovider -m "not slow" --timeout 120 -rfE tests > "$OUT/tests.log" 2>&1
echo "tests exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -40
timeout 130 python3 experiments/benchmarks/bench_speed.py --device $DEV --threads 1 --env-steps 10000 --sim-steps 5000 --grad-steps 200 --runs na find dppo td3 --out "$OUT/speed_cuda.json" > "$OUT/speed.log" 2>&1
echo "speed exit $?"; cat "$OUT/speed_cuda.json"; tail -5 "$OUT/speed.log"
