#!/usr/bin/env bash
# build-and-push.sh — a CI recipe: install a released plinth, build image
# specs, push every built image to an OCI registry, and write the pinned
# references the boot server takes (plinth serve --image REF ...).
#
#   PLINTH_VERSION  the plinth release to install (go install …@VERSION)
#   REGISTRY        repository prefix, e.g. registry.example/plinth
#   TAG             tag for this build (default: the commit, or the date)
#   SPECS           image specs to build (default: images/*.toml)
#
# Needs Go on PATH and registry credentials where Docker keeps them
# (docker login REGISTRY, or DOCKER_CONFIG); a private registry CA through
# SSL_CERT_FILE. Output: artifacts/ and pushed.txt (one REPO@sha256:… per line).
set -euo pipefail
: "${PLINTH_VERSION:?set PLINTH_VERSION, e.g. v0.1.0}"
: "${REGISTRY:?set REGISTRY, e.g. registry.example/plinth}"
TAG=${TAG:-${GITHUB_SHA:-${CI_COMMIT_SHA:-$(date -u +%Y%m%d%H%M%S)}}}
SPECS=${SPECS:-images/*.toml}

export GOBIN=${GOBIN:-$PWD/.bin}
go install "github.com/plinth-dev/plinth/cmd/plinth@$PLINTH_VERSION"
plinth=$GOBIN/plinth

# shellcheck disable=SC2086 # SPECS is a glob
"$plinth" build --out artifacts $SPECS

: >pushed.txt.tmp
for dir in artifacts/*/; do
	name=$(basename "$dir")
	"$plinth" push "$dir" "$REGISTRY/$name:$TAG" | tee -a pushed.txt.tmp
done
mv pushed.txt.tmp pushed.txt
echo "serve them with:"
echo "  plinth serve --site SITE $(sed 's/^/--image /' pushed.txt | tr '\n' ' ')"
