#!/usr/bin/env bash
# Quick start: from a fresh Ubuntu machine to a beacon enforcing real traffic rules, in one command.
#
# Usage: bash scripts/quickstart.sh [-h|--help]
#
# Supported: Ubuntu 22.04 and 24.04 only (checked first). Runs as root, or as a user with sudo
# (not through sudo: it calls sudo itself where it needs root, and refuses `sudo bash ...`).
# Needs about 8 GB of free memory and 20 GB of disk.
#
# 1. installs concierge and prepares MicroK8s 1.32 + a Juju 3.6 controller (`concierge prepare -p
#    microk8s`), unless a Juju controller is already reachable;
# 2. deploys istio-k8s (ambient mode) in its own model;
# 3. packs the beacon and the tester charms (scripts/pack.sh), unless BEACON_CHARM_PATH and
#    TESTER_CHARM_PATH name packed charms already;
# 4. deploys, in a demo model, the beacon and three testers: `receiver` and `sender` (related to
#    receiver's `inbound`: GET/POST on /foo and /bar/), both related to the beacon, so on the mesh;
#    and `stranger`, related to nothing, not even the beacon (on the mesh only with the beacon's
#    model-on-mesh);
# 5. sends real requests with the tester's `probe` action and prints what was allowed and denied
#    (docs/traffic-matrix.md says why); exits 1 if the traffic still differs after three minutes,
#    or if any expected row did not come back.
#
# Every model it uses gets automatically-retry-hooks=true (concierge's MicroK8s preset turns it off,
# and the charms' hooks restart their own pod, so a hook may fail once and must be retried).
# Re-running is safe: what exists is kept, and the table is printed again.
# Env:   QUICKSTART_MODEL (mesh-demo), ISTIO_MODEL (istio-system), ISTIO_K8S_CHANNEL (2/edge),
#        JUJU_CHANNEL (3.6/stable), MICROK8S_CHANNEL (1.32-strict/stable), BEACON_CHARM_PATH,
#        TESTER_CHARM_PATH.
# Clean up: juju destroy-model mesh-demo --no-prompt --destroy-storage
#           juju destroy-model istio-system --no-prompt --destroy-storage
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}
case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
    "") ;;
    *)
        echo "quickstart: unknown argument: $1" >&2
        usage >&2
        exit 2
        ;;
esac

die() {
    echo "quickstart: $*" >&2
    exit 1
}

# --- 0. The operating system, before anything is installed -----------------------------------
os_id="" os_version="" os_name="an unknown system (no /etc/os-release)"
if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091 # a system file, read only for ID, VERSION_ID and PRETTY_NAME
    os_id=$(. /etc/os-release && echo "${ID:-}")
    # shellcheck disable=SC1091
    os_version=$(. /etc/os-release && echo "${VERSION_ID:-}")
    # shellcheck disable=SC1091
    os_name=$(. /etc/os-release && echo "${PRETTY_NAME:-${ID:-?} ${VERSION_ID:-?}}")
fi
if [[ "$os_id" != ubuntu || ! "$os_version" =~ ^(22\.04|24\.04)$ ]]; then
    die "this script supports Ubuntu 22.04 and 24.04 only, and this is $os_name.
It relies on snaps (concierge, MicroK8s, Juju) as they are on those releases. On another system,
prepare MicroK8s and a Juju 3.6 controller yourself (docs/integration.md); the tests that need no
Juju run anywhere: scripts/test.sh."
fi

# Under sudo, concierge prepares Juju for the user who ran sudo ($SUDO_USER), not for root, so
# every juju command below (run as root) would find no controller: run as that user instead.
if [[ "$(id -u)" -eq 0 && -n "${SUDO_USER:-}" && "$SUDO_USER" != root ]]; then
    die "do not run this script through sudo: concierge would prepare Juju for $SUDO_USER, and the
script's juju commands, as root, would not find it. Run it as $SUDO_USER, without sudo (it uses
sudo itself for the steps that need root):
    bash $(printf '%q' "${BASH_SOURCE[0]}")"
fi

# Root runs the privileged steps itself; anyone else through sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "'$*' needs root: run this script as root, or install sudo"
    fi
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODEL=${QUICKSTART_MODEL:-mesh-demo}
ISTIO_MODEL=${ISTIO_MODEL:-istio-system}
ISTIO_CHANNEL=${ISTIO_K8S_CHANNEL:-2/edge}
JUJU_CHANNEL=${JUJU_CHANNEL:-3.6/stable}
# Kubernetes 1.32: supported by the istioctl that istio-k8s 2/edge runs (docs/integration.md).
MICROK8S_CHANNEL=${MICROK8S_CHANNEL:-1.32-strict/stable}
TESTERS=(receiver sender stranger)
MESH_MEMBERS=(receiver sender) # related to the beacon; stranger is related to nothing

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# --- 1. MicroK8s + Juju ------------------------------------------------------------------------
step "Preparing MicroK8s and a Juju controller"
if command -v juju >/dev/null && juju show-controller >/dev/null 2>&1; then
    echo "a Juju controller is reachable already: $(juju switch)"
