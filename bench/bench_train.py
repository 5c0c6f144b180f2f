"""Training throughput: our trainer vs plain Trainer + peft with naive padding, and FLOP/s vs peak.

Measured in interleaved rounds (bench/_measure.py: median ratio with its min–max, machine load):
- default: one model + LoRA + AdamW; each round runs one epoch of optimiser steps per variant,
  back to back: `naive` (padded to max_length, random order: the common baseline), `padded`
  (length-grouped dynamic padding, what distill/train.py did before packing), `packed` (what it
  did next: each batch one row, position ids restarting per sample, use_cache off), `response`
  (what it does now: packed, and logits only where a response token is predicted, ResponseLogits),
  and with `--variants` also `packed-bf16`, `response-bf16` (bf16 autocast), `packed-1thread`,
  `packed-compile` (torch.compile of the model);
- `--trainer`: end-to-end runs, `distill.methods.train()` (ours, as shipped: packing, the dtype
  of distill.hardware) vs a plain transformers Trainer + peft with `padding="max_length"` and the
  default collator, alternately, `--rounds` times;
- `--dtypes`: ours end to end with NESY_DTYPE=fp32 and =bf16 alternately: tokens/s and the loss
  curves side by side (bf16 must learn the same within noise);
- `--memory`: ours end to end without and with `--gradient-checkpointing`, each in a fresh process
  (peak RSS is per process), alternately: peak resident memory and tokens/s, both as ratios. Use
  long samples (`--max-length 2048 --long`: several questions per sample, like SKIntern's first
  stage with its demonstrations) to see what activations cost.

Same model (the embedded SmolLM2-135M by default), same GSM8K samples (question -> reference
rationale, chat template, loss on the response), same LoRA (r=32, all linear), same batch size
and number of optimiser steps. Reported: useful (non-padding) tokens per second, the ratio
ours/naive per round (target >= 1.5x) and the achieved FLOP/s of ours against the matmul peak of
the dtype in use measured in the same round (torch.mm of 2048x2048, target >= 50 %).
FLOP formula: 4 x params x useful tokens per second (forward 2N; backward 2N through the frozen
weights; LoRA's own matmuls, attention scores and the optimiser are not counted, so the
percentage understates the work done).

    .venv/bin/python bench/bench_train.py --trainer --steps 4 --samples 16      # the README's
    .venv/bin/python bench/bench_train.py --variants packed,packed-bf16,packed-1thread
    .venv/bin/python bench/bench_train.py --variants naive,packed,response --model qwen2.5-coder-0.5b
    .venv/bin/python bench/bench_train.py --dtypes --steps 8 --samples 32
    .venv/bin/python bench/bench_train.py --memory --long --max-length 2048 --steps 2 --samples 8
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NESY_MODELS", str(REPO / ".cache" / "models"))

import torch  # noqa: E402
from _measure import Load, Spread, interleave, ratio  # noqa: E402


def matmul_peak(dtype=torch.float32, n: int = 2048, repeats: int = 4) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def write_records(path: Path, n: int, per_sample: int = 1) -> Path:
    """n GSM8K records; per_sample > 1 joins that many questions (and rationales) into one long sample."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(REPO / "data" / "gsm8k" / "train.jsonl.gz", "rt") as f, open(path, "w") as out:
        lines = [json.loads(line) for _, line in zip(range(n * per_sample), f)]
        for i in range(n):
            group = lines[i * per_sample : (i + 1) * per_sample]
            row = {
                "id": group[-1]["id"],
                "question": "\n\n".join(r["question"] for r in group),
                "answer": group[-1]["answer"],
                "rationale": "\n\n".join(r["rationale"] for r in group),
            }
            out.write(
                json.dumps(
                    {
                        "id": row["id"],
                        "example_id": row["id"],
                        "dataset": "gsm8k",
                        "task": "gsm8k",
                        "question": row["question"],
                        "answer": row["answer"],
                        "thought": "cot",
                        "rationale": f"{row['rationale']}\nThe answer is {row['answer']}.",
                        "verified": True,
                    }
                )
                + "\n"
            )
    return path


