#!/usr/bin/env bash
# Several bench/quality.py variants as parallel processes on one GPU, from one bundle: at the tiny
# backbone's size a single run leaves most of an H100/H200 idle, so three or four share it.
#
#   OUT=out bench/parallel_variants.sh NAME:SEED:VARIANT[:STEPS] ...
#
# env: BUNDLE (default .devbundle/q30), CONFIG (training/configs/quality_tiny_gpu.yaml), STEPS (1500),
# LIMIT (seconds per process, 540), THREADS (CPU threads per process, 5), EXTRA (more quality.py
# flags), PARA (a file of TASK=QUERY lines, each passed as --paraphrase; `#` lines are comments: see
# bench/queries/).
# WORK (default /tmp/qanchor-variants) keeps each run's trained model, and runs pass --reuse-trained:
# a call cut during evaluation, repeated on the same warm device machine, only evaluates, and one
# cut during training resumes from its last checkpoint (EXTRA="--checkpoint-every 250"). A run
# folder copied to another NAME is reused too (e.g. prompt sweeps over one trained `full`). (On the
# device tool /tmp outlives a call; the repo copy does not: a path carried once is gone from it in
# the next call unless carried again, so stage multi-call uploads such as a split GGUF in /tmp.)
# Leaves OUT/NAME.json (the table) and OUT/NAME/test_scores.pkl (for --compare) per run, so at
# most eight files for four runs, and prints the tail of each run's log.
set -u
: "${OUT:?set OUT to the folder the results go to}"
BUNDLE=${BUNDLE:-.devbundle/q30}; CONFIG=${CONFIG:-training/configs/quality_tiny_gpu.yaml}
STEPS=${STEPS:-1500}; LIMIT=${LIMIT:-540}; THREADS=${THREADS:-5}; EXTRA=${EXTRA:-}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
work=${WORK:-/tmp/qanchor-variants}
mkdir -p "$work"
para=()
if [ -n "${PARA:-}" ]; then
  while IFS= read -r line; do
    case "$line" in ""|"#"*) ;; *) para+=(--paraphrase "$line") ;; esac
  done < "$PARA"
fi
pids=()
for spec in "$@"; do
  IFS=: read -r name seed variant steps <<<"$spec"
  rm -f "bench/results/$name.json" "$work/$name/$variant/test_scores.pkl"  # never report an earlier call's result
  # shellcheck disable=SC2086  # EXTRA holds several flags
  timeout "$LIMIT" "$PYTHON" bench/quality.py --bundle "$BUNDLE" --config "$CONFIG" --seed "$seed" \
    --steps "${steps:-$STEPS}" --sweep '' --tune none --reuse-trained $EXTRA "${para[@]}" --variants "$variant" \
    --out "$work/$name" --results-name "$name" > "$work/$name.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for spec in "$@"; do
  IFS=: read -r name seed variant steps <<<"$spec"
  mkdir -p "$OUT/$name"
  cp "bench/results/$name.json" "$OUT/$name.json" 2>/dev/null
  cp "$work/$name/$variant/test_scores.pkl" "$OUT/$name/test_scores.pkl" 2>/dev/null
  echo "== $name ($variant, seed $seed)"
  tail -n 12 "$work/$name.log" | cut -c1-150 | grep -v "it/s\]"
done
