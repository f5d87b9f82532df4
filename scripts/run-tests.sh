#!/usr/bin/env bash
# Runs node's test runner over every *.test.ts below the given folders, one file at a time
# (the integration tests create namespaces and users; serial keeps the 2-core machine calm).
# Node 20 has no glob support in --test, hence the find.
set -euo pipefail
cd "$(dirname "$0")/.."
files=()
for dir in "$@"; do
  [ -d "$dir" ] || continue
  while IFS= read -r file; do files+=("$file"); done < <(find "$dir" -name '*.test.ts' | sort)
done
if [ "${#files[@]}" -eq 0 ]; then
  echo "no test files under: $*" >&2
  exit 1
fi
exec node --import tsx --test --test-concurrency=1 --test-timeout=900000 "${files[@]}"
