#!/usr/bin/env bash
# A longer schemathesis pass over the HTTP API than the test suite's (tests/test_openapi.py), with the same
# configuration: a live uvicorn server with real jobs, each route fuzzed with the token of its kind, every check
# (the few exclusions are explained in the configuration). The server's database and log, and schemathesis's
# configuration, JSON report and output per kind of token, go to runs/fuzz-api/. The last line is
# `cases=<n> failures=<n>`; the exit code is 1 when a check failed or a route was never reached past 401/403.
#   bash scripts/fuzz_api.sh [examples [seed]]   (examples per operation and phase, default 100: about 3,500
#                                                 cases in a minute on two cores; seed default random)
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-100}
seed=${2:-$RANDOM}
out=runs/fuzz-api
rm -rf "$out" && mkdir -p "$out"

PYTHONPATH=tests exec .venv/bin/python - "$examples" "$seed" "$out" <<'EOF'
import sys
from pathlib import Path

from test_openapi import live_api

examples, seed, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]).resolve()
with live_api(out / "fedbpt.db") as api:
    fuzzed = api.fuzz(examples, seed, out)
(out / "schemathesis.out").write_text(fuzzed.output)
print(fuzzed.output.rstrip())
if fuzzed.unauthenticated:
    print("never reached past 401/403:", ", ".join(fuzzed.unauthenticated))
print(f"seed={seed}; the reports and the server's log are in {out}")
print(f"cases={fuzzed.cases} failures={fuzzed.failures}")
sys.exit(1 if fuzzed.failures or fuzzed.unauthenticated else 0)
EOF
