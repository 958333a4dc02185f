#!/usr/bin/env bash
# The main job: park a file in a node's shared memory with `grid memory ...` and get it back.
# Runs on the cluster that RAY_ADDRESS names, else the one running on this host, else the
# embedded local cluster, which the first command starts (and which keeps running afterwards:
# `grid cluster stop` ends it).
set -euo pipefail
SIZE="${SIZE:-64MiB}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

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
