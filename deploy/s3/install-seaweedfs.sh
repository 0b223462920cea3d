#!/usr/bin/env bash
# SeaweedFS's `weed`, the S3-compatible server the S3 artifact store's integration tests start
# (tests/seaweedfs.py), built from the Go module proxy into a cache: quiet when it is there, one line
# when it builds, and a line for whatever fails (those tests then skip and say why).
#   deploy/s3/weed  the module that pins github.com/seaweedfs/seaweedfs (a `tool` of its go.mod, with the
#                   replace SeaweedFS's go.mod needs: `go install module@version` refuses one that has it)
#   --background    start the build niced in the background and return at once; the tests wait for it
#                   (its pid is in $EDGESTREAM_S3_TOOLS/building)
#   EDGESTREAM_S3_TOOLS  the cache (default ~/.cache/edgestream/s3-tools); the tests read the same variable
# GOFLAGS, GOMODCACHE and the proxy are the environment's. The build always runs under `nice -n 19`.
# Measured cold (2026-12-04, the shared 2-core box, other test runs beside it): the modules' download
# 1 min (+3.5 GB of module cache), the build 8.6 min wall, 7.5 min of CPU, 2.6 GB peak memory (+1.8 GB
# of build cache); weed 4.53 is a 222 MiB binary. Warm: nothing is rebuilt.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tools=${EDGESTREAM_S3_TOOLS:-$HOME/.cache/edgestream/s3-tools}
mkdir -p "$tools/bin" "$tools/logs"

# weed is rebuilt when the pinned module changes: the stamp is named by the hash of go.mod and go.sum.
stamp() { echo "$tools/bin/.weed-$(cat "$here"/weed/go.mod "$here"/weed/go.sum | sha256sum | cut -c1-16)"; }
built() { [ -x "$tools/bin/weed" ] && [ -e "$(stamp)" ]; }

build_weed() {
  command -v go >/dev/null || { echo "weed: no Go here; the S3 integration tests skip"; return 1; }
  local started=$SECONDS
  if (cd "$here/weed" && nice -n 19 go build -trimpath -o "$tools/bin/weed.new" github.com/seaweedfs/seaweedfs/weed) \
      >"$tools/logs/weed.log" 2>&1 && mv -f "$tools/bin/weed.new" "$tools/bin/weed"; then
    rm -f "$tools"/bin/.weed-* && touch "$(stamp)"
    echo "weed: built in $((SECONDS - started)) s into $tools/bin/weed" >>"$tools/logs/weed.log"
  else
    rm -f "$tools/bin/weed.new"
    echo "weed: the build failed (see $tools/logs/weed.log); the S3 integration tests skip"
    tail -3 "$tools/logs/weed.log"
    return 1
  fi
}

what="SeaweedFS's weed" tests="the S3 integration tests"
todo_now() { built || echo weed; }
build_todo() { build_weed; }
# shellcheck source=../lib/background-build.sh
. "$here/../lib/background-build.sh"
background_build_main "$0" "${1:-}"
