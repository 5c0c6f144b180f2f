"""Answering with the student: base or adapter, with or without retrieved KB knowledge.

`Student(base_model=None, adapter=None)` loads once; `answer(questions, ...)` returns one
`AnswerResult` per question:
- batched greedy generation with left padding for many questions; `stream(question)` yields
  text pieces for one (TextIteratorStreamer);
- the prompt is built by the adapter's method (`distill.methods`, read from its card.json) with
  the template it was trained with, so training and inference texts are the same;
- defaults come from the card: thought type, k, retriever, entry kinds, minimum score, adaptive
  threshold, new tokens (what the method recorded); explicit arguments override them;
- with `kb_index`: the top-k entries for "task description + question" (accepted only unless
  `statuses` says otherwise; only the method's entry kinds) go into the knowledge block; their ids
  and scores are returned; retrieval that finds nothing is logged as a warning;
- adaptive retrieval (`adaptive_threshold`): the reference's probe — up to 16 tokens sampled at
  T=0.6 (seeded) from the prompt without knowledge; when the mean top-1 − top-2 probability gap of
  the tempered distribution is above the threshold the student is confident and answers without
  retrieval;
- thought types (ETD adapters choose by trigger): "cot" extracts from text, "pot" runs the
  program in the sandbox, "eot" solves the equations in the sandbox, "vote" runs all three and
  takes the majority (ties: CoT, then PoT, then EoT — the order of `TRIGGERS`).
- `backend`: "transformers" (this process), "llama.cpp[:f32|f16|packaged]" or an OpenAI-compatible
  URL (distill/student_server.py): the same prompts, retrieval and extraction, generated elsewhere.

`nesy answer --events` streams one comparison as JSON events (the Compare page's job);
`nesy answer --session --events` loads the student once and answers the comparisons dropped into
its job folder until idle (`Session`; the protocol is in distill/answer_session.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import typer

from distill import prompts
from distill.student_server import BACKEND_HELP
from kb.errors import NesyError

log = logging.getLogger(__name__)
THOUGHTS = ("cot", "pot", "eot")
RETRIEVERS = ("dense", "bm25", "hybrid")
# The reference's adaptive-retrieval probe (NesyCD eval/gen.py): 16 tokens sampled at T=0.6.
PROBE_TOKENS = 16
PROBE_TEMPERATURE = 0.6
PROBE_SEED = 42
# Used when an adapter's card does not say (an old adapter, or the base model).
FALLBACK = {
    "method": "std-cot",
    "thought": "cot",
    "k": 3,
    "retriever": "dense",
    "source_kinds": None,
    "min_score": None,
    "adaptive_threshold": None,
    "max_new_tokens": 256,
}


class AdapterNotFound(NesyError, FileNotFoundError):
    """An adapter name with no adapter folder behind it."""


class InferenceError(NesyError, ValueError):
    """An answering option that cannot work (unknown thought type, retriever, …)."""


@dataclass
class AnswerResult:
    text: str
    extracted: str | None
    retrieved: list[tuple[str, float]] = field(default_factory=list)
    retrieval_empty: bool = False  # retrieval ran and found nothing (so no knowledge was used)
    prompt_tokens: int = 0
    latency_s: float = 0.0
    used_knowledge: bool = False
    prompt: str = ""  # the user-turn text given to the student
    thought: str = "cot"
    votes: dict[str, str | None] | None = None  # thought -> extracted, when voting


def load_tokenizer(base_model: str | None = None):
    """The tokenizer of an HF id / local path, default the embedded student."""
    from transformers import AutoTokenizer

    from distill.models import student_path

    tokenizer = AutoTokenizer.from_pretrained(student_path(base_model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(base_model: str | None = None, dtype=None):
    """(model, tokenizer) for an HF id / local path, default the embedded student."""
    from transformers import AutoModelForCausalLM

    from distill.models import student_path

    tokenizer = load_tokenizer(base_model)
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(student_path(base_model), dtype=dtype)
    return model, tokenizer


def adapter_dir(adapter: str) -> Path:
    """An adapter name under $NESY_HOME/adapters, or a path to an adapter folder."""
    from kb.workspace import subdir

    path = Path(adapter)
    if (path / "adapter_config.json").exists():
        return path
    named = subdir("adapters") / adapter
    if not (named / "adapter_config.json").exists():
        raise AdapterNotFound(f"no adapter {adapter!r} (looked in {named})")
    return named


def read_card(adapter: str) -> dict:
    card = adapter_dir(adapter) / "card.json"
    return json.loads(card.read_text()) if card.exists() else {}


class Student:
    """The student model, loaded once: base + optional LoRA adapter, with its method's prompt."""

    def __init__(
        self,
        base_model: str | None = None,
        adapter: str | None = None,
        *,
        method: str | None = None,
        template: str | None = None,
        backend: str = "transformers",
    ):
        from distill.methods import get
        from distill.student_server import check_backend, connect

        self.card = read_card(adapter) if adapter else {}
        if base_model is None and self.card.get("base_model"):
            base_model = self.card["base_model"]
        self.backend_name, self.backend = check_backend(backend), None
        self.adapter = adapter
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.method = get(method or self.card.get("method") or FALLBACK["method"])
        self.defaults = {**FALLBACK, **self.card.get("inference", {})}
        if backend != "transformers":  # a server generates; prompts, retrieval, extraction stay here
            self.model, self.tokenizer = None, load_tokenizer(base_model)
            self.template = prompts.resolve_template(self.tokenizer, template or self.card.get("template", "auto"))
            self.backend = connect(
                backend, base_model=base_model, adapter=adapter, tokenizer=self.tokenizer, template=self.template
            )
            self.backend_name = self.backend.name  # resolved: llama.cpp -> llama.cpp:f32 (what reports record)
            self.params = self.backend.params
            return
        self.model, self.tokenizer = load_base(base_model)
        if adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir(adapter)))
        self.model.eval()
        self.model.to(self.device)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.template = prompts.resolve_template(self.tokenizer, template or self.card.get("template", "auto"))

    def close(self) -> None:
        """Stop the backend's server, if any (the llama.cpp one would otherwise live until collected)."""
        if self.backend is not None:
            self.backend.close()

    # --- prompts ---

    def user_text(self, question: str, thought: str | None = None, knowledge=(), task_description: str = "") -> str:
        """The user text for a question: the adapter's method builds it, exactly as in training.

        PoT and EoT exist only in ETD's trigger format, so asking another method's student for them
        uses ETD's builder."""
        from distill.methods import get

        thought = thought or self.defaults["thought"]
        method = self.method if thought == "cot" or self.method.name in ("etd", "eotd") else get("etd")
        return method.build_prompt(question, task_description=task_description, knowledge=knowledge, thought=thought)

    def render(self, user: str) -> str:
        return prompts.render(self.tokenizer, user, None, self.template)[0]

    def _encode(self, texts: list[str]):
        self.tokenizer.padding_side = "left"  # generation continues from the right end
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    # --- generation ---

    @torch.no_grad()
    def generate(
        self, users: list[str], max_new_tokens: int = 256, batch_size: int = 8
    ) -> list[tuple[str, int, float]]:
        """Greedy completions for user texts: (text, prompt_tokens, latency_s) each."""
        if self.backend is not None:  # the server batches what it is sent at once
            start = time.perf_counter()
            done = self.backend.generate(users, [self.render(u) for u in users], max_new_tokens)
            latency = (time.perf_counter() - start) / max(len(users), 1)
            return [(g.text, g.prompt_tokens, latency) for g in done]
        out = []
        for i in range(0, len(users), batch_size):
            chunk = users[i : i + batch_size]
            batch = self._encode([self.render(u) for u in chunk])
            start = time.perf_counter()
            gen = self.model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
            )
            latency = (time.perf_counter() - start) / len(chunk)
            width = batch["input_ids"].shape[1]
            for row, mask in zip(gen, batch["attention_mask"]):
                text = self.tokenizer.decode(row[width:], skip_special_tokens=True).strip()
                out.append((text, int(mask.sum()), latency))
        return out

    @torch.no_grad()
    def confidence(self, users: list[str], tokens: int = PROBE_TOKENS) -> list[float]:
        """The reference's probe: per prompt, up to `tokens` tokens sampled at T=0.6 (seeded, so the
        same prompt always gets the same value), mean top-1 − top-2 gap of the tempered
        distribution, in [0, 1]; it stops at the end-of-sequence token."""
        if self.backend is not None:
            raise InferenceError(
                f"adaptive retrieval reads the student's logits, which --backend "
                f"{self.backend_name} does not return: use --backend transformers"
            )
        gaps = []
        for user in users:
            batch = self._encode([self.render(user)])
            torch.manual_seed(PROBE_SEED)
            gen = self.model.generate(
                **batch,
                max_new_tokens=tokens,
                do_sample=True,
                temperature=PROBE_TEMPERATURE,
                top_k=0,
                top_p=1.0,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            steps = [(logits[0].float() / PROBE_TEMPERATURE).softmax(-1).topk(2).values for logits in gen.logits]
            gaps.append(float(sum(top[0] - top[1] for top in steps) / len(steps)))
        return gaps

    def stream(
        self,
        question: str,
        *,
        knowledge=(),
        thought: str | None = None,
        max_new_tokens: int | None = None,
        task_description: str = "",
        stop=None,
    ):
        """Yield the answer to one question piece by piece as it is generated; `stop()` returning
        True ends generation at the next token (a cancelled job)."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        user = self.user_text(question, thought, knowledge, task_description)
        if self.backend is not None:
            for piece in self.backend.stream(
                user, self.render(user), max_new_tokens or self.defaults["max_new_tokens"]
            ):
                yield piece
                if stop is not None and stop():
                    return  # closing the stream ends the request on the server
            return
        batch = self._encode([self.render(user)])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(
            **batch,
            max_new_tokens=max_new_tokens or self.defaults["max_new_tokens"],
            do_sample=False,
            streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if stop is not None:

            class Stop(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):
                    return torch.full((input_ids.shape[0],), bool(stop()), dtype=torch.bool)

            kwargs["stopping_criteria"] = StoppingCriteriaList([Stop()])
        thread = threading.Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
        thread.start()
        yield from streamer
        thread.join()

    # --- answering ---

    def settings(
        self,
        *,
        k=None,
        statuses=("accepted",),
        thought=None,
        max_new_tokens=None,
        adaptive_threshold=None,
        retriever=None,
        source_kinds=None,
        min_score=None,
    ):
        """(thought, Retrieval, max_new_tokens): the arguments given, else the adapter card's."""
        d = self.defaults
        retrieval = Retrieval(
            k if k is not None else d["k"],
            tuple(statuses),
            retriever or d["retriever"],
            tuple(source_kinds if source_kinds is not None else d["source_kinds"] or ()),
            min_score if min_score is not None else d["min_score"],
            adaptive_threshold if adaptive_threshold is not None else d["adaptive_threshold"],
        )
        thought = thought or d["thought"]
        if thought not in THOUGHTS + ("vote",):
            raise InferenceError(f"--thought must be one of {', '.join(THOUGHTS + ('vote',))}, not {thought!r}")
        if retrieval.retriever not in RETRIEVERS:
            raise InferenceError(f"--retriever must be one of {', '.join(RETRIEVERS)}, not {retrieval.retriever!r}")
        return thought, retrieval, max_new_tokens or d["max_new_tokens"]

    def stream_answer(self, question: str, *, kb_index=None, task_description: str = "", **options):
        """`stream` after the same retrieval `answer` does (options as in `answer`)."""
        thought, retrieval, max_new_tokens = self.settings(**options)
        hits = self.retrieve([question], kb_index, retrieval, thought, task_description)[0] or []
        yield from self.stream(
            question,
            knowledge=[h.entry for h in hits],
            thought=thought,
            max_new_tokens=max_new_tokens,
            task_description=task_description,
        )

    def answer(
        self,
        questions: list[str],
        *,
        kb_index=None,
        k: int | None = None,
        statuses: tuple[str, ...] = ("accepted",),
        thought: str | None = None,
        max_new_tokens: int | None = None,
        adaptive_threshold: float | None = None,
        answer_type: str = "number",
        task_description: str = "",
        batch_size: int = 8,
        retriever: str | None = None,
        source_kinds: tuple[str, ...] | None = None,
        min_score: float | None = None,
    ) -> list[AnswerResult]:
        """Answer many questions (batched). None means: what the adapter's card says."""
        thought, retrieval, max_new_tokens = self.settings(
            k=k,
            statuses=statuses,
            thought=thought,
            max_new_tokens=max_new_tokens,
            adaptive_threshold=adaptive_threshold,
            retriever=retriever,
            source_kinds=source_kinds,
            min_score=min_score,
        )
        if thought == "vote":
            return self._vote(questions, kb_index, retrieval, max_new_tokens, answer_type, task_description, batch_size)
        hits = self.retrieve(questions, kb_index, retrieval, thought, task_description)
        users = [
            self.user_text(q, thought, [h.entry for h in hs or []], task_description) for q, hs in zip(questions, hits)
        ]
        results = []
        for user, hs, (text, n_prompt, latency) in zip(users, hits, self.generate(users, max_new_tokens, batch_size)):
            results.append(
                AnswerResult(
                    text=text,
                    extracted=extract(text, thought, answer_type),
                    retrieved=[(h.entry.id, round(float(h.score), 4)) for h in hs or []],
                    retrieval_empty=hs == [],
                    prompt_tokens=n_prompt,
                    latency_s=round(latency, 4),
                    used_knowledge=bool(hs),
                    prompt=user,
                    thought=thought,
                )
            )
        return results

    def retrieve(self, questions, kb_index, retrieval: Retrieval, thought: str, task_description: str = ""):
        """Per question: the hits, or None where no retrieval ran (no KB, k=0, or confident)."""
        if kb_index is None or retrieval.k <= 0:
            return [None for _ in questions]
        need = [True] * len(questions)
        if retrieval.adaptive_threshold is not None:
            gaps = self.confidence([self.user_text(q, thought, (), task_description) for q in questions])
            need = [g <= retrieval.adaptive_threshold for g in gaps]
        query = (task_description + "\n") if task_description else ""
        hits = [search(kb_index, query + q, retrieval) if n else None for q, n in zip(questions, need)]
        empty = sum(h == [] for h in hits)
        if empty:
            log.warning(
                "knowledge retrieval found nothing for %d of %d questions (kinds %s, statuses %s, "
                "min score %s): those answers use no knowledge",
                empty,
                sum(need),
                ",".join(retrieval.source_kinds or ("any",)),
                ",".join(retrieval.statuses),
                retrieval.min_score,
            )
        return hits

    def _vote(self, questions, kb_index, retrieval, max_new_tokens, answer_type, task_description, batch_size):
        per_type = {
            t: self.answer(
                questions,
                kb_index=kb_index,
                k=retrieval.k,
                statuses=retrieval.statuses,
                thought=t,
                max_new_tokens=max_new_tokens,
                adaptive_threshold=retrieval.adaptive_threshold,
                answer_type=answer_type,
                task_description=task_description,
                batch_size=batch_size,
                retriever=retrieval.retriever,
                source_kinds=retrieval.source_kinds,
                min_score=retrieval.min_score,
            )
            for t in THOUGHTS
        }
        return [voted({t: per_type[t][i] for t in THOUGHTS}) for i in range(len(questions))]


def voted(answers: dict[str, AnswerResult]) -> AnswerResult:
    """One question's vote over its CoT, PoT and EoT answers: the majority answer, shown with the
    output of the first thought type that gave it; costs are the three answers' sum."""
    votes = {t: answers[t].extracted for t in THOUGHTS}
    winner = majority(votes)
    best = next((answers[t] for t in THOUGHTS if votes[t] == winner), answers["cot"])
    return AnswerResult(
        text=best.text,
        extracted=winner,
        retrieved=best.retrieved,
        retrieval_empty=best.retrieval_empty,
        prompt_tokens=sum(answers[t].prompt_tokens for t in THOUGHTS),
        latency_s=round(sum(answers[t].latency_s for t in THOUGHTS), 4),
        used_knowledge=best.used_knowledge,
        prompt=best.prompt,
        thought="vote",
        votes=votes,
    )


@dataclass(frozen=True)
class Retrieval:
    """How knowledge is retrieved for one answering call."""

    k: int
    statuses: tuple[str, ...]
    retriever: str = "dense"
    source_kinds: tuple[str, ...] = ()  # () = any kind
    min_score: float | None = None
    adaptive_threshold: float | None = None


def search(kb_index, query: str, retrieval: Retrieval) -> list:
    """KBIndex.search with the method's retriever, entry kinds and minimum score."""
    return kb_index.search(
        query,
        k=retrieval.k,
        statuses=retrieval.statuses,
        mode=retrieval.retriever,
        source_kinds=retrieval.source_kinds or None,
        min_score=retrieval.min_score,
    )


def majority(votes: dict[str, str | None]) -> str | None:
    """Most frequent non-empty answer; ties go to the earliest thought type (CoT, PoT, EoT)."""
    counts = Counter(v for v in votes.values() if v is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(v for v in votes.values() if v is not None and counts[v] == top)


def extract(text: str, thought: str, answer_type: str = "number") -> str | None:
    """The answer of one output: CoT text extraction, PoT execution or EoT solving."""
    from distill.answers import extract_answer, format_number

    if thought == "cot":
        return extract_answer(text, answer_type, "strict") or extract_answer(text, answer_type, "flexible")
    from distill import sandbox

    result = sandbox.run_pot(sandbox.extract_code(text)) if thought == "pot" else sandbox.solve_eot(text)
    if not result.ok or result.value is None:
        return None
    value = result.value
    return format_number(float(value)) if isinstance(value, (int, float)) else str(value)


# --- CLI ------------------------------------------------------------------------------------------

cli = typer.Typer(add_completion=False, rich_markup_mode=None)


@cli.command()
def answer_cmd(
    question: str = typer.Argument(None, help="the question to answer (options included, if any)"),
    kb: bool = typer.Option(False, "--kb", help="retrieve knowledge from the KB"),
    k: int = typer.Option(None, "--k", help="KB entries to insert [default: the adapter's card, else 3]"),
    retriever: str = typer.Option(
        None, "--retriever", help="dense | bm25 | hybrid [default: the adapter's card, else dense]"
    ),
    min_score: float = typer.Option(None, "--min-score", help="ignore entries scoring below this"),
    adapter: str = typer.Option(None, "--adapter", help="adapter name or folder; default: the base model"),
    base_model: str = typer.Option(None, "--base-model", help="HF id or local path"),
    task: str = typer.Option("", "--task", help="task description (part of the prompt and the query)"),
    include_pending: bool = typer.Option(False, "--include-pending", help="also retrieve pending entries"),
    thought: str = typer.Option(
        None, "--thought", help="cot | pot | eot | vote [default: what the adapter was trained on]"
    ),
    adaptive: float = typer.Option(
        None, "--adaptive", help="skip retrieval when the confidence gap > this (the reference: 0.68)"
    ),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="[default: the adapter's card, else 256]"),
    as_json: bool = typer.Option(False, "--json", help="print the full result as JSON"),
    stream: bool = typer.Option(False, "--stream", help="print tokens as they come (cot/pot/eot)"),
    events: bool = typer.Option(
        False,
        "--events",
        help="write JSON lines (loaded, start with the exact prompt "
        "and retrieved entries, token, done) to $NESY_JOB_DIR/answer_events.jsonl when "
        "run as a job, else to stdout",
    ),
    compare: bool = typer.Option(
        False, "--compare", help="with --events: answer without knowledge, then with it (--kb)"
    ),
    answer_type: str = typer.Option("number", "--answer-type", help="number | option | text (answer extraction)"),
    gold: str = typer.Option(
        None,
        "--gold",
        help="with --compare: the right answer; a flip is credited to the retrieved entries in the KB's impact table",
    ),
    backend: str = typer.Option("transformers", "--backend", help=BACKEND_HELP),
    session: bool = typer.Option(
        False,
        "--session",
        help="with --events, as a job: load the student once, then answer the requests dropped into "
        "$NESY_JOB_DIR/requests (see distill/answer_session.py) until idle",
    ),
    idle_timeout: float = typer.Option(
        600.0, "--idle-timeout", help="with --session: end after this many seconds without a request"
    ),
) -> None:
    """Answer a question with the student, with or without the KB."""
    if session:
        return run_session(base_model, adapter, backend, idle_timeout, events)
    if question is None:
        raise InferenceError("a question is required (or --session)")
    started = time.perf_counter()
    student = Student(base_model, adapter=adapter, backend=backend)
    index = _open_index() if kb else None
    options = answer_options(
        index,
        k=k,
        include_pending=include_pending,
        thought=thought,
        max_new_tokens=max_new_tokens,
        adaptive=adaptive,
        task=task,
        retriever=retriever,
        min_score=min_score,
    )
    if events:
        sides = compare_sides(kb, compare)
        emit = EventWriter()
        emit_loaded(student, started, emit, sides=sides)
        done = stream_events(student, question, sides, options, answer_type, emit)
        if gold is not None and index is not None:
            record_compare_impact(question, adapter, done, gold, answer_type)
        return
    if stream and not as_json and (thought or student.defaults["thought"]) != "vote":
        for piece in student.stream_answer(question, **options):
            typer.echo(piece, nl=False)
        typer.echo("")
        return
    result = student.answer([question], **options)[0]
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=2))
        return
    if result.retrieval_empty:
        typer.echo("warning: --kb retrieval found no knowledge for this question; answered without it", err=True)
    for entry_id, score in result.retrieved:
        typer.echo(f"[knowledge] {entry_id} (score {score:.3f})")
    typer.echo(result.text)
    typer.echo(f"answer: {result.extracted}  ({result.prompt_tokens} prompt tokens, {result.latency_s:.2f}s)")


