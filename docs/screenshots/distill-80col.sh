#!/usr/bin/env bash
# Makes docs/screenshots/distill-80col.txt: a whole `kdcompress distill` run in an 80x60 tmux terminal,
# captured with `tmux capture-pane` (the text a person sees, progress bars as they were last drawn).
# Run from the repository root after `make install`; takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
.venv/bin/kdcompress teacher train --data digits --arch resnet8x4 --epochs 8 --out "$work/teacher.pt" >/dev/null
cmd=".venv/bin/kdcompress distill --teacher $work/teacher.pt --data digits --budget-ms 0.15 --preset ickd --epochs 6 --out $work/run"
tmux kill-session -t kdshot 2>/dev/null || true
tmux new-session -d -s kdshot -x 80 -y 60 "bash -c '$cmd; echo \"[exit \$?]\"; sleep 600'"
for _ in $(seq 600); do
    sleep 1
    tmux capture-pane -p -t kdshot | grep -q '^\[exit ' && break
done
{ echo "\$ ${cmd//$work/\/tmp\/shot}"; tmux capture-pane -p -t kdshot -S -200 | sed "s#$work#/tmp/shot#g"; } \
    | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' > docs/screenshots/distill-80col.txt
tmux kill-session -t kdshot
rm -rf "$work"
echo "wrote docs/screenshots/distill-80col.txt"
