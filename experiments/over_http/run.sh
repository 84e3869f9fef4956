#!/usr/bin/env bash
# over-http: one cell of digits-efficientnet-cpu (guided (ours), 2,000 images, seed 0) sent through
# `bbvp serve` with fault injection (30% of requests answered 503, every 20th 429 with Retry-After),
# compared with the same cell on the local backend. Loopback only; the server stops at the end.
set -euo pipefail
OUT=${1:-experiments/results/over-http}
PORT=${PORT:-8765}
mkdir -p "$OUT"
SETTINGS=(--data digits --optimizer guided --mapping linear --budget 2000 --batch-size 8 --grid 4
          --train 1000 --val 100 --test 300 --seed 0 --quiet)
bbvp serve --backend reference --port "$PORT" --failure-rate 0.3 --failure-codes 503 \
    --rate-limit-every 20 --retry-after 1 > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for i in $(seq 1 120); do curl -fs "http://127.0.0.1:$PORT/v2/health/ready" > /dev/null && break; sleep 1; done
bbvp optimize --backend "http://127.0.0.1:$PORT" --format bbvp "${SETTINGS[@]}" --out "$OUT/http"
curl -fs "http://127.0.0.1:$PORT/stats" > "$OUT/server-stats.json"
bbvp optimize --backend reference "${SETTINGS[@]}" --out "$OUT/local"
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
http, local = (json.load(open(f"{out}/{name}/result.json")) for name in ("http", "local"))
stats = http.get("backend_stats") or {}
lines = [f"| run | test accuracy | validation accuracy | images used | test images | retries | seconds |",
         "|---|---:|---:|---:|---:|---:|---:|"]
for name, r, retries in (("local backend", local, "-"), ("bbvp serve, 30% 503 + 429 every 20", http, stats.get("retries", "?"))):
    lines.append(f"| {name} | {r['test_accuracy']:.4f} | {r['val_accuracy']:.4f} | {r['queries_used']} | "
                 f"{r['test_queries']} | {retries} | {r['seconds']:.0f} |")
same = http["test_accuracy"] == local["test_accuracy"] and http["history"] == local["history"]
served = json.load(open(f"{out}/server-stats.json"))
lines.append("")
lines.append(f"Same validation history and test accuracy: {same}. The server answered {served['images']} images "
             f"(queries_used {http['queries_used']} + test {http['test_queries']}) in "
             f"{served['inference_requests']} inference requests, {sum(served['faults'].values())} of them "
             f"injected faults ({served['faults']}).")
open(f"{out}/summary.md", "w").write("# over-http: digits, guided (ours), 2,000 images, seed 0\n\n"
                                     "Command: `bash experiments/over_http/run.sh`\n\n" + "\n".join(lines) + "\n")
print("\n".join(lines))
PY
