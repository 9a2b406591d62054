# Starting the real backends the tests need. Sourced by scripts/test.

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# Process groups of background backends, stopped when the calling script exits.
BACKGROUND_PGIDS=()
stop_background() {
  local pgid
  for pgid in "${BACKGROUND_PGIDS[@]}"; do
    kill -TERM -- -"$pgid" 2>/dev/null || true
  done
}
trap stop_background EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until `curl -fsS URL` answers, or the process group is gone.
wait_for_http() {
  local url=$1 pgid=$2 log=$3 what=$4
  for _ in $(seq 1 120); do
    if curl -fsS "$url" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 -- -"$pgid" 2>/dev/null || break
    sleep 1
  done
  cat "$log" >&2
  die "$what did not start (log above)"
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# PostgreSQL 15 on 127.0.0.1:5432 with password auth for user postgres.
# Exports POSTGRES_ADMIN_URL.
start_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! pg_lsclusters 2>/dev/null | grep -q '^15 '; then
    echo "PostgreSQL 15 not found; installing it"
    as_root apt-get update -qq || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 \
      || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql \
      || die "cannot install PostgreSQL"
  fi
  if ! pg_lsclusters | grep -qE '^15 +main +[0-9]+ +online'; then
    as_root pg_ctlcluster 15 main start || die "cannot start PostgreSQL (pg_ctlcluster 15 main start)"
  fi
  local port
  port=$(pg_lsclusters | awk '$1 == "15" && $2 == "main" { print $3 }')
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 1
  done
  pg_isready -q -h 127.0.0.1 -p "$port" || die "PostgreSQL did not become ready on port $port"
  local password="${POSTGRES_TEST_PASSWORD:-postgres}"
  as_root su postgres -c "psql -q -p $port -c \"ALTER USER postgres PASSWORD '$password'\"" >/dev/null \
    || die "cannot set the postgres password"
  export POSTGRES_ADMIN_URL="postgres://postgres:${password}@127.0.0.1:${port}/postgres"
  echo "PostgreSQL ready at 127.0.0.1:$port"
}

# The Tansu Kafka-protocol broker, built once into $HOME/.cache/tansu (about
# 7 minutes on 2 cores) and reused. Tests start their own brokers from it.
# Exports TANSU_BIN.
ensure_tansu() {
  local root="${TANSU_ROOT:-$HOME/.cache/tansu}"
  local bin="$root/bin/tansu"
  if [ ! -x "$bin" ] || ! "$bin" --help >/dev/null 2>&1; then
    echo "Tansu not cached; building it (cargo install tansu, several minutes)"
    mkdir -p "$root"
    # Its own target dir: never mixed with the project's build cache.
    CARGO_TARGET_DIR="$root/build" cargo install tansu --locked --features dynostore --root "$root" \
      || die "cannot build the Tansu broker (cargo install tansu)"
    rm -rf "$root/build"
  fi
  "$bin" --help >/dev/null 2>&1 || die "Tansu at $bin does not run"
  export TANSU_BIN="$bin"
  echo "Tansu ready: $bin"
}

# The Firestore emulator (Google Cloud CLI, Java 17) on a free port,
# enforcing firestore.rules for client requests (the services' admin
# requests bypass rules), stopped when the calling script exits. Exports
# FIRESTORE_EMULATOR_HOST.
start_firestore_emulator() {
  command -v gcloud >/dev/null 2>&1 || die "gcloud (Google Cloud CLI with the Firestore emulator) is not installed"
  command -v java >/dev/null 2>&1 || die "java is needed by the Firestore emulator"
  local port log
  port=$(free_port)
  log="${TMPDIR:-/tmp}/firestore-emulator-$port.log"
  setsid gcloud emulators firestore start --host-port="127.0.0.1:$port" --rules="$PWD/firestore.rules" >"$log" 2>&1 &
  BACKGROUND_PGIDS+=("$!")
  wait_for_http "http://127.0.0.1:$port/" "$!" "$log" "the Firestore emulator"
  export FIRESTORE_EMULATOR_HOST="127.0.0.1:$port"
  echo "Firestore emulator ready at $FIRESTORE_EMULATOR_HOST (rules: firestore.rules)"
}

# The Node packages of firebase/: the Firebase JS SDK, the rules test kit
# and firebase-tools (for the Auth emulator). npm's cache is outside the
# clone; nothing depends on it being there.
ensure_firebase_packages() {
  command -v npm >/dev/null 2>&1 || die "npm (Node.js) is needed for the Firebase tests"
  npm ci --prefix firebase --no-audit --no-fund --loglevel=error \
    || die "cannot install the Firebase packages (npm ci --prefix firebase)"
}

# The Firebase Auth emulator (firebase-tools) on a free port, for any
# project id, stopped when the calling script exits. Exports
# FIREBASE_AUTH_EMULATOR_HOST.
start_firebase_auth_emulator() {
  local port dir log
  port=$(free_port)
  dir=$(mktemp -d)
  log="${TMPDIR:-/tmp}/firebase-auth-emulator-$port.log"
  cat >"$dir/firebase.json" <<JSON
{"emulators": {"auth": {"host": "127.0.0.1", "port": $port}, "ui": {"enabled": false},
               "singleProjectMode": false}}
JSON
  (cd "$dir" && exec setsid "$OLDPWD/firebase/node_modules/.bin/firebase" emulators:start \
      --only auth --project demo-chat-tests --config "$dir/firebase.json") >"$log" 2>&1 &
  BACKGROUND_PGIDS+=("$!")
  wait_for_http "http://127.0.0.1:$port/" "$!" "$log" "the Firebase Auth emulator"
  export FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:$port"
  echo "Firebase Auth emulator ready at $FIREBASE_AUTH_EMULATOR_HOST"
}

# Debian's Chromium for the browser test (the machine image does not have it).
ensure_chromium() {
  if ! command -v chromium >/dev/null 2>&1; then
    echo "Chromium not found; installing Debian's chromium package"
    as_root apt-get update -qq || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || die "cannot install chromium"
  fi
  export CHROMIUM="$(command -v chromium)"
  echo "Chromium: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
}

# Tools for the offline deployment checks: docker-compose (Debian),
# kubernetes-validate and PyYAML (PyPI), kubectl (on the machine image).
ensure_deploy_tools() {
  if ! command -v docker-compose >/dev/null 2>&1; then
    echo "docker-compose not found; installing Debian's docker-compose package"
    as_root apt-get update -qq || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null \
      || die "cannot install docker-compose"
  fi
  if ! command -v kubernetes-validate >/dev/null 2>&1 || ! python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip install -q kubernetes-validate pyyaml || die "cannot install kubernetes-validate"
  fi
  command -v kubectl >/dev/null 2>&1 || die "kubectl is needed to render k8s/ (kubectl kustomize)"
}
