#!/usr/bin/env bash
# Several distill jobs from one image, one run directory each (the batch example of docs/docker.md).
#
#   DOCKER=docker IMAGE=kdcompress:cpu DATA=$PWD/data RUNS=$PWD/runs docker/batch.sh [preset ...]
#
# DATA must hold teacher.pt (for example the demo's: runs/demo/teacher.pt). Each job runs in a container
# named kd-<job>, writes RUNS/<job>/ and RUNS/<job>.json, and its exit code is printed; the script exits
# with the last non-zero code (0 when every job passed). Rerun the same command after a failure, a reboot
# or `docker kill kd-<job>`: every job resumes from its last checkpoint (finished ones only re-validate).
set -u
DOCKER=${DOCKER:-docker}
IMAGE=${IMAGE:-kdcompress:cpu}
DATA=${DATA:-$PWD/data}
RUNS=${RUNS:-$PWD/runs}
EPOCHS=${EPOCHS:-30}
[ "$#" -gt 0 ] || set -- kd dkd nkd

mkdir -p "$RUNS" && chmod 0777 "$RUNS"      # the image's user (uid 10001) writes here
status=0
for preset in "$@"; do
    job=digits-$preset
    "$DOCKER" run --rm --name "kd-$job" --network none \
        -v "$DATA:/data:ro" -v "$RUNS:/runs" "$IMAGE" \
        distill --teacher /data/teacher.pt --data digits --student resnet8x2 \
                --preset "$preset" --epochs "$EPOCHS" --out "/runs/$job" --json > "$RUNS/$job.json"
    rc=$?
    echo "$job: exit code $rc"
    [ "$rc" -eq 0 ] || status=$rc
done
exit "$status"
