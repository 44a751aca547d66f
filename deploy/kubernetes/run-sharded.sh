#!/bin/sh
# A sharded embedpipe run on Kubernetes, end to end:
#   1. creates the Indexed Job (indexed-job.yaml) under a generated, unique name: the run id,
#   2. waits until it has completed (every shard) or failed,
#   3. completed: creates the commit Job (commit-job.yaml) for that run id and waits for it;
#      failed: commits nothing, names the shards that did not complete and exits 1.
# Kubernetes has no dependencies between Jobs: this script is the "after" (an operator or Argo
# Workflows can do the same).
#
# Usage (kubectl on PATH, pointed at the cluster; ConfigMaps and ServiceAccount applied):
#   run-sharded.sh                      start a run (steps 1-3)
#   run-sharded.sh wait RUN_ID          wait again for a run's workers (after a time-out), then commit
#   run-sharded.sh rerun RUN_ID I...    run shards I... of RUN_ID again (one Job each), then commit
#   run-sharded.sh commit RUN_ID        commit RUN_ID (all its shards must be done)
# Environment:
#   NAMESPACE                  namespace (default: kubectl's current one)
#   EMBEDPIPE_IMAGE            image to run instead of the one in the manifests
#   EMBEDPIPE_WAIT_SECONDS     how long to wait for a Job (default 86400)
#   EMBEDPIPE_POLL_SECONDS     how often to look (default 20)
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
WAIT_SECONDS=${EMBEDPIPE_WAIT_SECONDS:-86400}
POLL_SECONDS=${EMBEDPIPE_POLL_SECONDS:-20}
# The run id placeholder in commit-job.yaml.
PLACEHOLDER=__INDEXED_JOB_NAME__

say() { echo "run-sharded: $*" >&2; }
die() { say "$*"; exit 1; }

k() {
    if [ -n "${NAMESPACE:-}" ]; then
        kubectl --namespace "$NAMESPACE" "$@"
    else
        kubectl "$@"
    fi
}

# check_name NAME: a Job name (what a run id is here).
check_name() {
    case $1 in
        '' | *[!a-z0-9-]*) die "not a Job name: '$1'" ;;
    esac
}

# check_index I: a shard index.
check_index() {
    case $1 in
        '' | *[!0-9]*) die "not a shard index: '$1'" ;;
    esac
}

# render FILE [RUN_ID]: the manifest, with EMBEDPIPE_IMAGE and the run id filled in.
render() {
    render_run=${2:-$PLACEHOLDER}
    if [ -n "${EMBEDPIPE_IMAGE:-}" ]; then
        sed -e "s|^\\( *image: \\).*|\\1$EMBEDPIPE_IMAGE|" -e "s|$PLACEHOLDER|$render_run|g" "$1"
    else
        sed -e "s|$PLACEHOLDER|$render_run|g" "$1"
    fi
}

# create: creates the Job read on stdin and prints its generated name.
create() {
    created=$(k create -f - -o name) || die "kubectl create failed"
    echo "${created#job.batch/}"
}

# wait_job NAME: returns 0 once the Job has the condition Complete, 1 once it has Failed.
wait_job() {
    waited=0
    while :; do
        conditions=$(k get job "$1" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}') ||
            die "cannot read job/$1"
        case " $conditions " in
            *" Complete "*) return 0 ;;
            *" Failed "*) return 1 ;;
        esac
        [ "$waited" -lt "$WAIT_SECONDS" ] ||
            die "job/$1 has not finished after ${WAIT_SECONDS}s; nothing was committed. Wait again: $0 wait $1"
        sleep "$POLL_SECONDS"
        waited=$((waited + POLL_SECONDS))
    done
}

# expand "0,2-4": "0 2 3 4 " (the index-list format of .status.completedIndexes).
expand() {
    echo "$1" | tr ',' '\n' | while IFS=- read -r lo hi; do
        [ -n "$lo" ] || continue
        [ -n "$hi" ] || hi=$lo
        i=$lo
        while [ "$i" -le "$hi" ]; do
            printf '%s ' "$i"
            i=$((i + 1))
        done
    done
}

