#!/usr/bin/env bash
# make fuzz: the suite's property tests (every test module that uses hypothesis), without the broker,
# run again under SEEDS other seeds (default 20, from FIRST_SEED, default random), so hypothesis tries
# cases CI's fixed runs never generate. Stops at the first failure and prints the line that replays it;
# a failure is a finding: fix the code (or the property) and pin the case with @example.
# FUZZ_MODULES (paths, space-separated) fuzzes those modules instead.
set -u
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
seeds=${SEEDS:-20}
first=${FIRST_SEED:-$((RANDOM * 32768 + RANDOM))}
if [ -n "${FUZZ_MODULES:-}" ]; then
  read -r -a modules <<< "$FUZZ_MODULES"  # these modules instead (the script's own tests)
else
  mapfile -t modules < <(grep -rl --include='test_*.py' '^from hypothesis' tests | sort)
fi
echo "fuzz: ${#modules[@]} modules with property tests, seeds $first..$((first + seeds - 1))"
for ((i = 0; i < seeds; i++)); do
  seed=$((first + i))
  started=$SECONDS
  if ! out=$("$python" -m pytest -q -x -p no:cacheprovider -m "not broker and not gpu" \
      --hypothesis-seed="$seed" "${modules[@]}" 2>&1); then
    echo "$out" | tail -n 40
    failed=$(echo "$out" | sed -n 's/^FAILED \([^ ]*\).*/\1/p' | head -n 1)
    echo "fuzz: seed $seed ($((i + 1))/$seeds) found a failing case; replay it with:"
    echo "  $python -m pytest --hypothesis-seed=$seed ${failed:-${modules[*]}}"
    exit 1
  fi
  echo "fuzz: seed $seed ($((i + 1))/$seeds) passed: $(echo "$out" | tail -n 1 | sed 's/=//g; s/^ *//') ($((SECONDS - started)) s)"
done
echo "fuzz: $seeds seeds, no failing case"
