#!/usr/bin/env bash
# Create ./venv with chatmaild and cmdeploy installed editable, plus the development tools.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's own Python by default: the one a relay runs chatmaild on (a difference between
# Python builds once hid a bug that only showed on relays).
default_python=python3
[ -x /usr/bin/python3 ] && default_python=/usr/bin/python3
python=${PYTHON:-$default_python}
if [ ! -x venv/bin/python ]; then
    # Debian ships venv support separately; on a fresh machine it may be missing
    if ! "$python" -c "import ensurepip" 2>/dev/null && [ "$(id -u)" = 0 ]; then
        echo "installing python3-venv" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3-venv >/dev/null
    fi
    "$python" -m venv venv
fi
venv/bin/pip install --quiet --upgrade pip
venv/bin/pip install --quiet -e ./chatmaild -e ./cmdeploy -r requirements-dev.txt
