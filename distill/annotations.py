"""Verified PoT programs and EoT systems built from GSM8K's own calculator annotations.

A free rationale source beside `nesy teach rationales --teacher gold` (which gives CoT only):
every GSM8K training rationale marks its arithmetic as `<<48/2=24>>`. Those steps become

- a PoT program in the style of the teacher demonstrations (`distill.rationales.GSM8K_DEMOS`):
  one `name = expression` line per step, an earlier step's result referred to by its name, the
  last line `ans = …`;
- an EoT system in the style of the EoT demonstrations: a `% comment` line (the rationale
  sentence, its computed result cut out) before each `name = expression` equation, then
  `ans = name` — `ans` is the unknown the sandbox's sympy solve finds.

Rules (each one counted when it makes a row be skipped, see `REASONS`):
- steps: the `<<expr=result>>` annotations in order; a line without annotations may still hold a
  plain-text equation such as `20/4 = $5` or `10 × $4 = $40` (the forms `x × ÷ − $ , %` are
  normalised), which counts as a step too;
- a step's expression must be plain arithmetic (numbers, `+ - * / **`, parentheses) and equal
  its stated result; a plain-text result that is the expression rounded to the shown decimals
  becomes `round(expr, d)` in PoT (EoT has no rounding: such a row is skipped for EoT);
- a number in a step that equals an earlier step's result, and does not occur in the question,
  refers to that step (the most recent one); otherwise it stays a literal;
- `ans` is the last step whose stated result equals the gold answer; steps it does not depend on
  are dropped;
- variable names come from the rationale text: up to three content words right after the result
  (`24 clips in May` -> `clips_may`), else the last ones of the clause before it, else `step<n>`;
- the program is run (PoT) or the system solved (EoT) in the real sandbox by
  `distill.rationales.verify_program`, the same rule a teacher's samples go through, and kept
  only when the answer equals the gold.

Provenance: every record has `teacher_model = "gsm8k-annotations"` (RationaleRecord's provenance
field) and an id ending in `-annot`. Sources never mix: one set per thought type, and writing into
a set that holds records of another source or thought type is refused (`MixedSources`).
The sets this produced on the full train split ship in data/rationales/ (see SOURCE.md there).
"""

from __future__ import annotations

import ast
import builtins
import gzip
import json
import keyword
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import typer

from distill.answers import answers_match, format_number
from distill.data import DATA_DIR, DatasetError, Example, RationaleRecord, get_dataset, rationale_dir
from distill.rationales import verify_program
from kb.errors import NesyError

ANNOTATION_SOURCE = "gsm8k-annotations"
THOUGHTS = ("pot", "eot")
SHIPPED_DIR = DATA_DIR / "rationales"

# Why a row gives no record (counted per thought type in the summary and in SOURCE.md).
REASONS = {
    "no_rationale": "the row has no rationale",
    "no_steps": "no calculator annotation and no plain-text equation",
    "bad_expression": "an annotation is not plain arithmetic (or divides by zero)",
    "annotation_wrong": "an annotation's stated result differs from its expression's value",
    "gold_not_computed": "no step's result equals the gold answer",
    "rounded_step": "EoT only: a step rounds or floors its result, which equations cannot express",
    "sandbox_error": "the sandbox refused or failed to run the program / solve the system",
    "wrong_answer": "the sandbox's answer differs from the gold",
}


class AnnotationError(NesyError):
    """Bad input to the annotation source (dataset, thought type, set name)."""


class MixedSources(AnnotationError):
    """Refused: the target set already holds records of another source or thought type."""


class _Skip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason, self.detail = reason, detail


# ---------------------------------------------------------------- expressions

NUM = r"(?:\d+(?:\.\d+)?|\.\d+)"
TOKEN_RE = re.compile(rf"\s*(?:({NUM})(%?)|(\*\*|//|[-+*/()]))")
ANNOTATION_RE = re.compile(r"<<([^<>]*)>>")
# An annotation as the rationale writes it, for the EoT comment: "= $<<48/2=24>>24" is cut out.
ANNOTATION_IN_TEXT_RE = re.compile(r"(?:\s*=)?\s*\$?<<[^<>]*>>\s*\$?(?:\d[\d,]*(?:\.\d+)?)?%?")
# A plain-text equation: arithmetic over numbers (with $ , x × ÷ − % and parentheses) = number.
TEXT_EQUATION_RE = re.compile(
    r"(?<![\w.])(\(?\s*\$?\d[\d\s$.,+\-−–*xX×/÷()%^]*?)\s*=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)(%?)(?![\d<])"
)


