# Sourced by deploy/dev/up and deploy/dev/test: make sure .venv exists with Python 3.12+
# and the project installed (again whenever pyproject.toml changes).
set -euo pipefail

find_python() {
  local candidates=("${FLEET_PYTHON:-}" python3.13 python3.12 python3)
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.1[2-9]*/bin/python3)
  fi
  for py in "${candidates[@]}"; do
    [ -n "$py" ] || continue
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
      command -v "$py" || echo "$py"
      return 0
    fi
  done
  echo "Fleet OTA needs Python 3.12 or newer (Django 6): install python3.12 or set FLEET_PYTHON." >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(find_python)
  echo "==> creating .venv with $py" >&2
  "$py" -m venv .venv
fi
stamp=.venv/.fleet-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing Fleet OTA and its dependencies into .venv (first run takes a minute)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip >&2
  .venv/bin/python -m pip install --quiet -e '.[dev]' >&2
  echo "$want" > "$stamp"
fi