def answer_options(index, *, k, include_pending, thought, max_new_tokens, adaptive, task, retriever, min_score) -> dict:
    """The keyword arguments of `Student.answer` / `stream_events` for the CLI's options."""
    return dict(
        kb_index=index,
        k=k,
        statuses=("accepted", "pending") if include_pending else ("accepted",),
        thought=thought,
        max_new_tokens=max_new_tokens,
        adaptive_threshold=adaptive,
        task_description=task,
        retriever=retriever,
        min_score=min_score,
    )


def compare_sides(kb: bool, compare: bool) -> list[str]:
    """Which answers to give: without knowledge (compared, or no KB), with it (--kb)."""
    return (["without"] if compare or not kb else []) + (["with"] if kb else [])


def emit_loaded(student: Student, started: float, emit, **fields) -> None:
    if student.backend is None:  # the first generate call initialises kernels: part of loading
        student.generate(["Hi"], max_new_tokens=1)
    emit("loaded", seconds=round(time.perf_counter() - started, 3), **fields)


# --- session mode: one loaded student, many comparisons (distill/answer_session.py) --------------

SESSION_POLL_S = 0.2  # how often an idle session looks for a request
SLOT_CHECK_S = 2.0  # how often an idle session asks whether another job waits for its slot


def run_session(base_model, adapter, backend, idle_timeout: float, events: bool) -> None:
    """`nesy answer --session`: load the student once, answer requests until idle (exit 0) or
    cancelled (SIGTERM: the current answer stops at the next token, exit 3)."""
    import os

    from distill import answer_session
    from distill.progress import install_stop_handler

    job_dir = os.environ.get("NESY_JOB_DIR")
    if not events or not job_dir:
        raise InferenceError("--session runs as a job with --events: it reads requests from $NESY_JOB_DIR/requests")
    folder = Path(job_dir) / answer_session.REQUESTS
    folder.mkdir(exist_ok=True)
    started = time.perf_counter()
    student = Student(base_model, adapter=adapter, backend=backend)
    install_stop_handler()  # from here on a cancel stops at the next token; during loading it kills
    emit = EventWriter()
    emit_loaded(student, started, emit, session=True, idle_timeout=idle_timeout)
    try:
        Session(student, adapter, folder, emit).serve(idle_timeout)
    finally:
        student.close()


