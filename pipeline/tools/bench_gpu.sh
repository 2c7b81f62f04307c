#!/usr/bin/env bash
# The GPU check of one lent H100/H200 session, in one command (about 10 minutes):
#   1. install the carried wheels (deepspeed and the dependencies the GPU image lacks);
#   2. the GPU test tier (tests/test_gpu.py: fp16/bf16 ZeRO-2 on CUDA with saves, exact resume,
#      preemption, a 2 CPU -> 1 GPU world-size change into fused AdamW, the cache on CUDA);
#   3. pipeline/tools/gpu_anchor.py (the baselines: the Hugging Face recipe and a careful
#      hand-written loop) and python -m pipeline.tools.bench, on the same card;
#   4. a short table of tokens/s, the ratios to hf_ref the performance issue asks for, and memory.
# Prepare on the dev machine (wheels for the GPU image's Python 3.12):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl deepspeed hjson pydantic pydantic-core annotated-types typing-inspection \
#       'typing-extensions>=4.16' pytest pytest-timeout msgpack ninja py-cpuinfo
#   (deepspeed ships an sdist only: build its wheel here with `pip wheel --no-deps deepspeed -w .whl`)
# Then, with the device tool: run(command="bash pipeline/tools/bench_gpu.sh", carry=[".whl"]).
# Nothing here reads outside the repository: the anchor is pipeline/tools/gpu_anchor.py or $ANCHOR.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/distil-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
echo "== GPU tests"
timeout 420 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/tests.txt"
echo "== anchor"
ANCHOR=${ANCHOR:-pipeline/tools/gpu_anchor.py}
[ -f "$ANCHOR" ] || { echo "no $ANCHOR" >&2; exit 2; }
timeout 240 python3 "$ANCHOR" --only peak,hf_ref,lean,lean_cached 2>&1 | grep '^{' | tee "$OUT/anchor.jsonl"
echo "== pipeline.tools.bench"
timeout 300 python3 -m pipeline.tools.bench --cases distil,distil_compiled,distil_cached,plain,loader \
  --json "$OUT/bench.json" 2>&1 | grep '^{' | tee "$OUT/bench.jsonl"
echo "== pipeline.tools.bench --families modernbert,deberta-v2 (the same step, other teachers)"
timeout 240 python3 -m pipeline.tools.bench --cases distil --families modernbert,deberta-v2 \
  --shapes 128x256 2>&1 | grep '^{' | tee "$OUT/bench_families.jsonl"
echo "== table"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
anchor = [json.loads(l) for l in (out / "anchor.jsonl").read_text().splitlines() if l.startswith("{")]
bench = [json.loads(l) for l in (out / "bench.jsonl").read_text().splitlines() if l.startswith("{")]
ref = {(r["seq"], r["batch"]): r for r in anchor if r.get("case") == "hf_ref" and "tok_s" in r}
print(f"{'case':18} {'seq':>4} {'batch':>5} {'tok/s':>10} {'x hf_ref':>8} {'mem GiB':>8} {'mfu':>6}")
for r in anchor:
    if "tok_s" in r:
        base = ref.get((r["seq"], r["batch"]), {}).get("tok_s")
        print(f"{'anchor:' + r['case']:18} {r['seq']:>4} {r['batch']:>5} {r['tok_s']:>10,} {r['tok_s'] / base if base else 0:>8.2f} {r['peak_mem_gib']:>8} {r['mfu_useful']:>6}")
plain = {(r["seq"], r["batch"]): r for r in bench if r.get("name") == "plain" and "tokens_per_s" in r}
for r in bench:
    if "tokens_per_s" in r and "seq" in r:
        base = ref.get((r["seq"], r["batch"]), {}).get("tok_s")
        extra = ""
        if r["name"].startswith("distil") and (r["seq"], r["batch"]) in plain:
            extra = f"  engine cost vs plain: {1 - r['tokens_per_s'] / plain[(r['seq'], r['batch'])]['tokens_per_s']:+.1%}"
        print(f"{r['name']:18} {r['seq']:>4} {r['batch']:>5} {r['tokens_per_s']:>10,} {r['tokens_per_s'] / base if base else 0:>8.2f} {r.get('peak_mem_gib', '-'):>8} {r.get('mfu', '-'):>6}{extra}")
PY
