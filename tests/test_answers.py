"""Answer extraction and checking against the real answers of every bundled dataset."""
from __future__ import annotations

import gzip
import json
import re

import pytest

from distill.answers import answers_match, check, extract_answer, gsm8k_gold
from distill.data import DATA_DIR, get_dataset


def test_gsm8k_strict_and_flexible_on_real_rationales():
    examples = get_dataset("gsm8k").load("train", limit=300, seed=1)
    for ex in examples:
        text = f"{ex.rationale}\nTherefore, the answer is {ex.answer}."
        assert check(text, ex) == (ex.answer, True)
        assert check(f"{ex.rationale}\n#### {int(ex.answer):,}", ex)[1], ex.id
    # flexible = last number: the real GSM8K rationales end on their result almost always
    hits = sum(extract_answer(ex.rationale, "number", "flexible") == ex.answer for ex in examples)
    assert hits / len(examples) > 0.9
    # strict requires the answer phrase
    assert all(extract_answer(ex.rationale, "number", "strict") is None
               for ex in examples if "answer is" not in ex.rationale.lower())


def test_number_normalisation_and_tolerance():
    assert extract_answer("The answer is $1,080.", "number") == "1080"
    assert extract_answer("so the answer is -3.50 dollars", "number") == "-3.5"
    assert extract_answer("Total 5 apples, then 7.", "number", "flexible") == "7"
    assert extract_answer("no digits here", "number", "flexible") is None
    assert answers_match("18.00001", "18", "number") and not answers_match("18.01", "18", "number")
    assert answers_match("1,000,000", "1000000", "number")
    assert not answers_match(None, "18", "number") and not answers_match("abc", "18", "number")
    assert gsm8k_gold("Natalia sold 48/2 = 24 clips.\n#### 1,080") == "1080"
    with pytest.raises(ValueError):
        gsm8k_gold("#### none")
    with pytest.raises(ValueError):
        extract_answer("x", "number", mode="loose")


def _bbh_demo_answers():
    with gzip.open(DATA_DIR / "bbh" / "cot_prompts.jsonl.gz", "rt") as f:
        for row in map(json.loads, f):
            for answer in re.findall(r"So the answer is (.+?)\.?\n", row["prompt"] + "\n"):
                yield row["task"], answer


@pytest.mark.parametrize("task", get_dataset("bbh").tasks())
def test_bbh_every_task_real_gold_and_official_demos(task):
    bbh = get_dataset("bbh")
    answer_type = bbh.answer_type_for(task)
    examples = bbh.load("test", task=task, limit=20)
    golds = [e.answer for e in examples]
    for ex in examples:
        if answer_type == "option" and not re.fullmatch(r"\([A-R]\)", ex.answer):
            continue  # 3 upstream rows whose target is not a letter (data/bbh/SOURCE.md)
        text = f"A: Let's think step by step.\nSome reasoning.\nSo the answer is {ex.answer}."
        assert check(text, ex) == (ex.answer.strip("()") if answer_type == "option" else ex.answer, True)
        wrong = next((g for g in golds if not answers_match(g, ex.answer, answer_type)), None)
        if wrong is not None:
            assert not check(f"So the answer is {wrong}.", ex)[1]
    # the official CoT demos end "So the answer is X." and X must extract as this task's type
    demos = [a for t, a in _bbh_demo_answers() if t == task]
    assert demos and all(extract_answer(f"So the answer is {a}.", answer_type) for a in demos)


@pytest.mark.parametrize("name,split", [("arc_easy", "test"), ("arc_challenge", "test"),
                                        ("commonsenseqa", "dev"), ("agieval", "test")])
def test_option_letters_real_gold_with_fallbacks(name, split):
    spec = get_dataset(name)
    examples = [e for e in spec.load(split, limit=60, seed=2) if e.choices]
    for ex in examples:
        gold = ex.answer
        for text in (f"Therefore, the answer is ({gold}).", f"The answer is {gold}",
                     f"Reasoning...\nAnswer: {gold}", f"I pick option {gold}.", f"... so ({gold}) it is"):
            assert check(text, ex) == (gold, True), text
        label_text = dict(ex.choices)[gold]
        assert check(f"The answer is {label_text}.", ex)[1]  # choice text fallback
        other = next(lab for lab, _ in ex.choices if lab != gold)
        assert check(f"The answer is ({other}).", ex) == (other, False)
        assert check("I am not sure.", ex) == (None, False)


def test_agieval_math_and_strategyqa_free_text():
    math_ex = [e for e in get_dataset("agieval").load("test", task="math", limit=30)]
    for ex in math_ex:
        assert check(f"Work...\nThe answer is {ex.answer}.", ex)[1], ex.answer
    for ex in get_dataset("strategyqa").load("test", limit=30):
        assert check(f"{ex.rationale} So the answer is {ex.answer.lower()}.", ex) == (ex.answer.lower(), True)
        flipped = "No" if ex.answer == "Yes" else "Yes"
        assert not check(f"So the answer is {flipped}.", ex)[1]
        assert check(f"{ex.rationale}\n{ex.answer}", ex, mode="flexible")[1]
