#!/usr/bin/env bash
# CUDA check, run on a lent GPU machine (torch with CUDA preinstalled, no network). Wheels for
# the simulators and the test plug-ins travel in .whl (see experiments/device/README.md).
#
#   bash experiments/device/gpu_check.sh            # writes logs and tables to $OUT
#
# 1. every CLI path on --device $DEV (finetune dsrl/residual/find/dppo/dpo, prefs collect, collect,
#    train-bc, eval of the artifacts), short budgets, each command timed; 2. at the same time the fast
#    test tier with a GPU visible (so every `--device auto` in it resolves to cuda), on other cores;
#    3. then, alone, a gradient step and the simulator timed on cuda and on the same machine's CPU.
# Each part has its own time limit, so one that hangs leaves the others their time.
set -u
OUT=${OUT:-/tmp/gpu_check}
PAR_S=${PAR_S:-240}   # parts 1 and 2, side by side
SPEED_S=${SPEED_S:-50} # part 3, per device
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip list > "$OUT/pip_list.txt" 2>&1
W=/tmp/gpu_work; rm -rf $W; mkdir -p $W
DEV=${DEV:-cuda}
DPFT="timeout 100 python3 -m dpft.finetune"
SHORT="--eval-every 1024 --eval-episodes 4 --final last --no-progress --device $DEV"
# the paths that had never run on a GPU first; DSRL first because the PPO residual stacks on it
cli() {
  nvidia-smi -L; python3 -c "import torch, mujoco; print('torch', torch.__version__, torch.cuda.get_device_name(), 'mujoco', mujoco.__version__)"
  set -x
  time $DPFT finetune dsrl --config experiments/configs/demo_dsrl.yaml --steps 3000 --warmup-steps 500 --eval-every 1500 --eval-episodes 4 --final last --out $W/dsrl --device $DEV --no-progress
  time $DPFT finetune residual --base shipped:metaworld-push-v3 --algo td3 --steps 2000 --warmup-steps 500 --critic-warmup-steps 500 --explore-ramp-steps 1000 --out $W/res $SHORT
  time $DPFT finetune residual --base $W/dsrl --algo ppo --envs 4 --steps 2048 --rollout-steps 256 --out $W/res_ppo $SHORT
  time $DPFT finetune find --base shipped:metaworld-push-v3-mh --steps 2048 --envs 4 --rollout-steps 32 --out $W/find $SHORT
  time $DPFT finetune dppo --base shipped:metaworld-push-v3-mh --steps 2048 --envs 4 --rollout-steps 32 --out $W/dppo $SHORT
  time $DPFT prefs collect --policy shipped:metaworld-push-v3-mh --states 4 --streams 3 --out $W/p.hdf5 --device $DEV
  time $DPFT finetune dpo --base shipped:metaworld-push-v3-mh --prefs $W/p.hdf5 --rounds 1 --steps-per-round 20 --eval-episodes 4 --out $W/dpo --device $DEV --no-progress
  for run in dsrl res res_ppo find/policy dppo/policy dpo/policy; do
    $DPFT eval --policy $W/$run --episodes 10 --envs 4 --device $DEV --json
  done
  $DPFT collect --task metaworld:push-v3 --episodes 4 --action-noise 0.3 --out $W/demos.hdf5
  $DPFT train-bc --dataset $W/demos.hdf5 --out $W/bc --steps 300 --device $DEV --no-progress
  $DPFT eval --policy $W/bc --episodes 4 --envs 4 --device $DEV --json
  set +x
}
OMP_NUM_THREADS=2 timeout $PAR_S bash -c "$(declare -f cli); DPFT='$DPFT' SHORT='$SHORT' DEV=$DEV W=$W cli" > "$OUT/cli.log" 2>&1 &
CLI=$!
# -v names each test as it ends, and SIGINT makes pytest print its summary, so a cut run still says
# which tests failed; tests/test_docs.py reads result files this trimmed checkout leaves out
OMP_NUM_THREADS=1 timeout -s INT -k 15 $PAR_S python3 -m pytest -v -n 6 -p no:cacheprovider -m "not slow" \
  --timeout 120 -rfE --tb=short --ignore tests/test_docs.py tests > "$OUT/tests.log" 2>&1
echo "tests exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -40
wait $CLI; echo "cli exit $?"; grep -E "^\+ |^real|Traceback|Error|error:|success" "$OUT/cli.log" | head -80
for d in $DEV cpu; do
  timeout $SPEED_S python3 experiments/benchmarks/bench_speed.py --device $d --threads 1 --sim-steps 2000 \
    --grad-steps 200 --runs --out "$OUT/speed_$d.json" > "$OUT/speed_$d.log" 2>&1
  echo "speed $d exit $?"; cat "$OUT/speed_$d.json"
done
