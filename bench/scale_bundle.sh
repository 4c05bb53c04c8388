#!/usr/bin/env bash
# The scale population of issues 14 and 17 (q100) and its device bundle, rebuilt with one command.
# Why a script: every checkout (and so every session) starts without .devbundle/, and the GPU runs
# in docs/benchmarks.md are only comparable when their bundle is this exact population.
#
#   bench/scale_bundle.sh q100b    # the generator's default corpus, bagged LightGBM (5 seeds)
#   bench/scale_bundle.sh q100m    # the same users with --summary-by-frequency
#   bench/scale_bundle.sh q100s    # q100b with an 80,000-row pretraining pool: small enough to
#                                  # travel beside the SmolLM2 GGUF in two device calls
#   bench/scale_bundle.sh q100     # q100b with one LightGBM fit per baseline (the runs before
#                                  # the bagged baseline)
#
# All use 100,000 users, seed 31, 8 grounded questions and 2 per-kind D_future questions a user,
# window ending 2026-10-01; the bundle holds 300,000 pretraining rows of 25,000 train-split users
# and 5,000 held-out users, and scores the baselines with 5 LightGBM seeds (q100: one). q100m
# differs from q100b only in the generic D_future answers, so its Feast store (events and
# profiles) is q100b's when that exists; q100s and q100 are q100b's data. WORK (default
# /tmp/qanchor-scale) keeps the raw data and stores; DEST (default .devbundle/NAME) receives the
# bundle. PYTHON / QANCHOR default to .venv.
set -euo pipefail
name=${1:?usage: bench/scale_bundle.sh q100b|q100m|q100s|q100}
pool=300000; seeds=5; data=$name
case "$name" in
  q100b) summary=--summary-names-markers ;;
  q100m) summary=--summary-by-frequency ;;
  q100s) summary=--summary-names-markers; pool=80000; data=q100b ;;
  q100) summary=--summary-names-markers; seeds=1; data=q100b ;;
  *) echo "unknown population '$name': q100b, q100m, q100s or q100" >&2; exit 2 ;;
esac
work=${WORK:-/tmp/qanchor-scale}; dest=${DEST:-.devbundle/$name}
PYTHON=${PYTHON:-.venv/bin/python}; QANCHOR=${QANCHOR:-.venv/bin/qanchor}
as_of=2026-10-01
raw=$work/$data/raw; store=$work/$data/store
mkdir -p "$work/$data"

if [ ! -f "$raw/.complete" ]; then
  "$QANCHOR" data generate --users 100000 --seed 31 --uqa-per-user 8 --future-questions 2 --as-of "$as_of" \
    $summary --out "$raw" --overwrite
  touch "$raw/.complete"
fi
if [ "$data" = q100m ] && [ -f "$work/q100b/store/.complete" ]; then
  store=$work/q100b/store  # the same events and profiles: q100b's import serves both
elif [ ! -f "$store/.complete" ]; then
  "$QANCHOR" data import --events "$raw/events" --profiles "$raw/profiles" --as-of "$as_of" \
    --out "$work/$data/features" --report "$work/$data/validation.json"
  "$QANCHOR" features apply --data "$work/$data/features" --repo "$store"
  touch "$store/.complete"
fi
"$PYTHON" bench/quality.py --dataset "$raw" --repo "$store" --max-users 5000 --pretrain-users 25000 \
  --pretrain-examples "$pool" --no-text-baseline --gbdt-seeds "$seeds" --export-bundle "$dest"
