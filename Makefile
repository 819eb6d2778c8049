# agentauthz — run `make help` for the targets.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
export CGO_ENABLED := 0
# Every target builds with the toolchain go.mod names (its toolchain line),
# which the go command fetches from the module proxy on first use: also on
# machines whose go.env says GOTOOLCHAIN=local, and for tools/ too.
export GOTOOLCHAIN := $(shell sed -n 's/^toolchain //p' go.mod)

GO        ?= go
BIN       := bin
DATA_DIR  ?= .agentauthz
FUZZTIME  ?= 5m
PKGS      := ./...
# Developer tools pinned in tools/go.mod, apart from the product's modules.
TOOL      := $(GO) tool -modfile=tools/go.mod
# The packages with concurrency, run under the race detector by .ci/run.
RACE_PKGS := ./internal/decisionlog/... ./internal/revocation/... ./internal/policy/... ./internal/extauthz/... ./internal/server/...

.PHONY: help build release run test race race-ci bench bench-fleet bench-store bench-console bench-report policy-test bundle fuzz mutate soak lint vulncheck fmt tidy-check clean

help: ## show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# agentauthz version reports the commit (Go's VCS stamping, which skips git
# worktrees; else buildCommit) and the build date (Go records none itself).
LDFLAGS := -s -w -X github.com/agentauthz/agentauthz/internal/cli.buildDate=$(shell date -u +%Y-%m-%dT%H:%M:%SZ) \
  -X github.com/agentauthz/agentauthz/internal/cli.buildCommit=$(shell git rev-parse HEAD 2>/dev/null)
GOBUILD := $(GO) build -trimpath -buildvcs=auto -ldflags '$(LDFLAGS)'

build: ## build bin/agentauthz
	$(GOBUILD) -o $(BIN)/agentauthz ./cmd/agentauthz

# make release: static binaries (cgo off) for these platforms in
# $(BIN)/release, their SHA-256 sums, and a CycloneDX SBOM of the binary's
# modules from cyclonedx-gomod (pinned in tools/go.mod). Run it from a clone:
# in a git worktree cyclonedx-gomod cannot read the module's version.
RELEASE_PLATFORMS := linux/amd64 linux/arm64 darwin/arm64
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

release: ## cross-build static binaries (RELEASE_PLATFORMS) with SHA256SUMS and a CycloneDX SBOM into $(BIN)/release
	rm -rf $(BIN)/release && mkdir -p $(BIN)/release
	for p in $(RELEASE_PLATFORMS); do \
	  GOOS=$${p%/*} GOARCH=$${p#*/} $(GOBUILD) -o $(BIN)/release/agentauthz-$(VERSION)-$${p%/*}-$${p#*/} ./cmd/agentauthz || exit 1; \
	done
	$(TOOL) cyclonedx-gomod app -json -main cmd/agentauthz -output $(BIN)/release/agentauthz-$(VERSION).cdx.json .
	cd $(BIN)/release && sha256sum agentauthz-* > SHA256SUMS && cat SHA256SUMS

# make run listens on loopback only (it serves a dev CA's agents); e.g.
# make run GRPC_ADDR=:9191 to accept other hosts.
GRPC_ADDR ?= 127.0.0.1:9191
HTTP_ADDR ?= 127.0.0.1:9192

# make run serves the policies built into the binary; POLICIES=policies
# serves this working copy instead, reloaded on every edit.
POLICIES ?=

run: build ## start the decision service with a dev CA and sample agents in $(DATA_DIR), on GRPC_ADDR/HTTP_ADDR (loopback)
	$(BIN)/agentauthz serve --dev --data-dir $(DATA_DIR) --grpc-addr $(GRPC_ADDR) --http-addr $(HTTP_ADDR) \
	  $(if $(POLICIES),--policies $(POLICIES))

test: ## run every test (unit, policy, fixtures, CLI scripts, end-to-end, tools/)
	$(GO) test -count=1 -timeout 12m $(PKGS)
	$(GO) -C tools test -count=1 ./...

race: ## run the tests with the race detector (needs cgo)
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m $(PKGS)

bench: build ## run the go benchmarks, revocation propagation and the load harness
	$(GO) test -run='^$$' -bench=. -benchmem -count=1 ./internal/...
	$(GO) test -run='^$$' -bench=RevocationPropagation -benchtime=1x ./test/e2e
	$(BIN)/agentauthz bench --policies policies --duration 10s --warmup 2s --profile-dir $(BIN)/bench \
	  --out $(BIN)/bench/report.md --json $(BIN)/bench/report.json
	$(MAKE) bench-fleet

bench-fleet: build ## the caches' curve over fleets of 1k..1M agents with a Zipf skew (docs/performance.md, "Caches")
	$(BIN)/agentauthz bench --policies policies --agents 1000,10000,100000,1000000 --zipf 1.1 --out $(BIN)/bench/fleet.md