RESTATED_RE = re.compile(r"(?<![\w.])(\(?\s*\$?\d[\d\s$.,+\-−–*xX×/÷()%^]*?)\s*=\s*\$?\s*$")


def _clean_number(text: str) -> str:
    """'05' -> '5', '.5' -> '0.5', '144.00' -> '144', '1,000' -> '1000' (literals Python and the
    EoT parser both read, written the way a person would)."""
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        raise _Skip("bad_expression", f"not a number: {text!r}") from None
    out = format(value.normalize(), "f")
    return "0" if out in ("-0", "") else out


def normalise_expr(text: str) -> list[tuple[str, str]]:
    """Arithmetic text -> tokens [("num", "48"), ("op", "/"), ...]; _Skip when it is not plain
    arithmetic. Handles `x`/`X`/`×` (times), `÷`, `−`/`–` (minus), `^`, `$`, thousands commas,
    `15%` (-> (15 / 100)) and implicit multiplication next to parentheses."""
    t = text.replace("×", "*").replace("÷", "/").replace("^", "**").replace("$", "")
    t = re.sub("[−–—]", "-", t)
    t = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", t)
    t = re.sub(r"(?<=[\d)\s])[xX](?=[\s\d(.])", "*", t)
    tokens, pos, t = [], 0, t.strip()
    while pos < len(t):
        match = TOKEN_RE.match(t, pos)
        if not match:
            raise _Skip("bad_expression", f"unexpected {t[pos:].strip()[:10]!r} in {text!r}")
        number, percent, op = match.groups()
        if number is not None:
            literal = [("num", _clean_number(number))]
            if percent:
                literal = [("op", "("), *literal, ("op", "/"), ("num", "100"), ("op", ")")]
            if tokens and (tokens[-1][0] == "num" or tokens[-1] == ("op", ")")):
                if tokens[-1][0] == "num":
                    raise _Skip("bad_expression", f"two numbers in a row in {text!r}")
                tokens.append(("op", "*"))  # (2+3)4
            tokens += literal
        else:
            if op == "(" and tokens and (tokens[-1][0] == "num" or tokens[-1] == ("op", ")")):
                tokens.append(("op", "*"))  # 2(3+4), (a)(b)
            tokens.append(("op", op))
        pos = match.end()
    if tokens[:1] == [("op", "+")]:
        tokens = tokens[1:]  # "<<+30+46=76>>": a leading plus says nothing
    if not any(kind == "op" and value not in "()" for kind, value in tokens):
        raise _Skip("bad_expression", f"no operation in {text!r}")
    return tokens


_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
}


def evaluate(tokens: list[tuple[str, str]]) -> float:
    """The value of normalised arithmetic tokens, without eval: the expression is parsed with
    `ast` and only numbers, + - * / // ** and unary signs are walked (small exponents only)."""
    source = " ".join(value for _, value in tokens)
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError:
        raise _Skip("bad_expression", f"does not parse: {source!r}") from None

    def walk(node) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow):
                if abs(right) > 64 or (left == 0 and right < 0):
                    raise _Skip("bad_expression", f"unsupported power in {source!r}")
                return left**right
            if type(node.op) in _BINOPS:
                if isinstance(node.op, (ast.Div, ast.FloorDiv)) and right == 0:
                    raise _Skip("bad_expression", f"division by zero in {source!r}")
                return _BINOPS[type(node.op)](left, right)
        raise _Skip("bad_expression", f"not plain arithmetic: {source!r}")

    value = walk(tree)
    if isinstance(value, complex) or not math.isfinite(value):
        raise _Skip("bad_expression", f"no finite real value: {source!r}")
    return value


def _close(a: float, b: float, tol: float = 1e-9) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


# ---------------------------------------------------------------- steps


