#!/usr/bin/env bash
# A real small NesyCD run on CPU, end to end, with the embedded models:
#   SmolLM2-135M student, GSM8K; base vs Std-CoT (= NesyCD's S_P) vs NesyCD S_E without / with KB.
# Rationales: GSM8K's own human-written CoT (`--teacher gold`), because the local 1.5B teacher writes
# ~10 tokens/s on 2 cores; knowledge: the real local Qwen2.5-Coder-1.5B teacher on S_P's errors.
# Sizes are environment variables; the defaults fit about an hour on 2 cores.
# docs/real-run/ came from TRAIN=160, then a stop during the error pass and a resume with
# `--resume --limit 64 --max-knowledge 16` (S_E on 64 examples) and TEST=50 (see README).
set -euo pipefail
TRAIN=${TRAIN:-160} TEST=${TEST:-100} EPOCHS=${EPOCHS:-2} MAX_KNOWLEDGE=${MAX_KNOWLEDGE:-24}
export NESY_HOME=${NESY_HOME:-workspace-realrun} HF_HUB_OFFLINE=1
nesy() { python -m distill.cli "$@"; }
nesy teach rationales --dataset gsm8k --split train --limit "$TRAIN" --teacher gold --out gsm8k-gold
nesy train nesycd --data gsm8k-gold --output gsm8k-nesycd --epochs "$EPOCHS" --batch-size 8 \
    --max-length 384 --teacher local --max-knowledge "$MAX_KNOWLEDGE" --auto-accept --resume
nesy eval --dataset gsm8k --split test --limit "$TEST" --batch-size 16 --max-new-tokens 200 --name real-run \
    --config base --config "std-cot=$NESY_HOME/adapters/gsm8k-nesycd/stages/sp" \
    --config nesycd=gsm8k-nesycd --config nesycd+kb=gsm8k-nesycd,kb,k=1
nesy kb stats
nesy kb export --status accepted "$NESY_HOME/starter_kb.jsonl"
