#!/usr/bin/env bash
# CUDA check, run on a lent GPU machine (torch with CUDA preinstalled, no network). Wheels for
# the simulators travel in .whl (see experiments/device/README.md for the download line).
#
#   bash experiments/device/gpu_check.sh            # writes logs and tables to $OUT
#
# 1. every CLI path on --device $DEV (collect, train-bc, eval, finetune dsrl, finetune residual,
#    eval of both artifacts), short budgets; 2. the test suite with a GPU visible, so every
#    `--device auto` in it resolves to cuda; 3. the base-policy benchmark on cuda.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
W=/tmp/gpu_work; rm -rf $W; mkdir -p $W
DEV=${DEV:-cuda}
DPFT="python3 -m dpft.finetune.cli"
{
  nvidia-smi -L; python3 -c "import torch, mujoco; print('torch', torch.__version__, torch.cuda.get_device_name(), 'mujoco', mujoco.__version__)"
  set -x
  $DPFT collect --task metaworld:push-v3 --episodes 4 --action-noise 0.3 --out $W/demos.hdf5
  $DPFT train-bc --dataset $W/demos.hdf5 --out $W/bc --steps 300 --device $DEV --no-progress
  $DPFT eval --policy $W/bc --episodes 4 --envs 4 --device $DEV --json
  $DPFT eval --policy shipped:metaworld-push-v3 --episodes 20 --envs 4 --device $DEV
  $DPFT finetune dsrl --config experiments/configs/demo_dsrl.yaml --steps 3000 --warmup-steps 500 --eval-every 1500 --eval-episodes 4 --out $W/dsrl --device $DEV --no-progress
  $DPFT eval --policy $W/dsrl --episodes 10 --envs 4 --device $DEV
  $DPFT finetune residual --base shipped:metaworld-push-v3 --algo td3 --steps 3000 --warmup-steps 500 --critic-warmup-steps 500 --explore-ramp-steps 1000 --eval-every 1500 --eval-episodes 4 --out $W/res --device $DEV --no-progress
  $DPFT finetune residual --base $W/dsrl --algo ppo --envs 4 --steps 2048 --rollout-steps 256 --eval-every 1024 --eval-episodes 4 --out $W/res_ppo --device $DEV --no-progress
  $DPFT eval --policy $W/res --episodes 10 --envs 4 --device $DEV
  $DPFT eval --policy $W/res_ppo --episodes 10 --envs 4 --device $DEV --json
  set +x
} > "$OUT/cli.log" 2>&1
echo "cli exit $?"; grep -E "Traceback|Error|error:" "$OUT/cli.log" | head -20
timeout 110 python3 experiments/benchmarks/bench_base_policy.py --device $DEV --train-steps 200 --unet-train-steps 50 --repeats 10 --batch-size 256 4096 --batches 1 64 1024 --out "$OUT/base_policy_bench_cuda.md" > "$OUT/bench.log" 2>&1
echo "bench exit $?"; tail -25 "$OUT/base_policy_bench_cuda.md"
timeout 170 python3 -m pytest -q -n 14 -p no:cacheprovider -rfE tests > "$OUT/tests.log" 2>&1
echo "tests exit $?"; tail -40 "$OUT/tests.log"
# 4. the speed benchmark's ratios on the GPU (short runs; the CPU's 100k-step numbers are in speed.md)
timeout 300 python3 experiments/benchmarks/bench_speed.py --device $DEV --env-steps 10000 --sim-steps 5000 --runs na na-utd0.5 td3 --out "$OUT/speed_cuda.json" > "$OUT/speed.log" 2>&1
echo "speed exit $?"; cat "$OUT/speed_cuda.json"
