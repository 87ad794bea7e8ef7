#!/usr/bin/env bash
# The live suite against a local Forge built at /work/forge-neo or /work/forge-classic:
#   forge_live.sh neo|classic CHECKOUT [extra start flags]
# Links the test models (FORGE_DATA: models/Stable-diffusion/rand-sd15*.safetensors from make_rand_sd15.py and
# models/CapHuman from make_tiny_caphuman_files.py --sd15) and the caphuman-probe extension; installs CHECKOUT
# (a local git clone: its committed HEAD) through Extensions → Install from URL (install_from_url.py, so install.py
# runs); restarts the webui (Neo: "Apply and quit"; here a stop and a start) and runs tests/test_webui_integration.py
# with the extension's venv (CAPHUMAN_VENV). PYTEST_ARGS are passed on (e.g. "-k refiner").
set -e
HOST=$1; CHECKOUT=$(cd "$2" && pwd); shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${FORGE_DATA:-/work/forge-data}
case $HOST in neo) W=${FORGE_ROOT:-/work/forge-neo}/webui ;; classic) W=${FORGE_ROOT:-/work/forge-classic} ;; esac
LOG=${FORGE_LOG:-/tmp/forge-$HOST.log}
mkdir -p $W/models/Stable-diffusion
for f in $DATA/models/Stable-diffusion/*.safetensors; do ln -sf $f $W/models/Stable-diffusion/; done
ln -sfn $DATA/models/CapHuman $W/models/CapHuman
ln -sfn $HERE/caphuman-probe $W/extensions/caphuman-probe
NAME=$(basename "$CHECKOUT")
rm -rf "$W/extensions/$NAME" "$W/tmp/$NAME"

start() {
  bash $HERE/forge_start.sh $HOST "$@" >> $LOG 2>&1 &
  PID=$!
  for _ in $(seq 900); do
    curl -sf http://127.0.0.1:7860/sdapi/v1/cmd-flags > /dev/null && return 0
    kill -0 $PID 2> /dev/null || { tail -30 $LOG; return 1; }
    sleep 2
  done
  return 1
}
stop() { kill $PID; wait $PID 2> /dev/null || true; }

: > $LOG
start
"${CAPHUMAN_VENV:-$HOME/.venvs/caphuman}/bin/python" $HERE/install_from_url.py "$CHECKOUT" | tail -c 400
echo
stop
[ -f "$W/extensions/$NAME/scripts/caphuman_unit.py" ] || { echo "not installed"; exit 1; }
echo "== installed $(git -C "$W/extensions/$NAME" log --oneline -1)"
start "$@"
cd "$CHECKOUT"
set +e
CAPHUMAN_WEBUI_DIR=$W CAPHUMAN_WEBUI_HOST=$HOST "${CAPHUMAN_VENV:-$HOME/.venvs/caphuman}/bin/python" -m pytest -q -rA \
  -p no:cacheprovider tests/test_webui_integration.py $PYTEST_ARGS
RC=$?
stop
exit $RC