class Session:
    """Answers the requests of one session job's folder, in order, with one loaded student."""

    def __init__(self, student: Student, adapter: str | None, folder: Path, emit):
        self.student, self.adapter, self.folder, self.emit = student, adapter, folder, emit
        self.index = None  # opened at the first request that retrieves
        self.slot_checked = 0.0

    def serve(self, idle_timeout: float) -> None:
        from distill import answer_session

        last = time.monotonic()
        while True:
            self.check_stop()
            if requests := answer_session.pending(self.folder):
                for path in requests:
                    self.serve_one(path)
                last = time.monotonic()
                continue
            if reason := self.reason_to_end(time.monotonic() - last, idle_timeout):
                for path in answer_session.close(self.folder):  # handed over before it closed
                    self.serve_one(path)
                self.emit("ended", reason=reason)
                return
            time.sleep(SESSION_POLL_S)

    def check_stop(self) -> None:
        from distill.progress import STOPPED_EXIT_CODE, stop_requested

        if stop_requested():
            self.emit("stopped")
            raise typer.Exit(STOPPED_EXIT_CODE)

    def reason_to_end(self, idle: float, idle_timeout: float) -> str | None:
        """Why an idle session should end now, or None. With one job slot (the default), a warm
        student must not hold back a training someone started: a waiting job ends it."""
        from distill import jobs

        if idle >= idle_timeout:
            return f"no request for {idle_timeout:g} s"
        now = time.monotonic()
        if now - self.slot_checked < SLOT_CHECK_S:
            return None
        self.slot_checked = now
        if jobs.list_jobs("queued", limit=1):  # list_jobs first starts what has a free slot
            return "another job is waiting for a job slot"
        return None

    def serve_one(self, path: Path) -> None:
        """Answer one request file; a request that cannot be answered gets an `error` event and
        the session goes on. Every event carries the request id; `served` ends each request."""
        from distill import answer_session

        request_id = path.stem

        def emit(event: str, **fields) -> None:
            self.emit(event, request=request_id, **fields)

        try:
            request = answer_session.parse_request(path.read_text(encoding="utf-8", errors="replace"))
            self.answer(request, emit)
        except NesyError as e:
            log.warning("request %s: %s", request_id, e)
            emit("error", message=str(e))
        answer_session.mark_served(path)
        emit("served")

    def answer(self, request: dict, emit) -> None:
        sides = compare_sides(request["kb"], request["compare"])
        index = self.kb_index() if request["kb"] else None
        options = answer_options(
            index,
            k=request["k"],
            include_pending=request["include_pending"],
            thought=request["thought"],
            max_new_tokens=request["max_new_tokens"],
            adaptive=request["adaptive"],
            task=request["task"],
            retriever=request["retriever"],
            min_score=request["min_score"],
        )
        emit("request", sides=sides, question=request["question"])
        done = stream_events(self.student, request["question"], sides, options, request["answer_type"], emit)
        if request["gold"] is not None and index is not None:
            record_compare_impact(request["question"], self.adapter, done, request["gold"], request["answer_type"])

    def kb_index(self):
        """The KB index, synced now: the KB may have been edited since the last comparison."""
        if self.index is None:
            self.index = _open_index()
        else:
            self.index.sync()
        return self.index


