"""Rationale generation: verified CoT / PoT / EoT rationales from a teacher (`nesy teach rationales`).

For each question of a dataset split, per thought type and sample, the teacher is asked with
few-shot demonstrations and the ETD trigger (`rationale_messages`); every sample is then verified
(`verify`) — CoT by answer extraction, PoT by running the program in the sandbox, EoT by solving
the equations with the restricted parser + sympy — and kept only when its answer equals the gold
answer. Verified records go to $NESY_HOME/datasets/<out>/records.jsonl (format in
docs/ARCHITECTURE.md), every teacher exchange (verified or not) to raw.jsonl beside it.

Teacher-less sources of the same records: `gold_rationales` (the dataset's own human-written CoT,
through the same verification) and distill/annotations.py (GSM8K's calculator annotations as
PoT / EoT).

Calls go through the persistent teacher cache (distill/teacher.py): a stopped or killed job run
again answers every finished call from the cache and repeats none. An answer that cannot be
processed (verification or a write raises) is recorded as a failed sample in raw.jsonl and the
job goes on, so one cached odd answer cannot kill every re-run. A re-run rewrites raw.jsonl and
records.jsonl.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from distill import jsonlines
from distill.answers import answers_match, check, format_number
from distill.data import DATA_DIR, Example, RationaleRecord, format_question, get_dataset, rationale_dir
from distill.prompts import TRIGGERS
from distill.sandbox import extract_code, run_pot, solve_eot
from distill.teacher import TeacherClient, append_line, guarded, run_requests, usage_summary

THOUGHTS = ("cot", "pot", "eot")
GOLD_TEACHER = "gold"  # --teacher gold: the dataset's own rationales, no teacher calls

# ---------------------------------------------------------------- teacher prompts

SYSTEM = {
    "cot": "You are an expert problem solver. Explain your reasoning step by step first, then "
    "conclude with one final line of the form 'Therefore, the answer is X.'",
    "pot": "You are an expert Python programmer who solves math word problems with code. Write a "
    "short Python program that computes the answer with descriptive variable names and "
    "assigns the final number to a variable named ans. Use only arithmetic and the math "
    "module: no input, no printing, no other imports. Reply with the code only.",
    "eot": "You translate math word problems into systems of linear equations. Alternate a '%' "
    "comment line restating one fact of the problem with an equation line 'lhs = rhs' "
    "using descriptive snake_case variable names. Introduce each unknown as 'name = x' "
    "(then y, z). Do not simplify and do not compute any result. The last line is "
    "'ans = <variable>'. Reply with the equations only.",
}

# Hand-written demonstrations on GSM8K training questions (their gold answers in brackets);
# tests/test_teach.py verifies each one with the same checks the teacher's samples go through.
GSM8K_DEMOS = [
    {
        "id": "gsm8k-train-00000",
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "72",
        "cot": "Natalia sold 48 clips in April.\nIn May she sold half as many: 48 / 2 = 24 clips.\n"
        "Altogether she sold 48 + 24 = 72 clips.\nTherefore, the answer is 72.",
        "pot": "clips_april = 48\nclips_may = clips_april / 2\nans = clips_april + clips_may",
        "eot": "% Natalia sold clips to 48 of her friends in April\nclips_april = 48\n"
        "% She sold half as many clips in May\nclips_may = clips_april / 2\n"
        "% How many clips did she sell altogether?\ntotal_clips = clips_april + clips_may\n"
        "ans = total_clips",
    },
    {
        "id": "gsm8k-train-00002",
        "question": "Betty is saving money for a new wallet which costs $100. Betty has only half of the "
        "money she needs. Her parents decided to give her $15 for that purpose, and her "
        "grandparents twice as much as her parents. How much more money does Betty need "
        "to buy the wallet?",
        "answer": "5",
        "cot": "Betty has half of $100, which is 100 / 2 = $50.\nHer parents give her $15 and her "
        "grandparents give twice as much: 15 * 2 = $30.\nShe still needs 100 - 50 - 15 - 30 = $5."
        "\nTherefore, the answer is 5.",
        "pot": "wallet_cost = 100\nbetty_savings = wallet_cost / 2\nparents_gift = 15\n"
        "grandparents_gift = 2 * parents_gift\n"
        "ans = wallet_cost - betty_savings - parents_gift - grandparents_gift",
        "eot": "% The wallet costs $100\nwallet_cost = 100\n% Betty has only half of the money she needs\n"
        "betty_savings = wallet_cost / 2\n% Her parents give her $15\nparents_gift = 15\n"
        "% Her grandparents give twice as much as her parents\n"
        "grandparents_gift = 2 * parents_gift\n% Let the money she still needs be x\n"
        "money_needed = x\n% Together it pays for the wallet\n"
        "betty_savings + parents_gift + grandparents_gift + money_needed = wallet_cost\n"
        "ans = money_needed",
    },
    {
        "id": "gsm8k-train-00003",
        "question": "Julie is reading a 120-page book. Yesterday, she was able to read 12 pages and today, "
        "she read twice as many pages as yesterday. If she wants to read half of the "
        "remaining pages tomorrow, how many pages should she read?",
        "answer": "42",
        "cot": "Today Julie read 12 * 2 = 24 pages.\nSo far she has read 12 + 24 = 36 pages.\n"
        "There are 120 - 36 = 84 pages left, and half of them is 84 / 2 = 42 pages.\n"
        "Therefore, the answer is 42.",
        "pot": "book_pages = 120\npages_yesterday = 12\npages_today = 2 * pages_yesterday\n"
        "remaining_pages = book_pages - pages_yesterday - pages_today\nans = remaining_pages / 2",
        "eot": "% The book has 120 pages\nbook_pages = 120\n% Yesterday she read 12 pages\n"
        "pages_yesterday = 12\n% Today she read twice as many pages as yesterday\n"
        "pages_today = 2 * pages_yesterday\n% The pages that remain\n"
        "remaining_pages = book_pages - pages_yesterday - pages_today\n"
        "% Tomorrow she reads half of the remaining pages\n"
        "pages_tomorrow = remaining_pages / 2\nans = pages_tomorrow",
    },
    {
        "id": "gsm8k-train-00005",
        "question": "Mark has a garden with flowers. He planted plants of three different colors in it. "
        "Ten of them are yellow, and there are 80% more of those in purple. There are only "
        "25% as many green flowers as there are yellow and purple flowers. How many flowers "
        "does Mark have in his garden?",
        "answer": "35",
        "cot": "There are 10 yellow flowers.\nThere are 80% more purple ones: 10 + 10 * 80 / 100 = 18.\n"
        "Yellow and purple together: 10 + 18 = 28, so green: 28 * 25 / 100 = 7.\n"
        "In total 28 + 7 = 35 flowers.\nTherefore, the answer is 35.",
        "pot": "yellow = 10\npurple = yellow + yellow * 80 / 100\ngreen = (yellow + purple) * 25 / 100\n"
        "ans = yellow + purple + green",
        "eot": "% Ten of the flowers are yellow\nyellow_flowers = 10\n"
        "% There are 80% more purple flowers than yellow ones\n"
        "purple_flowers = yellow_flowers + yellow_flowers * 80 / 100\n"
        "% There are 25% as many green flowers as yellow and purple flowers\n"
        "green_flowers = (yellow_flowers + purple_flowers) * 25 / 100\n"
        "% How many flowers are in the garden?\n"
        "total_flowers = yellow_flowers + purple_flowers + green_flowers\nans = total_flowers",
    },
]


def bbh_demos(task: str) -> list[tuple[str, str]]:
    """The official 3-shot BBH CoT demos of a task as (question, rationale) pairs."""
    rows = jsonlines.iter_jsonl(DATA_DIR / "bbh" / "cot_prompts.jsonl.gz")
    prompt = next((row["prompt"] for _, row in rows if row["task"] == task), "")
    demos = []
    for block in prompt.split("\n\nQ: ")[1:]:
        question, _, answer = block.partition("\nA: Let's think step by step.\n")
        demos.append((question.strip(), answer.strip()))
    return demos


def demos_for(example: Example, thought: str) -> list[tuple[str, str]]:
    """(question, rationale) demonstrations: GSM8K's hand-written ones (never the question itself)
    for GSM8K and for every PoT / EoT, BBH's official 3-shot CoT, none otherwise."""
    if example.dataset == "gsm8k" or thought in ("pot", "eot"):
        return [(d["question"], d[thought]) for d in GSM8K_DEMOS if d["id"] != example.id]
    if example.dataset == "bbh":
        return bbh_demos(example.task)
    return []


