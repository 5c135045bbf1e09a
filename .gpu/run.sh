#!/usr/bin/env bash
# What RESULTS.md takes from a GPU, in one command, for a session that is lent one: every training run of Table 1,
# Table 3 and the byte-level study (three seeds each), their read-backs (experiments.py compare, ablate,
# position), then bench.py gpu (training steps in fp32, bf16 and bf16 + compile for the four models; Table 2 to T 8192).
#
#   bash .gpu/run.sh [OUT]                 # everything under OUT (default bench_gpu); a summary at the end
#   GAM_GPU_SMALL=1 bash .gpu/run.sh OUT   # the same steps at a tiny size, on any device (the tests run this)
# GAM_DATA_ROOT: where token files are cached (train.py's --data-root, default data).
#
# The training runs are small (4 layers x 128) and bound by kernel launches, not by the GPU's arithmetic, so
# GAM_GPU_PARALLEL of them (default 12) share the GPU at once; their time columns are therefore not speeds, and
# bench.py gpu, which runs alone afterwards, is. A run folder that holds a finished run is read back, not
# trained again, so after an interruption the same command continues. Offline, set GAM_DATA_DIR and
# TIKTOKEN_CACHE_DIR as for the tests.
set -euo pipefail
# shellcheck disable=SC2086  # the flag lists are split into words on purpose
cd "$(dirname "$0")/.."
OUT=${1:-bench_gpu}
PARALLEL=${GAM_GPU_PARALLEL:-12}
SEEDS="1337 1338 1339"
# Table 1 and 3: TinyStories with GPT-2's BPE, T 256, 2 epochs (RESULTS.md, "At a budget where the models learn")
STORIES="--n-layer 4 --n-embd 128 --n-slots 128 --block-size 256 --batch-size 8 --epochs 2 --lr 2e-3
         --pos-init-std 0.02 --eval-every 98 --eval-batches 20"
# the byte-level study (RESULTS.md, "Where the window costs"): 1,000 steps of 8 x 512 bytes, no dropout, on this
# Python's standard library (under one epoch) and on TinyStories (two epochs)
BYTE_RECIPE="--tokenizer bytes --n-layer 4 --n-embd 128 --n-slots 128 --block-size 512 --batch-size 8
       --max-steps 1000 --lr 2e-3 --pos-init-std 0.02 --dropout 0 --eval-every 100 --eval-batches 20 --scan-chunk 32"
BYTES="--dataset python-stdlib --epochs 1 $BYTE_RECIPE"
STORY_BYTES="--dataset tinystories --epochs 2 $BYTE_RECIPE"
GPU="--models gam,gam-context,transformer,mamba,mamba-compiled"
POSITION=""  # experiments.py position scores every validation chunk
if [ -n "${GAM_GPU_SMALL:-}" ]; then
    SEEDS="1337"
    PARALLEL=2
    tiny="--n-layer 1 --n-embd 16 --n-slots 16 --n-head 2 --batch-size 2 --lr 2e-3 --max-steps 3 --eval-batches 1"
    STORIES="$tiny --block-size 32 --epochs 1 --max-train-docs 40 --max-val-docs 20"
    BYTES="--dataset python-stdlib --tokenizer bytes $tiny --block-size 64 --epochs 1"
    STORY_BYTES="--dataset tinystories --tokenizer bytes $tiny --block-size 64 --epochs 1 --max-train-docs 40
                 --max-val-docs 20"
    GPU=""  # bench.py gpu's own test runs its CPU path; compiling four models here would take minutes
    POSITION="--eval-batches 2"
