#!/usr/bin/env bash
# Write constraints.txt from the active environment, once the test suite and the e2e run have passed in it.
# Raising a pin: install the new version, run `python -m pytest -q` and `chatrlhf e2e`, then run this script
# and move the matching cap in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# The dependency set the test suite and the e2e run passed with (scripts/write_constraints.sh)."
  echo "# Python $(python -c 'import platform; print(platform.python_version())'); torch's local build label is dropped"
  echo "# so that its CPU and CUDA builds both match."
  pip freeze --all --exclude-editable | grep -viE '^(chatrlhf|pip)(==| @)' | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
