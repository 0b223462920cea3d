# Sourced by deploy/helm/install-tools.sh and deploy/s3/install-seaweedfs.sh: build what is missing in
# the foreground, or (--background) niced in the background with its pid in "$tools/building", which
# the tests wait on (tests/background_build.py). Quiet when nothing is missing.
# The caller sets `tools` (its cache), `what` ("the chart tools") and `tests` ("the chart tests"), and
# defines `todo_now` (prints what is left to build, nothing when all is there) and `build_todo` (builds
# the items given as arguments); then: background_build_main "$0" "${1:-}".

builder_running() { [ -s "$tools/building" ] && kill -0 "$(cat "$tools/building")" 2>/dev/null; }

background_build_main() {
  local script=$1 mode=$2 todo pidfile="$tools/building"
  todo=$(todo_now)
  [ -z "$todo" ] && exit 0
  if [ "$mode" = --background ]; then
    builder_running && exit 0
    command -v go >/dev/null || { echo "$what ($todo): no Go here; $tests skip"; exit 0; }
    echo "building $what ($todo) in the background, niced, into $tools" \
      "(log: $tools/logs/install.log); $tests wait for it"
    # Every descriptor goes to the log, so neither make nor whatever reads make's output waits for it.
    nice -n 19 bash "$script" --child </dev/null >"$tools/logs/install.log" 2>&1 &
    echo $! >"$pidfile"
    exit 0
  fi
  if [ "$mode" = --child ]; then
    echo $$ >"$pidfile"  # also written by the parent: whichever comes first, the tests see a live pid
    trap '[ "$(cat "$tools/building" 2>/dev/null)" = $$ ] && rm -f "$tools/building"' EXIT
  else
    # A background build already under way (make test) finishes what this would do: wait for it.
    while builder_running; do sleep 2; done
    todo=$(todo_now)
    [ -z "$todo" ] && exit 0
    echo "building $what ($todo) into $tools (logs: $tools/logs)"
  fi
  # shellcheck disable=SC2086  # the items are words
  build_todo $todo
  exit 0
}
