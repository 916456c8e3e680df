#!/usr/bin/env bash
# Checks that a release tag (vX.Y.Z) names the version every package and the Helm chart carry:
# each pyproject.toml, imrelay.__version__, and the chart's version and appVersion (the chart's default
# image tag is its appVersion, so the image the release publishes is the one the chart installs).
#
#   tools/release/check-version.sh v0.1.0
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:?usage: $0 vX.Y.Z}
version=${tag#v}
if [ "$tag" = "$version" ] || ! [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+([.+-][0-9A-Za-z.+-]+)?$ ]]; then
    echo "error: $tag is not a release tag (vX.Y.Z)" >&2
    exit 1
fi

found() {  # name, version found
    if [ "$2" = "$version" ]; then
        echo "ok    $1: $2"
    else
        echo "error $1: ${2:-<none>}, the tag says $version" >&2
        bad=1
    fi
}
bad=0
for file in pyproject.toml shared/pyproject.toml services/*/pyproject.toml; do
    found "$file" "$(sed -n 's/^version = "\(.*\)"$/\1/p' "$file" | head -1)"
done
found shared/src/imrelay/__init__.py \
    "$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' shared/src/imrelay/__init__.py)"
chart=deploy/helm/imrelay/Chart.yaml
for key in version appVersion; do
    found "$chart $key" "$(sed -nE "s/^$key:[[:space:]]*\"?([^\"[:space:]]*)\"?[[:space:]]*\$/\1/p" "$chart")"
done
exit "$bad"