def ours(args, data: Path, tag: str = "bench", checkpointing: bool = False) -> dict:
    from distill import hardware
    from distill.methods import METHODS, train

    hardware.compute_dtype.cache_clear()
    root = train(
        METHODS["std-cot"].config(
            data=str(data),
            output=tag,
            base_model=args.model,
            max_steps=args.steps,
            batch_size=args.batch,
            max_length=args.max_length,
            save_steps=10_000,
            gradient_checkpointing=checkpointing,
        )
    )
    m = json.loads((root / "card.json").read_text())["stages"]["main"]
    return {"tokens": m["tokens"], "seconds": m["runtime_s"], "packed": m["packed"], "dtype": m["dtype"]}


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
        feats.append(
            {
                "input_ids": e["input_ids"] + [tok.pad_token_id] * gap,
                "labels": e["labels"] + [-100] * gap,
                "attention_mask": [1] * len(e["input_ids"]) + [0] * gap,
            }
        )
    model = get_peft_model(
        model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    out = tempfile.mkdtemp(prefix="naive-")
    trainer = Trainer(
        model=model,
        train_dataset=feats,
        data_collator=default_data_collator,
        args=TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch,
            max_steps=args.steps,
            learning_rate=2e-4,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            include_num_input_tokens_seen="non_padding",
            dataloader_pin_memory=False,
        ),
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"tokens": int(trainer.state.num_input_tokens_seen), "seconds": seconds, "padding_fraction": None}


