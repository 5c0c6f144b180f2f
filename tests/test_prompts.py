"""Prompt formats: exact texts, SKIntern compression and schedule, chat-template rendering."""

from __future__ import annotations

import pytest

from distill import prompts
from kb.schema import Entry


def entry(i: int) -> Entry:
    return Entry(
        id=f"e{i}",
        task="gsm8k",
        learning_summary=f"Summary number {i}.",
        supplementary_knowledge=f"Fact number {i}.",
        status="accepted",
    )


def test_cot_prompt_is_the_reference_text():
    # NesyCD reference (eval template gen_bbh_cot_prefix): task line, blank line, question, and the
    # answer cue with its trailing space.
    assert prompts.cot_prompt("  How many? ", "Solve the problem.") == (
        'Solve the problem. Your response should conclude with the format "Therefore, the answer is".'
        "\n\nQuestion: How many?\nAnswer: Let's think step by step. "
    )
    assert prompts.cot_prompt("Q?").startswith("Your response should conclude with the format")


def test_knowledge_block_sits_between_task_line_and_question_one_item_per_line():
    text = prompts.student_prompt(
        "How many?", "Solve it.", [prompts.knowledge_text(entry(1)), prompts.knowledge_text(entry(2))]
    )
    assert text == (
        prompts.task_line("Solve it.")
        + "\n\n"
        + prompts.KNOWLEDGE_INSTRUCTION
        + "\n"
        + entry(1).knowledge_text()
        + "\n"
        + entry(2).knowledge_text()
        + "\n\n"
        + "Question: How many?\n"
        + prompts.ANSWER_CUE
    )
    assert prompts.student_prompt("Q?", "T.", []) == prompts.cot_prompt("Q?", "T.")


def test_etd_prompt_uses_trigger():
    assert prompts.etd_prompt("Q?", "eot") == "Question: Q?\nSystem of linear equations: (Do not simplify)\n"
    assert prompts.etd_prompt("Q?", "pot").endswith("Let's break down the code step by step\n")
    with pytest.raises(ValueError):
        prompts.etd_prompt("Q?", "tot")


def test_compress_drops_stopwords_first_then_common_words_keeping_order():
    idf = prompts.idf_table(
        ["area of a circle", "area of a square", "area and perimeter of a rectangle", "radius squared"]
    )
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


def test_reference_schedule_is_six_minus_s_by_name():
    assert [s.demos for s in prompts.skintern_schedule(4, 6, "reference")] == [6, 5, 4, 3]
    assert [s.demos for s in prompts.skintern_schedule(7, 6, "reference")] == [6, 5, 4, 3, 2, 1, 0]
    with pytest.raises(ValueError, match="schedule"):
        prompts.skintern_schedule(4, 6, "exponential")


def test_skintern_order_is_knowledge_then_demonstrations_then_question():
    # The reference (SKIntern aligner, method "inter"): task line, knowledge, demos, question.
    full = prompts.student_prompt("Q?", "T.", ["Learning summary: add."], [("A?", "1+1=2. The answer is 2.")])
    assert (
        full.index(prompts.task_line("T."))
        < full.index("Learning summary: add.")
        < full.index("Question: A?\nAnswer: 1+1=2.")
        < full.index("Question: Q?")
    )
    assert prompts.student_prompt("Q?", "T.", [], []) == prompts.cot_prompt("Q?", "T.")


def test_shrinking_prompts_drop_whole_demos_first_then_knowledge_items():
    versions = prompts.shrinking_prompts("Q?", "T.", ["K1", "K2"], [("D1?", "r1"), ("D2?", "r2")])
    assert versions[0] == prompts.student_prompt("Q?", "T.", ["K1", "K2"], [("D1?", "r1"), ("D2?", "r2")])
    assert versions[1:] == [
        prompts.student_prompt("Q?", "T.", ["K1", "K2"], [("D1?", "r1")]),
        prompts.student_prompt("Q?", "T.", ["K1", "K2"]),
        prompts.student_prompt("Q?", "T.", ["K1"]),
        prompts.cot_prompt("Q?", "T."),
    ]
    assert all(v.startswith(prompts.task_line("T.")) and v.endswith(prompts.ANSWER_CUE) for v in versions)


def test_select_demos_similar_and_random():
    pool = [
        ("How many apples does Tom have?", "r1"),
        ("What is the speed of the train?", "r2"),
        ("Tom buys apples and pears.", "r3"),
        ("How many apples does Tom have?", "self"),
    ]
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
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Question: Q?"}, {"role": "assistant", "content": "It is 4."}], tokenize=False
    )
    assert prompt + response == full
    assert prompt.endswith("<|im_start|>assistant\n")
    assert response.startswith("It is 4.") and response.rstrip().endswith("<|im_end|>")


def test_render_without_chat_template_appends_eos(tokenizer):
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = None
    user = prompts.cot_prompt("Q?")
    prompt, response = prompts.render(tokenizer, user, "It is 4.")
    assert prompt == user and response == "It is 4." + tokenizer.eos_token  # the reference's plain text
    with pytest.raises(ValueError, match="no chat template"):
        prompts.render(tokenizer, user, template="chat")


def test_plain_template_chosen_by_name_even_when_a_chat_template_exists(tokenizer):
    assert prompts.resolve_template(tokenizer, "auto") == "chat"
    assert prompts.render(tokenizer, "Question: Q?", "It is 4.", "plain") == (
        "Question: Q?",
        "It is 4." + tokenizer.eos_token,
    )
