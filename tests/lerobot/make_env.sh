#!/usr/bin/env bash
# Build a LeRobot environment beside dpft's CPU torch, for the live LeRobot round trip:
#   tests/lerobot/make_env.sh VERSION VENV
# LeRobot pins torch below 2.11 and torchvision below 0.26; from the package registry those resolve
# to CUDA builds (several GB). So lerobot itself is installed without its dependencies, on the CPU
# torch dpft uses, with the packages its diffusion policy imports listed in requirements-VERSION.txt
# and a torchvision stub (stub/torchvision: state-only policies never call torchvision).
set -euo pipefail
version=$1
venv=$2
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
torch_pin=${TORCH:-torch==2.13.0}
[ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import lerobot.policies.diffusion.modeling_diffusion" 2>/dev/null && exit 0
rm -rf "$venv"
"$python" -m venv "$venv"
pins=$(mktemp)
echo "$torch_pin" > "$pins"
"$venv/bin/pip" install --quiet "$torch_pin"
"$venv/bin/pip" install --quiet --no-deps "lerobot==$version"
"$venv/bin/pip" install --quiet -c "$pins" -r "$here/requirements-$version.txt"
rm "$pins"
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp -r "$here/stub/torchvision" "$site/"
"$venv/bin/python" -c "import lerobot.policies.diffusion.modeling_diffusion, lerobot.policies.factory" || {
    echo "error: lerobot $version does not import in $venv; see the message above" >&2
    exit 1
}
