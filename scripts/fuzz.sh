#!/usr/bin/env bash
# Runs every fuzz target in the module for FUZZTIME each (default 60s), one
# after another, and prints per target: executions, executions per second,
# new corpus entries and the result. A crasher is written by go test under
# the package's testdata/fuzz/ and fails the run (exit 1) after all ran.
set -uo pipefail
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-60s}
# Minimising an interesting input runs the target many times without
# counting executions; its default (60 s) can take a whole short run.
MINIMIZE=${FUZZMINIMIZETIME:-2s}
mkdir -p build/fuzz
failed=0
printf '%-44s %-22s %10s %9s %9s  %s\n' package target execs 'execs/s' 'new' result
for pkg in $($GO list ./... | grep -v '/qemu-tests$'); do
	for target in $($GO test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz'); do
		log=build/fuzz/$(basename "$pkg")-$target.log
		start=$(date +%s)
		$GO test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$MINIMIZE" "$pkg" >"$log" 2>&1
		rc=$?
		secs=$(( $(date +%s) - start ))
		last=$(grep -E 'execs: [0-9]+' "$log" | tail -1)
		execs=$(sed -E 's/.*execs: ([0-9]+).*/\1/' <<<"$last")
		new=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
		result=ok
		if [ $rc -ne 0 ]; then
			result="CRASH: $(grep -m1 -E 'Failing input written to' "$log" | sed 's/.*written to //') (see $log)"
			failed=1
		fi
		rate=$(awk -v e="${execs:-0}" -v s="${FUZZTIME%s}" 'BEGIN { if (s > 0) printf "%.0f", e / s; else print "-" }')
		printf '%-44s %-22s %10s %9s %9s  %s\n' "${pkg#github.com/plinth-dev/plinth/}" "$target" "${execs:-0}" "$rate" "${new:-0}" "$result"
	done
done
exit $failed