class EventWriter:
    """Answer events as JSON lines: to $NESY_JOB_DIR/answer_events.jsonl in a job (the Compare page
    polls it), else to stdout; each line is flushed as it is written."""

    FILE = "answer_events.jsonl"

    def __init__(self):
        import os
        import sys

        job_dir = os.environ.get("NESY_JOB_DIR")
        self.out = open(Path(job_dir) / self.FILE, "a", encoding="utf-8") if job_dir else sys.stdout

    def __call__(self, event: str, **fields) -> None:
        self.out.write(json.dumps({"event": event, "time": time.time(), **fields}, ensure_ascii=False) + "\n")
        self.out.flush()


def stream_events(
    student: Student, question: str, sides: list[str], options: dict, answer_type: str, emit
) -> dict[str, dict]:
    """Answer once per side ("without" / "with" knowledge), streaming tokens as events; a stop
    request (SIGTERM: a cancelled job) ends the current answer at the next token and exits 3."""
    from distill.progress import STOPPED_EXIT_CODE, Progress, StopRequested

    done: dict[str, dict] = {}
    with Progress(len(sides), desc="answer", stage="answer") as bar:
        try:
            for side in sides:
                bar.check_stop()
                opts = {**options, "kb_index": options["kb_index"] if side == "with" else None}
                done[side] = _stream_side(student, question, side, opts, answer_type, emit, bar)
                bar.update(1)
        except StopRequested:
            emit("stopped")
            raise typer.Exit(STOPPED_EXIT_CODE) from None
    return done


