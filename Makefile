# The README's two commands are scripts/dev and scripts/test; these targets
# are shortcuts for developers. BENCHMARKS.md explains `make bench`.

.PHONY: dev test bench bench-quick

dev:
	scripts/dev

test:
	scripts/test

# The whole performance suite (issue #9): most scenarios need root (they
# create users, install a private PAM stack and run flows as those users).
# Prints the table; the full results go to bench-report.json.
bench:
	go build -o bin/deskrun ./cmd/deskrun
	bin/deskrun bench --scenario all --out bench-report.json

# The same at a size that takes about half a minute: a smoke test.
bench-quick:
	go build -o bin/deskrun ./cmd/deskrun
	bin/deskrun bench --scenario all --quick --out bench-report.json
