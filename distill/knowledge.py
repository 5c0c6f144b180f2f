"""Knowledge distillation: the teacher's Learning Summary + Supplementary Knowledge, as KB entries.

`nesy teach knowledge` asks the teacher, as an educational teacher, for a Learning Summary and
Supplementary Knowledge, with the NesyCD reference's prompt shape (a list of requirements, one
demonstration; sampled at temperature 0.8 with room for 1,024 tokens):
- NesyCD (`error_messages`, `--errors FILE`): from the student's question (its prompt without the
  "Answer:" tail) and its wrong response, cut at its first degenerate run and to its first 256
  space-separated pieces, never rewritten (answers.clean_response); the gold answer is not shown;
- SKIntern (`example_messages`, `--dataset ... --with-answer` or `--from-set NAME`): from a
  training question and its gold answer (and its reference solution when it has one).
Knowledge is made for training questions only: a case whose question is in its dataset's test
split is refused before any call (`refuse_test_questions`).
Well-formed answers (`parse_knowledge`) become `pending` KB entries (id
`{dataset}-{example_id}-{kind}`) with full provenance, concepts and quality flags (kb/quality.py,
checked before the entry is stored; once all answers are in, the run's entries are checked for
boilerplate against the KB's entries of the same tasks); malformed answers are counted, kept in
raw.jsonl and never stored (our choice: the reference stores whatever the teacher returned); a
case answered malformed is asked again as a new sample, up to KNOWLEDGE_ATTEMPTS calls (at
temperature 0 once: a new sample would be the same answer), since SKIntern needs knowledge for
every training question.
Concepts: the teacher is asked for a final `Concepts:` line; when it gives none, the terms it
wrote in **bold** or `code` are used instead (at most 8, each at most 5 words).

Calls go through the persistent teacher cache (distill/teacher.py), so a re-run repeats none;
raw teacher I/O goes to $NESY_HOME/teach/knowledge/<out>/raw.jsonl, rewritten by a re-run.
Entries a person already curated (accepted / rejected) are never overwritten by a re-run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from distill import jsonlines
from distill.answers import clean_response
from distill.data import DatasetError, Example, RationaleRecord, format_question, get_dataset, load_rationales
from distill.teacher import TeacherClient, append_line, clean_text, guarded, run_requests, usage_summary
from kb.errors import NesyError
from kb.workspace import check_name, create_owned, named_path

ERROR_KIND = "error_analysis"  # NesyCD: an analysis of the student's wrong answer
EXAMPLE_KIND = "example_knowledge"  # SKIntern: knowledge for one training question


class KnowledgeError(NesyError, ValueError):
    """Knowledge job input that cannot be used (a bad error file line, ...); says where."""


def knowledge_dir(name: str) -> Path:
    """$NESY_HOME/teach/knowledge/<name> (raw teacher I/O of a knowledge run), created and marked
    as the tool's own; `name` must be a plain name (InvalidName naming --out otherwise)."""
    path = named_path("teach/knowledge", check_name(name, "--out"), "--out")
    return path if path.is_dir() else create_owned(path)


# ---------------------------------------------------------------- cases (what the teacher is asked)


def example_cases(examples: list[Example]) -> list[dict]:
    """SKIntern cases: one per training question, with its Example (question, gold answer, choices)."""
    return [
        {"example_id": e.id, "dataset": e.dataset, "task": e.task, "question": e.question, "example": e}
        for e in examples
    ]


def set_examples(name: str, limit: int | None = None) -> list[Example]:
    """One Example per question of a rationale set, found as `nesy train --data` finds it (a
    workspace set, else a shipped one; `a+b` joins sets), in set order; `limit`: the first N
    questions, as `nesy train --limit` takes the first records. The reference solution the
    teacher is shown is the question's CoT rationale when the set has one."""
    records = [r for part in name.split("+") for r in load_rationales(part) if r.verified is not False]
    if not records:
        raise KnowledgeError(f"{name}: no verified rationale records")
    first: dict[tuple[str, str], RationaleRecord] = {}
    for r in records:
        key = (r.dataset, r.example_id)
        if key not in first or (r.thought == "cot" and first[key].thought != "cot"):
            first[key] = r  # a replaced value keeps its key's place: the set order stays
    return [r.example() for r in list(first.values())[:limit]]