# shard_count RUN_ID: the indexed Job's completions (from indexed-job.yaml once the Job is gone).
shard_count() {
    n=$(k get job "$1" -o jsonpath='{.spec.completions}' 2>/dev/null) || n=
    [ -n "$n" ] || n=$(sed -n 's/^ *completions: *\([0-9][0-9]*\).*/\1/p' "$here/indexed-job.yaml" | head -n 1)
    [ -n "$n" ] || die "cannot tell the shard count of run $1"
    echo "$n"
}

# incomplete RUN_ID: the shard indexes of the indexed Job that did not complete.
incomplete() {
    n=$(shard_count "$1")
    completed=" $(expand "$(k get job "$1" -o jsonpath='{.status.completedIndexes}')")"
    i=0
    while [ "$i" -lt "$n" ]; do
        case "$completed" in
            *" $i "*) ;;
            *) printf '%s ' "$i" ;;
        esac
        i=$((i + 1))
    done
}

# commit RUN_ID: one commit Job for the run; waits for it.
commit() {
    check_name "$1"
    job=$(render "$here/commit-job.yaml" "$1" | create)
    say "committing run $1: job/$job"
    if wait_job "$job"; then
        say "run $1 committed"
    else
        say "the commit failed: kubectl logs job/$job${NAMESPACE:+ -n $NAMESPACE}"
        die "if it names missing or failed shards, run them again: $0 rerun $1 INDEX..."
    fi
}

# finish RUN_ID: waits for the run's workers; commits if all shards completed.
finish() {
    if wait_job "$1"; then
        say "job/$1 complete: all shards written"
        commit "$1"
    else
        left=$(incomplete "$1")
        say "job/$1 FAILED; shards that did not complete: ${left:-none reported}"
        say "nothing was committed. Logs: kubectl logs -l batch.kubernetes.io/job-name=$1 --tail=100${NAMESPACE:+ -n $NAMESPACE}"
        die "run those shards again and commit: $0 rerun $1 $left"
    fi
}

# rerun RUN_ID I...: a plain Job per shard (commit-job.yaml's pod with a worker's args and an
# explicit --shard I/N --run RUN_ID), waits for all, then commits.
rerun() {
    run=$1
    shift
    check_name "$run"
    [ $# -gt 0 ] || die "usage: $0 rerun RUN_ID INDEX..."
    n=$(shard_count "$run")
    jobs=
    for i in "$@"; do
        check_index "$i"
        [ "$i" -lt "$n" ] || die "shard $i: run $run has $n shards (0..$((n - 1)))"
        job=$(render "$here/commit-job.yaml" "$run" |
            sed -e "s|generateName: embedpipe-commit-|generateName: embedpipe-shard-$i-|" \
                -e "s|^\\( *args: \\).*|\\1[\"run\", \"/pipeline/pipeline.toml\", \"--json\", \"--shard\", \"$i/$n\", \"--run\", \"\$(EMBEDPIPE_RUN_ID)\"]|" \
                -e "s|app.kubernetes.io/component: commit|app.kubernetes.io/component: index|" |
            create)
        say "shard $i/$n of run $run: job/$job"
        jobs="$jobs $job"
    done
    for job in $jobs; do
        wait_job "$job" || die "job/$job failed again (kubectl logs job/$job); nothing was committed"
    done
    commit "$run"
}

case ${1:-start} in
    start)
        [ $# -le 1 ] || die "usage: $0 [start | wait RUN_ID | rerun RUN_ID INDEX... | commit RUN_ID]"
        run=$(render "$here/indexed-job.yaml" | create)
        say "started job/$run with $(shard_count "$run") shards; run id: $run"
        finish "$run"
        ;;
    wait)
        [ $# -eq 2 ] || die "usage: $0 wait RUN_ID"
        check_name "$2"
        finish "$2"
        ;;
    rerun)
        shift
        [ $# -ge 2 ] || die "usage: $0 rerun RUN_ID INDEX..."
        rerun "$@"
        ;;
    commit)
        [ $# -eq 2 ] || die "usage: $0 commit RUN_ID"
        commit "$2"
        ;;
    *)
        die "usage: $0 [start | wait RUN_ID | rerun RUN_ID INDEX... | commit RUN_ID]"
        ;;
esac
