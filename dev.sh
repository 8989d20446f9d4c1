#!/usr/bin/env bash
# Developer entry point (see README.rst). Creates ./.venv and installs the project on first use.
#   ./dev.sh test [pytest arguments]   run the test suite
#   ./dev.sh demo [DIR]                simulate a membrane-like dataset, refine it uniform and NU, report
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PYTHON=${PYTHON:-python3}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    # Reinstall only when the packaging changed since the last install.
    if [ ! -f "$VENV/.installed" ] || [ setup.py -nt "$VENV/.installed" ] \
            || [ pyproject.toml -nt "$VENV/.installed" ]; then
        "$VENV/bin/python" -m pip install -e ".[test]"
        touch "$VENV/.installed"
    fi
}

usage() {
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
    test)
        shift
        ensure_venv
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    demo)
        out=${2:-demo-output}
        # A folder made by an earlier demo (marked) is replaced; any other non-empty one is
        # refused, never touched.
        if [ -e "$out" ] && [ ! -d "$out" ]; then
            echo "demo: $out is a file, not a folder; give a folder: ./dev.sh demo DIR" >&2
            exit 2
        elif [ -f "$out/.nonuniform-demo" ]; then
            rm -rf "$out"
        elif [ -d "$out" ] && [ -n "$(ls -A "$out")" ]; then
            echo "demo: $out exists and is not empty; give another folder: ./dev.sh demo DIR" >&2
            exit 2
        fi
        ensure_venv
        if ! mkdir -p "$out" 2>/dev/null; then
            echo "demo: cannot create the folder $out; give another: ./dev.sh demo DIR" >&2
            exit 2
        fi
        touch "$out/.nonuniform-demo"
        "$VENV/bin/nonuniform" demo --out "$out/run"
        echo "demo outputs in $out/run/ (report: $out/run/report.md)"
        ;;
    *)
        usage
        exit 2
        ;;
esac
