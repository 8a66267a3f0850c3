# Sourced by the walkthrough scripts: `timed NAME DONE COMMAND...` runs COMMAND with its output to
# "$out/NAME.log" and the terminal, and records its wall time in "$out/timings.tsv". If the file DONE exists
# and a time is recorded, the step finished in an earlier run and is kept, so a rerun after an interruption
# continues from the first unfinished step. Needs `out` set to an existing folder.
timings="$out/timings.tsv"
touch "$timings"

timed() {
  local name="$1" done="$2"
  shift 2
  if [ -f "$done" ] && grep -q "^$name"$'\t' "$timings"; then
    echo "== $name: kept from an earlier run ($done exists)"
    return
  fi
  sed -i "/^$name\t/d" "$timings"
  echo "== $name: $*"
  local start end
  start=$(date +%s)
  "$@" 2>&1 | tee "$out/$name.log"
  end=$(date +%s)
  printf '%s\t%s\n' "$name" "$((end - start))" >>"$timings"
  echo "== $name took $((end - start)) s"
}
