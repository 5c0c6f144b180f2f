"""Answer extraction and checking, shared by teacher verification and evaluation.

Conventions (shared/METHODS.md, "Evaluation conventions"):
- numbers, strict: the number after the last "The answer is" / "Therefore, the answer is" / "####";
  numbers, flexible: the last number anywhere in the output. `,` `$` and a trailing `.` are
  stripped; integers are compared exactly (18.0 == 18, 17 != 18), other numbers within 1e-6
  absolute (a tolerance relative to the gold would let 1,000 accept 999.9).
- option letters: after "the answer is", then looser patterns ("answer: B", a lone "(B)" ...);
  compared to the gold letter with parentheses stripped (BBH gold is "(A)").
- free text (BBH True/valid/Yes, StrategyQA Yes/No, word lists): the phrase after "the answer is"
  (strict) or the last line (flexible), compared case- and punctuation-insensitively.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

NUMBER_RE = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")
ANSWER_IS_RE = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|answer\s+is\s*:?|####)", re.IGNORECASE)
LETTERS = "ABCDEFGHIJ"


def normalise_number(text: str) -> str | None:
    """'$1,080.' -> '1080', '2.50' -> '2.5', '-3.0' -> '-3'; None when no number."""
    match = NUMBER_RE.search(text)
    if not match:
        return None
    raw = match.group(0).replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = float(raw)
    except ValueError:
        return None
    return format_number(value)


def format_number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


def _after_answer_phrase(text: str) -> str | None:
    """The text after the last answer phrase, up to the end of that line; None when absent."""
    matches = list(ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    return text[matches[-1].end() :].split("\n", 1)[0]


def extract_number(text: str, mode: str = "strict") -> str | None:
    if mode == "strict":
        tail = _after_answer_phrase(text)
        return normalise_number(tail) if tail is not None else None
    numbers = NUMBER_RE.findall(text)
    return normalise_number(numbers[-1]) if numbers else None


def extract_option(text: str, mode: str = "strict", labels: str = LETTERS) -> str | None:
    """An option letter, from the most to the least specific pattern."""
    letter = f"[{re.escape(''.join(labels))}]"
    tail = _after_answer_phrase(text)
    if tail is not None:
        match = re.match(rf"\s*\**\s*\(?({letter})\)?(?![A-Za-z])", tail)
        if match:
            return match.group(1)
    looser = [
        rf"(?i:answer)\s*(?:is|:)?\s*(?i:option\s*)?\(?({letter})\)?(?![A-Za-z])",
        rf"(?i:option|choice)\s*\(?({letter})\)?(?![A-Za-z])",
        rf"\(({letter})\)",
    ]
    if mode == "flexible":
        looser.append(rf"(?<![A-Za-z])({letter})(?![A-Za-z'])")
    for pattern in looser:
        found = re.findall(pattern, text)
        if found:
            return found[-1]
    return None


def extract_text(text: str, mode: str = "strict") -> str | None:
    tail = _after_answer_phrase(text)
    if tail is None and mode == "flexible":
        lines = [line for line in text.strip().splitlines() if line.strip()]
        tail = lines[-1] if lines else None
    if tail is None:
        return None
    tail = tail.strip().strip("*").strip()
    tail = re.sub(r"\.\s*$", "", tail).strip().strip("\"'").strip()
    return tail or None


def extract_answer(text: str, answer_type: str, mode: str = "strict", labels: str = LETTERS) -> str | None:
    """The answer in a model output, or None. `mode` is "strict" or "flexible"."""
    if mode not in ("strict", "flexible"):
        raise ValueError(f"mode must be 'strict' or 'flexible', not {mode!r}")
    if answer_type == "number":
        return extract_number(text, mode)
    if answer_type == "option":
        return extract_option(text, mode, labels)
    if answer_type == "text":
        return extract_text(text, mode)
    raise ValueError(f"unknown answer type {answer_type!r}")


def normalise_text(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s\[\]\(\)\{\}<>]", " ", text.casefold()).split())


def normalise_option(text: str) -> str:
    return text.strip().strip("()").strip().upper()


NUMBER_TOLERANCE = Decimal("1e-6")  # absolute, for non-integer golds only


def answers_match(pred: str | None, gold: str, answer_type: str, tol: Decimal | float = NUMBER_TOLERANCE) -> bool:
    """Numbers: exactly equal when the gold is an integer (18 == 18.0, 18 != 18.00001), within
    `tol` absolute otherwise; letters or normalised text equal.

    The comparison is decimal, never binary float. A prediction with more significant digits than
    a double holds ("3.0000000000000004", a float printed by a program) is first rounded to 15.
    """
    if pred is None:
        return False
    if answer_type == "number":
        p, g = _decimal(str(pred)), _decimal(str(gold))
        if p is None or g is None:
            return False
        if len(p.as_tuple().digits) > 15:
            p = Decimal(f"{float(p):.15g}")
        if g == g.to_integral_value():
            return p == g
        return abs(p - g) <= Decimal(str(tol))
    if answer_type == "option":
        return normalise_option(pred) == normalise_option(gold)
    return normalise_text(pred) == normalise_text(gold)


def _decimal(text: str) -> Decimal | None:
    """The first number in text as an exact Decimal ('$1,080.' -> 1080); None when none."""
    match = NUMBER_RE.search(text)
    if not match:
        return None
    raw = match.group(0).replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def gsm8k_gold(answer_field: str) -> str:
    """The GSM8K gold number: after '####' in the original format, else the field itself."""
    tail = answer_field.rsplit("####", 1)[-1]
    number = normalise_number(tail)
    if number is None:
        raise ValueError(f"no number in GSM8K answer {answer_field!r}")
    return number


def check(text: str, example, mode: str = "strict", answer_type: str | None = None) -> tuple[str | None, bool]:
    """(extracted answer, correct) for a model output on an Example (distill.data.Example).

    For option questions the text of a choice after "the answer is" (e.g. "the answer is
    heptagon", "the answer is A tree root breaks apart a rock.") wins over letter patterns.
    """
    if answer_type is None:
        from distill.data import get_dataset

        answer_type = get_dataset(example.dataset).answer_type_for(example.task)
    labels = (
        "".join(label for label, _ in example.choices)
        if (answer_type == "option" and example.choices and all(len(lab) == 1 for lab, _ in example.choices))
        else LETTERS
    )
    extracted = None
    if answer_type == "option" and example.choices:
        extracted = _choice_by_text(text, example.choices)
    if extracted is None:
        extracted = extract_answer(text, answer_type, mode, labels)
    return extracted, answers_match(extracted, example.answer, answer_type)


def _choice_by_text(text: str, choices: list[tuple[str, str]]) -> str | None:
    tail = _after_answer_phrase(text)
    if tail is None:
        return None
    said = normalise_text(tail)
    for label, choice_text in choices:
        if normalise_text(choice_text) and normalise_text(choice_text) == said:
            return label
    return None


# ---------------------------------------------------------------- the student's wrong response

# Degenerate runs a small student falls into, tried in this order; the response is cut at the first
# occurrence of each one present (the NesyCD reference code's list, inference.py, `temp_error`).
DEGENERATE_RUNS = (
    "? ? ? ? ? ? ? ? ? ? ?",
    "| | | | | | | | | | | | |",
    "per day per day per day per day",
    "\t" * 14,
    "+ True + True + True + True",
    "888888888",
    "0" * 19,
    "0, 0, 0, 0, 0, 0, 0, 0, 0, 0",
    "\ufffd" * 7,
    "not not not not not not not",
)


def clean_response(text: str, max_pieces: int = 256) -> str:
    """The student's response as the teacher should see it: a prefix of what the student wrote.

    Cut at the first degenerate run (DEGENERATE_RUNS, in order), then keep the first `max_pieces`
    pieces split on single spaces (so newlines survive). Nothing that stays is rewritten: the result
    is always `text[:n]` for some n (trailing spaces before a cut are kept too).
    """
    for run in DEGENERATE_RUNS:
        text = text.split(run, 1)[0]
    return " ".join(text.split(" ")[:max_pieces])