@dataclass
class Step:
    tokens: list[tuple[str, str]]  # normalised arithmetic
    result: float  # the stated result
    line: int  # rationale line (0-based)
    hint: str  # a variable name from the text ("" = none)
    annotated: bool  # False: a plain-text equation
    rounding: int | None = None  # round(expr, rounding) reproduces the stated result
    refs: dict[int, int] = field(default_factory=dict)  # token index -> earlier step index


STOP = frozenset(
    """
a an the and or but if then else of to in on at by for with from into onto over under about as
is are was were be been being am do does did have has had it its this that these those there
here which who whom whose what when where why how so than too very will just should would
could might must shall i me my we our you your he him his she her they them their us also
up out off because while during before after through until per each every only now still
thus therefore means total altogether overall get gets got make makes made need needs
""".split()
)
CLAUSE_BREAK = re.compile(
    r"[.,;:!?()\[\]]|"
    r"\b(?:because|since|so|which|and|but|than|if|then|while|that|for|to)\b",
    re.IGNORECASE,
)
NUMBER_WORDS = {
    w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())
} | {"half": 2, "twice": 2, "double": 2, "triple": 3, "dozen": 12, "hundred": 100, "thousand": 1000}
RESERVED = frozenset({"ans", "math", "solution", "x", "y", "z", "step"}) | frozenset(dir(builtins))


def _content_words(text: str) -> list[str]:
    words = [re.sub(r"'s$|[^a-z]", "", w.lower().replace("’", "'")) for w in text.split()]
    return [w for w in words if len(w) > 1 and w not in STOP]


def _hint(before: str, after: str) -> str:
    """Up to three content words right after the result, else the last ones of the clause before
    the expression; '' when neither has any."""
    first_clause = CLAUSE_BREAK.split(after, maxsplit=1)[0]
    words = _content_words(first_clause)[:3]
    if not words:
        before = re.sub(r"(?:[\s$=+\-*/×÷()%.,−–]|\d|\b[xX]\b)*$", "", before)
        for clause in reversed(CLAUSE_BREAK.split(before)):
            words = _content_words(clause)[-3:]
            if words:
                break
    return "_".join(words)[:40].strip("_")


def steps_from_rationale(rationale: str) -> list[Step]:
    """The arithmetic steps of a GSM8K rationale, in order: its calculator annotations, and the
    plain-text equations on lines without annotations. An annotation that only restates a number
    (`<<12=12>>`) is no step unless the text right before it writes the arithmetic
    (`$575+$460 = $<<1035=1035>>`); a plain-text "equation" that is not plain arithmetic over numbers or
    does not hold (`100 = 5A`, `100/5 = 5`) is prose, not a step. A broken annotation rejects the
    row (`bad_expression`, `annotation_wrong`); none at all is `no_steps`."""
    steps = []
    for number, line in enumerate(rationale.splitlines()):
        annotations = list(ANNOTATION_RE.finditer(line))
        for match in annotations:
            body = match.group(1)
            if body.count("=") != 1:
                raise _Skip("bad_expression", f"annotation <<{body}>> is not 'expr=result'")
            expr, result = body.split("=")
            if re.fullmatch(r"\s*[+]?\s*\$?\s*[\d.,]+\s*%?\s*", expr):
                # <<1035=1035>> restates a number; the arithmetic, if any, is the text before it
                # ("$575+$460 = $<<1035=1035>>1035")
                written = RESTATED_RE.search(line[: match.start()])
                if not written:
                    continue
                expr = written.group(1)
                try:
                    if _match_result(evaluate(_true_division(normalise_expr(expr))), result)[0] is None:
                        continue  # the text before is not this number's arithmetic
                except _Skip:
                    continue
            tokens = _true_division(normalise_expr(expr))
            value = evaluate(tokens)
            stated, rounding = _match_result(value, result)
            if stated is None:
                raise _Skip("annotation_wrong", f"<<{body}>>: {expr.strip()} is {format_number(value)}")
            tail = re.sub(r"^\s*\$?\s*\d[\d,]*(?:\.\d+)?%?", "", line[match.end() :])
            steps.append(Step(tokens, stated, number, _hint(line[: match.start()], tail), True, rounding))
        if annotations:
            continue
        for match in TEXT_EQUATION_RE.finditer(line):
            try:
                tokens = _true_division(normalise_expr(match.group(1)))
                stated, rounding = _match_result(evaluate(tokens), match.group(2) + match.group(3))
            except _Skip:
                continue
            if stated is not None:
                steps.append(
                    Step(tokens, stated, number, _hint(line[: match.start()], line[match.end() :]), False, rounding)
                )
    if not steps:
        raise _Skip("no_steps")
    return steps