def _stream_side(student, question, side, options, answer_type, emit, bar) -> dict:
    from distill.progress import stop_requested

    task = options.get("task_description", "")
    settings = {
        k: options.get(k)
        for k in ("k", "statuses", "thought", "max_new_tokens", "adaptive_threshold", "retriever", "min_score")
    }
    thought, retrieval, max_new_tokens = student.settings(**settings)
    start = time.perf_counter()
    about = dict(
        side=side,
        thought=thought,
        min_score=retrieval.min_score,
        k=retrieval.k,
        retriever=retrieval.retriever,
        retrieval_ran=options["kb_index"] is not None,
    )
    if thought == "vote":  # three answers and a majority: nothing to stream
        result = student.answer([question], answer_type=answer_type, **options)[0]
        user, retrieved, empty, text = result.prompt, result.retrieved, result.retrieval_empty, result.text
        emit("start", prompt=user, rendered=student.render(user), retrieved=retrieved, retrieval_empty=empty, **about)
    else:
        hits = student.retrieve([question], options["kb_index"], retrieval, thought, task)[0]
        knowledge = [h.entry for h in hits or []]
        user = student.user_text(question, thought, knowledge, task)
        retrieved = [(h.entry.id, round(float(h.score), 4)) for h in hits or []]
        emit(
            "start",
            prompt=user,
            rendered=student.render(user),
            retrieved=retrieved,
            retrieval_empty=hits == [],
            **about,
        )
        pieces = []
        for piece in student.stream(
            question,
            knowledge=knowledge,
            thought=thought,
            max_new_tokens=max_new_tokens,
            task_description=task,
            stop=stop_requested,
        ):
            pieces.append(piece)
            if piece:
                emit("token", side=side, text=piece)
        bar.check_stop()
        text = "".join(pieces).strip()
    extracted = extract(text, thought, answer_type)
    tokens = len(student.tokenizer(student.render(user), add_special_tokens=False)["input_ids"])
    latency = round(time.perf_counter() - start, 3)
    emit("done", side=side, text=text, extracted=extracted, prompt_tokens=tokens, latency_s=latency)
    return {"text": text, "extracted": extracted, "entries": [e for e, _ in retrieved]}


def record_compare_impact(
    question: str, adapter: str | None, done: dict[str, dict], gold: str, answer_type: str
) -> None:
    """A comparison's flip (if any) credited to the entries the with-knowledge answer retrieved,
    under one report per (question, adapter): comparing the same question again replaces it."""
    import hashlib

    from distill.answers import answers_match
    from distill.evaluate import record_impact

    if "with" not in done or "without" not in done:
        return
    before = answers_match(done["without"]["extracted"], gold, answer_type)
    after = answers_match(done["with"]["extracted"], gold, answer_type)
    entries = done["with"].get("entries") or []
    kind = None if before == after else ("fixed" if after else "broken")
    impact = {
        e: {"retrieved": 1, **({kind: 1, f"{kind}_shared": int(len(entries) > 1)} if kind else {})} for e in entries
    }
    key = hashlib.sha1(f"{adapter or 'base'}\n{question}".encode()).hexdigest()[:12]
    record_impact(f"compare:{key}", impact)


def _open_index():
    from kb.index import KBIndex
    from kb.store import KBStore

    index = KBIndex(KBStore())
    index.sync()
    return index
