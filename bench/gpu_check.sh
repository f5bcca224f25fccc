#!/usr/bin/env bash
# Every GPU check of Glimpse in ONE call on a lent GPU machine (see README, "GPU benchmark").
#
# Prepare on the development machine (the GPU machine reaches no registry, and ../shared does not travel):
#   ../shared/bench/gpu_wheels.sh .gpu-wheels pyjwt cryptography pytest pytest-asyncio openai \
#     && cp ../shared/bench/hf_baseline.py bench/hf_baseline.py
# Then run on the GPU, carrying .gpu-wheels:   bash bench/gpu_check.sh
# Rehearse it here first, on the CPU with the tiny model (so a rare GPU call is not lost to a typo):
#   DRY_RUN=cpu bash bench/gpu_check.sh
#
# It (1) runs the plain-generate() baseline, (2) builds the real-size random-weight GLM-4.6V-Flash
# checkpoint, (3) serves it with Glimpse on the GPU, (4) checks a 1024x1024 request answers and that
# greedy batched answers equal single-request generate() on the GPU, (5) runs `glimpse bench` for
# 1024^2/128 tokens and 448^2/64 tokens at several concurrency levels, and (6) prints the ratios.
# (7) serves the checkpoint once per weight format (bf16, int8, fp8: --quantization none,int8,fp8),
# one after another, and prints device memory, saturated requests/s and single-request latency side
# by side. Steps 0-6 already fill one 10-minute call, so step 7 is its own call:
#   STEPS=quant bash bench/gpu_check.sh     (builds the checkpoint first if MODEL_DIR has none)
# STEPS picks the steps: tests,baseline,build,serve (the default on a GPU), quant; all of them in the
# CPU rehearsal, where step 7 serves the tiny model with int8 only, so that it cannot rot.
set -uo pipefail
OUT=${OUT:-/tmp/glimpse-gpu-out}; mkdir -p "$OUT"
MODEL_DIR=${MODEL_DIR:-/tmp/glm46v-flash-random}
PORT=${PORT:-8080}
LEVELS=${LEVELS:-1,8,32,64}
export PYTHONPATH=src HF_HUB_OFFLINE=1 COLUMNS=${COLUMNS:-180}  # rich tables unabridged in a log
DRY_RUN=${DRY_RUN:-}
if [ "$DRY_RUN" = cpu ]; then
  py=${PY:-.venv/bin/python}; device=cpu; dtype=float32; size_flag=""; baseline_flags="--tiny --batches 1,4 --new 128"
  bench_load="--num-requests 8"; LEVELS=${LEVELS_DRY:-1,4}; MODEL_DIR=${MODEL_DIR_DRY:-/tmp/glimpse-dry-tiny}; PORT=${PORT_DRY:-18080}
  STEPS=${STEPS:-tests,baseline,build,serve,quant}; QUANT_METHODS=${QUANT_METHODS:-int8}
  quant_level=2; quant_load="--num-requests 2"; quant_tokens=16
else
  py=python3; device=cuda; dtype=bfloat16; size_flag="--full-size"; baseline_flags="--batches 1,8,32,64 --new 128"
  # Seconds per level, not a count: a level of 64 requests one at a time would take minutes, and
  # the whole check must fit one 10-minute call.
  bench_load="--duration ${BENCH_S:-20}"
  STEPS=${STEPS:-tests,baseline,build,serve}; QUANT_METHODS=${QUANT_METHODS:-none,int8,fp8}
  quant_level=${QUANT_LEVEL:-32}; quant_load="--duration ${QUANT_BENCH_S:-15}"; quant_tokens=128
  $py -m pip install -q --no-index --find-links .gpu-wheels fastapi uvicorn pydantic-settings python-multipart redis pyjwt \
    pytest pytest-asyncio openai 2>&1 | tail -2
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi

step() { [[ ",$STEPS," == *",$1,"* ]]; }
server=""
trap '[ -n "$server" ] && { kill $server 2>/dev/null; wait $server 2>/dev/null; }' EXIT
serve() {  # serve MODEL_DIR in the background, logging to $1, with any further glimpse serve flags
  local log=$1; shift
  GLIMPSE_ENGINE__MAX_BATCH_SIZE=${MAX_BATCH:-64} GLIMPSE_ENGINE__MAX_SEQ_LEN=${MAX_SEQ:-2048} GLIMPSE_CACHE__ENABLED=false \
    GLIMPSE_ENGINE__CUDA_GRAPHS=${CUDA_GRAPHS:-true} \
    $py -m glimpse serve --model "$MODEL_DIR" --device "$device" --port "$PORT" "$@" > "$log" 2>&1 &
  server=$!
}
stop_server() { [ -n "$server" ] && { kill $server 2>/dev/null; wait $server 2>/dev/null; }; server=""; }
ready() {  # Python, not curl: the GPU image is not promised to have curl
  $py -c "import sys, urllib.request as u; sys.exit(u.urlopen(sys.argv[1], timeout=5).status != 200)" \
    "http://127.0.0.1:$PORT/readyz" 2>/dev/null
}
wait_ready() {  # until /readyz answers 200; fails (printing the log's end) if the server exits first
  local deadline=$(( SECONDS + ${READY_S:-420} ))  # or hangs: a later step may still fit the call
  until ready; do
    kill -0 $server 2>/dev/null && [ $SECONDS -lt $deadline ] || { tail -50 "$1"; stop_server; return 1; }
    sleep 2
  done
}

