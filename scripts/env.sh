# Sourced by scripts/test and scripts/demo: makes sure the machine and the virtualenv are ready.
#
# ensure_debian_packages PKG:FILE ...  installs each Debian package whose FILE is missing (as root,
#                                      or through sudo), running `apt-get update` once, only if needed.
# install_debian_packages PKG ...      installs the packages unconditionally.
# ensure_venv [dev|demo]               creates .venv with the project and those extras, reinstalling
#                                      only when pyproject.toml or the extras changed (a stamp in .venv).

ensure_debian_packages() {
    local missing=() spec
    for spec in "$@"; do
        [ -e "${spec#*:}" ] || missing+=("${spec%%:*}")
    done
    [ ${#missing[@]} -eq 0 ] || install_debian_packages "${missing[@]}"
}

install_debian_packages() {
    local missing=("$@") sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; return 1; }
        sudo="sudo"
    fi
    echo "installing Debian packages: ${missing[*]}" >&2
    $sudo apt-get update -qq
    # The packaged services (Mosquitto on :1883) may start; tests never use them, they start their
    # own servers on free loopback ports.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

python_for_venv() {
    local py
    for py in python3.13 python3.12 python3.11 python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    echo "Python >= 3.11 is required" >&2
    return 1
}

ensure_venv() {
    # $1: the extras to install, "dev" (tests, linters) or "demo" (the embedded broker only).
    # A venv with "dev" also serves the demo ("dev" includes the broker), never the other way.
    local extras=${1:-dev} py stamp have
    py=$(python_for_venv)
    if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
        install_debian_packages python3-venv
    fi
    stamp=$(sha256sum pyproject.toml | cut -d' ' -f1)
    have=$(cat .venv/.stamp 2>/dev/null || true)
    if [ -x .venv/bin/python ] && { [ "$have" = "$stamp dev" ] || [ "$have" = "$stamp $extras" ]; }; then
        return 0
    fi
    echo "preparing the virtualenv in .venv ($extras)" >&2
    [ -x .venv/bin/python ] || "$py" -m venv .venv
    .venv/bin/python -m pip install -q -e ".[$extras]"
    .venv/bin/python -c 'import gateway.cli, paho.mqtt, pymodbus, adafruit_scd4x, influxdb_client, amqtt'
    echo "$stamp $extras" > .venv/.stamp
}
