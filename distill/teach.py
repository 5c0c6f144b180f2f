"""Teacher jobs: verified rationales (CoT / PoT / EoT) and symbolic knowledge (NesyCD / SKIntern).

`nesy teach rationales` asks the teacher for each question of a dataset split, per thought type
and sample, with few-shot demonstrations and the ETD trigger, then verifies every sample —
CoT by answer extraction, PoT by running the program in the sandbox, EoT by solving the
equations with the restricted parser + sympy — and keeps only the ones whose answer equals the
gold answer. Verified records go to $NESY_HOME/datasets/<out>/records.jsonl (format in
docs/ARCHITECTURE.md), every teacher exchange (verified or not) to raw.jsonl beside it.

`nesy teach knowledge` asks the teacher, as an educational teacher, for a Learning Summary and
Supplementary Knowledge, with the NesyCD reference's prompt shape (a list of requirements, one
demonstration; sampled at temperature 0.8 with room for 1,024 tokens):
- NesyCD (`--errors FILE`): from the student's question (its prompt without the "Answer:" tail)
  and its wrong response, cleaned of degenerate repetition and cut to 256 words; the gold answer
  is not shown;
- SKIntern (`--dataset ... --with-answer`): from a training question and its gold answer.
Well-formed answers become `pending` KB entries (id `{dataset}-{example_id}-{kind}`) with full
provenance, concepts and quality flags (kb/quality.py, checked before the entry is stored);
malformed answers are counted, kept in raw.jsonl and never stored (our choice: the reference
stores whatever the teacher returned).
Concepts: the teacher is asked for a final `Concepts:` line; when it gives none, the terms it
wrote in **bold** or `code` are used instead (at most 8, each at most 5 words).

Both jobs go through the persistent teacher cache (distill/teacher.py): a stopped or killed job
run again answers every finished call from the cache and repeats none. Progress (done/total,
rate, ETA, tokens) goes to tqdm and the job's metrics.jsonl; SIGTERM/SIGINT stop the job within
a few seconds at any moment (calls in flight get distill.teacher.STOP_GRACE s to land in the cache).
An answer that cannot be processed (verification or a write raises) is recorded as a failed
sample in raw.jsonl and the job goes on, so one cached odd answer cannot kill every re-run.
`--out` is a name (never a path) under $NESY_HOME; the run folders are not deleted by a re-run,
only their raw.jsonl / records.jsonl are rewritten.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer

from distill.answers import answers_match, check, clean_response, format_number
from distill.data import (DatasetError, Example, RationaleRecord, format_question, get_dataset,
                          rationale_dir)
from distill.progress import STOPPED_EXIT_CODE, Progress, StopRequested, install_stop_handler
from distill.prompts import TRIGGERS
from distill.sandbox import extract_code, run_pot, solve_eot
from distill.teacher import (ServerOptions, TeacherCache, TeacherClient, TeacherConfig, TeacherError,
                             clean_text, default_draft, local_teacher, prefix_order,
                             stop_local_teacher)
from kb.workspace import InvalidName, check_name, create_owned, named_path

THOUGHTS = ("cot", "pot", "eot")


def _fail(message: str) -> None:
    """The CLI's one-line error (exit 2), shared by the option checks and teacher selection."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)

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
    {"id": "gsm8k-train-00000",
     "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                 "clips in May. How many clips did Natalia sell altogether in April and May?",
     "answer": "72",
     "cot": "Natalia sold 48 clips in April.\nIn May she sold half as many: 48 / 2 = 24 clips.\n"
            "Altogether she sold 48 + 24 = 72 clips.\nTherefore, the answer is 72.",
     "pot": "clips_april = 48\nclips_may = clips_april / 2\nans = clips_april + clips_may",
     "eot": "% Natalia sold clips to 48 of her friends in April\nclips_april = 48\n"
            "% She sold half as many clips in May\nclips_may = clips_april / 2\n"
            "% How many clips did she sell altogether?\ntotal_clips = clips_april + clips_may\n"
            "ans = total_clips"},
    {"id": "gsm8k-train-00002",
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
            "ans = money_needed"},
    {"id": "gsm8k-train-00003",
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
            "pages_tomorrow = remaining_pages / 2\nans = pages_tomorrow"},
    {"id": "gsm8k-train-00005",
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
            "total_flowers = yellow_flowers + purple_flowers + green_flowers\nans = total_flowers"},
]


def bbh_demos(task: str) -> list[tuple[str, str]]:
    """The official 3-shot BBH CoT demos of a task as (question, rationale) pairs."""
    import gzip

    from distill.data import DATA_DIR

    with gzip.open(DATA_DIR / "bbh" / "cot_prompts.jsonl.gz", "rt", encoding="utf-8") as f:
        prompt = next((row["prompt"] for row in map(json.loads, f) if row["task"] == task), "")
    demos = []
    for block in prompt.split("\n\nQ: ")[1:]:
        question, _, answer = block.partition("\nA: Let's think step by step.\n")
        demos.append((question.strip(), answer.strip()))
    return demos


