"""Training throughput: our trainer vs plain Trainer + peft with naive padding, and FLOP/s vs peak.

Two measurements:
- default, interleaved: one model + LoRA + AdamW; each round times one optimiser step on OUR
  batch (LengthGroupedSampler + PadCollator from distill/train.py) and one on the NAIVE batch
  (the same kind of samples padded to max_length, random order), alternately, so that load from
  other processes on a shared machine hits both sides alike;
- `--trainer`: the end-to-end runs, `distill.train.train()` vs a plain transformers Trainer +
  peft with `padding="max_length"` and the default collator, one after the other (sensitive to
  load changes between the two runs on a shared machine).

Same model (the embedded SmolLM2-135M by default), same GSM8K samples (question -> reference
rationale, chat template, loss on the response), same LoRA (r=32, all linear), same batch size
and number of optimiser steps. Reported: useful (non-padding) tokens per second of each, their
ratio (target >= 1.5x), and the achieved FLOP/s of ours — LoRA training costs ~4 x params FLOPs
per token (forward 2N + backward through frozen weights 2N; LoRA's own weight grads are
negligible) — against the measured fp32 matmul peak of this CPU (torch.mm of large matrices).

    .venv/bin/python bench/bench_train.py [--steps 4] [--batch 4] [--samples 16] [--max-length 512]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NESY_MODELS", str(REPO / ".cache" / "models"))

import torch  # noqa: E402


def matmul_peak(n: int = 2048, repeats: int = 8) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def write_records(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(REPO / "data" / "gsm8k" / "train.jsonl.gz", "rt") as f, open(path, "w") as out:
        for i, line in zip(range(n), f):
            row = json.loads(line)
            out.write(json.dumps({"id": row["id"], "example_id": row["id"], "dataset": "gsm8k", "task": "gsm8k",
                                  "question": row["question"], "answer": row["answer"], "thought": "cot",
                                  "rationale": f"{row['rationale']}\nThe answer is {row['answer']}.",
                                  "verified": True}) + "\n")
    return path


def ours(args, data: Path) -> dict:
    from distill.methods import METHODS, train

    root = train(METHODS["std-cot"].config(data=str(data), output="bench", base_model=args.model,
                                           max_steps=args.steps, batch_size=args.batch,
                                           max_length=args.max_length, save_steps=10_000))
    m = json.loads((root / "card.json").read_text())["stages"]["main"]
    return {"tokens": m["tokens"], "seconds": m["runtime_s"], "padding_fraction": m["padding_fraction"]}


def naive(args, data: Path) -> dict:
    """The common baseline: tokenize with padding='max_length', default collator, random order."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

    from distill.infer import load_base
    from distill.methods.std_cot import samples as cot_samples
    from distill.train import encode, load_records

    set_seed(42)
    model, tok = load_base(args.model)
    feats = []
    for s in cot_samples(load_records(str(data))):
        e = encode(tok, s, args.max_length)[0]
        gap = args.max_length - len(e["input_ids"])
        feats.append({"input_ids": e["input_ids"] + [tok.pad_token_id] * gap,
                      "labels": e["labels"] + [-100] * gap,
                      "attention_mask": [1] * len(e["input_ids"]) + [0] * gap})
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    out = tempfile.mkdtemp(prefix="naive-")
    trainer = Trainer(model=model, train_dataset=feats, data_collator=default_data_collator,
                      args=TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch,
                                             max_steps=args.steps, learning_rate=2e-4, report_to="none",
                                             save_strategy="no", logging_steps=1, disable_tqdm=True,
                                             include_num_input_tokens_seen="non_padding",
                                             dataloader_pin_memory=False))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"tokens": int(trainer.state.num_input_tokens_seen), "seconds": seconds, "padding_fraction": None}


def interleaved(args, data: Path) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    from distill.infer import load_base
    from distill.methods.std_cot import samples as cot_samples
    from distill.train import LengthGroupedSampler, PadCollator, encode, load_records

    set_seed(0)
    model, tok = load_base(args.model)
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    feats = [encode(tok, s, args.max_length)[0] for s in cot_samples(load_records(str(data)))]
    order = list(LengthGroupedSampler([len(f["input_ids"]) for f in feats], args.batch * 16, seed=0))
    ours_collate, naive_collate = PadCollator(tok.pad_token_id), PadCollator(tok.pad_token_id)
    pad_to = {"input_ids": [0] * args.max_length}  # a dummy row makes PadCollator pad to max_length
    shuffled = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0)).tolist()
    totals = {"ours": [0, 0.0], "naive": [0, 0.0]}
    for i in range(0, args.steps * args.batch, args.batch):
        ours_batch = ours_collate([feats[j] for j in order[i:i + args.batch]])
        naive_rows = [feats[j] for j in shuffled[i:i + args.batch]]
        naive_batch = {k: v[:-1] for k, v in naive_collate(naive_rows + [dict(pad_to, labels=[-100] * args.max_length)]).items()}
        for name, batch in (("ours", ours_batch), ("naive", naive_batch)):
            start = time.perf_counter()
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
            totals[name][1] += time.perf_counter() - start
            totals[name][0] += int(batch["attention_mask"].sum())
    return {name: {"tokens": t, "seconds": s, "padding_fraction": None} for name, (t, s) in totals.items()} | {
        "ours_padding": ours_collate.padding_fraction}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--samples", type=int, default=16, help="steps x batch = one epoch: both see the same samples")
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    p.add_argument("--trainer", action="store_true", help="end-to-end Trainer runs instead of interleaved steps")
    args = p.parse_args()
    os.environ["NESY_HOME"] = tempfile.mkdtemp(prefix="nesy-bench-")
    from distill.models import student_path

    args.model = student_path(args.model)
    data = write_records(Path(os.environ["NESY_HOME"]) / "records.jsonl", args.samples)
    peak = matmul_peak()
    if args.trainer:
        a, b = ours(args, data), naive(args, data)
        mode = "end-to-end Trainer runs, one after the other"
    else:
        r = interleaved(args, data)
        a, b = r["ours"], r["naive"]
        a["padding_fraction"] = r["ours_padding"]
        mode = "interleaved optimiser steps"
    peak = max(peak, matmul_peak())
    params = sum(x.numel() for x in __import__("transformers").AutoModelForCausalLM.from_pretrained(
        args.model).parameters())
    ours_tps, naive_tps = a["tokens"] / a["seconds"], b["tokens"] / b["seconds"]
    flops = 4 * params * ours_tps
    print(f"{mode}; model {Path(args.model).name} ({params / 1e6:.0f}M params), {args.steps} steps x batch {args.batch}, "
          f"max_length {args.max_length}, torch threads {torch.get_num_threads()}")
    print(f"ours : {a['tokens']} useful tokens in {a['seconds']:.1f}s = {ours_tps:.0f} tok/s "
          f"(padding {100 * a['padding_fraction']:.1f}%)")
    print(f"naive: {b['tokens']} useful tokens in {b['seconds']:.1f}s = {naive_tps:.0f} tok/s "
          f"(padded to {args.max_length})")
    print(f"speed-up: {ours_tps / naive_tps:.2f}x (target >= 1.5x)")
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s; ours achieves {flops / 1e9:.1f} GFLOP/s "
          f"= {100 * flops / peak:.0f}% of peak (4 x params FLOPs per token)")


if __name__ == "__main__":
    main()