def step_variants(args, data: Path) -> tuple[dict, dict]:
    """{variant: one epoch of optimiser steps -> (useful tokens, seconds)} on one model, and info."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    from distill.infer import load_base
    from distill.methods.std_cot import samples as cot_samples
    from distill.train import LengthGroupedSampler, PackCollator, PadCollator, ResponseLogits, encode, load_records

    set_seed(0)
    model, tok = load_base(args.model)
    model.config.use_cache = False
    model = get_peft_model(
        model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    feats = [encode(tok, s, args.max_length)[0] for s in cot_samples(load_records(str(data)))]
    grouped = list(LengthGroupedSampler([len(f["input_ids"]) for f in feats], args.batch * 16, seed=0))
    shuffled = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0)).tolist()
    pad = PadCollator(tok.pad_token_id)
    filler = {"input_ids": [0] * args.max_length, "labels": [-100] * args.max_length}

    def naive_batch(rows):  # padded to max_length: a filler row sets the width, then is dropped
        return {k: v[:-1] for k, v in pad(rows + [filler]).items()}

    batches = {
        "naive": [
            naive_batch([feats[j] for j in shuffled[i : i + args.batch]]) for i in range(0, len(feats), args.batch)
        ],
        "padded": [pad([feats[j] for j in grouped[i : i + args.batch]]) for i in range(0, len(feats), args.batch)],
        "packed": [
            PackCollator()([feats[j] for j in grouped[i : i + args.batch]]) for i in range(0, len(feats), args.batch)
        ],
        "response": [
            ResponseLogits(PackCollator())([feats[j] for j in grouped[i : i + args.batch]])
            for i in range(0, len(feats), args.batch)
        ],
    }
    compiled = {}

    def epoch(name: str, autocast: bool = False, threads: int | None = None, compile: bool = False):
        def run():
            net = model
            if compile:
                net = compiled.setdefault("m", torch.compile(model, dynamic=True))
            before = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            tokens, start = 0, time.perf_counter()
            cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            try:
                for batch in batches[name][: args.steps]:
                    with cast:
                        loss = net(**batch).loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad()
                    mask = batch.get("attention_mask")  # packed batches have no padding at all
                    tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            finally:
                torch.set_num_threads(before)
            return tokens / (time.perf_counter() - start)

        return run

    variants = {
        "naive": epoch("naive"),
        "padded": epoch("padded"),
        "packed": epoch("packed"),
        "packed-bf16": epoch("packed", autocast=True),
        "response": epoch("response"),
        "response-bf16": epoch("response", autocast=True),
        "packed-1thread": epoch("packed", threads=1),
        "packed-compile": epoch("packed", compile=True),
    }
    useful = sum(len(f["input_ids"]) for f in feats[: args.steps * args.batch])
    return variants, {
        "padding": {n: 1 - useful / sum(b["input_ids"].numel() for b in bs[: args.steps]) for n, bs in batches.items()}
    }


def params_of(model_path: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    return sum(p.numel() for p in model.parameters())


def report_flops(name: str, rates: list[float], peaks: list[float], params: int, dtype: str) -> None:
    flops = [4 * params * r for r in rates]
    print(
        f"{name}: {Spread([f / 1e9 for f in flops], ' GFLOP/s')} = "
        f"{Spread([100 * f / p for f, p in zip(flops, peaks)], ' %')} of the {dtype} matmul peak measured in "
        f"the same rounds ({Spread([p / 1e9 for p in peaks], ' GFLOP/s')}); 4 x {params / 1e6:.0f}M params x tokens/s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--samples", type=int, default=16, help="steps x batch = one epoch: both see the same samples")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    p.add_argument("--trainer", action="store_true", help="end-to-end Trainer runs instead of optimiser steps")
    p.add_argument("--dtypes", action="store_true", help="ours end to end in fp32 and bf16: speed and loss curves")
    p.add_argument("--memory", action="store_true", help="ours without / with gradient checkpointing: peak RSS")
    p.add_argument("--long", action="store_true", help="samples of 6 questions each (SKIntern-like prompt lengths)")
    p.add_argument("--one-run", choices=["plain", "checkpointing"], help=argparse.SUPPRESS)  # --memory's child
    p.add_argument(
        "--variants",
        default="naive,padded,packed,response",
        help="step variants (naive first): naive, padded, packed, response, packed-bf16, response-bf16, "
        "packed-1thread, packed-compile",
    )
    args = p.parse_args()
    os.environ["NESY_HOME"] = tempfile.mkdtemp(prefix="nesy-bench-")
    from distill.hardware import compute_dtype, describe, torch_dtype
    from distill.models import student_path

    args.model = student_path(args.model)
    data = write_records(Path(os.environ["NESY_HOME"]) / "records.jsonl", args.samples, 6 if args.long else 1)
    if args.one_run:
        r = ours(args, data, checkpointing=args.one_run == "checkpointing")
        print(json.dumps(r | {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
        return
    params = params_of(args.model)
    print(
        f"model {Path(args.model).name} ({params / 1e6:.0f}M params), {args.steps} steps x batch {args.batch}, "
        f"max_length {args.max_length}, torch threads {torch.get_num_threads()}, dtype {describe()}"
    )
    with Load() as load:
        if args.dtypes:
            dtype_run(args, data, params)
        elif args.memory:
            memory_run(args)
        elif args.trainer:
            peaks = []

            def peak():
                peaks.append(matmul_peak(torch_dtype()))
                return peaks[-1]

            seen = {}

            def run_ours():
                r = ours(args, data)
                seen.update(r)
                return r["tokens"] / r["seconds"]

            def run_naive():
                r = naive(args, data)
                return r["tokens"] / r["seconds"]

            rounds = interleave({"ours": run_ours, "naive": run_naive, "peak": peak}, args.rounds)
            print(f"end-to-end Trainer runs, alternately; ours: packed={seen['packed']}, dtype {seen['dtype']}")
            print(f"ours : {Spread(rounds['ours'], ' tok/s')}")
            print(f"naive: {Spread(rounds['naive'], ' tok/s')} (padded to {args.max_length})")
            print(f"speed-up ours/naive: {ratio(rounds['ours'], rounds['naive'])} (target >= 1.5x)")
            report_flops("ours", rounds["ours"], rounds["peak"], params, compute_dtype())
        else:
            variants, info = step_variants(args, data)
            names = [n.strip() for n in args.variants.split(",")]
            peaks = {"fp32": lambda: matmul_peak(torch.float32), "bf16": lambda: matmul_peak(torch.bfloat16)}
            sides = {n: variants[n] for n in names} | {f"peak-{d}": f for d, f in peaks.items()}
            rounds = interleave(sides, args.rounds, warmup=1)
            print(
                "interleaved optimiser steps (one warm-up round dropped); padding: "
                + ", ".join(f"{n} {100 * v:.0f}%" for n, v in info["padding"].items())
            )
            for n in names:
                print(
                    f"{n:15s}: {Spread(rounds[n], ' tok/s')}"
                    + (f"  vs naive {ratio(rounds[n], rounds['naive'])}" if n != "naive" and "naive" in rounds else "")
                )
            if "packed" in rounds and "response" in rounds:
                print(f"response-only logits vs every position's: {ratio(rounds['response'], rounds['packed'])}")
            for n in names:
                if n.startswith(("packed", "response")):
                    dtype = "bf16" if "bf16" in n else "fp32"
                    report_flops(n, rounds[n], rounds[f"peak-{dtype}"], params, dtype)
    print(load)


def dtype_run(args, data: Path, params: int) -> None:
    """ours end to end with NESY_DTYPE=fp32 and bf16 alternately; loss curves side by side."""
    curves = {"fp32": [], "bf16": []}
    peaks = {"fp32": [], "bf16": []}

    from distill.jsonlines import read_jsonl

    def run(dtype):
        def go():
            os.environ["NESY_DTYPE"] = dtype
            job = Path(tempfile.mkdtemp(prefix=f"job-{dtype}-"))
            os.environ["NESY_JOB_DIR"] = str(job)
            try:
                r = ours(args, data, tag=f"bench-{dtype}")
            finally:
                os.environ.pop("NESY_JOB_DIR")
            curves[dtype].append([row["loss"] for row in read_jsonl(job / "metrics.jsonl") if "loss" in row])
            peaks[dtype].append(matmul_peak(torch.bfloat16 if dtype == "bf16" else torch.float32))
            return r["tokens"] / r["seconds"]

        return go

    rounds = interleave({"fp32": run("fp32"), "bf16": run("bf16")}, args.rounds)
    os.environ.pop("NESY_DTYPE")
    print(
        f"ours fp32: {Spread(rounds['fp32'], ' tok/s')}; bf16 autocast: {Spread(rounds['bf16'], ' tok/s')}; "
        f"bf16/fp32 {ratio(rounds['bf16'], rounds['fp32'])}"
    )
    print(
        f"matmul peak fp32 {Spread([p / 1e9 for p in peaks['fp32']], ' GFLOP/s')}, "
        f"bf16 {Spread([p / 1e9 for p in peaks['bf16']], ' GFLOP/s')}"
    )
    for dtype in ("fp32", "bf16"):
        report_flops(f"ours {dtype}", rounds[dtype], peaks[dtype], params, dtype)
    for step, (a, b) in enumerate(zip(curves["fp32"][0], curves["bf16"][0]), start=1):
        print(f"  step {step}: loss fp32 {a:.4f}  bf16 {b:.4f}  ({100 * (b - a) / a:+.2f}%)")


def memory_run(args) -> None:
    """Without and with gradient checkpointing, each in a fresh process, alternately."""
    runs = {"plain": [], "checkpointing": []}

    def run(mode):
        def go():
            cmd = [sys.executable, __file__, "--one-run", mode, "--model", args.model]
            cmd += [f"--steps={args.steps}", f"--batch={args.batch}", f"--samples={args.samples}"]
            cmd += [f"--max-length={args.max_length}"] + (["--long"] if args.long else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            runs[mode].append(json.loads(out))
            return runs[mode][-1]["tokens"] / runs[mode][-1]["seconds"]

        return go

    rounds = interleave({"plain": run("plain"), "checkpointing": run("checkpointing")}, args.rounds)
    rss = {mode: [r["peak_rss"] / 2**30 for r in rs] for mode, rs in runs.items()}
    tokens = runs["plain"][0]["tokens"] / args.steps
    print(f"{args.steps} steps of ~{tokens:.0f} tokens, dtype {runs['plain'][0]['dtype']}; peak RSS per process")
    for mode in runs:
        print(f"{mode:13s}: {Spread(rss[mode], ' GB')}, {Spread(rounds[mode], ' tok/s')}")
    print(f"memory checkpointing/plain: {ratio(rss['checkpointing'], rss['plain'])}")
    print(f"speed  checkpointing/plain: {ratio(rounds['checkpointing'], rounds['plain'])}")


if __name__ == "__main__":
    main()
