# usernet: build, test, lint, bench. See README.md.
GO      ?= go
BIN     ?= bin/usernet
PKGS    ?= ./...
STATICCHECK ?= $(shell $(GO) env GOPATH)/bin/staticcheck

.PHONY: build test unit e2e lint bench bench-smoke fuzz clean

# build makes a static binary. Only the net package's resolver would use
# libc, and Go's own resolver reads the same /etc/hosts and resolv.conf, so
# without cgo the binary loses nothing, runs on any distribution (musl ones
# too) and the daemon's idle RSS is 1.6 MiB smaller: no dynamic loader or
# libc pages.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/usernet

# test runs everything CI runs: unit tests under the race detector, then the
# end-to-end tests, which drive the real binary as an unprivileged user and
# need root only to create that user and the test's network namespaces.
test: unit e2e

unit:
	$(GO) test -race -count=1 $(shell $(GO) list ./... | grep -v /e2e)

e2e:
	$(GO) test -count=1 -timeout 20m -v ./e2e/

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(PKGS)
	$(STATICCHECK) $(PKGS)

# bench runs every workload for every system (needs root for the peers'
# namespaces; usernet itself runs as an unprivileged user). PROFILE=1 adds
# pprof CPU and allocation profiles of the usernet daemon.
bench: build
	$(GO) run ./bench/dataplane -t 10 -reps 3
	$(GO) run ./bench/harness -bin $(BIN) $(if $(PROFILE),-profile) $(BENCHFLAGS)

# bench-smoke is one short repetition of everything, so the harness cannot rot.
bench-smoke: build
	$(GO) run ./bench/dataplane -t 1 -reps 1 -idle-wait 1s
	$(GO) run ./bench/harness -bin $(BIN) -smoke

# fuzz gives each fuzz target a short run.
fuzz:
	@for p in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$p | grep ^Fuzz); do \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 10s $$p || exit 1; \
	  done; \
	done

clean:
	rm -rf bin
