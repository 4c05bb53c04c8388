#!/usr/bin/env bash
# `make demo`'s serving step: start the service on the demo store, wait until ready, query it, stop it.
set -euo pipefail
BIN=${BIN:-.venv/bin}
REPO=${1:?feature repository}
ALIAS=${2:-challenger}
PORT=${QANCHOR_DEMO_PORT:-3917}
BASE=http://127.0.0.1:$PORT
LOG=$(mktemp)
QANCHOR_ADMIN_TOKEN=demo-token "$BIN/qanchor" serve --alias "$ALIAS" --repo "$REPO" --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 1 240); do
  curl -sf "$BASE/readyz" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.5
done
curl -sf "$BASE/readyz" >/dev/null || { echo "the service did not become ready"; tail -20 "$LOG"; exit 1; }
USER=$("$BIN/python" -c "import sys, pandas as pd; from feature_repo.objects import RepoSettings
print(pd.read_parquet(RepoSettings.load(sys.argv[1]).data / 'profile', columns=['user_id'])['user_id'].iloc[0])" "$REPO")
set -x
curl -s "$BASE/scenarios"; echo
curl -s -X POST "$BASE/embed" -H 'Content-Type: application/json' \
  -d "{\"user_ids\": [\"$USER\"], \"scenarios\": [\"travel_booking\", \"will this user apply for a loan?\"]}" | cut -c1-400; echo
curl -s -X POST "$BASE/score" -H 'Content-Type: application/json' -d "{\"user_ids\": [\"$USER\"], \"scenarios\": [\"travel_booking\", \"cash_advance\"]}"; echo
curl -s -X POST "$BASE/embed" -H 'Content-Type: application/json' -d '{"user_ids": ["nobody"], "scenarios": ["travel_booking"]}'; echo
curl -s "$BASE/metrics" | grep '^qanchor_prefix_cache'
