#!/bin/sh
# A sharded embedpipe run on AWS Batch:
#   1. an array job of SHARDS workers (job definition embedpipe-worker, job-definition.json): each
#      child runs `embedpipe run /pipeline/pipeline.toml --json`, takes its shard index from
#      AWS_BATCH_JOB_ARRAY_INDEX and the shard count from EMBEDPIPE_SHARDS, and derives the run id
#      from AWS_BATCH_JOB_ID (the array job's id, before the ':'); it writes its part without committing;
#   2. the commit job (embedpipe-commit, commit-job-definition.json), which depends on the array
#      job as a whole (a plain jobId dependency, no N_TO_N type): Batch starts it once every child
#      succeeded, and fails it at once if one failed. It runs
#      `embedpipe commit /pipeline/pipeline.toml --run <array job id>`.
#
# Usage (aws CLI v2 with credentials allowed to batch:SubmitJob and batch:ListJobs):
#   submit.sh                        submit a run: the workers and its commit
#   submit.sh failed RUN_ID          the shard indexes that failed (RUN_ID: the array job id)
#   submit.sh rerun RUN_ID I...      run shards I... of RUN_ID again (one job each), and a commit
#                                    that depends on them
#   submit.sh commit RUN_ID          commit RUN_ID now (all its shards must be done)
# Environment: EMBEDPIPE_JOB_QUEUE (default embedpipe), EMBEDPIPE_WORKER_DEFINITION
# (embedpipe-worker), EMBEDPIPE_COMMIT_DEFINITION (embedpipe-commit), and the aws CLI's own
# (AWS_PROFILE, AWS_REGION...).
set -eu

JOB_QUEUE=${EMBEDPIPE_JOB_QUEUE:-embedpipe}
WORKER_DEFINITION=${EMBEDPIPE_WORKER_DEFINITION:-embedpipe-worker}
COMMIT_DEFINITION=${EMBEDPIPE_COMMIT_DEFINITION:-embedpipe-commit}
# The number of shards: the array size, and EMBEDPIPE_SHARDS in job-definition.json. Change both
# together (tests/deploy.rs checks that they agree).
SHARDS=4

say() { echo "submit.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# check_id ID: a Batch job id (letters, digits, '-').
check_id() {
    case $1 in
        '' | *[!A-Za-z0-9-]*) die "not a job id: '$1'" ;;
    esac
}

# submit_commit RUN_ID [JOB_ID...]: submits the commit of RUN_ID, run after every JOB_ID succeeded;
# prints its job id. A dependency on an array job's id waits for all of its children.
submit_commit() {
    run_id=$1
    shift
    for dep in "$@"; do
        set -- "$@" "jobId=$dep"
        shift
    done
    if [ $# -gt 0 ]; then
        set -- --depends-on "$@"
    fi
    aws batch submit-job \
        --job-name "embedpipe-commit-$run_id" \
        --job-queue "$JOB_QUEUE" \
        --job-definition "$COMMIT_DEFINITION" \
        "$@" \
        --parameters "run_id=$run_id" \
        --container-overrides "{\"environment\":[{\"name\":\"EMBEDPIPE_RUN_ID\",\"value\":\"$run_id\"}]}" \
        --query jobId --output text
}

# submit_run: the array job of workers, then its commit.
submit_run() {
    array_id=$(aws batch submit-job \
        --job-name "embedpipe-index-$(date -u +%Y%m%dT%H%M%SZ)" \
        --job-queue "$JOB_QUEUE" \
        --job-definition "$WORKER_DEFINITION" \
        --array-properties "size=$SHARDS" \
        --query jobId --output text)
    check_id "$array_id"
    say "workers: array job $array_id, $SHARDS shards; run id: $array_id"
    commit_id=$(submit_commit "$array_id" "$array_id")
    say "commit:  job $commit_id (starts when all $SHARDS shards succeeded; FAILED at once if one fails)"
    say "follow:  aws batch describe-jobs --jobs $array_id $commit_id --query 'jobs[].[jobName,status]'"
    say "if a shard fails: $0 failed $array_id, then $0 rerun $array_id INDEX..."
    echo "$array_id"
}

# failed RUN_ID: the indexes of the array's children that failed.
failed() {
    aws batch list-jobs --array-job-id "$1" --job-status FAILED \
        --query 'jobSummaryList[].arrayProperties.index' --output text
}

# rerun RUN_ID I...: one (non-array) worker job per shard, with an explicit --shard I/N and
# --run RUN_ID, then a commit that depends on those jobs.
rerun() {
    run_id=$1
    shift
    jobs=
    for i in "$@"; do
        case $i in
            '' | *[!0-9]*) die "not a shard index: '$i'" ;;
        esac
        [ "$i" -lt "$SHARDS" ] || die "shard $i: a run has $SHARDS shards (0..$((SHARDS - 1)))"
        job_id=$(aws batch submit-job \
            --job-name "embedpipe-shard-$i-$run_id" \
            --job-queue "$JOB_QUEUE" \
            --job-definition "$WORKER_DEFINITION" \
            --container-overrides "{\"command\":[\"run\",\"/pipeline/pipeline.toml\",\"--json\",\"--shard\",\"$i/$SHARDS\",\"--run\",\"$run_id\"]}" \
            --query jobId --output text)
        check_id "$job_id"
        say "shard $i/$SHARDS of run $run_id: job $job_id"
        jobs="$jobs $job_id"
    done
    # One word per job id (ids have no spaces).
    # shellcheck disable=SC2086
    commit_id=$(submit_commit "$run_id" $jobs)
    say "commit:  job $commit_id (starts when the re-run shards succeeded)"
}

case ${1:-submit} in
    submit)
        [ $# -le 1 ] || die "usage: $0 [submit | failed RUN_ID | rerun RUN_ID INDEX... | commit RUN_ID]"
        submit_run
        ;;
    failed)
        [ $# -eq 2 ] || die "usage: $0 failed RUN_ID"
        check_id "$2"
        failed "$2"
        ;;
    rerun)
        [ $# -ge 3 ] || die "usage: $0 rerun RUN_ID INDEX..."
        check_id "$2"
        shift
        rerun "$@"
        ;;
    commit)
        [ $# -eq 2 ] || die "usage: $0 commit RUN_ID"
        check_id "$2"
        submit_commit "$2"
        ;;
    *)
        die "usage: $0 [submit | failed RUN_ID | rerun RUN_ID INDEX... | commit RUN_ID]"
        ;;
esac
