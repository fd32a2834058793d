#!/bin/sh
# Entry point of the PA-HCL images (docker/Dockerfile).
#
#   entrypoint.sh [--option ...]        run the search: python tune/run_search.py [--option ...]
#                                        (with SEARCH_DATA set: plus --data "$SEARCH_DATA")
#                                        (with RAY_CLUSTER=host:port set: join that Ray cluster as a
#                                        node first, then run the search with --address host:port)
#   entrypoint.sh ray-head [ray start options]     start a Ray head node (blocks)
#   entrypoint.sh ray-worker [ray start options]   join RAY_CLUSTER as a worker node (blocks)
#   entrypoint.sh COMMAND [ARGS ...]     run any other command (mlflow server, python -m pahcl..., bash)
#
# Ray token authentication (RAY_AUTH_MODE=token): the head generates the token once into
# ~/.ray/auth_token (a volume shared only by the Ray containers); the others wait for it.
set -eu

token_file="${HOME}/.ray/auth_token"

wait_for_token() {
    [ "${RAY_AUTH_MODE:-}" = "token" ] || return 0
    i=0
    while [ ! -s "$token_file" ]; do
        i=$((i + 1))
        if [ "$i" -gt 60 ]; then
            echo "entrypoint: no Ray auth token at $token_file after 120 s (is ray-head running?)" >&2
            exit 1
        fi
        sleep 2
    done
}

join_cluster() {
    # $1: head address host:port; remaining args: extra `ray start` options
    address="$1"
    shift
    wait_for_token
    i=0
    until ray start --address="$address" --disable-usage-stats "$@"; do
        i=$((i + 1))
        if [ "$i" -gt 30 ]; then
            echo "entrypoint: cannot join the Ray cluster at $address" >&2
            exit 1
        fi
        sleep 2
    done
}

case "${1:-}" in
    ray-head)
        shift
        if [ "${RAY_AUTH_MODE:-}" = "token" ]; then
            # creates the token if missing; it is printed on stdout, so keep it out of the logs
            ray get-auth-token --generate >/dev/null
        fi
        exec ray start --head --block --disable-usage-stats "$@"
        ;;
    ray-worker)
        shift
        : "${RAY_CLUSTER:?ray-worker needs RAY_CLUSTER=host:port of the head}"
        join_cluster "$RAY_CLUSTER" --block "$@"
        ;;
    "" | -*)
        if [ -n "${SEARCH_DATA:-}" ]; then
            # data spec (compose: DATA=...); unset: the space's own (synthetic) default and budget
            set -- "$@" --data "$SEARCH_DATA"
        fi
        if [ -n "${RAY_CLUSTER:-}" ]; then
            # A driver must run on a node of the cluster: join (this container's GPUs included),
            # then point the search at the cluster.
            export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
            join_cluster "$RAY_CLUSTER"
            set -- "$@" --address "$RAY_CLUSTER"
        fi
        exec python /app/tune/run_search.py "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