else
    command -v snap >/dev/null || die "snapd is needed (apt-get install snapd, as root)"
    as_root snap install concierge --classic
    as_root concierge prepare -p microk8s --juju-channel="$JUJU_CHANNEL" \
        --microk8s-channel="$MICROK8S_CHANNEL"
    juju show-controller >/dev/null || die "concierge finished but no Juju controller is reachable"
fi

app_exists() { # model app
    juju status -m "$1" --format json | python3 -c \
        'import json, sys; sys.exit(0 if sys.argv[1] in json.load(sys.stdin).get("applications", {}) else 1)' "$2"
}
model_exists() {
    juju show-model "$1" >/dev/null 2>&1
}
integrate() { # model endpoint endpoint; an existing relation is fine
    local out
    if ! out=$(juju integrate -m "$1" "$2" "$3" 2>&1); then
        grep -q "already exists" <<<"$out" || die "juju integrate $2 $3: $out"
    fi
}
use_model() { # model [key=value...]: add it unless it exists; let Juju retry failed hooks there
    model_exists "$1" || juju add-model "$1" --no-switch
    juju model-config -m "$1" automatically-retry-hooks=true "${@:2}"
}
wait_active() { # model timeout: an error that Juju's retry clears is waited out, not fatal
    if ! juju wait-for model "$1" --timeout="$2" \
        --query='forEach(applications, app => app.status == "active")'; then
        juju status -m "$1" || true
        die "the applications in model $1 are not all active after $2 (status above)"
    fi
}

# --- 2. Istio ----------------------------------------------------------------------------------
step "Deploying istio-k8s ($ISTIO_CHANNEL) in model $ISTIO_MODEL"
use_model "$ISTIO_MODEL"
app_exists "$ISTIO_MODEL" istio-k8s ||
    juju deploy -m "$ISTIO_MODEL" istio-k8s --channel "$ISTIO_CHANNEL" --trust
wait_active "$ISTIO_MODEL" 20m

# --- 3. Charms ---------------------------------------------------------------------------------
step "Packing the beacon and the tester"
BEACON_CHARM=${BEACON_CHARM_PATH:-}
TESTER_CHARM=${TESTER_CHARM_PATH:-}
if [[ -z "$BEACON_CHARM" || -z "$TESTER_CHARM" ]]; then
    # The ubuntu@24.04 platform only (the charms also have ubuntu@22.04: docs/beacon.md, "Bases").
    export PACK_PLATFORM=${PACK_PLATFORM:-ubuntu-24.04-amd64}
    pack=(bash "$ROOT/scripts/pack.sh")
    # concierge adds the user to the lxd group, which this shell does not have yet.
    if [[ $EUID -ne 0 ]] && ! id -nG | grep -qw lxd && getent group lxd | grep -qw "$(id -un)"; then
        pack=(sg lxd -c "bash '$ROOT/scripts/pack.sh'")
    fi
    while IFS='=' read -r name path; do
        case "$name" in
            beacon) BEACON_CHARM=$path ;;
            tester) TESTER_CHARM=$path ;;
        esac
    done < <("${pack[@]}")
