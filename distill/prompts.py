"""Every student prompt format lives here (see docs/ARCHITECTURE.md).

Training and inference build prompts with the same functions, so a student sees at test time
exactly the format it was trained on. Each builder returns the *user* text; `render()` wraps it
in the model's chat template (when it has one) and returns `(prompt_text, response_text)` so
that training can mask the prompt and score only the response.

Formats:
- plain CoT (Std-CoT, NesyCD correct cases, SKIntern's last stage, inference without knowledge):
    Question: {q}
    Answer: Let's think step by step.
- NesyCD knowledge block: KNOWLEDGE_INSTRUCTION, one "Learning summary / Supplementary
  knowledge" block per entry, then the CoT prompt.
- SKIntern stage s: k demonstrations, the example's knowledge compressed to a share of its
  tokens (see `compress`), then the CoT prompt.
- ETD / EoTD:  Question: {q}\\n{trigger}\\n  where the trigger selects CoT, PoT or EoT.
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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

COT_TRIGGER = TRIGGERS["cot"]
DEMO_SEPARATOR = "\n\n"

# Function words carry almost no problem-specific information; SKIntern compression drops them
# first. A fixed list (no NLTK download at run time).
STOPWORDS = frozenset("""
a an the and or but if then else of to in on at by for with from into onto over under about as
is are was were be been being am do does did doing have has had having it its this that these
those there here which who whom whose what when where why how all any both each few more most
other some such no nor not only own same so than too very can will just should would could may
might must shall i me my we our you your he him his she her they them their us also up down out
off again further once because while during before after above below between through until
""".split())


# --- building blocks ------------------------------------------------------------------------

def cot_prompt(question: str) -> str:
    """The plain chain-of-thought prompt (METHODS.md, NesyCD stage 1)."""
    return f"Question: {question.strip()}\nAnswer: {COT_TRIGGER}"


def knowledge_text(entry) -> str:
    """'Learning summary: …\\nSupplementary knowledge: …' for a KB Entry, a dict, or a string."""
    if isinstance(entry, str):
        return entry.strip()
    if isinstance(entry, dict):
        summary, supplementary = entry.get("learning_summary", ""), entry.get("supplementary_knowledge", "")
    else:
        summary, supplementary = entry.learning_summary, entry.supplementary_knowledge
    return f"Learning summary: {summary.strip()}\nSupplementary knowledge: {supplementary.strip()}"


def nesycd_prompt(question: str, knowledge: Sequence = ()) -> str:
    """CoT prompt preceded by the teacher's knowledge (none → the plain CoT prompt)."""
    blocks = [knowledge_text(k) for k in knowledge if knowledge_text(k)]
    if not blocks:
        return cot_prompt(question)
    return "\n\n".join([KNOWLEDGE_INSTRUCTION, *blocks, cot_prompt(question)])


def etd_prompt(question: str, thought: str = "cot") -> str:
    """ETD/EoTD format: the trigger after the question selects the thought type."""
    if thought not in TRIGGERS:
        raise ValueError(f"unknown thought type {thought!r}; choose from {sorted(TRIGGERS)}")
    return f"Question: {question.strip()}\n{TRIGGERS[thought]}\n"


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

    Rule (SKIntern's token-level pruning, made simple and deterministic):
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


def skintern_schedule(stages: int, max_demos: int = 6) -> list[StageSchedule]:
    """Linear decay from full knowledge + all demonstrations (stage 0) to none (last stage).

    With stages = max_demos + 1 this is the reference code's `6 - s` demonstrations.
    """
    if stages < 1:
        raise ValueError("skintern needs at least one stage")
    if stages == 1:  # a single stage can only be the question-only one
        return [StageSchedule(0, 0.0, 0)]
    out = []
    for s in range(stages):
        share = 1.0 - s / (stages - 1)
        out.append(StageSchedule(s, round(share, 6), round(max_demos * share)))
    return out


def skintern_prompt(question: str, knowledge: str = "", demos: Sequence[tuple[str, str]] = ()) -> str:
    """Demonstrations (question, rationale), then compressed knowledge, then the CoT prompt.

    With no knowledge and no demonstrations this is exactly `cot_prompt(question)` — the
    question-only format SKIntern uses at inference.
    """
    parts = [f"{cot_prompt(q)} {r.strip()}" for q, r in demos]
    if knowledge.strip():
        parts.append(f"Knowledge: {knowledge.strip()}")
    parts.append(cot_prompt(question))
    return DEMO_SEPARATOR.join(parts)


def select_demos(question: str, pool: Sequence[tuple[str, str]], k: int, how: str = "similar",
                 seed: int = 0, exclude: str | None = None) -> list[tuple[str, str]]:
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
        raise ValueError(f"demo selection must be 'similar' or 'random', not {how!r}")
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


# --- chat template -----------------------------------------------------------------------------

def render(tokenizer, user: str, response: str | None = None,
           system: str | None = None) -> tuple[str, str]:
    """(prompt_text, response_text) ready to tokenize.

    With a chat template the user text is the user turn and the response the assistant turn;
    response_text then includes the end-of-turn marker so the student learns to stop. Without
    one, the prompt is the raw text and the response ends with the EOS token. Concatenating the
    two gives exactly the full training text, so prompt tokens can be masked by length.
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if response is None:
            return prompt, ""
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(prompt):
            return prompt, full[len(prompt):]
        # Templates that rewrite earlier turns when an answer follows: fall back to appending.
        return prompt, response + (tokenizer.eos_token or "")
    prompt = user if user.endswith((" ", "\n")) else user + "\n"
    if response is None:
        return prompt, ""
    return prompt, response + (tokenizer.eos_token or "")