def rationale_messages(example: Example, thought: str) -> list[dict]:
    """System instruction, few-shot turns, then `Question: {q}\\n{trigger}` (the ETD format)."""
    spec = get_dataset(example.dataset)
    system = f"{SYSTEM[thought]}\nTask: {spec.task_description(example.task)}"
    messages = [{"role": "system", "content": system}]
    for question, answer in demos_for(example, thought):
        messages += [
            {"role": "user", "content": f"Question: {question}\n{TRIGGERS[thought]}"},
            {"role": "assistant", "content": answer},
        ]
    messages.append({"role": "user", "content": f"Question: {format_question(example)}\n{TRIGGERS[thought]}"})
    return messages


# ---------------------------------------------------------------- verification


@dataclass
class Verdict:
    rationale: str  # what is stored: the CoT text, the program, or the equations
    extracted: str | None
    correct: bool
    detail: str | None = None


def strip_fences(text: str) -> str:
    return extract_code(text) if "```" in text else text.strip()


VERIFY_TIMEOUT = 2.0  # s per PoT/EoT check: ample for arithmetic, short enough for a prompt stop


def verify(text: str, example: Example, thought: str, answer_type: str) -> Verdict:
    """Check one teacher sample against the gold answer by the rule of its thought type."""
    if thought == "cot":
        extracted, correct = check(text, example, answer_type=answer_type)
        return Verdict(text.strip(), extracted, correct)
    return verify_program(strip_fences(text), example, thought)