def refuse_test_questions(cases: list[dict]) -> None:
    """Knowledge is made for training questions only: KnowledgeError when any case's question is
    in its dataset's test split (compared by example id), so no test question's knowledge can
    reach the KB or a student's training."""
    test_ids = {dataset: _test_ids(dataset) for dataset in {c["dataset"] for c in cases}}
    found = [c["example_id"] for c in cases if c["example_id"] in test_ids[c["dataset"]]]
    if found:
        shown = ", ".join(found[:5]) + (", …" if len(found) > 5 else "")
        raise KnowledgeError(
            f"knowledge jobs take training questions only: {len(found)} of "
            f"{len(cases)} questions are in a test split ({shown})"
        )


def _test_ids(dataset: str) -> set[str]:
    """The example ids of the dataset's test split (none for a dataset without one, or one no
    longer registered: nothing to compare with)."""
    try:
        spec = get_dataset(dataset)
    except DatasetError:
        return set()
    return {e.id for e in spec.load("test")} if "test" in spec.splits else set()


ERROR_FIELDS = ("example_id", "dataset", "task", "question", "prompt", "response")


def read_error_cases(path: Path) -> list[dict]:
    """Student error JSONL (docs/ARCHITECTURE.md); a NesyError (a ValueError too) names the bad line."""
    cases = []
    try:
        for number, row in jsonlines.iter_jsonl(path):
            missing = [k for k in ERROR_FIELDS if not isinstance(row, dict) or not isinstance(row.get(k), str)]
            if missing:
                raise KnowledgeError(f"{path}: line {number}: missing {', '.join(missing)}")
            cases.append(row)
    except UnicodeDecodeError as e:
        raise KnowledgeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return cases


# ---------------------------------------------------------------- the teacher's prompts
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
KNOWLEDGE_ATTEMPTS = 3  # calls per case at most: a malformed answer is asked again as a new sample

KNOWLEDGE_RETURN_FORMAT = (
    "### Return Format:\n"
    "Return in the following format:\n"
    "Learning Summary: [Learning Summary]\n"
    "Supplementary Knowledge: [Supplementary Knowledge]\n"
    "Concepts: [2 to 6 key concepts, comma-separated]"
)

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
    '4. If the student\'s response does not end with "Therefore, the answer is", or repeats some '
    "characters or words over and over, the student could not solve the question: explain how to "
    "approach it from the beginning.\n"
    "5. Keep the learning summary general, not about this specific question, and the "
    "supplementary knowledge general too: no analysis of this question's numbers, names or "
    "objects.\n"
    "6. Keep these requirements in mind while you write the learning summary and the "
    "supplementary knowledge.\n\n"
    f"{KNOWLEDGE_RETURN_FORMAT}"
)

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
    f"{KNOWLEDGE_RETURN_FORMAT}"
)

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
        'with "Therefore, the answer is" followed by the number.\n\n'
        "Supplementary Knowledge:\n"
        "1. Equal groups: total = number of groups × size of each group.\n"
        "2. Removing a part: what remains = total − the part removed.\n"
        "3. Division with a remainder: dividing a by b gives a quotient q and a remainder r "
        "smaller than b; q is the number of complete groups, and q + 1 groups are needed to "
        "hold everything when r is not zero.\n"
        "4. Counts of whole objects are whole numbers, so a fractional result must be rounded "
        "the way the question requires.\n\n"
        "Concepts: equal groups, subtraction of removed items, division with remainder, "
        "rounding in context"
    ),
}


def _student_question(case: dict) -> str:
    """What the student was asked: its prompt without the "Answer: …" tail (as the reference
    cuts it), or the bare question when the error file has no prompt."""
    prompt = case.get("prompt") or f"Question: {case['question']}"
    return prompt.split("\nAnswer:", 1)[0].strip()


def _error_case(question: str, response: str) -> str:
    return f"The student was given the following question:\n{question}\n\nThe student's wrong response is:\n{response}"


def error_messages(case: dict) -> list[dict]:
    """NesyCD: requirements, the demonstration, then the student's question and its (cleaned)
    wrong response; never the gold answer."""
    demo = KNOWLEDGE_DEMO
    user = (
        f"{ERROR_PROMPT}\n\n### Example\n{_error_case(demo['question'], demo['response'])}\n\n"
        f"{demo['analysis']}\n\n### Your turn\n"
        f"{_error_case(_student_question(case), clean_response(case['response']))}"
    )
    return [{"role": "system", "content": KNOWLEDGE_SYSTEM}, {"role": "user", "content": user}]


