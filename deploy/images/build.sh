#!/usr/bin/env bash
# Builds the imrelay image (one image, every service: `python -m <module>`) with the engine present:
#
# * docker or podman (a running engine that can pull python:3.11-slim): deploy/images/Dockerfile;
# * otherwise buildah, without pulling any base image: a minimal Debian root filesystem (debootstrap, from
#   the Debian mirror), Debian's python3, and the workspace's wheels with their locked dependencies from
#   PyPI. Needs root (debootstrap, chroot), buildah and debootstrap.
#
# Either way no compiler or package manager is left in the image and it runs as user 10001.
#
#   deploy/images/build.sh [image name]      (default: imrelay:<version>)
#   IMAGE_ENGINE=docker|podman|buildah       to choose the engine instead of the first one that works
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=${UV:-$(command -v uv || echo "python3 -m uv")}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' shared/pyproject.toml | head -1)
IMAGE=${1:-imrelay:$VERSION}

ENGINE=${IMAGE_ENGINE:-}
if [ -z "$ENGINE" ]; then
    for candidate in docker podman; do
        if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then
            ENGINE=$candidate && break
        fi
    done
    ENGINE=${ENGINE:-buildah}
fi
if [ "$ENGINE" != buildah ]; then
    echo "== $ENGINE build (deploy/images/Dockerfile)"
    "$ENGINE" build -f deploy/images/Dockerfile -t "$IMAGE" .
    echo "built $IMAGE (user $("$ENGINE" image inspect --format '{{.Config.User}}' "$IMAGE"))"
    exit 0
fi
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
# fetched with pip (run by uv, whatever the interpreter on PATH); the image installs them offline
# Pure-Python dependencies published only as source (nkeys) are built into wheels here first.
SOURCE_ONLY="nkeys"
for name in $SOURCE_ONLY; do
    grep -i "^$name==" "$WORK/requirements.txt" >>"$WORK/source-only.txt" || true
done
grep -v -i -f <(sed 's/==.*//; s/^/^/; s/$/==/' "$WORK/source-only.txt") "$WORK/requirements.txt" \
    >"$WORK/binary.txt" || true
if [ -s "$WORK/source-only.txt" ]; then
    $UV tool run --quiet --from pip pip wheel --quiet --disable-pip-version-check --no-deps \
        --wheel-dir "$ROOT/tmp/build" -r "$WORK/source-only.txt"
fi
$UV tool run --quiet --from pip pip download --quiet --disable-pip-version-check --dest "$ROOT/tmp/build" --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform linux_x86_64 --platform any \
    -r "$WORK/binary.txt"

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