fi
DATA="--data-root ${GAM_DATA_ROOT:-data}"  # where the token files are cached
STORIES=$(echo $STORIES $DATA) BYTES=$(echo $BYTES $DATA) STORY_BYTES=$(echo $STORY_BYTES $DATA)  # one line each
label_flags() {  # the train.py flags of a model label, as experiments.py model_flags spells them
    case $1 in
        gam-context) echo "--model gam --memory context" ;;
        mamba-compiled) echo "--model mamba --scan compiled" ;;
        gam-*) echo "--model gam --variant ${1#gam-}" ;;
        transformer-window*) echo "--model transformer --attn-window ${1#transformer-window}" ;;
        *) echo "--model $1" ;;
    esac
}
mkdir -p "$OUT"
# prepare each dataset once, before the runs that read it start together
python data.py tinystories $DATA $(echo "$STORIES" | grep -o -- '--max-[a-z]*-docs [0-9]*' | tr '\n' ' ') >/dev/null
python data.py python-stdlib --tokenizer bytes $DATA >/dev/null
python data.py tinystories --tokenizer bytes $DATA $(echo "$STORY_BYTES" | grep -o -- '--max-[a-z]*-docs [0-9]*' | tr '\n' ' ') \
    >/dev/null

# one line per run: its folder, then its flags
{
    for seed in $SEEDS; do
        for m in gam gam-context transformer mamba; do
            echo "$OUT/compare/$m-seed$seed $(label_flags $m) --seed $seed $STORIES"
        done
        for v in sum local global; do
            echo "$OUT/ablate/gam-$v-seed$seed $(label_flags gam-$v) --seed $seed $STORIES"
        done
        for m in gam gam-context transformer transformer-window3 mamba; do
            echo "$OUT/bytes/compare/$m-seed$seed $(label_flags $m) --seed $seed $BYTES"
            echo "$OUT/story-bytes/compare/$m-seed$seed $(label_flags $m) --seed $seed $STORY_BYTES"
        done
    done
} > "$OUT/runs.txt"
echo "$(wc -l < "$OUT/runs.txt") training runs, $PARALLEL at a time; logs in each run's folder (train.log)"
# a folder that holds a checkpoint is resumed: a finished run is read back, a stopped one continues
# shellcheck disable=SC2016
xargs -P "$PARALLEL" -L 1 sh -c 'mkdir -p "$0" && resume=$([ -f "$0/ckpt.pt" ] && echo --resume);
    python train.py --out-dir "$0" $resume "$@" >> "$0/train.log" 2>&1 ||
    { echo "run $0 failed:"; tail -3 "$0/train.log"; exit 255; }' < "$OUT/runs.txt"

# Table 3's gated rows are Table 1's GAM runs
for seed in $SEEDS; do
    ln -sfn "../compare/gam-seed$seed" "$OUT/ablate/gam-gated-seed$seed"
done
n_seeds=$(echo "$SEEDS" | wc -w)
python experiments.py compare --models gam,gam-context,transformer,mamba --seeds "$n_seeds" --bench-dir "$OUT" $STORIES
python experiments.py ablate --variants gated,sum,local,global --seeds "$n_seeds" --bench-dir "$OUT" $STORIES
python experiments.py compare --models gam,gam-context,transformer,transformer-window3,mamba --seeds "$n_seeds" \
    --bench-dir "$OUT/bytes" $BYTES
python experiments.py compare --models gam,gam-context,transformer,transformer-window3,mamba --seeds "$n_seeds" \
    --bench-dir "$OUT/story-bytes" $STORY_BYTES
python experiments.py position $(ls -d "$OUT"/compare/*-seed1337) --buckets 0,1,4,9,13,32,64,128 \
    --bench-dir "$OUT/compare" $POSITION
for corpus in bytes story-bytes; do
    python experiments.py position $(ls -d "$OUT/$corpus"/compare/*-seed1337) --buckets 0,1,4,9,13,32,64,128,256 \
        --bench-dir "$OUT/$corpus" $POSITION
done
if [ -n "$GPU" ]; then
    python bench.py gpu $GPU --bench-dir "$OUT" > "$OUT/gpu.log" 2>&1
fi

echo
echo "== summary (every table is also in $OUT as .md and .csv, beside its plot)"
for table in compare/compare ablate/ablate bytes/compare/compare story-bytes/compare/compare \
             compare/position/position bytes/position/position story-bytes/position/position gpu/gpu scale/scale; do
    if [ -f "$OUT/$table.md" ]; then
        echo
        cat "$OUT/$table.md"
    fi
done
