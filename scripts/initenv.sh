#!/usr/bin/env bash
# Create ./venv with chatmaild and cmdeploy installed editable, plus the development tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x venv/bin/python ]; then
    "$python" -m venv venv
fi
venv/bin/pip install --quiet --upgrade pip
venv/bin/pip install --quiet -e ./chatmaild -e ./cmdeploy -r requirements-dev.txt