def example_messages(example: Example) -> list[dict]:
    """SKIntern: requirements, the demonstration, then the question and its gold answer (and the
    reference solution when there is one: a small teacher explains better from it)."""
    spec = get_dataset(example.dataset)
    demo = KNOWLEDGE_DEMO
    solution = f"\nReference solution:\n{example.rationale}" if example.rationale else ""
    user = (
        f"{EXAMPLE_PROMPT.format(task=spec.task_description(example.task))}\n\n### Example\n"
        f"{demo['question']}\nAnswer: {demo['answer']}\n\n{demo['analysis']}\n\n### Your turn\n"
        f"Question: {format_question(example)}\nAnswer: {example.answer}{solution}"
    )
    return [{"role": "system", "content": KNOWLEDGE_SYSTEM}, {"role": "user", "content": user}]


# ---------------------------------------------------------------- parsing the answer


@dataclass
class Knowledge:
    learning_summary: str
    supplementary_knowledge: str
    concepts: list[str]


# A heading: at a line start, optional markdown (#, numbering, bullet, bold), the name, then a
# colon or the end of the line (so a bullet that merely starts with "Concepts" is not a heading).
HEADING = r"(?:^|\n)[ \t]*(?:#+\s*)?(?:\d+[.)]\s*)?(?:[-*]\s+)?\**\s*{name}\s*\**\s*(?::\s*\**|(?=\n))"
SECTIONS = {
    "summary": "learning\\s+summary",
    "knowledge": "supplementary\\s+knowledge",
    "concepts": "(?:key\\s+)?concepts",
}


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


# ---------------------------------------------------------------- the job


@dataclass
class KnowledgeSummary:
    cases: int
    created: int
    skipped_existing: int
    malformed: int  # cases still malformed after every attempt (not stored)
    failed_calls: int
    raw: Path
    usage: dict
    flagged: dict = field(default_factory=dict)  # quality flag code -> entries of this run with it
    asked_again: int = 0  # calls that asked again after a malformed answer

    def flags_line(self) -> str:
        return ", ".join(f"{code} {n}" for code, n in self.flagged.items()) or "none"


def distil_knowledge(
    client: TeacherClient,
    cases: list[dict],
    kind: str,
    out: str,
    auto_accept: bool = False,
    attempts: int = KNOWLEDGE_ATTEMPTS,
) -> KnowledgeSummary:
    """One teacher call per case -> a pending (or accepted) KB entry, or a malformed count; a
    malformed answer is asked again as sample 1, 2, … (each cached) up to `attempts` calls.

    `cases` rows: example_id, dataset, task, question, and for error analysis prompt + response
    (for example knowledge, `example`: the Example). Every entry is checked (kb/quality.py)
    before it is stored, and stored with its flags; once all answers are in, the run's entries
    are checked for boilerplate (`generic`) against the KB's entries of the same tasks.
    """
    job = _KnowledgeJob(client.config.model, cases, kind, auto_accept, knowledge_dir(out) / "raw.jsonl")
    todo, asked_again = list(range(len(cases))), 0
    for sample in range(attempts if client.config.temperature > 0 else 1):
        if not todo:
            break
        asked_again += len(todo) if sample else 0
        todo = job.ask(client, todo, sample, f"knowledge {out}" + (f" (sample {sample + 1})" if sample else ""))
    flagged = _check_generic(job.store, job.stored, job.by)
    return KnowledgeSummary(
        len(cases),
        job.counts["created"],
        job.counts["skipped"],
        len(todo),
        job.counts["failed"],
        job.raw_path,
        usage_summary(client),
        flagged=flagged,
        asked_again=asked_again,
    )


def knowledge_messages(case: dict, kind: str) -> list[dict]:
    return error_messages(case) if kind == ERROR_KIND else example_messages(case["example"])


def _entry_id(case: dict, kind: str) -> str:
    return f"{case['dataset']}-{case['example_id']}-{kind}"


