#!/usr/bin/env bash
# The image as a runc bundle, for where podman is not (the VM tier's guest): skopeo copies the OCI
# archive ($1, build/mptcpize-py-image.tar) into an OCI layout, umoci unpacks it into
# $STATE_DIR/image-bundle (rootfs/ and umoci's config.json; the guest sees /opt). Skipped when the
# bundle already holds this archive (its sha256 is kept beside it). Prints the bundle's path.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/config.sh
archive=${1:?usage: scripts/image-bundle.sh ARCHIVE}
bundle=${IMAGE_BUNDLE:-$STATE_DIR/image-bundle}
sum=$(sha256sum < "$archive" | cut -d' ' -f1)
if [ "$(cat "$bundle/.archive-sha256" 2>/dev/null)" != "$sum" ]; then
    printf 'image-bundle: unpacking %s into %s\n' "$archive" "$bundle" >&2
    work=$(mktemp -d "${TMPDIR:-/tmp}/mptcpize-oci.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    skopeo copy --quiet "oci-archive:$archive" "oci:$work/layout:image"
    rm -rf "$bundle"
    umoci unpack --image "$work/layout:image" "$bundle" >&2
    echo "$sum" > "$bundle/.archive-sha256"
fi
echo "$bundle"
