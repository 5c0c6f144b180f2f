"""Answering with the student: base or adapter, with or without retrieved KB knowledge.

`Student(base_model=None, adapter=None)` loads once; `answer(questions, ...)` returns one
`AnswerResult` per question:
- batched greedy generation with left padding for many questions; `stream(question)` yields
  text pieces for one (TextIteratorStreamer);
- with `kb_index`: the top-k entries for "task description + question" (accepted only unless
  `statuses` says otherwise) go into the NesyCD knowledge block; their ids and scores are
  returned;
- adaptive retrieval (`adaptive_threshold`): probe a few greedy tokens without knowledge; when
  the mean top1−top2 probability gap is above the threshold the student is confident and the
  question is answered without retrieval;
- thought types (ETD adapters choose by trigger): "cot" extracts from text, "pot" runs the
  program in the sandbox, "eot" solves the equations in the sandbox, "vote" runs all three and
  takes the majority (ties: CoT, then PoT, then EoT — the order of `TRIGGERS`).
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import typer

from distill import prompts

THOUGHTS = ("cot", "pot", "eot")
PROBE_TOKENS = 4  # adaptive retrieval looks at this many first tokens


@dataclass
class AnswerResult:
    text: str
    extracted: str | None
    retrieved: list[tuple[str, float]] = field(default_factory=list)
    prompt_tokens: int = 0
    latency_s: float = 0.0
    used_knowledge: bool = False
    prompt: str = ""             # the user-turn text given to the student
    thought: str = "cot"
    votes: dict[str, str | None] | None = None   # thought -> extracted, when voting


def load_base(base_model: str | None = None, dtype=None):
    """(model, tokenizer) for an HF id / local path, default the embedded student."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.models import student_path

    path = student_path(base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer


def adapter_dir(adapter: str) -> Path:
    """An adapter name under $NESY_HOME/adapters, or a path to an adapter folder."""
    from kb.workspace import subdir

    path = Path(adapter)
    if (path / "adapter_config.json").exists():
        return path
    named = subdir("adapters") / adapter
    if not (named / "adapter_config.json").exists():
        raise FileNotFoundError(f"no adapter {adapter!r} (looked in {named})")
    return named


def read_card(adapter: str) -> dict:
    card = adapter_dir(adapter) / "card.json"
    return json.loads(card.read_text()) if card.exists() else {}


class Student:
    """The student model, loaded once: base + optional LoRA adapter."""

    def __init__(self, base_model: str | None = None, adapter: str | None = None):
        self.card = read_card(adapter) if adapter else {}
        if base_model is None and self.card.get("base_model"):
            base_model = self.card["base_model"]
        self.model, self.tokenizer = load_base(base_model)
        if adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir(adapter)))
        self.model.eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.adapter = adapter
        self.params = sum(p.numel() for p in self.model.parameters())

    # --- prompts ---

    def user_text(self, question: str, thought: str = "cot", knowledge=()) -> str:
        """The user turn for a question: ETD adapters get the trigger format, others CoT."""
        if self.card.get("prompt_format") == "etd" or thought != "cot":
            if knowledge:
                return prompts.KNOWLEDGE_INSTRUCTION + "\n\n" + "\n\n".join(
                    prompts.knowledge_text(k) for k in knowledge) + "\n\n" + prompts.etd_prompt(question, thought)
            return prompts.etd_prompt(question, thought)
        return prompts.nesycd_prompt(question, knowledge)

    def render(self, user: str) -> str:
        return prompts.render(self.tokenizer, user)[0]

    def _encode(self, texts: list[str]):
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.tokenizer.padding_side = "left"  # generation continues from the right end
        return self.tokenizer(texts, return_tensors="pt", padding=True,
                              add_special_tokens=not has_template).to(self.device)

    # --- generation ---

    @torch.no_grad()
    def generate(self, users: list[str], max_new_tokens: int = 256, batch_size: int = 8
                 ) -> list[tuple[str, int, float]]:
        """Greedy completions for user texts: (text, prompt_tokens, latency_s) each."""
        out = []
        for i in range(0, len(users), batch_size):
            chunk = users[i:i + batch_size]
            batch = self._encode([self.render(u) for u in chunk])
            start = time.perf_counter()
            gen = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
            latency = (time.perf_counter() - start) / len(chunk)
            width = batch["input_ids"].shape[1]
            for row, mask in zip(gen, batch["attention_mask"]):
                text = self.tokenizer.decode(row[width:], skip_special_tokens=True).strip()
                out.append((text, int(mask.sum()), latency))
        return out

    @torch.no_grad()
    def confidence(self, users: list[str], tokens: int = PROBE_TOKENS) -> list[float]:
        """Mean top1−top2 probability gap over the first `tokens` greedy tokens of each prompt."""
        batch = self._encode([self.render(u) for u in users])
        gen = self.model.generate(**batch, max_new_tokens=tokens, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id)
        gaps = []
        for step_scores in gen.scores:  # one (batch, vocab) tensor per generated token
            top = step_scores.float().softmax(-1).topk(2, dim=-1).values
            gaps.append(top[:, 0] - top[:, 1])
        return torch.stack(gaps, 1).mean(1).tolist()

    def stream(self, question: str, *, knowledge=(), thought: str = "cot", max_new_tokens: int = 256):
        """Yield the answer to one question piece by piece as it is generated."""
        from transformers import TextIteratorStreamer

        batch = self._encode([self.render(self.user_text(question, thought, knowledge))])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(**batch, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer,
                      pad_token_id=self.tokenizer.pad_token_id)
        thread = threading.Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
        thread.start()
        yield from streamer
        thread.join()

    # --- answering ---

    def answer(self, questions: list[str], *, kb_index=None, k: int = 1,
               statuses: tuple[str, ...] = ("accepted",), thought: str = "cot",
               max_new_tokens: int = 256, adaptive_threshold: float | None = None,
               answer_type: str = "number", task_description: str = "", batch_size: int = 8
               ) -> list[AnswerResult]:
        """Answer many questions (batched). See the module docstring for the options."""
        if thought == "vote":
            return self._vote(questions, kb_index=kb_index, k=k, statuses=statuses,
                              max_new_tokens=max_new_tokens, adaptive_threshold=adaptive_threshold,
                              answer_type=answer_type, task_description=task_description,
                              batch_size=batch_size)
        if thought not in THOUGHTS:
            raise ValueError(f"thought must be one of {THOUGHTS + ('vote',)}, not {thought!r}")
        hits = self._retrieve(questions, kb_index, k, statuses, thought, adaptive_threshold,
                              task_description)
        users = [self.user_text(q, thought, [h.entry for h in hs]) for q, hs in zip(questions, hits)]
        results = []
        for user, hs, (text, n_prompt, latency) in zip(
                users, hits, self.generate(users, max_new_tokens, batch_size)):
            results.append(AnswerResult(
                text=text, extracted=extract(text, thought, answer_type),
                retrieved=[(h.entry.id, round(float(h.score), 4)) for h in hs],
                prompt_tokens=n_prompt, latency_s=round(latency, 4), used_knowledge=bool(hs),
                prompt=user, thought=thought))
        return results

    def _retrieve(self, questions, kb_index, k, statuses, thought, adaptive_threshold, task_description):
        if kb_index is None or k <= 0:
            return [[] for _ in questions]
        need = [True] * len(questions)
        if adaptive_threshold is not None:
            gaps = self.confidence([self.user_text(q, thought) for q in questions])
            need = [g <= adaptive_threshold for g in gaps]
        query = (task_description + "\n") if task_description else ""
        return [kb_index.search(query + q, k=k, statuses=tuple(statuses)) if n else []
                for q, n in zip(questions, need)]

    def _vote(self, questions, **kwargs) -> list[AnswerResult]:
        per_type = {t: self.answer(questions, thought=t, **kwargs) for t in THOUGHTS}
        out = []
        for i in range(len(questions)):
            votes = {t: per_type[t][i].extracted for t in THOUGHTS}
            winner = majority(votes)
            best = next((per_type[t][i] for t in THOUGHTS if votes[t] == winner), per_type["cot"][i])
            out.append(AnswerResult(
                text=best.text, extracted=winner, retrieved=best.retrieved,
                prompt_tokens=sum(per_type[t][i].prompt_tokens for t in THOUGHTS),
                latency_s=round(sum(per_type[t][i].latency_s for t in THOUGHTS), 4),
                used_knowledge=best.used_knowledge, prompt=best.prompt, thought="vote", votes=votes))
        return out


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
    question: str = typer.Argument(..., help="the question to answer"),
    kb: bool = typer.Option(False, "--kb", help="retrieve knowledge from the KB"),
    k: int = typer.Option(1, "--k", help="how many KB entries to insert"),
    adapter: str = typer.Option(None, "--adapter", help="adapter name or folder; default: the base model"),
    base_model: str = typer.Option(None, "--base-model", help="HF id or local path"),
    include_pending: bool = typer.Option(False, "--include-pending", help="also retrieve pending entries"),
    thought: str = typer.Option("cot", "--thought", help="cot | pot | eot | vote"),
    adaptive: float = typer.Option(None, "--adaptive", help="skip retrieval when confidence gap > this"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
    as_json: bool = typer.Option(False, "--json", help="print the full result as JSON"),
    stream: bool = typer.Option(False, "--stream", help="print tokens as they come (cot/pot/eot)"),
) -> None:
    """Answer a question with the student, with or without the KB."""
    if thought not in THOUGHTS + ("vote",):
        raise typer.BadParameter(f"--thought must be one of cot, pot, eot, vote (got {thought!r})")
    try:
        student = Student(base_model, adapter=adapter)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    index = _open_index() if kb else None
    statuses = ("accepted", "pending") if include_pending else ("accepted",)
    if stream and not as_json and thought != "vote":
        hits = student._retrieve([question], index, k, statuses, thought, adaptive, "")[0]
        for piece in student.stream(question, knowledge=[h.entry for h in hits], thought=thought,
                                    max_new_tokens=max_new_tokens):
            typer.echo(piece, nl=False)
        typer.echo("")
        return
    result = student.answer([question], kb_index=index, k=k, statuses=statuses, thought=thought,
                            max_new_tokens=max_new_tokens, adaptive_threshold=adaptive)[0]
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=2))
        return
    for entry_id, score in result.retrieved:
        typer.echo(f"[knowledge] {entry_id} (score {score:.3f})")
    typer.echo(result.text)
    typer.echo(f"answer: {result.extracted}  ({result.prompt_tokens} prompt tokens, {result.latency_s:.2f}s)")


def _open_index():
    from kb.index import KBIndex
    from kb.store import KBStore

    index = KBIndex(KBStore())
    index.sync()
    return index