class _KnowledgeJob:
    """One knowledge run while its answers come in: the raw file, the counts, the entries stored."""

    def __init__(self, teacher: str, cases: list[dict], kind: str, auto_accept: bool, raw_path: Path):
        from kb.store import KBStore

        self.teacher, self.cases, self.kind, self.raw_path = teacher, cases, kind, raw_path
        self.status = "accepted" if auto_accept else "pending"
        self.by = f"teacher:{teacher}"
        self.store = KBStore()
        self.requests = [knowledge_messages(c, kind) for c in cases]
        self.counts = {"created": 0, "skipped": 0, "failed": 0}
        self.stored: list[str] = []  # ids this run wrote (the generic check looks at them at the end)
        self.malformed: list[int] = []  # cases answered malformed in the current round
        raw_path.write_text("")

    def ask(self, client: TeacherClient, todo: list[int], sample: int, desc: str) -> list[int]:
        """One call per case of `todo` as sample `sample`; returns the cases answered malformed."""
        self.malformed = []
        run_requests(
            client,
            [self.requests[i] for i in todo],
            [sample] * len(todo),
            desc,
            guarded(
                lambda j, result: self.process(todo[j], result, sample),
                lambda j, error: self.fail(todo[j], error, sample),
            ),
        )
        return self.malformed

    def fail(self, i: int, error: str, sample: int = 0) -> None:
        self.counts["failed"] += 1
        append_line(self.raw_path, {"entry_id": _entry_id(self.cases[i], self.kind), "sample": sample, "error": error})

    def process(self, i: int, result, sample: int = 0) -> None:
        # the KB refuses text UTF-8 cannot encode; an error file may hold lone surrogates
        case = {k: clean_text(v) if isinstance(v, str) else v for k, v in self.cases[i].items()}
        parsed = parse_knowledge(result.text)
        append_line(
            self.raw_path,
            {
                "entry_id": _entry_id(case, self.kind),
                "sample": sample,
                "messages": self.requests[i],
                "response": result.text,
                "usage": result.usage,
                "cached": result.cached,
                "malformed": parsed is None,
            },
        )
        if parsed is None:
            self.malformed.append(i)
        else:
            self._store(case, parsed)

    def _store(self, case: dict, parsed: Knowledge) -> None:
        """Check the entry and upsert it, unless a person already curated (accepted/rejected) it."""
        from kb import quality
        from kb.store import EntryNotFound

        try:
            existing = self.store.get(_entry_id(case, self.kind))
        except EntryNotFound:
            existing = None
        if existing is not None and existing.status != "pending":
            self.counts["skipped"] += 1
            return
        entry = self._entry(case, parsed)
        # a re-run keeps the batch checks' flags (generic) until the end of the run rechecks them
        found = quality.check_entry(entry)
        entry = entry.model_copy(update={"flags": quality.recheck(existing, found) if existing else found})
        self.store.upsert(entry, by=self.by)
        self.stored.append(entry.id)
        self.counts["created"] += 1

    def _entry(self, case: dict, parsed: Knowledge):
        from kb.schema import Entry, Source

        response = case.get("response")
        source = Source(
            kind=self.kind,
            dataset=case["dataset"],
            example_id=case["example_id"],
            question=case["question"],
            student_response=clean_response(response) if response else None,
            teacher_model=self.teacher,
            student_model=case.get("student_model"),
        )
        return Entry(
            id=_entry_id(case, self.kind),
            task=case["task"],
            learning_summary=parsed.learning_summary,
            supplementary_knowledge=parsed.supplementary_knowledge,
            status=self.status,
            title=", ".join(parsed.concepts[:3]) or None,
            concepts=parsed.concepts,
            source=source,
        )


# ---------------------------------------------------------------- the run's entries as a whole

GENERIC_REFERENCE = 5000  # at most this many recent KB entries per task to compare a run with


def _check_generic(store, ids: list[str], by: str) -> dict:
    """The run's entries checked for boilerplate against the KB's entries of their tasks (the
    most recent GENERIC_REFERENCE per task); flags written as the run's own revision, so a re-run
    still recognises the entries as its own. Returns flag code -> entries of the run with it."""
    from kb import quality
    from kb.store import ConflictError, EntryNotFound

    entries = list(store.get_many(ids).values())
    reference = [
        e for task in sorted({e.task for e in entries}) for e in store.query(task=task, limit=GENERIC_REFERENCE).entries
    ]
    found = quality.generic(entries, reference) if entries else {}
    counts: dict[str, int] = {}
    for entry in entries:
        flags = quality.recheck(entry, [found[entry.id]] if entry.id in found else [], ["generic"])
        if flags != entry.flags:
            try:
                store.update(
                    entry.id, {"flags": [f.model_dump() for f in flags]}, expected_version=entry.version, by=by
                )
            except (ConflictError, EntryNotFound):  # a person got there first: theirs stands
                continue
        for flag in flags:
            counts[flag.code] = counts.get(flag.code, 0) + 1
    return {code: counts[code] for code in quality.CHECKS if code in counts} | {
        code: n for code, n in counts.items() if code not in quality.CHECKS
    }
