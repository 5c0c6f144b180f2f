"""Prompt formats: exact texts, SKIntern compression and schedule, chat-template rendering."""
from __future__ import annotations

import pytest

from distill import prompts
from kb.schema import Entry


def entry(i: int) -> Entry:
    return Entry(id=f"e{i}", task="gsm8k", learning_summary=f"Summary number {i}.",
                 supplementary_knowledge=f"Fact number {i}.", status="accepted")


def test_cot_prompt_exact():
    assert prompts.cot_prompt("  How many? ") == "Question: How many?\nAnswer: Let's think step by step."


def test_nesycd_prompt_places_every_entry_between_instruction_and_question():
    text = prompts.nesycd_prompt("How many?", [entry(1), entry(2)])
    assert text.startswith(prompts.KNOWLEDGE_INSTRUCTION)
    assert text.endswith(prompts.cot_prompt("How many?"))
    first = text.index("Learning summary: Summary number 1.\nSupplementary knowledge: Fact number 1.")
    second = text.index("Learning summary: Summary number 2.\nSupplementary knowledge: Fact number 2.")
    assert len(prompts.KNOWLEDGE_INSTRUCTION) < first < second < text.index("Question:")
    assert prompts.knowledge_text(entry(1)) == entry(1).knowledge_text()


def test_nesycd_prompt_without_knowledge_is_plain_cot():
    assert prompts.nesycd_prompt("Q?", []) == prompts.cot_prompt("Q?")


def test_etd_prompt_uses_trigger():
    assert prompts.etd_prompt("Q?", "eot") == "Question: Q?\nSystem of linear equations: (Do not simplify)\n"
    assert prompts.etd_prompt("Q?", "pot").endswith("Let's break down the code step by step\n")
    with pytest.raises(ValueError):
        prompts.etd_prompt("Q?", "tot")


def test_compress_drops_stopwords_first_then_common_words_keeping_order():
    idf = prompts.idf_table(["area of a circle", "area of a square", "area and perimeter of a rectangle",
                             "radius squared"])
    text = "The area of a circle is pi times the radius squared"
    # 11 words, keep 40% -> ceil(4.4) = 5: the six stopwords go first (the, of, a, is, the), then
    # "area", the most common content word (3 of 4 documents); order is kept.
    assert prompts.compress(text, 0.4, idf) == "circle pi times radius squared"
    # 20% -> 3 words: among circle/radius/squared (1 document each) the earlier ones win the tie,
    # words the corpus never saw (pi, times) count as rarest.
    assert prompts.compress(text, 0.2, idf) == "circle pi times"
    assert prompts.compress(text, 1.0, idf) == text
    assert prompts.compress(text, 0.0, idf) == ""


def test_compress_keeps_numbers():
    out = prompts.compress("Add 12 to the total of 30 apples", 0.5)
    assert "12" in out.split() and "30" in out.split()


def test_schedule_decays_linearly_to_question_only():
    seven = prompts.skintern_schedule(7, 6)
    assert [s.demos for s in seven] == [6, 5, 4, 3, 2, 1, 0]  # the reference code's 6 - s
    four = prompts.skintern_schedule(4, 6)
    assert [s.knowledge_share for s in four] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0], abs=1e-5)
    assert [s.demos for s in four] == [6, 4, 2, 0]
    assert four[-1].knowledge_share == 0 and four[-1].demos == 0


def test_skintern_prompt_question_only_equals_cot():
    assert prompts.skintern_prompt("Q?", "", []) == prompts.cot_prompt("Q?")
    full = prompts.skintern_prompt("Q?", "Learning summary: add.", [("A?", "1+1=2. The answer is 2.")])
    assert full.index("Question: A?") < full.index("Knowledge: Learning summary: add.") < full.index("Question: Q?")


def test_select_demos_similar_and_random():
    pool = [("How many apples does Tom have?", "r1"), ("What is the speed of the train?", "r2"),
            ("Tom buys apples and pears.", "r3"), ("How many apples does Tom have?", "self")]
    similar = prompts.select_demos("How many apples does Tom have?", pool, 2, "similar")
    assert [r for _, r in similar] == ["r3", "r2"]  # r3 shares "tom" and "apples"
    assert all(q != "How many apples does Tom have?" for q, _ in similar)  # never the question itself
    a = prompts.select_demos("Q?", pool, 2, "random", seed=1)
    assert a == prompts.select_demos("Q?", pool, 2, "random", seed=1) and len(a) == 2


@pytest.fixture(scope="module")
def tokenizer():
    from student_fixtures import real_tokenizer

    return real_tokenizer()


def test_render_with_chat_template_splits_exactly(tokenizer):
    prompt, response = prompts.render(tokenizer, "Question: Q?", "It is 4.")
    full = tokenizer.apply_chat_template([{"role": "user", "content": "Question: Q?"},
                                          {"role": "assistant", "content": "It is 4."}], tokenize=False)
    assert prompt + response == full
    assert prompt.endswith("<|im_start|>assistant\n")
    assert response.startswith("It is 4.") and response.rstrip().endswith("<|im_end|>")


def test_render_without_chat_template_appends_eos(tokenizer):
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = None
    prompt, response = prompts.render(tokenizer, "Question: Q?", "It is 4.")
    assert prompt == "Question: Q?\n" and response == "It is 4." + tokenizer.eos_token
