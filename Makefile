# plinth — build, test and demo targets. Every target installs what it needs
# from Debian's packages (as root) and makes its own fixtures, so a fresh
# Debian machine needs nothing but Go and this tree.

SHELL := /bin/bash
GO ?= go
export PLINTH_FIXTURES ?= $(HOME)/.cache/plinth/fixtures
FIX := build/fixtures
PLINTH := bin/plinth

# Debian packages the build, the tests and the demo use.
DEB_PKGS := qemu-system-x86 qemu-utils squashfs-tools-ng debootstrap ipxe ovmf \
	zstd kmod cpio iproute2 chromium grub-pc-bin grub-efi-amd64-bin fdisk e2fsprogs minisign iputils-ping

.PHONY: all deps fixtures stack-fixtures plinth images demo demo-expect test unit qemu-test e2e conformance airgap-test cluster bench bench-serve fuzz clean

all: plinth

# need_debs: apt-get install those of the Debian packages $(1) not installed yet.
need_debs = for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$p; done

## deps: install the Debian packages plinth needs (skips what is installed)
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root (apt-get install $$missing)" >&2; exit 1; fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

## plinth: the CLI at bin/plinth
plinth:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(PLINTH) ./cmd/plinth

## fixtures: Debian kernel + modules and a Debian base with systemd, as local OCI layouts;
## the reference OCI registry (distribution) built from its Go module
fixtures: deps plinth
	@mkdir -p build $(PLINTH_FIXTURES)
	@ln -sfn $(PLINTH_FIXTURES) $(FIX)
	qemu-tests/fixtures/kernel.sh $(PLINTH_FIXTURES)
	qemu-tests/fixtures/debian-base.sh $(PLINTH_FIXTURES)
	qemu-tests/fixtures/registry.sh $(PLINTH_FIXTURES)
	$(PLINTH) pack --to oci:$(FIX)/oci:debian-base tar:$(FIX)/debian-base.tar

## stack-fixtures: etcd, flanneld and Kubernetes built from their Go modules, Debian's
## docker.io/containerd/runc/CNI, the kernel's modules and the pause/probe images, as
## tags of $(FIX)/oci (cold ~20 min on 2 cores, a few seconds when done; not part of `make test`)
stack-fixtures: fixtures
	@$(call need_debs,gcc libc6-dev)
	PLINTH=$(PLINTH) qemu-tests/fixtures/stack.sh $(PLINTH_FIXTURES)

## images: build the stock images into artifacts/
images: fixtures stack-fixtures
	$(PLINTH) build --out artifacts images/*.toml

## demo: the main job — build the stock images and netboot a QEMU cluster from them
demo: demo-expect images
	$(PLINTH) qemu up --until-ready --artifacts artifacts profiles/examples/demo

# What a user waits for, measured on a fresh 2-core Debian machine under TCG
# (README, "The two commands"): said once, before the long part starts.
demo-expect:
	@if [ -f $(PLINTH_FIXTURES)/stack/layers/.key ]; then \
		echo "make demo: stack fixtures cached; images (~5 min after a change) and the netboot of 3 machines (~9 min under TCG on 2 cores) follow"; \
	else \
		echo "make demo: first run on this machine: 20-40 min on 2 cores (stack fixtures 10-25 min, images 3-6 min, netboot of 3 machines ~7-9 min under TCG)"; \
	fi

## test: unit tests, fuzz seeds, the QEMU smoke boot and the PXE netboot (the README's test command)
test: fixtures unit qemu-test

unit:
	@mkdir -p build; $(GO) mod tidy -diff >build/tidy.diff 2>build/tidy.log || { cat build/tidy.diff; grep -v '^go: downloading' build/tidy.log; echo "make unit: go.mod/go.sum are not what go mod tidy makes them (diff above)"; exit 1; }
	$(GO) vet ./...
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v "/qemu-tests$$")

qemu-test:
	PLINTH_QEMU_TESTS=1 $(GO) test -count=1 -timeout 40m -v ./qemu-tests/ 2>&1 | tee build/qemu-test.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|figure:'; exit $${PIPESTATUS[0]}

## airgap-test: the air-gap test with the far side also rebuilding offline from the bundle's mirror (+~4 min)
airgap-test: fixtures
	@mkdir -p build
	PLINTH_QEMU_TESTS=1 PLINTH_AIRGAP_BUILD=1 $(GO) test -count=1 -timeout 40m -v -run 'TestAirgap' ./qemu-tests/ 2>&1 | tee build/airgap-test.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|figure:'; exit $${PIPESTATUS[0]}

## e2e: the whole cluster in QEMU, as two scenarios, on blank state disks: 3 etcd members (a power cut, a disk replaced,
## a 4th member refusing a foreign disk then joining), then 1 etcd + 1 master + 2 minions (a power cut, a snapshot restored), then
## 1 etcd + 2 masters + 1 minion (the API name: round robin, a master killed, the boot server restarted and away 10 min); long
e2e: stack-fixtures
	@mkdir -p build
	PLINTH_E2E=1 $(GO) test -count=1 -v -run 'TestJoinAgainstRealEtcd|TestEtcdTakesEachIdentityOnlyForItsKeys|TestPromoteGoesToTheLeaderWithAuthOn' ./initramfs/firstboot/
	PLINTH_QEMU_TESTS=1 PLINTH_E2E=1 $(GO) test -count=1 -timeout 150m -v -run 'TestEtcdE2E|TestClusterE2E|TestHAE2E' ./qemu-tests/ 2>&1 | tee build/e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|figure:|boot state|listens on|pod IPs|probe-'; exit $${PIPESTATUS[0]}

## conformance: Kubernetes' own conformance tests (e2e.test v1.35.4 and the test images it runs, built here, no
## registry) on etcd-1, master-1, minion-1 and minion-2 of the QEMU lab; prints ran/passed/failed/skipped, writes
## build/conformance/junit_01.xml and summary.txt. PLINTH_CONFORMANCE_FOCUS=REGEX narrows it. Hours under TCG.
conformance: stack-fixtures
	@$(call need_debs,make bzip2 curl)
	PLINTH=$(PLINTH) qemu-tests/fixtures/stack/conformance.sh $(PLINTH_FIXTURES)
	@mkdir -p build
	PLINTH_QEMU_TESTS=1 PLINTH_CONFORMANCE=1 $(GO) test -count=1 -timeout 10h -v -run 'TestConformance$$' ./qemu-tests/ 2>&1 | tee build/conformance.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|figure:|skipped [0-9]|FAILED'; exit $${PIPESTATUS[0]}

## cluster: build the stock images and netboot the QEMU lab site as a cluster (runs until interrupted)
cluster: images
	$(PLINTH) qemu up --artifacts artifacts profiles/examples/qemu-lab

## bench: build and serving benchmarks (prints figures)
bench: fixtures
	$(GO) test -run '^$$' -bench . -benchtime 1x ./builder/...

clean:
	rm -rf bin artifacts build

## fuzz: every fuzz target for FUZZTIME each (default 60s; about 17 min), executions and crashes per target
fuzz:
	GO=$(GO) ./scripts/fuzz.sh

## bench-serve: plinth serve against nginx, 100 MB artifact, 200 and 500 clients (prints figures)
bench-serve: deps
	@command -v nginx >/dev/null && command -v wrk >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light wrk)
	$(GO) run ./bootserver/bench
