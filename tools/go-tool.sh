# Sourced by tools/<name>/build.sh: what every Go-built test tool does the same way.
# The sourcing script sets NAME (its log prefix), ROOT (its cache folder) and OUT (the folder it
# builds into) and defines complete() (whether OUT holds a whole build); then it calls these.

log() { echo "${NAME}: $*" >&2; }

# Print OUT and end the script when it is complete already (nothing to build, Go not needed).
exit_if_complete() {
    if complete; then
        echo "$OUT"
        exit 0
    fi
}

# Set GO to a Go toolchain: $GO, else `go` on PATH, else /usr/local/go/bin/go. Returns 1 when there
# is none, and the caller says what its build needs.
find_go() {
    GO="${GO:-}"
    if [[ -z "$GO" ]]; then
        if command -v go >/dev/null 2>&1; then
            GO="$(command -v go)"
        elif [[ -x /usr/local/go/bin/go ]]; then
            GO=/usr/local/go/bin/go
        fi
    fi
    [[ -n "$GO" && -x "$GO" ]]
}

# One build at a time per cache (tox envs, checkouts and the benchmark may start one together): hold
# an exclusive lock on ROOT/.lock for the rest of the script, then reuse what a build that held it
# before us left, if it is complete.
lock_cache() {
    mkdir -p "$ROOT"
    exec 9>"$ROOT/.lock"
    if command -v flock >/dev/null 2>&1; then
        log "waiting for the cache lock" && flock 9
    fi
    exit_if_complete
}
