"""Student backends side by side: transformers (batched, in process) vs llama.cpp (served, GGUF LoRA).

For each student (the 135M SmolLM2 and the 0.5B Qwen2.5-Coder) with a std-cot LoRA adapter —
trained here in a few steps on the shipped GSM8K gold CoT unless --adapter-135m/--adapter-0.5b
names one — N GSM8K test questions are answered greedily by each backend, in chunks of
--batch-size as `nesy eval` does, in interleaved rounds (A B C, A B C, … via bench/_measure):
- transformers: distill.infer.Student in this process (left-padded batches);
- llama.cpp:f32: the embedded llama.cpp server with the adapter as a GGUF LoRA on an f32 GGUF
  written from the very HF weights the adapter was trained on (apples to apples);
- llama.cpp:packaged: the same LoRA on the quantised GGUF the student ships as (Q4_1 for the
  135M, mixed Q5_0/Q8_0/Q6_K/Q4_K for the 0.5B), i.e. with quantisation error.
Printed per backend: questions/s and generated tokens/s (median, min–max over rounds), the
per-round speed ratio to transformers, and the agreement of the greedy extracted answers (and of the whole texts)
with transformers; below 90 % is flagged as a bug to find. Threads: llama.cpp gets as many as
torch does (or --threads for both). The machine load is printed; colleagues share the cores, so say so.

    .venv/bin/python bench/bench_student_backends.py --questions 16 --max-new-tokens 200 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NESY_MODELS", str(REPO / ".cache" / "models"))
# the quick adapters are kept between runs (training them is the slow part)
os.environ.setdefault("NESY_HOME", str(REPO / ".cache" / "bench-student-backends"))

from _measure import Load, Spread, interleave, ratio  # noqa: E402

STUDENTS = {"135m": None, "0.5b": "qwen2.5-coder-0.5b"}  # name -> --base-model
BACKENDS = ("transformers", "llama.cpp:f32", "llama.cpp:packaged")
AGREEMENT_TARGET = 0.9


def quick_adapter(student: str, base_model: str | None, steps: int) -> str:
    """A std-cot adapter trained for `steps` steps on the shipped GSM8K gold CoT (kept, reused)."""
    from distill.methods import METHODS, train
    from kb.workspace import subdir

    name = f"bench-{student}-std-cot-{steps}"
    if (subdir("adapters") / name / "card.json").exists():
        return name
    print(f"training {name} ({steps} steps, batch 4, r 16) …", flush=True)
    start = time.perf_counter()
    train(
        METHODS["std-cot"].config(
            data="gsm8k-gold-cot",
            output=name,
            base_model=base_model,
            limit=4 * steps,
            max_steps=steps,
            batch_size=4,
            lora_r=16,
            lora_alpha=32,
            learning_rate=1e-3,
        )
    )
    print(f"  trained in {time.perf_counter() - start:.0f} s", flush=True)
    return name


def questions(n: int):
    from distill.data import format_question, get_dataset

    spec = get_dataset("gsm8k")
    examples = spec.load("test", limit=n, seed=0)
    return [format_question(e) for e in examples], [e.answer for e in examples], spec.task_description(None)


def run(student, qs: list[str], task: str, max_new_tokens: int, batch_size: int):
    """One evaluation pass as `nesy eval` makes it: (results, seconds)."""
    start = time.perf_counter()
    results = []
    for i in range(0, len(qs), batch_size):
        results += student.answer(
            qs[i : i + batch_size], max_new_tokens=max_new_tokens, batch_size=batch_size, task_description=task
        )
    return results, time.perf_counter() - start


def bench_student(key: str, adapter: str, args) -> list[str]:
    import torch

    from distill.answers import answers_match
    from distill.infer import Student

    qs, gold, task = questions(args.questions)
    # both backends compute with the same number of threads: a like-for-like comparison
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    os.environ["NESY_STUDENT_THREADS"] = str(threads)
    students = {}
    for backend in BACKENDS:
        start = time.perf_counter()
        students[backend] = Student(adapter=adapter, backend=backend)
        students[backend].answer(qs[:1], max_new_tokens=4, task_description=task)  # warm-up
        print(f"  {backend:18} loaded and warmed up in {time.perf_counter() - start:.1f} s", flush=True)
    answers, tokens = {}, {b: [] for b in BACKENDS}

    def one_pass(backend: str) -> float:
        results, seconds = run(students[backend], qs, task, args.max_new_tokens, args.batch_size)
        tok = students[backend].tokenizer
        tokens[backend].append(sum(len(tok(r.text, add_special_tokens=False)["input_ids"]) for r in results))
        answers.setdefault(backend, results)
        return seconds

    with Load() as load:
        seconds = interleave({b: (lambda b=b: one_pass(b)) for b in BACKENDS}, rounds=args.rounds)
    for s in students.values():
        if s.backend is not None:
            s.backend.close()
    ref = answers["transformers"]
    lines = [
        f"\n{key} student, adapter {adapter}: {len(qs)} GSM8K test questions, {args.max_new_tokens} new "
        f"tokens, greedy, eval batch {args.batch_size}; {threads} thread(s) each"
    ]
    for backend in BACKENDS:
        rates = Spread([len(qs) / t for t in seconds[backend]], " q/s")
        tps = Spread([n / t for n, t in zip(tokens[backend], seconds[backend])], " tok/s")
        agree = sum(a.extracted == b.extracted for a, b in zip(answers[backend], ref))
        same = sum(a.text == b.text for a, b in zip(answers[backend], ref))
        correct = sum(bool(answers_match(a.extracted, g, "number")) for a, g in zip(answers[backend], gold))
        line = f"  {backend:18} {rates}; generated {tps}; accuracy {correct}/{len(qs)}"
        if backend != "transformers":
            flag = "" if agree >= AGREEMENT_TARGET * len(qs) else "  <- below 90 %: a bug to find"
            line += (
                f"\n  {'':18} speed vs transformers {ratio(seconds['transformers'], seconds[backend], '×')}; "
                f"extracted answers agree {agree}/{len(qs)} ({100 * agree / len(qs):.0f} %){flag}, "
                f"texts identical {same}/{len(qs)}"
            )
        lines.append(line)
    for backend in BACKENDS[1:]:
        for i, (a, b) in enumerate(zip(answers[backend], ref)):
            if a.text != b.text:
                cut = next((j for j, (x, y) in enumerate(zip(a.text, b.text)) if x != y), min(len(a.text), len(b.text)))
                lines.append(
                    f"    {backend} q{i}: the texts part at character {cut} (answers {b.extracted!r} vs "
                    f"{a.extracted!r}): {b.text[max(cut - 25, 0) : cut + 25]!r} vs "
                    f"{a.text[max(cut - 25, 0) : cut + 25]!r}"
                )
    lines.append(f"  {load}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--students", default="135m,0.5b", help="comma list of 135m, 0.5b")
    p.add_argument("--threads", type=int, default=None, help="threads for both backends [default: torch's default]")
    p.add_argument("--train-steps", type=int, default=8, help="steps of the quick adapters")
    p.add_argument("--adapter-135m", default=None, help="an adapter name to use instead of training one")
    p.add_argument("--adapter-0.5b", dest="adapter_05b", default=None)
    args = p.parse_args()
    print(f"NESY_HOME={os.environ['NESY_HOME']}", flush=True)
    report = []
    for key in args.students.split(","):
        base_model = STUDENTS[key]
        given = args.adapter_135m if key == "135m" else args.adapter_05b
        adapter = given or quick_adapter(key, base_model, args.train_steps)
        print(f"{key}: {adapter}", flush=True)
        report += bench_student(key, adapter, args)
    print("\n".join(report))


if __name__ == "__main__":
    main()