bench-store: ## the central decision store's queries over 10 million records on SQLite and PostgreSQL (long; ~20 GB in $TMPDIR)
	AGENTAUTHZ_BENCH_RECORDS=10000000 $(GO) test -run='^$$' -bench=Find -benchtime=2000x -timeout 3h -v ./internal/recordstore

bench-console: ## every console page over 10,000 agents and 10 million records on SQLite and PostgreSQL (long; ~20 GB in $TMPDIR)
	AGENTAUTHZ_BENCH_AGENTS=10000 AGENTAUTHZ_BENCH_RECORDS=10000000 $(GO) test -run='^$$' -bench=Render -benchtime=20x -timeout 3h -v ./internal/console

bench-report: ## the evidence pack (audit report) over 10 million records (long; a 6.7 GB log written once in $TMPDIR/agentauthz-report-bench)
	AGENTAUTHZ_REPORT_RECORDS=10000000 AGENTAUTHZ_REPORT_LOG_DIR=$${TMPDIR:-/tmp}/agentauthz-report-bench $(GO) test -run='^$$' -bench=BenchmarkReport -benchtime=1x -timeout 2h ./internal/evidence

# The stock opa CLI, pinned by the tool directive in go.mod: the same OPA
# version that serve embeds, built on first use from a fresh clone.
OPA := $(GO) tool opa

policy-test: ## run the shipped policy tests with the stock opa CLI (pinned in go.mod)
	$(OPA) test policies -v
	$(OPA) test policies --coverage --format=json | $(GO) -C tools run ./policycoverage -min 90

SIGNING_KEY ?= $(DATA_DIR)/bundle-signing.key

bundle: ## build bundles/agentauthz.tar.gz, revision = git commit, signed with SIGNING_KEY (a dev key is made if missing)
	@test -f $(SIGNING_KEY) || { mkdir -p $(dir $(SIGNING_KEY)) && umask 077 && \
	  openssl ecparam -name prime256v1 -genkey -noout -out $(SIGNING_KEY) && \
	  openssl ec -in $(SIGNING_KEY) -pubout -out $(SIGNING_KEY:.key=.pub.pem) 2>/dev/null && \
	  echo "made dev signing key $(SIGNING_KEY), public key $(SIGNING_KEY:.key=.pub.pem)"; }
	$(OPA) build -b policies --ignore '*_test.rego' --revision "$$(git rev-parse HEAD)" \
	  --signing-alg ES256 --signing-key $(SIGNING_KEY) -o bundles/agentauthz.tar.gz

fuzz: ## run every fuzz target for FUZZTIME each (default 5m); make test replays the committed corpora
	./test/fuzz.sh $(FUZZTIME)

mutate: ## mutation testing (gremlins, tools/go.mod) of identity, revocation, decisionlog verify, extauthz, policy input; slow, not in CI
	./test/mutate.sh $(MUTATE)

soak: build ## 10-minute soak at half of max load: RSS, heap, goroutines and files stay flat (not in CI)
	AGENTAUTHZ_TEST_BINARY=$(CURDIR)/$(BIN)/agentauthz $(GO) test -tags soak -run TestSoak -count=1 -timeout 30m -v ./test/soak

lint: ## golangci-lint with .golangci.yml (errcheck, staticcheck, gosec, errorlint, revive, gofmt, ...)
	$(TOOL) golangci-lint run --allow-serial-runners ./...

# govulncheck's database, built from the OSV files in the golang.org/x/vulndb
# module pinned in tools/go.mod (the public database cannot be reached from
# the build machines). To refresh it:
#   cd tools && go get golang.org/x/vulndb@master && go mod tidy && cd .. && make vulncheck
VULNDB := $(BIN)/vulndb

$(VULNDB)/index/db.json: tools/go.mod tools/go.sum
	rm -rf $(VULNDB)
	osv="$$($(GO) mod download -modfile=tools/go.mod -json golang.org/x/vulndb | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p')/data/osv" && \
	  $(TOOL) indexdb -vulns "$$osv" -out $(VULNDB)

vulncheck: $(VULNDB)/index/db.json ## govulncheck on the pinned database; fails on a called vulnerability not accepted in tools/vulncheck-accepted.txt
	$(TOOL) govulncheck -db file://$(CURDIR)/$(VULNDB) -format json ./... | $(GO) -C tools run ./vulngate -accepted vulncheck-accepted.txt

race-ci: ## the race detector on the packages with concurrency (RACE_PKGS), as .ci/run runs it
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m $(RACE_PKGS)

fmt: ## format the code
	gofmt -w cmd internal test envoy policies tools

tidy-check: ## fail if go.mod/go.sum (and tools/go.mod/go.sum) are not tidy
	$(GO) mod tidy -diff
	$(GO) -C tools mod tidy -diff

clean: ## remove build output
	rm -rf $(BIN)