def _true_division(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`560 // 10` -> `560 / 10` when that changes nothing (equations have no floor division);
    a floor that matters stays `//` (PoT keeps it, EoT skips the row as `rounded_step`)."""
    if ("op", "//") not in tokens:
        return tokens
    true = [("op", "/") if t == ("op", "//") else t for t in tokens]
    return true if _close(evaluate(true), evaluate(tokens), 1e-12) else tokens


def _match_result(value: float, result: str) -> tuple[float | None, int | None]:
    """(stated result, rounding) when `result` is what the expression gives: exactly
    (rounding None) or rounded to the decimals it shows, at least one (rounding = those
    decimals; a whole number is never taken as a rounding: "13 / 6 = 2" is a floor); a `%` result
    is read as a share when the expression is one (`100% - 40% = 60%`). (None, None) otherwise."""
    text = result.strip().replace("$", "").replace(",", "").strip()
    percent = text.endswith("%")
    text = text.rstrip("%").strip()
    try:
        written = float(text)
    except ValueError:
        raise _Skip("bad_expression", f"the stated result {result!r} is not a number") from None
    decimals = len(text.partition(".")[2])
    readings = [(written / 100, decimals + 2), (written, decimals)] if percent else [(written, decimals)]
    for stated, places in readings:
        if _close(value, stated):
            return stated, None
        if places and _close(round(value, places), stated, 1e-12):
            return stated, places  # shown decimals only: "13 / 6 = 2" is a floor, not a rounding
    return None, None


def _question_numbers(question: str) -> set[float]:
    numbers = {
        float(n.replace(",", ""))
        for n in re.findall(r"\d[\d,]*(?:\.\d+)?|\.\d+", question)
        if n.replace(",", "").replace(".", "", 1).isdigit()
    }
    words = set(re.findall(r"[a-z]+", question.lower()))
    return numbers | {float(v) for w, v in NUMBER_WORDS.items() if w in words}


def plan(example: Example) -> tuple[list[Step], int]:
    """The steps that `ans` needs (earlier results linked by reference) and the index of the
    `ans` step among them. _Skip with the reason when the rationale gives none."""
    if not example.rationale:
        raise _Skip("no_rationale")
    steps = steps_from_rationale(example.rationale)
    gold = [i for i, s in enumerate(steps) if answers_match(format_number(s.result), example.answer, "number")]
    if not gold:
        raise _Skip("gold_not_computed", f"steps give {[format_number(s.result) for s in steps]}")
    final = gold[-1]
    given = _question_numbers(example.question)

    def earlier(i: int, value: str) -> list[int]:
        return [j for j in range(i) if _close(steps[j].result, float(value), 1e-12)]

    # 1. a number the question does not state that equals an earlier result is that result
    for i, step in enumerate(steps[: final + 1]):
        step.refs = {}
        for t, (kind, value) in enumerate(step.tokens):
            if kind == "num" and float(value) not in given and earlier(i, value):
                step.refs[t] = earlier(i, value)[-1]
    # 2. a number the question states is an earlier result only when that step is used nowhere
    #    else (rationales rarely compute what they never use: "2 x 8 = 16", then "32 + 16")
    used = {j for step in steps[: final + 1] for j in step.refs.values()}
    for i, step in enumerate(steps[: final + 1]):
        for t, (kind, value) in enumerate(step.tokens):
            if kind == "num" and t not in step.refs:
                unused = [j for j in earlier(i, value) if j not in used]
                if unused:
                    step.refs[t] = unused[-1]
                    used.add(unused[-1])
    needed, todo = set(), [final]
    while todo:
        i = todo.pop()
        if i not in needed:
            needed.add(i)
            todo.extend(steps[i].refs.values())
    order = sorted(needed)
    renumber = {old: new for new, old in enumerate(order)}
    kept = []
    for old in order:
        step = steps[old]
        kept.append(
            Step(
                step.tokens,
                step.result,
                step.line,
                step.hint,
                step.annotated,
                step.rounding,
                {t: renumber[j] for t, j in step.refs.items()},
            )
        )
    return kept, len(kept) - 1


def _names(steps: list[Step]) -> list[str]:
    names, used = [], set()
    for n, step in enumerate(steps, start=1):
        base = step.hint or f"step{n}"
        if keyword.iskeyword(base) or base in RESERVED or base.startswith("__"):
            base = f"{base}_value"
        name, k = base, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        names.append(name)
    return names


def render(step: Step, names: list[str]) -> str:
    """The step's expression with spaced binary operators and earlier results by name."""
    out, previous = [], None
    for t, (kind, value) in enumerate(step.tokens):
        if kind == "num":
            out.append(names[step.refs[t]] if t in step.refs else value)
        elif value in "+-" and (
            previous is None or previous == ("op", "(") or (previous[0] == "op" and previous[1] != ")")
        ):
            out.append(value)  # unary sign: attached to what follows
            previous = ("op", "unary")
            continue
        elif value == "(":
            out.append("(")
        elif value == ")":
            out.append(")")
        else:
            out.append(f" {value} ")
        previous = (kind, value)
    return "".join(out).strip()


def _comment(rationale: str, line: int) -> str:
    """The rationale line as an EoT comment, with every computed result cut out: what is left
    says what is computed, never the number (the solver finds that)."""
    text = rationale.splitlines()[line]
    if ANNOTATION_RE.search(text):
        text = ANNOTATION_IN_TEXT_RE.sub("", text)
    else:
        text = TEXT_EQUATION_RE.sub(lambda m: m.group(1), text)
    return " ".join(text.split()).replace(" .", ".").strip()


def build(example: Example, thought: str) -> str:
    """The PoT program or EoT system for one example (not yet executed); _Skip with a reason."""
    return _build(example, thought)[0]


def _build(example: Example, thought: str) -> tuple[str, list[Step]]:
    if thought not in THOUGHTS:
        raise AnnotationError(f"thought must be one of {', '.join(THOUGHTS)}, not {thought!r}")
    steps, final = plan(example)
    names = _names(steps)
    lines = []
    if thought == "pot":
        for i, step in enumerate(steps):
            expr = render(step, names)
            if step.rounding is not None:
                expr = f"round({expr}, {step.rounding})"
            lines.append(f"{'ans' if i == final else names[i]} = {expr}")
        return "\n".join(lines), steps
    if any(step.rounding is not None or ("op", "//") in step.tokens for step in steps):
        raise _Skip("rounded_step")
    commented = set()
    for i, step in enumerate(steps):
        if step.line not in commented:
            commented.add(step.line)
            comment = _comment(example.rationale, step.line)
            if comment:
                lines.append(f"% {comment}")
        lines.append(f"{names[i]} = {render(step, names)}")
    lines.append(f"ans = {names[final]}")
    return "\n".join(lines), steps


# ---------------------------------------------------------------- verified records


@dataclass
class Conversion:
    example_id: str
    thought: str
    rationale: str | None
    extracted: str | None
    reason: str | None  # None: verified; else a key of REASONS
    detail: str | None = None
    text_equations: bool = False  # a step came from a plain-text equation, not an annotation


def convert(example: Example, thought: str) -> Conversion:
    """Build, then execute (PoT) / solve (EoT) in the sandbox and compare with the gold answer."""
    try:
        program, steps = _build(example, thought)
    except _Skip as skip:
        return Conversion(example.id, thought, None, None, skip.reason, skip.detail or None)
    text = any(not s.annotated for s in steps)
    verdict = verify_program(program, example, thought)
    if verdict.correct:
        return Conversion(example.id, thought, verdict.rationale, verdict.extracted, None, None, text)
    reason = "sandbox_error" if verdict.extracted is None else "wrong_answer"
    return Conversion(example.id, thought, program, verdict.extracted, reason, verdict.detail, text)


def record_for(example: Example, conversion: Conversion) -> RationaleRecord:
    return RationaleRecord(
        id=f"{example.id}-{conversion.thought}-annot",
        example_id=example.id,
        dataset=example.dataset,
        task=example.task,
        question=example.question,
        answer=example.answer,
        thought=conversion.thought,
        rationale=conversion.rationale,
        extracted=conversion.extracted,
        choices=example.choices,
        verified=True,
        teacher_model=ANNOTATION_SOURCE,
    )


@dataclass
class AnnotationSummary:
    out: Path
    thought: str
    examples: int
    kept: int
    skipped: dict[str, int]
    text_equation_records: int  # kept records that use at least one plain-text equation

    def line(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        return (
            f"{self.thought}: kept {self.kept} verified of {self.examples} (skipped: {reasons or 'none'}) -> {self.out}"
        )


def check_unmixed(out: str, thought: str) -> None:
    """Refuse to write `thought` records from the annotations into a set that holds anything else
    (another thought type, or records from a teacher / the gold CoT)."""
    path = rationale_dir(out) / "records.jsonl"
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("teacher_model") != ANNOTATION_SOURCE or row.get("thought") != thought:
                raise MixedSources(
                    f"rationale set {out!r} already holds {row.get('thought')} records from "
                    f"{row.get('teacher_model')!r} (line {number}); annotation {thought} records go "
                    f"to a set of their own: choose another name, e.g. {default_name(thought)!r}"
                )


# Characters str.splitlines() breaks a line at that json.dumps(ensure_ascii=False) leaves raw:
# one GSM8K question holds U+2028, and `load_rationales` reads records with splitlines().
LINE_BREAKERS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_line(line: str) -> str:
    """A JSON line with those characters escaped: the same JSON value, one line for any reader."""
    for char, escape in LINE_BREAKERS.items():
        line = line.replace(char, escape)
    return line


def _append(path: Path, line: str) -> None:
    """One JSONL line, as `distill.rationales` appends records (`RationaleRecord.to_json()` + newline),
    with `json_line`'s escapes."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json_line(line) + "\n")


def default_name(thought: str, prefix: str = "gsm8k-annot") -> str:
    return f"{prefix}-{thought}"


def annotation_rationales(examples: list[Example], thought: str, out: str) -> AnnotationSummary:
    """Verified `thought` records ("pot" or "eot") from the examples' calculator annotations into
    the rationale set `out` ($NESY_HOME/datasets/<out>/records.jsonl, rebuilt; every row's outcome
    in raw.jsonl beside it). The set must hold nothing but annotation records of this thought."""
    from distill.progress import Progress

    if thought not in THOUGHTS:
        raise AnnotationError(
            f"annotations give PoT or EoT ({', '.join(THOUGHTS)}), not {thought!r}; "
            "CoT from the same rationales is `--teacher gold`"
        )
    others = sorted({ex.dataset for ex in examples} - {"gsm8k"})
    if others:
        raise AnnotationError(f"calculator annotations are GSM8K's; not {', '.join(others)}")
    try:
        folder = rationale_dir(out)
    except DatasetError as e:
        raise AnnotationError(str(e)) from None
    check_unmixed(out, thought)
    records_path, raw_path = folder / "records.jsonl", folder / "raw.jsonl"
    partial = folder / "records.jsonl.partial"
    partial.write_text("")
    raw_path.write_text("")
    skipped: Counter = Counter()
    kept = with_text = 0
    with Progress(
        len(examples), desc=f"annotations {thought} -> {out}", unit="ex", stage=f"annotations {thought}"
    ) as bar:
        for ex in examples:
            conversion = convert(ex, thought)
            _append(raw_path, json.dumps(asdict(conversion), ensure_ascii=False))
            if conversion.reason is None:
                kept += 1
                with_text += conversion.text_equations
                _append(partial, record_for(ex, conversion).to_json())
            else:
                skipped[conversion.reason] += 1
            bar.update(1, kept=kept)
            bar.check_stop()
    os.replace(partial, records_path)  # a stopped run never leaves a set that looks complete
    return AnnotationSummary(records_path, thought, len(examples), kept, dict(skipped), with_text)


# ---------------------------------------------------------------- shipped sets


def write_gzip(records_path: Path, target: Path) -> int:
    """records.jsonl -> a reproducible .jsonl.gz (no timestamp or name in the header), each line
    through `json_line` (a set written by `distill.rationales` may hold a raw U+2028); its bytes."""
    text = Path(records_path).read_text(encoding="utf-8")
    data = "".join(json_line(line) + "\n" for line in text.split("\n") if line.strip()).encode("utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        f.write(data)
    return target.stat().st_size


def install_shipped(name: str, out: str | None = None) -> Path:
    """Unpack data/rationales/<name>.jsonl.gz into the rationale set `out` (default: `name`) so
    `nesy train --data <out>` uses it without a teacher. Refuses to replace a different set."""
    source = SHIPPED_DIR / f"{name}.jsonl.gz"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]{0,63}", name) or not source.is_file():
        shipped = sorted(p.name.removesuffix(".jsonl.gz") for p in SHIPPED_DIR.glob("*.jsonl.gz"))
        raise AnnotationError(f"no shipped rationale set {name!r} (shipped: {', '.join(shipped)})")
    with gzip.open(source, "rb") as f:
        data = f.read()
    try:
        target = rationale_dir(out or name) / "records.jsonl"
    except DatasetError as e:
        raise AnnotationError(str(e)) from None
    if target.exists() and target.read_bytes() not in (b"", data):
        raise MixedSources(
            f"rationale set {out or name!r} already exists with other records; choose another name with --out"
        )
    target.write_bytes(data)
    return target


# ---------------------------------------------------------------- CLI

cli = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Free verified PoT/EoT rationales from GSM8K's calculator annotations.",
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@cli.command("rationales")
def rationales_cmd(
    dataset: str = typer.Option("gsm8k", help="only gsm8k has calculator annotations"),
    split: str = typer.Option("train"),
    limit: int = typer.Option(None, help="a seeded sample of this many questions"),
    seed: int = typer.Option(0),
    thoughts: str = typer.Option("pot,eot", help="comma-separated: pot,eot (one set each)"),
    out: str = typer.Option("gsm8k-annot", help="set name prefix: one set <out>-<thought> per thought"),
) -> None:
    """Build PoT programs / EoT systems from the annotations, verify each in the sandbox, keep the
    verified: one rationale set per thought type, `teacher_model` = gsm8k-annotations."""
    from distill.progress import STOPPED_EXIT_CODE, StopRequested

    chosen = [t.strip() for t in thoughts.split(",") if t.strip()]
    if not chosen or any(t not in THOUGHTS for t in chosen) or len(set(chosen)) != len(chosen):
        _fail(
            f"--thoughts must be a comma-separated subset of {','.join(THOUGHTS)} "
            "(CoT from the same rationales is --teacher gold)"
        )
    try:
        examples = get_dataset(dataset).load(split, limit=limit, seed=seed)
        names = {t: default_name(t, out) for t in chosen}
        for thought, name in names.items():
            rationale_dir(name)
            check_unmixed(name, thought)
        for thought in chosen:
            summary = annotation_rationales(examples, thought, names[thought])
            typer.echo(summary.line())
            if not summary.kept:
                _fail(f"no verified {thought} record from {dataset} {split}")
    except (DatasetError, NesyError) as e:
        _fail(str(e))
    except StopRequested:
        typer.echo("stopped; run the same command again (it rebuilds the sets)")
        raise typer.Exit(STOPPED_EXIT_CODE) from None


@cli.command("install")
def install_cmd(
    name: str = typer.Argument(..., help="a shipped set, e.g. gsm8k-annot-pot"),
    out: str = typer.Option(None, help="rationale set name (default: NAME)"),
) -> None:
    """Unpack a set shipped in data/rationales/ into $NESY_HOME/datasets/<out>."""
    try:
        path = install_shipped(name, out)
    except NesyError as e:
        _fail(str(e))
    typer.echo(f"installed {sum(1 for _ in open(path, encoding='utf-8'))} records -> {path}")


if __name__ == "__main__":
    cli()