fi
[[ -f "$BEACON_CHARM" && -f "$TESTER_CHARM" ]] || die "packing did not produce both charms"
# Juju's snap is strictly confined: it has a /tmp of its own and reads no file outside the home
# folder, so every file handed to `juju` (the charms, the action's parameters) goes to the
# snap's common folder, wherever this checkout is.
if [[ "$(command -v juju)" == /snap/* ]]; then
    JUJU_FILES=$HOME/snap/juju/common
else
    JUJU_FILES=${TMPDIR:-/tmp}
fi
mkdir -p "$JUJU_FILES"
SCRATCH=$(mktemp -d -p "$JUJU_FILES" quickstart.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
cp "$BEACON_CHARM" "$SCRATCH/beacon.charm"
cp "$TESTER_CHARM" "$SCRATCH/tester.charm"
echo "beacon: $BEACON_CHARM"
echo "tester: $TESTER_CHARM"
IMAGE=$(sed -n 's/^[[:space:]]*upstream-source:[[:space:]]*//p' "$ROOT/charms/tester/charmcraft.yaml" | head -n 1)
RESOURCE=$(sed -n 's/^[[:space:]]*resource:[[:space:]]*//p' "$ROOT/charms/tester/charmcraft.yaml" | head -n 1)
[[ -n "$IMAGE" && -n "$RESOURCE" ]] || die "cannot read the tester's resource from its charmcraft.yaml"

# --- 4. Beacon and testers ---------------------------------------------------------------------
step "Deploying the beacon and three testers in model $MODEL"
# The beacon notices the waypoint ready on its next hook: update-status, every minute here.
use_model "$MODEL" update-status-hook-interval=1m
BEACON_IMAGE=$(sed -n 's/^[[:space:]]*upstream-source:[[:space:]]*//p' "$ROOT/charms/beacon/charmcraft.yaml" | head -n 1)
BEACON_RESOURCE=$(sed -n 's/^[[:space:]]*resource:[[:space:]]*//p' "$ROOT/charms/beacon/charmcraft.yaml" | head -n 1)
[[ -n "$BEACON_IMAGE" && -n "$BEACON_RESOURCE" ]] || die "cannot read the beacon's resource from its charmcraft.yaml"
app_exists "$MODEL" beacon ||
    juju deploy -m "$MODEL" "$SCRATCH/beacon.charm" beacon --trust --resource "$BEACON_RESOURCE=$BEACON_IMAGE"
for app in "${TESTERS[@]}"; do
    app_exists "$MODEL" "$app" ||
        juju deploy -m "$MODEL" "$SCRATCH/tester.charm" "$app" --trust --resource "$RESOURCE=$IMAGE"
done
for app in "${MESH_MEMBERS[@]}"; do
    integrate "$MODEL" beacon:service-mesh "$app:service-mesh"
done
integrate "$MODEL" sender:outbound receiver:inbound
wait_active "$MODEL" 20m

# --- 5. Real traffic ---------------------------------------------------------------------------
step "Sending requests with the tester's probe action"
SERVICE="http://receiver"
POD="http://receiver-0.receiver-endpoints.$MODEL.svc.cluster.local"
# stranger is on the mesh only while the whole model is: then the waypoint answers it with a 403;
# otherwise its request reaches receiver's pod directly, and ztunnel there refuses it.
if [[ "$(juju config -m "$MODEL" beacon model-on-mesh)" == true ]]; then
    STRANGER_TO_SERVICE=403
else
    STRANGER_TO_SERVICE=denied
fi
# unit|method|url|expected (HTTP status, or "denied" for a refused or reset connection)
CASES=(
    "sender/0|GET|$SERVICE:8080/foo|200"
    "sender/0|GET|$SERVICE:8081/foo|200"
    "sender/0|GET|$SERVICE:8080/bar/|200"
    "sender/0|POST|$SERVICE:8080/foo|200"
    "sender/0|DELETE|$SERVICE:8080/foo|403"
    "sender/0|GET|$SERVICE:8080/nonexistent|403"
    "sender/0|GET|$POD:8080/foo|denied"
    "stranger/0|GET|$SERVICE:8080/foo|$STRANGER_TO_SERVICE"
    "stranger/0|GET|$POD:8080/foo|denied"
)
probe_all() { # writes $SCRATCH/observed: one "unit|method|url|expected|outcome|status" line a case
    : >"$SCRATCH/observed"
    local unit
    for unit in sender/0 stranger/0; do
        printf '%s\n' "${CASES[@]}" | python3 -c '
import json, sys
unit = sys.argv[1]
rows = [line.rstrip("\n").split("|") for line in sys.stdin if line.startswith(unit + "|")]
requests = [{"url": url, "method": method, "timeout": 5} for _, method, url, _ in rows]
# a YAML block scalar keeps the JSON a string (juju parses action params as YAML)
print("requests: |\n  " + json.dumps(requests))
' "$unit" >"$SCRATCH/params.yaml" || return 1
        # Inside `until`, errexit is off: a failed step must end the attempt itself.
        juju run -m "$MODEL" "$unit" probe --params "$SCRATCH/params.yaml" --format json \
            --wait 2m >"$SCRATCH/result.json" || return 1
        printf '%s\n' "${CASES[@]}" | python3 -c '
import json, sys
unit, path = sys.argv[1], sys.argv[2]
rows = [line.rstrip("\n").split("|") for line in sys.stdin if line.startswith(unit + "|")]
task = next(iter(json.load(open(path)).values()))
results = json.loads(task["results"]["results"])
for (u, method, url, expected), result in zip(rows, results):
    print("|".join([u, method, url, expected, result["outcome"], str(result.get("status"))]))
' "$unit" "$SCRATCH/result.json" >>"$SCRATCH/observed" || return 1
    done
}

report() { # prints the table; exit status 0 only when every expected row came back and matched
    printf '%s\n' "${CASES[@]}" >"$SCRATCH/cases"
    python3 "$ROOT/scripts/quickstart_report.py" "$SCRATCH/cases" "$SCRATCH/observed"
}

# Labels and policies take effect asynchronously (pods restart when they join the mesh): retry
# until the traffic matches or three minutes have passed, then print what was seen.
deadline=$((SECONDS + 180))
until probe_all && report >/dev/null; do
    if ((SECONDS >= deadline)); then
        break
    fi
    echo "traffic not as expected yet, probing again in 10s"
    sleep 10
done
matched=0
report || matched=$?

cat <<EOF

Explore:   juju status -m $MODEL --relations
           juju run -m $MODEL sender/0 probe url=http://receiver:8080/foo
           juju config -m $MODEL beacon model-on-mesh=true   # the whole model on the mesh:
               # stranger joins it and then gets 403 from the waypoint; re-run this script to see
Why:       docs/traffic-matrix.md
Clean up:  juju destroy-model $MODEL --no-prompt --destroy-storage
EOF
exit "$matched"