def demos_for(example: Example, thought: str) -> list[tuple[str, str]]:
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
        messages += [{"role": "user", "content": f"Question: {question}\n{TRIGGERS[thought]}"},
                     {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": f"Question: {format_question(example)}\n{TRIGGERS[thought]}"})
    return messages


# ---------------------------------------------------------------- verification

@dataclass
class Verdict:
    rationale: str          # what is stored: the CoT text, the program, or the equations
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
    program = strip_fences(text)
    run = run_pot if thought == "pot" else solve_eot
    result = run(program, timeout=VERIFY_TIMEOUT)
    if not result.ok:
        return Verdict(program, None, False, result.error)
    value = format_number(result.value) if isinstance(result.value, float) else str(result.value)
    return Verdict(program, value, answers_match(value, example.answer, "number"))


# ---------------------------------------------------------------- teacher selection

@dataclass
class LocalServerChoice:
    """What `nesy teach` asks of the local llama.cpp teacher (fields of distill.teacher.ServerOptions).
    Speculative decoding is off by default: on this project's 2-core CPU the 0.5B draft made the
    1.5B teacher slower (bench/bench_teacher_throughput.py); `--draft` turns it on."""
    slots: int = ServerOptions.n_parallel
    prompt_cache: bool = True
    draft: bool = False     # the packaged draft model, when the teacher has one and it is installed

    def options(self, gguf: Path) -> ServerOptions:
        return ServerOptions(n_parallel=self.slots, cache_prompt=self.prompt_cache,
                             draft=default_draft(gguf) if self.draft else None)


def make_client(teacher: str, model: str | None, api_key_env: str, concurrency: int,
                temperature: float, max_tokens: int, timeout: float, max_retries: int = 5,
                server: LocalServerChoice | None = None) -> TeacherClient:
    """`local` = the shared llama.cpp server (model: a GGUF path or a packaged teacher name);
    anything else is the base URL of an OpenAI-compatible server (model: its model name).
    The local server sends at most one request per slot: more would only wait in its queue,
    where the total deadline of a request (`timeout`) keeps running."""
    sampling = dict(concurrency=concurrency, temperature=temperature, max_tokens=max_tokens,
                    timeout=timeout, max_retries=max_retries)
    if teacher == "local":
        from distill.models import TEACHERS, ModelNotAvailable, teacher_gguf_path

        if model and model not in TEACHERS and not Path(model).is_file():
            _fail(f"--model must be a GGUF file or one of {', '.join(TEACHERS)} with --teacher local")
        try:
            gguf = teacher_gguf_path(model)
            options = (server or LocalServerChoice()).options(gguf)
            info = local_teacher(gguf, options)
        except (ModelNotAvailable, TeacherError) as e:
            _fail(f"the local teacher is not available: {e} (run `make setup-teacher`)")
        typer.echo(f"local teacher {info.model}: {options.describe()}", err=True)
        sampling["concurrency"] = min(concurrency, options.n_parallel)
        config = info.config(**sampling)
    else:
        if not model:
            _fail("--model is required with a teacher URL")
        config = TeacherConfig(base_url=teacher, model=model, api_key_env=api_key_env, **sampling)
    return TeacherClient(config, TeacherCache())


def _append(path: Path, row: dict | str) -> None:
    """One JSONL line (a dict, or an already serialised line); lone surrogates become U+FFFD."""
    line = row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)
    with open(path, "a", encoding="utf-8") as f:
        f.write(clean_text(line) + "\n")


def _guarded(process, fail):
    """`process(i, result)`, where any error processing one answer becomes `fail(i, message)`:
    the answer is cached, so letting it raise would kill every re-run of the job the same way."""
    def handle(i, result):
        if isinstance(result, Exception):
            fail(i, str(result))
            return
        try:
            process(i, result)
        except Exception as e:  # noqa: BLE001 - one bad answer is one failed sample
            fail(i, f"could not process the answer: {type(e).__name__}: {e}")
    return handle


def knowledge_dir(name: str) -> Path:
    """$NESY_HOME/teach/knowledge/<name> (raw teacher I/O of a knowledge run), created and marked
    as the tool's own; `name` must be a plain name (InvalidName naming --out otherwise)."""
    path = named_path("teach/knowledge", check_name(name, "--out"), "--out")
    return path if path.is_dir() else create_owned(path)


def _run_name(text: str) -> str:
    """A plain run name made from a file name (the default --out of `teach knowledge --errors`)."""
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", text))
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", name[:100]) or "errors"


def _check_out(out: str | None, area: str) -> None:
    """--out must be a plain name, checked before anything is created, written or started."""
    if out is None:
        return
    try:
        named_path(area, check_name(out, "--out"), "--out")
    except InvalidName as e:
        _fail(str(e))


def _run_requests(client: TeacherClient, requests: list[list[dict]], samples: list[int],
                  desc: str, handle) -> None:
    """complete_many with progress (tokens, rate, ETA) and a cooperative stop between results."""
    started = time.monotonic()
    with Progress(len(requests), desc=desc, unit="call", stage=desc) as bar:
        def on_done(i, result):
            handle(i, result)
            elapsed = max(time.monotonic() - started, 1e-6)
            bar.update(1, tokens=client.usage.total_tokens, cached=client.usage.cached,
                       tokens_per_s=round(client.usage.completion_tokens / elapsed, 2))
            bar.check_stop()
        # prompts sharing their instruction and demonstrations go one group after the other,
        # so the server's prompt cache computes that prefix once per group
        try:
            client.complete_many(requests, on_done=on_done, samples=samples,
                                 order=prefix_order(requests))
        finally:  # where the teacher's time went (llama.cpp's own timings), stopped or not
            if line := client.usage.timings_line():
                typer.echo(line)


# ---------------------------------------------------------------- rationales

@dataclass
class RationaleSummary:
    out: Path
    calls: int
    kept: int
    by_thought: dict
    failed_calls: int
    usage: dict


def generate_rationales(client: TeacherClient, examples: list[Example], thoughts: list[str],
                        n_samples: int, out: str) -> RationaleSummary:
    folder = rationale_dir(out)
    records_path, raw_path = folder / "records.jsonl", folder / "raw.jsonl"
    records_path.write_text("")  # rebuilt on every run; finished calls come from the cache
    raw_path.write_text("")
    jobs = [(ex, thought, s) for ex in examples for thought in thoughts for s in range(n_samples)]
    requests = [rationale_messages(ex, thought) for ex, thought, _ in jobs]
    seen: set[tuple[str, str, str]] = set()
    kept = {t: 0 for t in thoughts}
    failed = 0

    def fail(i, error):
        nonlocal failed
        ex, thought, sample = jobs[i]
        failed += 1
        _append(raw_path, {"example_id": ex.id, "thought": thought, "sample": sample, "error": error})

    def process(i, result):
        ex, thought, sample = jobs[i]
        answer_type = get_dataset(ex.dataset).answer_type_for(ex.task)
        verdict = verify(result.text, ex, thought, answer_type)
        _append(raw_path, {"example_id": ex.id, "thought": thought, "sample": sample,
                           "messages": requests[i], "response": result.text, "usage": result.usage,
                           "cached": result.cached, "extracted": verdict.extracted,
                           "verified": verdict.correct, "detail": verdict.detail})
        if verdict.correct and (ex.id, thought, verdict.rationale) not in seen:
            seen.add((ex.id, thought, verdict.rationale))
            kept[thought] += 1
            record = RationaleRecord(id=f"{ex.id}-{thought}-{sample}", example_id=ex.id, dataset=ex.dataset,
                                     task=ex.task, question=ex.question, answer=ex.answer,
                                     thought=thought, rationale=verdict.rationale,
                                     extracted=verdict.extracted, choices=ex.choices,
                                     teacher_model=client.config.model)
            _append(records_path, record.to_json())

    _run_requests(client, requests, [s for _, _, s in jobs], f"rationales {out}",
                  _guarded(process, fail))
    u = client.usage
    return RationaleSummary(records_path, len(jobs), sum(kept.values()), kept, failed,
                            {"requests": u.requests, "cached": u.cached, "retries": u.retries,
                             "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens})


GOLD_TEACHER = "gold"
ANNOTATIONS_TEACHER = "annotations"
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
        verdict = verify(text, ex, "cot", get_dataset(ex.dataset).answer_type_for(ex.task))
        if verdict.correct:
            kept += 1
            record = RationaleRecord(
                id=f"{ex.id}-cot-gold", example_id=ex.id, dataset=ex.dataset, task=ex.task,
                question=ex.question, answer=ex.answer, thought="cot", rationale=verdict.rationale,
                extracted=verdict.extracted, choices=ex.choices, teacher_model=GOLD_TEACHER)
            with open(records_path, "a", encoding="utf-8") as f:
                f.write(record.to_json() + "\n")
    return RationaleSummary(records_path, len(examples), kept, {"cot": kept}, 0, {"requests": 0})


# ---------------------------------------------------------------- knowledge
#
# The NesyCD reference's teacher call (docs/METHODS.md; Xnhyacinth/NesyCD `regular.jsonl`
# temp_error pid 2 and inference.py): system "You are a helpful assistant.", a user turn with the
# teacher's role, a numbered list of requirements, the return format, ONE demonstration, then
# the student's question (its prompt without the "Answer: …" tail) and wrong response;
# temperature 0.8 and no token limit. Ours has the same parts in our own words, and three
# choices of our own: the return format asks for a Concepts line too (the KB's concept filters
# and graph use it), the demonstration is a made-up word problem (not a GSM8K question, so no
# test or training question leaks into every prompt), and a malformed answer is rejected and
# counted (parse_knowledge) where the reference stores whatever came back. SKIntern's per-example
# prompt has the same shape with the gold answer (and reference solution) instead of an error.

KNOWLEDGE_SYSTEM = "You are a helpful assistant."  # the reference's system turn
KNOWLEDGE_TEMPERATURE = 0.8  # the reference samples the teacher at 0.8
KNOWLEDGE_MAX_TOKENS = 1024  # the reference sets no limit; 1,024 leaves room for both lists

KNOWLEDGE_RETURN_FORMAT = (
    "### Return Format:\n"
    "Return in the following format:\n"
    "Learning Summary: [Learning Summary]\n"
    "Supplementary Knowledge: [Supplementary Knowledge]\n"
    "Concepts: [2 to 6 key concepts, comma-separated]")

ERROR_PROMPT = (
    "As an experienced educational teacher, your goal is to help students become better at "
    "solving questions by analysing an incorrect solution process and its answer.\n"
    "You write a focused thought process and the background knowledge a student needs to solve "
    "similar questions in the future.\n"
    "You create a learning summary and supplementary knowledge: identify the steps needed to "
    "solve the question, and give general knowledge that helps beyond this one question.\n\n"
    "### Requirements:\n"
    "1. The learning summary sets out the thinking and the precautions that address the "
    "student's mistakes, including but not limited to understanding the question, the reasoning "
    "steps and the calculations. It ends with experience the student can reuse on similar "
    "questions.\n"
    "2. The supplementary knowledge lists the essential background the student needs for "
    "questions like this, including but not limited to formulas, definitions, facts about the "
    "world and techniques.\n"
    "3. Both must be easy for a student to understand and use, concise and effective.\n"
    "4. If the student's response does not end with \"Therefore, the answer is\", or repeats some "
    "characters or words over and over, the student could not solve the question: explain how to "
    "approach it from the beginning.\n"
    "5. Keep the learning summary general, not about this specific question, and the "
    "supplementary knowledge general too: no analysis of this question's numbers, names or "
    "objects.\n"
    "6. Keep these requirements in mind while you write the learning summary and the "
    "supplementary knowledge.\n\n"
    f"{KNOWLEDGE_RETURN_FORMAT}")

EXAMPLE_PROMPT = (
    "As an experienced educational teacher, your goal is to write a learning summary and "
    "supplementary knowledge that help students solve questions of the same task in the future.\n"
    "Task: {task}\n"
    "Base them on a thorough understanding and explanation of the question below and its correct "
    "answer, with the relevant background knowledge, fundamental concepts and conclusions from "
    "experience.\n\n"
    "### Requirements:\n"
    "1. The learning summary is a numbered list of the thinking steps and precautions that solve "
    "questions like this one.\n"
    "2. The supplementary knowledge is a numbered list of the essential background: formulas, "
    "definitions, facts about the world and techniques.\n"
    "3. Both must be easy for a student to understand and use, concise and effective.\n"
    "4. Keep both general, not about this specific question: no analysis of its numbers, names "
    "or objects.\n\n"
    f"{KNOWLEDGE_RETURN_FORMAT}")

# The one demonstration: a made-up word problem, a wrong student response, and the analysis we
# want (general; no number of the problem in it). tests/test_kb_quality.py checks that the
# analysis passes the KB's quality checks and parses.
KNOWLEDGE_DEMO = {
    "question": "Question: A bakery bakes 4 trays of 12 muffins. 9 of the muffins are burnt and "
                "thrown away, and the rest are packed in boxes of 6. How many boxes can the bakery "
                "fill completely?",
    "answer": "6",
    "response": "The bakery bakes 4 × 12 = 48 muffins. Each box holds 6 muffins, so the bakery "
                "fills 48 / 6 = 8 boxes. Therefore, the answer is 8.",
    "analysis": (
        "Learning Summary:\n"
        "1. Read the whole question and list every quantity that changes the total, including "
        "amounts removed, spent or lost, before calculating anything.\n"
        "2. Follow the order of events: find the starting total first, then apply each addition "
        "or removal in turn.\n"
        "3. When items are packed into groups, divide what is left by the group size, and decide "
        "from the wording whether the question asks for complete groups (round down) or for "
        "enough groups to hold everything (round up).\n"
        "4. Check that the result answers exactly what was asked, in the right unit, and end "
        "with \"Therefore, the answer is\" followed by the number.\n\n"
        "Supplementary Knowledge:\n"
        "1. Equal groups: total = number of groups × size of each group.\n"
        "2. Removing a part: what remains = total − the part removed.\n"
        "3. Division with a remainder: dividing a by b gives a quotient q and a remainder r "
        "smaller than b; q is the number of complete groups, and q + 1 groups are needed to "
        "hold everything when r is not zero.\n"
        "4. Counts of whole objects are whole numbers, so a fractional result must be rounded "
        "the way the question requires.\n\n"
        "Concepts: equal groups, subtraction of removed items, division with remainder, "
        "rounding in context"),
}


def _student_question(case: dict) -> str:
    """What the student was asked: its prompt without the "Answer: …" tail (as the reference
    cuts it), or the bare question when the error file has no prompt."""
    prompt = case.get("prompt") or f"Question: {case['question']}"
    return prompt.split("\nAnswer:", 1)[0].strip()


def _error_case(question: str, response: str) -> str:
    return (f"The student was given the following question:\n{question}\n\n"
            f"The student's wrong response is:\n{response}")


def error_messages(case: dict) -> list[dict]:
    """NesyCD: requirements, the demonstration, then the student's question and its (cleaned)
    wrong response; never the gold answer."""
    demo = KNOWLEDGE_DEMO
    user = (f"{ERROR_PROMPT}\n\n### Example\n{_error_case(demo['question'], demo['response'])}\n\n"
            f"{demo['analysis']}\n\n### Your turn\n"
            f"{_error_case(_student_question(case), clean_response(case['response']))}")
    return [{"role": "system", "content": KNOWLEDGE_SYSTEM}, {"role": "user", "content": user}]


def example_messages(example: Example) -> list[dict]:
    """SKIntern: requirements, the demonstration, then the question and its gold answer (and the
    reference solution when there is one: a small teacher explains better from it)."""
    spec = get_dataset(example.dataset)
    demo = KNOWLEDGE_DEMO
    solution = f"\nReference solution:\n{example.rationale}" if example.rationale else ""
    user = (f"{EXAMPLE_PROMPT.format(task=spec.task_description(example.task))}\n\n### Example\n"
            f"{demo['question']}\nAnswer: {demo['answer']}\n\n{demo['analysis']}\n\n### Your turn\n"
            f"Question: {format_question(example)}\nAnswer: {example.answer}{solution}")
    return [{"role": "system", "content": KNOWLEDGE_SYSTEM}, {"role": "user", "content": user}]


@dataclass
class Knowledge:
    learning_summary: str
    supplementary_knowledge: str
    concepts: list[str]


# A heading: at a line start, optional markdown (#, numbering, bullet, bold), the name, then a
# colon or the end of the line (so a bullet that merely starts with "Concepts" is not a heading).
HEADING = r"(?:^|\n)[ \t]*(?:#+\s*)?(?:\d+[.)]\s*)?(?:[-*]\s+)?\**\s*{name}\s*\**\s*(?::\s*\**|(?=\n))"
SECTIONS = {"summary": "learning\\s+summary", "knowledge": "supplementary\\s+knowledge",
            "concepts": "(?:key\\s+)?concepts"}


def parse_knowledge(text: str) -> Knowledge | None:
    """The two sections (and concepts) of a teacher answer; None when malformed.

    Malformed: a section missing or empty, a section under 5 words, or a section that is mostly
    one repeated phrase (degenerate output).
    """
    marks = []
    for key, name in SECTIONS.items():
        match = re.search(HEADING.format(name=name), text, flags=re.IGNORECASE)
        if match:
            marks.append((match.start(), match.end(), key))
    marks.sort()
    parts = {}
    for n, (_, end, key) in enumerate(marks):
        stop = marks[n + 1][0] if n + 1 < len(marks) else len(text)
        parts[key] = text[end:stop].strip().strip("*").strip()
    summary, knowledge = parts.get("summary", ""), parts.get("knowledge", "")
    if not _substantial(summary) or not _substantial(knowledge):
        return None
    concepts = _concepts(parts.get("concepts", ""), summary + "\n" + knowledge)
    return Knowledge(_tidy(summary), _tidy(knowledge), concepts)


def _substantial(section: str) -> bool:
    words = section.split()
    return len(words) >= 5 and len(set(w.lower() for w in words)) >= 0.3 * len(words)


def _tidy(section: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", section).strip()


def _concepts(line: str, body: str) -> list[str]:
    if line.strip():
        items = re.split(r"[,;\n]", line.split("\n\n")[0])
    else:
        items = re.findall(r"\*\*([^*\n]{2,60})\*\*|`([^`\n]{2,60})`", body)
        items = [a or b for a, b in items]
    concepts, seen = [], set()
    for item in items:
        item = re.sub(r"^[\s\-*\d.)\[]+|[\s.:*\]]+$", "", item).strip()  # "[a, b]" too
        item = re.sub(r"^(?:and|or)\s+", "", item, flags=re.IGNORECASE)  # "a, b, and c"
        if item and len(item.split()) <= 5 and item.lower() not in seen:
            seen.add(item.lower())
            concepts.append(item)
    return concepts[:8]


@dataclass
class KnowledgeSummary:
    cases: int
    created: int
    skipped_existing: int
    malformed: int
    failed_calls: int
    raw: Path
    usage: dict
    flagged: dict = field(default_factory=dict)  # quality flag code -> entries of this run with it

    def flags_line(self) -> str:
        return ", ".join(f"{code} {n}" for code, n in self.flagged.items()) or "none"


def distil_knowledge(client: TeacherClient, cases: list[dict], kind: str, out: str,
                     auto_accept: bool = False) -> KnowledgeSummary:
    """One teacher call per case -> a pending (or accepted) KB entry, or a malformed count.

    `cases` rows: example_id, dataset, task, question, and for error analysis prompt + response.
    Entries already curated (accepted/rejected) are never overwritten by a re-run.
    Every entry is checked (kb/quality.py) before it is stored, and stored with its flags; once
    all answers are in, the run's entries are checked for boilerplate (`generic`) against the
    KB's entries of the same tasks.
    """
    from kb import quality
    from kb.schema import Entry, Source
    from kb.store import EntryNotFound, KBStore

    store = KBStore()
    raw_path = knowledge_dir(out) / "raw.jsonl"
    raw_path.write_text("")
    requests = [error_messages(c) if kind == "error_analysis" else example_messages(c["example"])
                for c in cases]
    counts = {"created": 0, "skipped": 0, "malformed": 0, "failed": 0}
    stored: list[str] = []  # ids this run wrote (the generic check looks at them at the end)

    def fail(i, error):
        counts["failed"] += 1
        _append(raw_path, {"entry_id": f"{cases[i]['dataset']}-{cases[i]['example_id']}-{kind}",
                           "error": error})

    def process(i, result):
        # the KB refuses text UTF-8 cannot encode; an error file may hold lone surrogates
        case = {k: clean_text(v) if isinstance(v, str) else v for k, v in cases[i].items()}
        entry_id = f"{case['dataset']}-{case['example_id']}-{kind}"
        parsed = parse_knowledge(result.text)
        _append(raw_path, {"entry_id": entry_id, "messages": requests[i], "response": result.text,
                           "usage": result.usage, "cached": result.cached, "malformed": parsed is None})
        if parsed is None:
            counts["malformed"] += 1
            return
        try:
            existing = store.get(entry_id)
            if existing.status != "pending":
                counts["skipped"] += 1
                return
        except EntryNotFound:
            existing = None
        source = Source(kind=kind, dataset=case["dataset"], example_id=case["example_id"],
                        question=case["question"],
                        student_response=clean_response(case["response"]) if case.get("response") else None,
                        teacher_model=client.config.model, student_model=case.get("student_model"))
        entry = Entry(id=entry_id, task=case["task"], learning_summary=parsed.learning_summary,
                      supplementary_knowledge=parsed.supplementary_knowledge,
                      status="accepted" if auto_accept else "pending",
                      title=", ".join(parsed.concepts[:3]) or None, concepts=parsed.concepts, source=source)
        # a re-run keeps the batch checks' flags (generic) until the end of the run rechecks them
        found = quality.check_entry(entry)
        entry = entry.model_copy(update={"flags": quality.recheck(existing, found) if existing else found})
        store.upsert(entry, by=f"teacher:{client.config.model}")
        stored.append(entry_id)
        counts["created"] += 1

    _run_requests(client, requests, [0] * len(requests), f"knowledge {out}", _guarded(process, fail))
    flagged = _check_generic(store, stored, f"teacher:{client.config.model}")
    u = client.usage
    return KnowledgeSummary(len(cases), counts["created"], counts["skipped"], counts["malformed"],
                            counts["failed"], raw_path,
                            {"requests": u.requests, "cached": u.cached, "retries": u.retries,
                             "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens},
                            flagged)


GENERIC_REFERENCE = 5000  # at most this many recent KB entries per task to compare a run with


def _check_generic(store, ids: list[str], by: str) -> dict:
    """The run's entries checked for boilerplate against the KB's entries of their tasks (the
    most recent GENERIC_REFERENCE per task); flags written as the run's own revision, so a re-run
    still recognises the entries as its own. Returns flag code -> entries of the run with it."""
    from kb import quality
    from kb.store import ConflictError, EntryNotFound

    entries = list(store.get_many(ids).values())
    reference = [e for task in sorted({e.task for e in entries})
                 for e in store.query(task=task, limit=GENERIC_REFERENCE).entries]
    found = quality.generic(entries, reference) if entries else {}
    counts: dict[str, int] = {}
    for entry in entries:
        flags = quality.recheck(entry, [found[entry.id]] if entry.id in found else [], ["generic"])
        if flags != entry.flags:
            try:
                store.update(entry.id, {"flags": [f.model_dump() for f in flags]},
                             expected_version=entry.version, by=by)
            except (ConflictError, EntryNotFound):  # a person got there first: theirs stands
                continue
        for flag in flags:
            counts[flag.code] = counts.get(flag.code, 0) + 1
    return {code: counts[code] for code in quality.CHECKS if code in counts} | \
        {code: n for code, n in counts.items() if code not in quality.CHECKS}


def read_error_cases(path: Path) -> list[dict]:
    """Student error JSONL (docs/ARCHITECTURE.md); raises ValueError naming the bad line."""
    required = ("example_id", "dataset", "task", "question", "prompt", "response")
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {number}: not valid JSON ({e.msg})") from None
        missing = [k for k in required if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path}: line {number}: missing {', '.join(missing)}")
        cases.append(row)
    return cases


# ---------------------------------------------------------------- CLI: nesy teach ...

cli = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Teacher jobs: verified rationales (CoT/PoT/EoT) and KB knowledge.")


TEACHER_HELP = ("'local' (the packaged llama.cpp teacher), the base URL of an OpenAI-compatible server, "
                "'gold' (rationales only: the dataset's own human-written CoT, no teacher calls) or "
                "'annotations' (GSM8K: PoT programs / EoT systems built from the calculator annotations, "
                "each verified in the sandbox; one set per thought, named <out>-<thought>)")
MODEL_HELP = "local: a GGUF path or packaged teacher name; URL: the model name"
KEY_ENV_HELP = ("environment variable holding the API key (never written anywhere; '' sends no key). "
                "The app offers only the variables declared in $NESY_TEACHER_KEY_ENVS")
TIMEOUT_HELP = "total seconds of one request attempt (connect + send + read), then a retry"
CONCURRENCY_HELP = "requests in flight (the local teacher: at most one per slot, see --slots)"
SLOTS_HELP = ("local teacher: requests decoded together, each slot with its own prompt cache "
              "(on 2 shared cores two slots were no faster than one)")
PROMPT_CACHE_HELP = ("local teacher: reuse the computed prefix (instruction + demonstrations) of "
                     "the previous call instead of reading it again")
DRAFT_HELP = ("local teacher: speculative decoding with the packaged Qwen2.5-Coder-0.5B as draft "
              "(the greedy output, up to floating-point near-ties). It pays where decoding waits on "
              "memory (many cores, a GPU); on 2 CPU cores it was slower, so it is off by default")


def _server_choice(slots: int, prompt_cache: bool, draft: bool) -> LocalServerChoice:
    if slots < 1:
        _fail("--slots must be at least 1")
    return LocalServerChoice(slots, prompt_cache, draft)


def _until_stopped(job):
    """Run a teacher job; a stop request exits with STOPPED_EXIT_CODE and says how to continue.

    The stop handler is installed first, so SIGTERM/SIGINT stop the job at any moment (while the
    local server starts, a call hangs or a retry backs off), not only between results."""
    install_stop_handler()
    try:
        return job()
    except StopRequested:
        typer.echo("stopped; run the same command again to continue (finished calls are cached)")
        raise typer.Exit(STOPPED_EXIT_CODE)


@cli.command("rationales")
def rationales_cmd(
    dataset: str = typer.Option(..., help="dataset name (nesy data list)"),
    split: str = typer.Option("train"),
    limit: int = typer.Option(None, help="a seeded sample of this many questions"),
    seed: int = typer.Option(0),
    thoughts: str = typer.Option("cot", help="comma-separated: cot,pot,eot"),
    n_samples: int = typer.Option(1, help="samples per question and thought type"),
    temperature: float = typer.Option(0.0, help="0 for one greedy sample; >0 with --n-samples > 1"),
    max_tokens: int = typer.Option(512),
    out: str = typer.Option(None, help="rationale set name, not a path: $NESY_HOME/datasets/<out> "
                                       "(default: <dataset>-<split>)"),
    teacher: str = typer.Option("local", help=TEACHER_HELP),
    model: str = typer.Option(None, help=MODEL_HELP),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help=KEY_ENV_HELP),
    concurrency: int = typer.Option(4, help=CONCURRENCY_HELP),
    timeout: float = typer.Option(600.0, help=TIMEOUT_HELP),
    max_retries: int = typer.Option(5, help="retries on 429/5xx/timeouts, with exponential backoff"),
    slots: int = typer.Option(ServerOptions.n_parallel, help=SLOTS_HELP),
    prompt_cache: bool = typer.Option(True, "--prompt-cache/--no-prompt-cache", help=PROMPT_CACHE_HELP),
    draft: bool = typer.Option(False, "--draft/--no-draft", help=DRAFT_HELP),
) -> None:
    """Generate CoT/PoT/EoT rationales, verify each against the gold answer, keep the verified."""
    _check_out(out, "datasets")
    chosen = [t.strip() for t in thoughts.split(",") if t.strip()]
    if not chosen or any(t not in THOUGHTS for t in chosen):
        _fail(f"--thoughts must be a comma-separated subset of {','.join(THOUGHTS)}")
    if n_samples < 1 or concurrency < 1:
        _fail("--n-samples and --concurrency must be at least 1")
    try:
        spec = get_dataset(dataset)
        if any(t in ("pot", "eot") for t in chosen) and spec.answer_type != "number":
            _fail(f"PoT/EoT need numeric answers; {dataset} answers are {spec.answer_type}")
        examples = spec.load(split, limit=limit, seed=seed)
    except DatasetError as e:
        _fail(str(e))
    name = out or f"{dataset}-{split}"
    try:
        named_path("datasets", name, "--out")
        rationale_dir(name)
    except InvalidName as e:
        _fail(str(e))
    except DatasetError as e:
        _fail(f"--out: {e}")
    if teacher == GOLD_TEACHER:
        if chosen != ["cot"]:
            _fail("--teacher gold gives CoT rationales only (use --thoughts cot)")
        summary = gold_rationales(examples, name)
        if not summary.kept:
            _fail(f"{dataset} {split} has no rationales to use with --teacher gold")
        typer.echo(f"kept {summary.kept} verified of {summary.calls} gold rationales -> {summary.out}")
        return
    if teacher == ANNOTATIONS_TEACHER:
        from distill import annotations
        if any(t not in annotations.THOUGHTS for t in chosen):
            _fail("--teacher annotations gives pot,eot; CoT from the same rationales is --teacher gold")
        for thought in chosen:  # one set per thought: sources and thoughts never mix
            summary = _until_stopped(lambda: annotations.annotation_rationales(
                examples, thought, annotations.default_name(thought, name)))
            typer.echo(summary.line())
        return
    summary = _until_stopped(lambda: generate_rationales(
        make_client(teacher, model, api_key_env, concurrency, temperature, max_tokens, timeout,
                    max_retries, _server_choice(slots, prompt_cache, draft)),
        examples, chosen, n_samples, name))
    typer.echo(f"kept {summary.kept} verified of {summary.calls} samples {summary.by_thought} -> "
               f"{summary.out}; failed calls {summary.failed_calls}; usage {summary.usage}")
    if summary.calls and summary.failed_calls == summary.calls:
        _fail(f"every teacher call failed (see {summary.out.parent / 'raw.jsonl'})")


@cli.command("knowledge")
def knowledge_cmd(
    errors: Path = typer.Option(None, help="student error JSONL (NesyCD error analysis)"),
    dataset: str = typer.Option(None, help="with --with-answer: training examples (SKIntern)"),
    split: str = typer.Option("train"),
    limit: int = typer.Option(None),
    seed: int = typer.Option(0),
    with_answer: bool = typer.Option(False, help="SKIntern: knowledge from question + gold answer"),
    auto_accept: bool = typer.Option(False, help="store entries as accepted instead of pending"),
    max_tokens: int = typer.Option(KNOWLEDGE_MAX_TOKENS, help="room for the teacher's analysis"),
    temperature: float = typer.Option(KNOWLEDGE_TEMPERATURE, help="the reference samples at 0.8"),
    out: str = typer.Option(None, help="name (not a path) of the run folder for raw teacher I/O, "
                                       "$NESY_HOME/teach/knowledge/<out>"),
    teacher: str = typer.Option("local", help=TEACHER_HELP),
    model: str = typer.Option(None, help=MODEL_HELP),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help=KEY_ENV_HELP),
    concurrency: int = typer.Option(4, help=CONCURRENCY_HELP),
    timeout: float = typer.Option(600.0, help=TIMEOUT_HELP),
    max_retries: int = typer.Option(5, help="retries on 429/5xx/timeouts, with exponential backoff"),
    slots: int = typer.Option(ServerOptions.n_parallel, help=SLOTS_HELP),
    prompt_cache: bool = typer.Option(True, "--prompt-cache/--no-prompt-cache", help=PROMPT_CACHE_HELP),
    draft: bool = typer.Option(False, "--draft/--no-draft", help=DRAFT_HELP),
) -> None:
    """Distil knowledge into pending KB entries (from student errors, or examples + answers)."""
    _check_out(out, "teach/knowledge")
    if (errors is None) == (dataset is None):
        _fail("give either --errors FILE or --dataset NAME --with-answer")
    if dataset is not None and not with_answer:
        _fail("--dataset needs --with-answer (SKIntern knowledge from question + gold answer)")
    try:
        if errors is not None:
            if not errors.is_file():
                _fail(f"no such file: {errors}")
            kind, cases = "error_analysis", read_error_cases(errors)
            name = out or _run_name(errors.stem)
        else:
            kind = "example_knowledge"
            examples = get_dataset(dataset).load(split, limit=limit, seed=seed)
            cases = [{"example_id": e.id, "dataset": e.dataset, "task": e.task, "question": e.question,
                      "example": e} for e in examples]
            name = out or f"{dataset}-{split}"
    except (ValueError, DatasetError) as e:
        _fail(str(e))
    try:
        knowledge_dir(name)
    except InvalidName as e:
        _fail(str(e))
    summary = _until_stopped(lambda: distil_knowledge(
        make_client(teacher, model, api_key_env, concurrency, temperature, max_tokens, timeout,
                    max_retries, _server_choice(slots, prompt_cache, draft)),
        cases, kind, name, auto_accept))
    typer.echo(f"{summary.created} entries ({'accepted' if auto_accept else 'pending'}) from "
               f"{summary.cases} cases; malformed {summary.malformed} (not stored); kept curated "
               f"{summary.skipped_existing}; failed calls {summary.failed_calls}; quality flags "
               f"{summary.flags_line()}; raw {summary.raw}; usage {summary.usage}")
    if summary.cases and summary.failed_calls == summary.cases:
        _fail(f"every teacher call failed (see {summary.raw})")


@cli.command("server")
def server_cmd(stop: bool = typer.Option(False, "--stop", help="stop the shared local teacher")) -> None:
    """Show (or stop) the shared local llama.cpp teacher server."""
    from distill.teacher import server_state

    if stop:
        typer.echo("stopped" if stop_local_teacher() else "no local teacher was running")
        return
    state = server_state()
    typer.echo(json.dumps(state) if state else "no local teacher recorded")
