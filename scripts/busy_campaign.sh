#!/bin/bash
# The default campaign with one core kept busy (issue 12's bar), from a snapshot of a revision:
#   bash scripts/busy_campaign.sh [REV] [DIR]     (defaults: HEAD, /tmp/busy-campaign)
# Runs `autotuner run` (the README's main job, defaults) from a `git archive` copy of REV in DIR,
# with `python3 -c 'while 1: pass'` at normal priority beside it, under /usr/bin/time -v; the
# load average is logged every 30 s. Output: DIR/time.log (the campaign's log and the timing),
# DIR/load.log, the campaign in DIR/results/default. Uses the python on PATH (a venv with the
# project's dependencies).
set -euo pipefail
REV=${1:-HEAD}
DIR=${2:-/tmp/busy-campaign}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$DIR" && mkdir -p "$DIR"
git -C "$ROOT" archive "$REV" | tar -x -C "$DIR"
cd "$DIR"
python3 -c 'while 1: pass' & BUSY=$!
uptime > load.log
(while sleep 30; do uptime >> load.log; done) & LOAD=$!
trap 'kill $BUSY $LOAD 2>/dev/null || true' EXIT
PYTHONPATH="$DIR" /usr/bin/time -v python -m autotuner run > run.log 2> time.log || true
tr '\r' '\n' < time.log | grep -E "search stopped|finalisation took|finished in|promoted|Elapsed"
