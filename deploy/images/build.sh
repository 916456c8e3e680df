#!/usr/bin/env bash
# Builds the imrelay image (one image, every service: `python -m <module>`) with buildah, without pulling a
# base image: a minimal Debian root filesystem (debootstrap, from the Debian mirror), Debian's python3, and
# the workspace's wheels with their locked dependencies from PyPI. No compiler or package manager is left
# in the image; it runs as user 10001. Needs root (debootstrap, chroot) and buildah.
#
#   deploy/images/build.sh [image name]      (default: imrelay:<version>)
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=${UV:-$(command -v uv || echo "python3 -m uv")}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' shared/pyproject.toml | head -1)
IMAGE=${1:-imrelay:$VERSION}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=$(mktemp -d /tmp/imrelay-image-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "needs $tool (Debian package $tool)" >&2; exit 1; }
done

echo "== wheels and locked requirements"
$UV build --all-packages --wheel --out-dir "$WORK/wheels" -q
$UV export --frozen --no-dev --all-packages --no-emit-workspace --no-hashes -q -o "$WORK/requirements.txt"

echo "== root filesystem (Debian bookworm, minbase + python3)"
ROOT="$WORK/rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOT" "$MIRROR" \
    >"$WORK/debootstrap.log"
mkdir -p "$ROOT/tmp/build" && cp "$WORK"/wheels/*.whl "$WORK/requirements.txt" "$ROOT/tmp/build/"
# the locked dependencies as wheels for the image's Python (Debian bookworm: CPython 3.11, glibc 2.36),
# fetched with this machine's own package client; the image installs them offline
python3 -m pip download --quiet --dest "$ROOT/tmp/build" --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform linux_x86_64 --platform any \
    -r "$WORK/requirements.txt"

echo "== python environment /opt/imrelay"
chroot "$ROOT" /usr/bin/python3 -m venv /opt/imrelay
WHEELS=$(cd "$ROOT/tmp/build" && ls ./*.whl | sed 's|^\./|/tmp/build/|')
# shellcheck disable=SC2086  # one argument per wheel
chroot "$ROOT" /opt/imrelay/bin/pip install --quiet --no-cache-dir --disable-pip-version-check \
    --no-index --find-links /tmp/build -r /tmp/build/requirements.txt $WHEELS
chroot "$ROOT" /opt/imrelay/bin/python -c "import imrelay_ingress, imrelay_worker, imrelay_sender, imrelay_sim"
chroot "$ROOT" /opt/imrelay/bin/pip uninstall --quiet -y pip setuptools >/dev/null 2>&1 || true

echo "== user and clean-up"
echo "imrelay:x:10001:10001:imrelay:/home/imrelay:/usr/sbin/nologin" >>"$ROOT/etc/passwd"
echo "imrelay:x:10001:" >>"$ROOT/etc/group"
mkdir -p "$ROOT/home/imrelay" && chown 10001:10001 "$ROOT/home/imrelay"
rm -rf "$ROOT/tmp/build" "$ROOT/var/cache/apt" "$ROOT/var/lib/apt/lists" "$ROOT/usr/share/doc" \
       "$ROOT/usr/share/man"
rm -f "$ROOT/usr/bin/apt" "$ROOT/usr/bin/apt-get" "$ROOT/usr/bin/dpkg"

echo "== image $IMAGE"
CTR=$(buildah from scratch)
buildah copy --quiet "$CTR" "$ROOT" / >/dev/null
buildah config --user 10001:10001 --workingdir /home/imrelay \
    --env PATH=/opt/imrelay/bin:/usr/local/bin:/usr/bin:/bin --env PYTHONUNBUFFERED=1 \
    --cmd '["python", "-m", "imrelay_ingress"]' \
    --label org.opencontainers.image.title=imrelay --label "org.opencontainers.image.version=$VERSION" \
    "$CTR"
buildah commit --quiet "$CTR" "$IMAGE" >/dev/null
buildah rm "$CTR" >/dev/null
echo "built $IMAGE (user $(buildah inspect --format '{{.OCIv1.Config.User}}' "$IMAGE"))"
