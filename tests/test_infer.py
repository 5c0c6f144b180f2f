"""Answering: batched = one at a time, streaming, KB retrieval (real store + index), ETD, CLI."""

from __future__ import annotations

import json

import pytest
from student_fixtures import tiny_model  # noqa: F401

from distill import prompts
from distill.infer import Student, extract, majority

QUESTIONS = [
    "What is the area of a circle with radius 2?",
    "A train travels 60 miles in 2 hours. What is its speed?",
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
]


@pytest.fixture(scope="module")
def student(tiny_model):
    return Student(tiny_model)


def test_batched_generation_matches_one_at_a_time(student):
    batched = student.answer(QUESTIONS, max_new_tokens=12, batch_size=3)
    single = [student.answer([q], max_new_tokens=12)[0] for q in QUESTIONS]
    assert [r.text for r in batched] == [r.text for r in single]  # left padding changes nothing
    for q, r in zip(QUESTIONS, batched):
        rendered = prompts.render(student.tokenizer, prompts.cot_prompt(q))[0]
        assert r.prompt_tokens == len(student.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert r.prompt == prompts.cot_prompt(q) and not r.used_knowledge and r.retrieved == []


def test_stream_yields_the_same_text(student):
    pieces = list(student.stream(QUESTIONS[0], max_new_tokens=12))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == student.answer([QUESTIONS[0]], max_new_tokens=12)[0].text


@pytest.fixture
def kb():
    from kb.index import KBIndex
    from kb.schema import Entry
    from kb.store import KBStore

    store = KBStore()
    for id_, status, summary, fact in [
        (
            "circle",
            "accepted",
            "For circle problems find the radius first.",
            "The area of a circle is pi times r squared.",
        ),
        ("circle-draft", "pending", "Circles: square the radius before multiplying.", "A circle's area equals pi r^2."),
        ("speed", "accepted", "Speed problems divide distance by time.", "Speed = distance / time, in miles per hour."),
        ("bad", "rejected", "Circles have corners.", "The area of a circle is 2 r."),
    ]:
        store.add(
            Entry(id=id_, task="gsm8k", status=status, learning_summary=summary, supplementary_knowledge=fact),
            by="test",
        )
    index = KBIndex(store)
    index.sync()
    return index


def test_retrieval_inserts_accepted_entries_only_by_default(student, kb):
    res = student.answer([QUESTIONS[0]], kb_index=kb, k=2, max_new_tokens=4)[0]
    ids = [i for i, _ in res.retrieved]
    assert ids[0] == "circle" and set(ids) <= {"circle", "speed"} and len(ids) == 2
    assert res.used_knowledge and prompts.KNOWLEDGE_INSTRUCTION in res.prompt
    assert "The area of a circle is pi times r squared." in res.prompt
    assert "2 r." not in res.prompt and "square the radius" not in res.prompt
    plain = student.answer([QUESTIONS[0]], max_new_tokens=4)[0]
    assert res.prompt_tokens > plain.prompt_tokens
    assert all(isinstance(s, float) for _, s in res.retrieved)
    with_pending = student.answer([QUESTIONS[0]], kb_index=kb, k=2, statuses=("accepted", "pending"), max_new_tokens=4)[
        0
    ]
    assert {i for i, _ in with_pending.retrieved} == {"circle", "circle-draft"}


def test_adaptive_retrieval_skips_when_confident(student, kb):
    # The probability gap is in [0, 1]: threshold -1 always counts as confident, 1 never does.
    confident = student.answer(QUESTIONS[:2], kb_index=kb, k=1, adaptive_threshold=-1.0, max_new_tokens=4)
    unsure = student.answer(QUESTIONS[:2], kb_index=kb, k=1, adaptive_threshold=1.0, max_new_tokens=4)
    assert not any(r.used_knowledge for r in confident) and all(r.used_knowledge for r in unsure)
    gaps = student.confidence([prompts.cot_prompt(q) for q in QUESTIONS])
    assert len(gaps) == 3 and all(0.0 <= g <= 1.0 for g in gaps)


def test_adaptive_probe_is_the_reference_one_sampled_and_seeded(student, monkeypatch):
    # 16 tokens sampled at T=0.6 (not 4 greedy ones), seeded: the same prompt always gets the same gap.
    seen = {}
    real = student.model.generate

    def spy(**kwargs):
        seen.update({k: kwargs.get(k) for k in ("max_new_tokens", "do_sample", "temperature")})
        return real(**kwargs)

    monkeypatch.setattr(student.model, "generate", spy)
    first = student.confidence([prompts.cot_prompt(QUESTIONS[0])])
    assert seen == {"max_new_tokens": 16, "do_sample": True, "temperature": 0.6}
    assert student.confidence([prompts.cot_prompt(QUESTIONS[0])]) == first


def test_retrieval_keeps_to_the_methods_entry_kinds_and_says_when_it_finds_nothing(tiny_model, caplog):
    from kb.index import KBIndex
    from kb.schema import Entry, Source
    from kb.store import KBStore

    store = KBStore()
    store.add(
        Entry(
            id="sk",
            task="gsm8k",
            status="accepted",
            learning_summary="Circles: radius first.",
            supplementary_knowledge="Area of a circle is pi r^2.",
            source=Source(kind="example_knowledge", dataset="gsm8k", example_id="1"),
        ),
        by="test",
    )
    index = KBIndex(store)
    index.sync()
    nesycd = Student(tiny_model, method="nesycd")
    nesycd.defaults["source_kinds"] = ["error_analysis"]  # what a NesyCD card records
    with caplog.at_level("WARNING"):
        res = nesycd.answer([QUESTIONS[0]], kb_index=index, max_new_tokens=2)[0]
    assert res.retrieved == [] and res.retrieval_empty and not res.used_knowledge
    assert "retrieval found nothing for 1 of 1" in caplog.text and "error_analysis" in caplog.text
    anything = nesycd.answer([QUESTIONS[0]], kb_index=index, source_kinds=("example_knowledge",), max_new_tokens=2)[0]
    assert [i for i, _ in anything.retrieved] == ["sk"]
    for mode in ("bm25", "hybrid"):
        lexical = nesycd.answer(
            [QUESTIONS[0]], kb_index=index, source_kinds=("example_knowledge",), retriever=mode, max_new_tokens=2
        )[0]
        assert [i for i, _ in lexical.retrieved] == ["sk"], mode
    high = nesycd.answer(
        [QUESTIONS[0]], kb_index=index, source_kinds=("example_knowledge",), min_score=0.99, max_new_tokens=2
    )[0]
    assert high.retrieval_empty


def test_thought_types_execute_and_vote():
    assert extract("```python\nboxes = 3\nans = boxes * 4\n```", "pot") == "12"
    assert extract("% two of them\nx = 5\nans = x * 2", "eot") == "10"
    assert extract("so 2 + 2 = 4. The answer is 4.", "cot") == "4"
    assert extract("import os\nans = 1", "pot") is None  # refused by the sandbox
    assert majority({"cot": "5", "pot": "6", "eot": "6"}) == "6"
    assert majority({"cot": "5", "pot": "6", "eot": None}) == "5"  # tie -> CoT first
    assert majority({"cot": None, "pot": None, "eot": None}) is None


def test_etd_prompt_selected_by_trigger(student):
    res = student.answer([QUESTIONS[2]], thought="eot", max_new_tokens=4)[0]
    assert res.prompt == prompts.etd_prompt(QUESTIONS[2], "eot") and res.thought == "eot"
    voted = student.answer([QUESTIONS[2]], thought="vote", max_new_tokens=4)[0]
    assert set(voted.votes) == {"cot", "pot", "eot"} and voted.thought == "vote"


def nesy(*argv: str) -> tuple[int, str]:
    """Run the `nesy` entry point in-process: (exit code, stdout + stderr)."""
    import contextlib
    import io

    from distill.cli import run

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit) as exit_:
        run(list(argv))
    return exit_.value.code, out.getvalue()


def test_cli_answer_json_and_bad_input(tiny_model):
    code, output = nesy("answer", QUESTIONS[2], "--base-model", tiny_model, "--json", "--max-new-tokens", "4")
    assert code == 0, output
    payload = json.loads(output[output.index("{") :])
    assert {"text", "extracted", "retrieved", "prompt_tokens", "latency_s", "used_knowledge"} <= payload.keys()
    code, output = nesy("answer", "q", "--base-model", tiny_model, "--thought", "tot")
    assert code == 2 and output.strip().splitlines()[-1].startswith("error: --thought must be one of")
    code, output = nesy("answer", "q", "--adapter", "no-such-adapter")
    assert code == 2 and output.strip().splitlines()[-1].startswith("error: no adapter")
