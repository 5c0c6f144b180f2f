"""Prompt building blocks for every student prompt (see docs/METHODS.md for the sources).

Each method module in `distill/methods/` composes these into its one prompt builder, which both
training and inference call, so a student sees at test time exactly the text it was trained on.
Builders return the *user* text; `render()` turns it into (prompt_text, response_text) with either
the tokenizer's chat template or the reference code's plain template (raw text, response right
after the prompt, one EOS).

The chain-of-thought prompt is the NesyCD reference code's (`gen_bbh_cot_prefix` / aligner
`errors` / `inter`), blocks joined by a blank line:

    {task description} Your response should conclude with the format "Therefore, the answer is".

    You can utilize the general learning summary … to address this question.     ← knowledge, if any
    {knowledge 1}
    {knowledge 2}

    Question: {demonstration}                                                      ← SKIntern demos
    Answer: {its rationale}

    Question: {question}
    Answer: Let's think step by step.␠

ETD / EoTD keep their paper's format: `Question: {q}\\n{trigger}\\n`.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kb.errors import NesyError

# ETD thought-type triggers (Zhu et al., 2024); the trigger after the question selects the type.
TRIGGERS = {
    "cot": "Let's think step by step.",
    "pot": "Let's break down the code step by step",
    "eot": "System of linear equations: (Do not simplify)",
}

# NesyCD: the sentence that introduces retrieved / distilled knowledge in the student prompt.
KNOWLEDGE_INSTRUCTION = (
    "You can utilize the general learning summary and supplementary knowledge proposed by the "
    "expert teacher to address this question."
)
# The reference's format line after the task description: it is what makes the student end with a
# sentence the strict answer extractor finds.
ANSWER_FORMAT = 'Your response should conclude with the format "Therefore, the answer is".'
# The reference's answer cue ends with a space and the response follows directly (plain template).
ANSWER_CUE = "Answer: Let's think step by step. "
BLOCK_SEPARATOR = "\n\n"
TEMPLATES = ("auto", "chat", "plain")

# Function words carry almost no problem-specific information; SKIntern compression drops them
# first. A fixed list (no NLTK download at run time).
STOPWORDS = frozenset(
    """
a an the and or but if then else of to in on at by for with from into onto over under about as
is are was were be been being am do does did doing have has had having it its this that these
those there here which who whom whose what when where why how all any both each few more most
other some such no nor not only own same so than too very can will just should would could may
might must shall i me my we our you your he him his she her they them their us also up down out
off again further once because while during before after above below between through until
""".split()
)


# --- the chain-of-thought prompt -----------------------------------------------------------------


def task_line(task_description: str = "") -> str:
    """The first line of every CoT prompt: task description + the answer-format request."""
    return f"{task_description.strip()} {ANSWER_FORMAT}".strip()


def student_prompt(
    question: str, task_description: str = "", knowledge: Sequence[str] = (), demos: Sequence[tuple[str, str]] = ()
) -> str:
    """Task line, knowledge block, demonstrations (question, rationale), then the question."""
    blocks = [task_line(task_description)]
    items = [k.strip() for k in knowledge if k and k.strip()]
    if items:
        blocks.append("\n".join([KNOWLEDGE_INSTRUCTION, *items]))
    blocks += [f"Question: {q.strip()}\nAnswer: {r.strip()}" for q, r in demos]
    blocks.append(f"Question: {question.strip()}\n{ANSWER_CUE}")
    return BLOCK_SEPARATOR.join(blocks)


def cot_prompt(question: str, task_description: str = "") -> str:
    """The plain chain-of-thought prompt (no knowledge, no demonstrations)."""
    return student_prompt(question, task_description)


def shrinking_prompts(
    question: str, task_description: str = "", knowledge: Sequence[str] = (), demos: Sequence[tuple[str, str]] = ()
) -> list[str]:
    """The full prompt, then the same prompt with ever fewer whole parts, for when it is too long.

    Demonstrations go first (the last one first), then knowledge items (the last one first); the
    head of the prompt and the question are never cut. Training takes the first that fits.
    """
    out = [student_prompt(question, task_description, knowledge, demos[:n]) for n in range(len(demos), -1, -1)]
    out += [student_prompt(question, task_description, knowledge[:n]) for n in range(len(knowledge) - 1, -1, -1)]
    return out


def knowledge_text(entry) -> str:
    """'Learning summary: …\\nSupplementary knowledge: …' for a KB Entry, a dict, or a string."""
    if isinstance(entry, str):
        return entry.strip()
    if isinstance(entry, dict):
        summary, supplementary = entry.get("learning_summary", ""), entry.get("supplementary_knowledge", "")
    else:
        summary, supplementary = entry.learning_summary, entry.supplementary_knowledge
    return f"Learning summary: {summary.strip()}\nSupplementary knowledge: {supplementary.strip()}"


def etd_prompt(question: str, thought: str = "cot", knowledge: Sequence[str] = ()) -> str:
    """ETD/EoTD format: the trigger after the question selects the thought type."""
    if thought not in TRIGGERS:
        raise PromptError(f"unknown thought type {thought!r}; choose from {', '.join(TRIGGERS)}")
    items = [k.strip() for k in knowledge if k and k.strip()]
    head = "\n".join([KNOWLEDGE_INSTRUCTION, *items]) + BLOCK_SEPARATOR if items else ""
    return f"{head}Question: {question.strip()}\n{TRIGGERS[thought]}\n"


# --- SKIntern ----------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


def _norm(word: str) -> str:
    return re.sub(r"[^\w]", "", word.lower())


def idf_table(corpus: Iterable[str]) -> dict[str, float]:
    """Inverse document frequency of each normalised word over a knowledge corpus."""
    docs = [set(filter(None, map(_norm, _words(text)))) for text in corpus]
    counts = Counter(w for doc in docs for w in doc)
    n = len(docs)
    return {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in counts.items()}


def compress(text: str, keep: float, idf: dict[str, float] | None = None) -> str:
    """Keep the `keep` share of the words of `text` that carry the most information, in order.

    Rule (SKIntern's token-level pruning, made simple and deterministic; the reference code
    precomputes its pruned knowledge outside the repository):
    1. importance of a word = 0 for stopwords and bare punctuation, else its IDF over the
       knowledge corpus (words unseen in the corpus get the highest IDF: they are rare);
    2. keep ceil(keep × n) words with the highest importance — ties go to the earlier word;
    3. the kept words stay in their original order. Numbers are never treated as stopwords.
    keep=1 returns the text unchanged (whitespace normalised); keep=0 returns "".
    """
    words = _words(text)
    if keep >= 1.0:
        return " ".join(words)
    n_keep = math.ceil(max(keep, 0.0) * len(words))
    if n_keep == 0:
        return ""
    unseen = max(idf.values()) + 1.0 if idf else 1.0

    def importance(word: str) -> float:
        key = _norm(word)
        if not key or key in STOPWORDS:
            return 0.0
        return idf.get(key, unseen) if idf else 1.0

    ranked = sorted(range(len(words)), key=lambda i: (-importance(words[i]), i))
    kept = sorted(ranked[:n_keep])
    return " ".join(words[i] for i in kept)


@dataclass(frozen=True)
class StageSchedule:
    """What SKIntern stage `stage` (0-based) of `stages` shows: a knowledge share and #demos."""

    stage: int
    knowledge_share: float
    demos: int


