#!/usr/bin/env bash
# The main job: park a file in a node's shared memory with `grid memory ...` and get it back.
#
# With RAY_ADDRESS set, it runs on that cluster and leaves it running. Otherwise it starts a
# cluster of its own, `grid cluster start --nodes gpu1,gpu2` (the nodes the README's tour names),
# with its runtime folder in a temporary folder of its own, so it neither meets nor stops a
# cluster you run; and it stops that cluster at the end, also when a step fails. Either way it
# leaves no block and no cluster behind: the README's tour then starts its own.
set -euo pipefail
SIZE="${SIZE:-64MiB}"
work="$(mktemp -d /tmp/grid-demo.XXXXXX)"  # under /tmp: Ray's socket paths must stay short
started=""

finish() {
    if [ -n "$started" ]; then
        echo "== grid cluster stop"
        grid cluster stop || true
    fi
    rm -rf "$work"
}
trap finish EXIT

if [ -z "${RAY_ADDRESS:-}" ]; then
    export TMPDIR="$work"  # the runtime folder (records, token, Ray's sessions) goes in here
    unset XDG_RUNTIME_DIR
    echo "== grid cluster start --nodes gpu1,gpu2"
    started=1
    grid cluster start --nodes gpu1,gpu2
fi

head -c "$SIZE" /dev/urandom > "$work/weights.bin"

echo "== grid memory store demo-weights ($(stat -c %s "$work/weights.bin") bytes)"
block_id="$(grid memory store "demo-weights-$$" "$work/weights.bin")"
echo "stored in $block_id"

echo "== grid memory list-objects"
grid memory list-objects

echo "== grid memory retrieve $block_id --output ..."
grid memory retrieve "$block_id" --output "$work/back.bin"

if cmp -s "$work/weights.bin" "$work/back.bin"; then
    echo "round trip OK: $(sha256sum < "$work/back.bin" | cut -c1-16)… matches"
else
    echo "error: the retrieved bytes differ from the stored file" >&2
    exit 1
fi

echo "== grid memory deallocate $block_id"
grid memory deallocate "$block_id"