def verify_program(program: str, example: Example, thought: str) -> Verdict:
    """Run a PoT program / solve an EoT system in the sandbox and compare with the gold number
    (also the check of distill/annotations.py's programs and systems)."""
    run = run_pot if thought == "pot" else solve_eot
    result = run(program, timeout=VERIFY_TIMEOUT)
    if not result.ok:
        return Verdict(program, None, False, result.error)
    value = format_number(result.value) if isinstance(result.value, float) else str(result.value)
    return Verdict(program, value, answers_match(value, example.answer, "number"))


# ---------------------------------------------------------------- the job


@dataclass
class RationaleSummary:
    out: Path
    calls: int
    kept: int
    by_thought: dict
    failed_calls: int
    usage: dict


def generate_rationales(
    client: TeacherClient, examples: list[Example], thoughts: list[str], n_samples: int, out: str
) -> RationaleSummary:
    """Ask the teacher for every (question, thought, sample), verify each answer, and keep each
    verified rationale once per question and thought."""
    folder = rationale_dir(out)
    records_path, raw_path = folder / "records.jsonl", folder / "raw.jsonl"
    records_path.write_text("")  # rebuilt on every run; finished calls come from the cache
    raw_path.write_text("")
    jobs = [(ex, thought, s) for ex in examples for thought in thoughts for s in range(n_samples)]
    requests = [rationale_messages(ex, thought) for ex, thought, _ in jobs]
    kept, seen, failed = {t: 0 for t in thoughts}, set(), []

    def fail(i, error):
        ex, thought, sample = jobs[i]
        failed.append(i)
        append_line(raw_path, {"example_id": ex.id, "thought": thought, "sample": sample, "error": error})

    def process(i, result):
        ex, thought, sample = jobs[i]
        verdict = verify(result.text, ex, thought, _answer_type(ex))
        append_line(
            raw_path,
            {
                "example_id": ex.id,
                "thought": thought,
                "sample": sample,
                "messages": requests[i],
                "response": result.text,
                "usage": result.usage,
                "cached": result.cached,
                "extracted": verdict.extracted,
                "verified": verdict.correct,
                "detail": verdict.detail,
            },
        )
        if verdict.correct and (ex.id, thought, verdict.rationale) not in seen:
            seen.add((ex.id, thought, verdict.rationale))
            kept[thought] += 1
            append_line(records_path, _record(ex, thought, verdict, f"{ex.id}-{thought}-{sample}", client.config.model))

    run_requests(client, requests, [s for _, _, s in jobs], f"rationales {out}", guarded(process, fail))
    return RationaleSummary(records_path, len(jobs), sum(kept.values()), kept, len(failed), usage_summary(client))


def _answer_type(example: Example) -> str:
    return get_dataset(example.dataset).answer_type_for(example.task)


def _record(ex: Example, thought: str, verdict: Verdict, record_id: str, teacher: str) -> str:
    """The records.jsonl line of a verified rationale."""
    return RationaleRecord(
        id=record_id,
        example_id=ex.id,
        dataset=ex.dataset,
        task=ex.task,
        question=ex.question,
        answer=ex.answer,
        thought=thought,
        rationale=verdict.rationale,
        extracted=verdict.extracted,
        choices=ex.choices,
        teacher_model=teacher,
    ).to_json()


# ---------------------------------------------------------------- without a teacher

CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, e.g. <<48/2=24>>


def gold_rationales(examples: list[Example], out: str) -> RationaleSummary:
    """CoT records from the dataset's own human-written rationales (GSM8K, StrategyQA, AGIEval).

    A free, instant stand-in for a teacher: useful as a baseline and on machines where the local
    teacher is too slow. Each record goes through the same verification as a teacher's.
    """
    records_path = rationale_dir(out) / "records.jsonl"
    records_path.write_text("")
    kept = 0
    for ex in examples:
        if not ex.rationale:
            continue
        text = f"{CALCULATOR_NOTE.sub('', ex.rationale).strip()}\nTherefore, the answer is {ex.answer}."
        verdict = verify(text, ex, "cot", _answer_type(ex))
        if verdict.correct:
            kept += 1
            append_line(records_path, _record(ex, "cot", verdict, f"{ex.id}-cot-gold", GOLD_TEACHER))
    return RationaleSummary(records_path, len(examples), kept, {"cot": kept}, 0, {"requests": 0})