SCHEDULES = ("linear", "reference")


def skintern_schedule(stages: int, max_demos: int = 6, schedule: str = "linear") -> list[StageSchedule]:
    """Knowledge share and demonstrations per stage, from full (stage 0) to none (last stage).

    "linear": both decay linearly, so any number of stages ends question-only.
    "reference": the reference code's `6 - s` demonstrations at stage s (`random.sample(indices,
    6 - inter_stage)`), i.e. max_demos - s; it reaches question-only only with stages ≥ max_demos + 1.
    The knowledge share decays linearly in both (the reference precomputes it; method unknown).
    """
    if stages < 1:
        raise PromptError("skintern needs at least one stage")
    if schedule not in SCHEDULES:
        raise PromptError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if stages == 1:  # a single stage can only be the question-only one
        return [StageSchedule(0, 0.0, 0)]
    out = []
    for s in range(stages):
        share = round(1.0 - s / (stages - 1), 6)
        demos = max(max_demos - s, 0) if schedule == "reference" else round(max_demos * share)
        out.append(StageSchedule(s, share, demos))
    return out


def select_demos(
    question: str,
    pool: Sequence[tuple[str, str]],
    k: int,
    how: str = "similar",
    seed: int = 0,
    exclude: str | None = None,
) -> list[tuple[str, str]]:
    """k demonstrations from `pool` (pairs of question, rationale), never the question itself.

    "similar": highest bag-of-words cosine (content words only) with the question — cheap and
    deterministic, no embedder needed while building training data; "random": seeded sample
    (the reference code's choice).
    """
    candidates = [p for p in pool if p[0] != question and p[0] != exclude]
    if k <= 0 or not candidates:
        return []
    if how == "random":
        rng = random.Random(f"{seed}:{question}")
        return rng.sample(candidates, min(k, len(candidates)))
    if how != "similar":
        raise PromptError(f"demo selection must be 'similar' or 'random', not {how!r}")
    target = _bag(question)
    scored = sorted(candidates, key=lambda p: -_cosine(target, _bag(p[0])))
    return scored[:k]


def _bag(text: str) -> Counter:
    return Counter(w for w in map(_norm, _words(text)) if w and w not in STOPWORDS)


def _cosine(a: Counter, b: Counter) -> float:
    dot = sum(a[w] * b[w] for w in a.keys() & b.keys())
    na = math.sqrt(sum(v * v for v in a.values()))
    nb = math.sqrt(sum(v * v for v in b.values()))
    return dot / (na * nb) if na and nb else 0.0


# --- templates -------------------------------------------------------------------------------------


def resolve_template(tokenizer, template: str = "auto") -> str:
    """ "chat" or "plain": auto picks the chat template when the tokenizer has one."""
    if template not in TEMPLATES:
        raise PromptError(f"template must be one of {', '.join(TEMPLATES)}, not {template!r}")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise PromptError("--template chat: this tokenizer has no chat template (use plain or auto)")
    return template if template != "auto" else ("chat" if has_chat else "plain")


def render(tokenizer, user: str, response: str | None = None, template: str = "auto") -> tuple[str, str]:
    """(prompt_text, response_text) ready to tokenize without special tokens.

    chat: the user text is the user turn, the response the assistant turn, which ends with the
    end-of-turn marker so the student learns to stop. plain (the reference's `fewshot` template for
    base models): the raw user text, the response right after it, then one EOS; no BOS. Prompt +
    response is exactly the full training text, so prompt tokens can be masked by length.
    """
    if resolve_template(tokenizer, template) == "plain":
        return user, "" if response is None else response + (tokenizer.eos_token or "")
    messages = [{"role": "user", "content": user}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if response is None:
        return prompt, ""
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    if full.startswith(prompt):
        return prompt, full[len(prompt) :]
    # Templates that rewrite earlier turns when an answer follows: fall back to appending.
    return prompt, response + (tokenizer.eos_token or "")


class PromptError(NesyError, ValueError):
    """A prompt option that does not exist (thought type, template, schedule)."""