if step tests; then
echo "== 0. GPU-marked tests (tiny model on CUDA, float32, token-exact) (at ${SECONDS}s) ==" | tee -a "$OUT/summary.txt"
$py -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 | tail -5 | tee -a "$OUT/summary.txt"
fi

if step baseline; then
echo "== 1. baseline: plain generate() (at ${SECONDS}s) ==" | tee -a "$OUT/summary.txt"
baseline=bench/hf_baseline.py; [ -f "$baseline" ] || baseline=shared/bench/hf_baseline.py; [ -f "$baseline" ] || baseline=../shared/bench/hf_baseline.py
$py "$baseline" $baseline_flags --side 1024 --reps 1 | tee "$OUT/baseline.jsonl"
fi

if step build || { step quant && [ ! -f "$MODEL_DIR/config.json" ]; }; then
echo "== 2. build the full-size random-weight checkpoint (at ${SECONDS}s) ==" | tee -a "$OUT/summary.txt"
t0=$(date +%s); $py -m glimpse make-tiny-model "$MODEL_DIR" $size_flag; echo "build_s=$(( $(date +%s) - t0 ))" | tee -a "$OUT/summary.txt"
fi

if step serve; then
echo "== 3. serve it (at ${SECONDS}s) ==" | tee -a "$OUT/summary.txt"
t0=$(date +%s)
serve "$OUT/serve.log"
wait_ready "$OUT/serve.log" || exit 1
echo "ready_s=$(( $(date +%s) - t0 ))" | tee -a "$OUT/summary.txt"
[ "$device" = cuda ] && nvidia-smi --query-gpu=memory.used --format=csv | tee -a "$OUT/summary.txt"

echo "== 4. one 1024x1024 request, and greedy equality on the GPU (at ${SECONDS}s) ==" | tee -a "$OUT/summary.txt"
$py bench/gpu_correctness.py --url "http://127.0.0.1:$PORT" --model-dir "$MODEL_DIR" --device "$device" --dtype "$dtype" | tee -a "$OUT/summary.txt"

echo "== 5. glimpse bench (at ${SECONDS}s) ==" | tee -a "$OUT/summary.txt"
$py -m glimpse bench --url "http://127.0.0.1:$PORT" --concurrency "$LEVELS" $bench_load --warmup 4 \
  --image-size 1024 --max-tokens 128 --ignore-eos --json "$OUT/bench_1024.json" | tail -20
$py -m glimpse bench --url "http://127.0.0.1:$PORT" --concurrency "$LEVELS" $bench_load --warmup 4 \
  --image-size 448 --max-tokens 64 --ignore-eos --json "$OUT/bench_448.json" | tail -20

echo "== 5b. follow-up questions about the same 1024x768 image (prefix + embedding caches) ==" | tee -a "$OUT/summary.txt"
$py bench/follow_up_http.py --url "http://127.0.0.1:$PORT" --conversations "${FOLLOW_UPS:-6}" \
  --json "$OUT/follow_up.json" | tee -a "$OUT/summary.txt"
# which decode path the graphs took (paged by each row's length, or the padded fallback and why)
grep -h -e "decode graphs" -e "could not be captured" -e "CUDA graph capture failed" "$OUT/serve.log" \
  | head -3 | tee -a "$OUT/summary.txt"

echo "== 6. ratios (at ${SECONDS}s) ==" | tee -a "$OUT/summary.txt"
$py bench/gpu_report.py "$OUT/baseline.jsonl" "$OUT/bench_1024.json" | tee -a "$OUT/summary.txt"
stop_server
fi

if step quant; then
# One server at a time, each alone on the device, with the same slots (MAX_BATCH x MAX_SEQ), so the
# memory differs by the weights; a method that fails to start is reported and the next one runs.
echo "== 7. quantized weights side by side: $QUANT_METHODS (at ${SECONDS}s) ==" | tee -a "$OUT/summary.txt"
for method in ${QUANT_METHODS//,/ }; do
  t0=$(date +%s)
  serve "$OUT/quant_$method.log" --quantization "$method"
  if ! wait_ready "$OUT/quant_$method.log" >> "$OUT/summary.txt"; then
    echo "$method: did not start (quant_$method.log)" | tee -a "$OUT/summary.txt"; continue
  fi
  echo "$method: ready_s=$(( $(date +%s) - t0 ))" | tee -a "$OUT/summary.txt"
  $py bench/gpu_report.py footprint "http://127.0.0.1:$PORT" "$server" "$device" > "$OUT/quant_$method.json"
  $py -m glimpse bench --url "http://127.0.0.1:$PORT" --concurrency "1,$quant_level" $quant_load --warmup 2 \
    --image-size 1024 --max-tokens "$quant_tokens" --ignore-eos --json "$OUT/quant_${method}_bench.json" | tail -6
  grep -h -e "model loaded" -e "decode graphs" -e "could not be captured" -e "CUDA graph capture failed" \
    "$OUT/quant_$method.log" | head -3 | tee -a "$OUT/summary.txt"
  stop_server
done
$py bench/gpu_report.py quantization "$OUT" "$QUANT_METHODS" --saturated "$quant_level" | tee -a "$OUT/summary.txt"
fi
