"""Teacher jobs: demos verify, knowledge parsing on real teacher output, KB provenance, and a
killed job that resumes without repeating a single teacher call (counted by a proxy in front of
the real llama.cpp server)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from openai_stub import EchoKey, QuietHandler, Scripted, Trickle, chat_completion, read_body, reply, serve
from student_fixtures import tiny_model  # noqa: F401
from typer.testing import CliRunner

from distill.answers import check
from distill.cli import app
from distill.data import get_dataset, load_rationales
from distill.knowledge import error_messages, example_messages, parse_knowledge
from distill.llama_server import LocalTeacherServer
from distill.models import student_gguf_path
from distill.rationales import GSM8K_DEMOS, rationale_messages, verify

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("thought", ["cot", "pot", "eot"])
def test_handwritten_demos_are_real_and_verify(thought):
    train = {e.id: e for e in get_dataset("gsm8k").load("train")}
    for demo in GSM8K_DEMOS:
        example = train[demo["id"]]
        assert example.question.split()[:6] == demo["question"].split()[:6]
        assert demo["answer"] == example.answer
        verdict = verify(demo[thought], example, thought, "number")
        assert verdict.correct, (demo["id"], verdict)


def test_wrong_samples_are_not_verified():
    example = get_dataset("gsm8k").load("train")[0]  # gold 72
    assert not verify("Therefore, the answer is 71.", example, "cot", "number").correct
    assert not verify("ans = 48 + 48", example, "pot", "number").correct
    assert not verify("```python\nimport os\nans = 72\n```", example, "pot", "number").correct
    assert not verify("a = 48\nans = a", example, "eot", "number").correct
    assert verify("```\nans = 48 * 3 / 2\n```", example, "pot", "number").correct


def test_rationale_prompt_uses_trigger_and_demos():
    example = get_dataset("gsm8k").load("test", limit=1)[0]
    messages = rationale_messages(example, "eot")
    assert messages[0]["role"] == "system" and "ans = <variable>" in messages[0]["content"]
    assert messages[-1]["content"].endswith("System of linear equations: (Do not simplify)")
    assert len(messages) == 1 + 2 * len(GSM8K_DEMOS) + 1
    bbh = get_dataset("bbh").load("train", task="navigate", limit=1)[0]
    assert len(rationale_messages(bbh, "cot")) == 1 + 2 * 3 + 1  # the official 3-shot demos


def test_the_teacher_sees_the_students_solution_as_written():
    """Numbers, commas and newlines of the wrong answer reach the teacher unchanged; only a
    degenerate tail is cut (it once turned 1,111 into 1,1 and 1000000 into 1000)."""
    response = "She has 1,111 apples.\nThen 1000000 / 3 = 0.333\nSo 111 left." + " the the" * 40
    case = {
        "question": "Q?",
        "prompt": "Question: Q?",
        "response": response,
        "task": "gsm8k",
        "dataset": "gsm8k",
        "example_id": "x",
    }
    user = error_messages(case)[-1]["content"]
    assert "She has 1,111 apples.\nThen 1000000 / 3 = 0.333\nSo 111 left." in user


WELL_FORMED = """**Learning Summary:** When a problem gives a part and a fraction, first find the whole,
then subtract the parts in the order the story gives them. Check units at every step.

**Supplementary Knowledge:** A fraction of a quantity is found by multiplying: 1/4 of 200 is 50.
The remainder after removing parts is the whole minus the sum of the parts.

Concepts: fractions of a quantity, subtraction of parts, unit checking"""


def test_parse_knowledge_sections_and_concepts():
    parsed = parse_knowledge(WELL_FORMED)
    assert parsed.learning_summary.startswith("When a problem gives a part")
    assert parsed.supplementary_knowledge.startswith("A fraction of a quantity")
    assert parsed.concepts == ["fractions of a quantity", "subtraction of parts", "unit checking"]
    headings = (
        "## 1. Learning summary\nRead the question twice and list every quantity given.\n"
        "## 2. Supplementary knowledge\nThe **distributive law** says a(b+c) = ab + ac always."
    )
    parsed = parse_knowledge(headings)
    assert parsed and parsed.concepts == ["distributive law"]
    assert parse_knowledge("Learning Summary: fine advice for all problems here.") is None  # missing part
    assert (
        parse_knowledge("Learning Summary: x x x x x x x x x x x x\nSupplementary Knowledge: y y y y y y y y") is None
    )
    assert parse_knowledge("I cannot help with that.") is None
    # a real teacher's list: "Concepts: Division, fractions, and problem-solving"
    listed = WELL_FORMED.split("Concepts:")[0] + "Concepts: Division, fractions, and problem-solving"
    assert parse_knowledge(listed).concepts == ["Division", "fractions", "problem-solving"]


# Real outputs captured from the local llama.cpp server with the NesyCD prompt (error_messages;
# 1-3 analyse real wrong SmolLM2 CoT answers) and the SKIntern prompt (4): the packaged
# Qwen2.5-Coder-1.5B teacher, and SmolLM2-135M standing in as a weak teacher that ignores the format.
QWEN_CONCEPTS = {
    1: ["Division", "Fractions", "Basic arithmetic", "Basic algebra", "Basic probability", "Basic logic"],
    2: ["Planting", "Growth", "Seeds", "Rabbits", "Calculation", "Problem-solving"],
    3: ["Rainfall", "Average rainfall", "Calculation", "Formula"],
    4: ["Variables", "Equations", "Addition", "Subtraction", "Multiplication", "Division"],
}


@pytest.mark.parametrize("n", sorted(QWEN_CONCEPTS))
def test_parser_on_real_qwen_teacher_output(n):
    text = (FIXTURES / f"teacher_knowledge_qwen_{n}.txt").read_text()
    parsed = parse_knowledge(text)
    assert parsed is not None
    assert parsed.learning_summary.startswith("1. Understand the question thoroughly.")
    assert "Supplementary" not in parsed.learning_summary and "Concepts" not in parsed.supplementary_knowledge
    assert parsed.supplementary_knowledge.startswith("- ")
    assert parsed.concepts == QWEN_CONCEPTS[n]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_parser_rejects_real_malformed_output(n):
    text = (FIXTURES / f"teacher_knowledge_smollm2_{n}.txt").read_text()
    assert text.strip() and parse_knowledge(text) is None


class CountingProxy(QuietHandler):
    """Forwards chat completions to the real server and counts each distinct request body."""

    upstream = ""
    seen: dict = {}
    delay = 0.0

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        digest = hashlib.sha256(body).hexdigest()
        CountingProxy.seen[digest] = CountingProxy.seen.get(digest, 0) + 1
        request = urllib.request.Request(
            self.upstream + self.path.removeprefix("/v1"), data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            reply(self, 200, response.read())


@pytest.fixture(scope="module")
def proxied_teacher(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NESY_HOME", str(tmp_path_factory.mktemp("teach-server")))
        with LocalTeacherServer(student_gguf_path(), n_parallel=2, n_ctx=2048, threads=1) as info:
            CountingProxy.upstream, CountingProxy.seen = info.base_url, {}
            with serve(CountingProxy) as url:
                yield url, info


def _teach(url: str, model: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "distill.cli",
        "teach",
        *args,
        "--teacher",
        url,
        "--model",
        model,
        "--concurrency",
        "2",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_job_resumes_without_repeated_calls(proxied_teacher, workspace, tmp_path, how):
    url, info = proxied_teacher
    CountingProxy.seen.clear()
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    env = {**os.environ, "NESY_HOME": str(workspace), "NESY_JOB_DIR": str(job_dir)}
    argv = _teach(
        url,
        info.model,
        "rationales",
        "--dataset",
        "gsm8k",
        "--split",
        "test",
        "--limit",
        "6",
        "--thoughts",
        "cot",
        "--max-tokens",
        "24",
        "--out",
        f"resume-{how.name.lower()}",
    )
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (job_dir / "metrics.jsonl").exists() and len((job_dir / "metrics.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"the job ended before it could be killed: {proc.stdout.read()[-1500:]}"
    sent = time.monotonic()
    proc.send_signal(how)
    code = proc.wait(timeout=240)
    took = time.monotonic() - sent
    assert code == (3 if how == signal.SIGTERM else -signal.SIGKILL), proc.stdout.read().decode()[-2000:]
    assert took < 5, f"a stop must end the job within 5 s, took {took:.1f} s"
    first_run = dict(CountingProxy.seen)
    assert 2 <= sum(first_run.values()) < 6

    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    repeated = {k: n for k, n in CountingProxy.seen.items() if n > 1}
    assert len(CountingProxy.seen) == 6  # every question asked
    # Only calls in flight at the stop can be asked again (at most --concurrency): SIGKILL loses
    # them all; SIGTERM keeps those that finish within STOP_GRACE s and abandons slower ones, so
    # that the job ends within 5 s (on this CPU a call often takes longer than that).
    assert len(repeated) <= 2 and all(n == 2 for n in repeated.values())
    raw = [
        json.loads(line)
        for line in (workspace / "datasets" / f"resume-{how.name.lower()}" / "raw.jsonl").read_text().splitlines()
    ]
    assert len(raw) == 6 and sum(r["cached"] for r in raw) >= sum(first_run.values()) - 2
    metrics = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == metrics[-1]["total"] == 6 and metrics[-1]["tokens"] > 0
    records = load_rationales(f"resume-{how.name.lower()}")
    assert all(check(r.rationale, r.example(), answer_type="number")[1] for r in records)


@pytest.mark.slow
def test_knowledge_live_call_stores_only_well_formed(proxied_teacher, workspace, tmp_path):
    url, info = proxied_teacher
    examples = get_dataset("gsm8k").load("train", limit=2, seed=7)  # never test questions
    errors = tmp_path / "errors.jsonl"
    errors.write_text(
        "".join(
            json.dumps(
                {
                    "example_id": e.id,
                    "dataset": "gsm8k",
                    "task": "gsm8k",
                    "question": e.question,
                    "prompt": f"Question: {e.question}\nLet's think step by step.",
                    "response": "First 2 + 2 = 5. " * 40 + "Therefore, the answer is 5.",
                    "answer": e.answer,
                }
            )
            + "\n"
            for e in examples
        )
    )
    result = CliRunner().invoke(
        app,
        ["teach", "knowledge", "--errors", str(errors), "--teacher", url, "--model", info.model, "--max-tokens", "200"],
    )
    assert result.exit_code == 0, result.output
    raw = [
        json.loads(line)
        for line in (workspace / "teach" / "knowledge" / "errors" / "raw.jsonl").read_text().splitlines()
    ]
    last = {row["entry_id"]: row for row in raw}  # each case's last sample (a malformed one is asked again)
    assert set(last) == {f"gsm8k-{e.id}-error_analysis" for e in examples}
    # the gold answer is never shown to the teacher; the student's words reach it as written, cut
    # to the first 256 words (answers.clean_response: no repeated phrase is rewritten)
    for row in raw:
        user = row["messages"][-1]["content"]
        assert "First 2 + 2 = 5. First 2 + 2 = 5." in user and user.count("First 2 + 2 = 5.") == 40
    from kb.store import KBStore

    stored = KBStore().query(source_kind="error_analysis").entries
    assert len(stored) == sum(not r["malformed"] for r in last.values())
    assert f"malformed {sum(r['malformed'] for r in last.values())} (not stored)" in result.output


# ------------------------------------------------------- knowledge prompt (NesyCD reference, issue 9)


def test_error_prompt_has_the_reference_parts_and_never_the_gold_answer():
    """System turn, numbered requirements 1-6, the return format, ONE demonstration, then the
    student's question (its prompt without the "Answer: …" tail) and its wrong response."""
    case = {
        "question": "Tina makes $18.00 an hour. How much does she make in 10 hours?",
        "prompt": "Solve grade school math problems.\n\nQuestion: Tina makes $18.00 an hour. "
        "How much does she make in 10 hours?\nAnswer: Let's think step by step.",
        "response": "She makes 18 + 10 = 28. Therefore, the answer is 28.",
        "answer": "180",
    }
    system, user = error_messages(case)
    assert system == {"role": "system", "content": "You are a helpful assistant."}
    text = user["content"]
    requirements = text.split("### Requirements:\n")[1].split("\n\n")[0].splitlines()
    assert [r.split(".")[0] for r in requirements] == ["1", "2", "3", "4", "5", "6"]
    assert "general" in requirements[4] and "Therefore, the answer is" in requirements[3]
    assert text.count("### Example") == 1 and text.count("The student was given the following question:") == 2
    assert text.count("Learning Summary:") == 2  # the format line and the demonstration
    mine = text.split("### Your turn\n")[1]
    assert mine == (
        "The student was given the following question:\nSolve grade school math problems."
        "\n\nQuestion: Tina makes $18.00 an hour. How much does she make in 10 hours?\n\n"
        "The student's wrong response is:\nShe makes 18 + 10 = 28. Therefore, the answer is 28."
    )
    assert "180" not in text


def test_example_prompt_has_the_same_shape_with_the_gold_answer():
    example = get_dataset("gsm8k").load("train", limit=1, seed=3)[0]
    system, user = example_messages(example)
    assert system["content"] == "You are a helpful assistant."
    text = user["content"]
    assert "### Requirements:\n1. " in text and "### Return Format:" in text and text.count("### Example") == 1
    assert text.split("### Your turn\n")[1].startswith(f"Question: {example.question}\nAnswer: {example.answer}\n")


class KnowledgeByCase(QuietHandler):
    """A real local server answering each error case by a word of its question (and recording
    the requests): one restating answer with a false sum, one malformed answer."""

    answers = {
        "Tina": (
            "Learning Summary: Tina makes $18.00 an hour, so multiply the hourly wage by the hours.\n"
            "Supplementary Knowledge: Pay = rate × hours, for example 18 × 10 = 190.\n"
            "Concepts: hourly wage, multiplication"
        ),
        "Weng": "Sorry, I cannot analyse this.",
    }
    bodies: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        KnowledgeByCase.bodies.append(body)
        asked = body["messages"][-1]["content"].split("### Your turn")[1]
        reply(self, 200, chat_completion(next(a for k, a in self.answers.items() if k in asked), "m"))


def test_knowledge_samples_at_0_8_with_1024_tokens_and_stores_flagged_pending_entries(workspace, tmp_path):
    from kb.store import KBStore

    cases = [
        ("gsm8k-train-t", "Tina makes $18.00 an hour. How much does she make in 10 hours?"),
        ("gsm8k-train-w", "Weng earns $12 an hour for babysitting. How much did she earn in 50 minutes?"),
    ]
    errors = tmp_path / "errs.jsonl"
    errors.write_text(
        "".join(
            json.dumps(
                {
                    "example_id": i,
                    "dataset": "gsm8k",
                    "task": "gsm8k",
                    "question": q,
                    "prompt": f"Question: {q}\nAnswer: Let's think step by step.",
                    "response": "The answer is 3.",
                    "answer": "1",
                }
            )
            + "\n"
            for i, q in cases
        )
    )
    KnowledgeByCase.bodies = []
    with serve(KnowledgeByCase) as url:
        out = CliRunner().invoke(app, ["teach", "knowledge", "--errors", str(errors), "--teacher", url, "--model", "m"])
    assert out.exit_code == 0, out.output
    assert {(b["temperature"], b["max_tokens"]) for b in KnowledgeByCase.bodies} == {(0.8, 1024)}
    assert "1 entries (pending) from 2 cases; malformed 1 (not stored)" in out.output
    assert "quality flags restates_source 1, false_arithmetic 1;" in out.output
    [stored] = KBStore().query().entries
    assert stored.id == "gsm8k-gsm8k-train-t-error_analysis" and stored.status == "pending"
    assert [(f.code, f.detail) for f in stored.flags] == [
        ("restates_source", "shares with its question: numbers 10, 18; names Tina"),
        ("false_arithmetic", "18 × 10 = 190 (is 180)"),
    ]
    assert [r.by for r in KBStore().history(stored.id)] == ["teacher:m"]  # flagged before it was stored


class CannedTeacher(QuietHandler):
    """A tiny real server that always answers with one well-formed knowledge text."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        reply(self, 200, chat_completion(WELL_FORMED, "canned-teacher", completion_tokens=50))


def test_boilerplate_from_one_run_is_flagged_generic_and_a_rerun_writes_nothing(workspace, tmp_path):
    """Four cases, one canned answer: every entry's sections are said by the three others. A
    re-run (answers from the cache) keeps those flags and writes no revision."""
    from kb.store import KBStore

    examples = get_dataset("gsm8k").load("train", limit=4, seed=5)
    errors = tmp_path / "errs.jsonl"
    errors.write_text(
        "".join(
            json.dumps(
                {
                    "example_id": e.id,
                    "dataset": "gsm8k",
                    "task": "gsm8k",
                    "question": e.question,
                    "prompt": f"Question: {e.question}",
                    "response": "The answer is 3.",
                    "answer": e.answer,
                }
            )
            + "\n"
            for e in examples
        )
    )
    argv = ["teach", "knowledge", "--errors", str(errors), "--model", "m"]
    with serve(CannedTeacher) as url:
        out = CliRunner().invoke(app, [*argv, "--teacher", url])
        assert out.exit_code == 0, out.output
        assert "quality flags generic 4;" in out.output
        revisions = KBStore().stats()["revisions"]
        out = CliRunner().invoke(app, [*argv, "--teacher", url])
    assert out.exit_code == 0 and "quality flags generic 4;" in out.output
    assert KBStore().stats()["revisions"] == revisions == 8  # created, then flagged generic; no more
    assert all([f.code for f in e.flags] == ["generic"] for e in KBStore().query().entries)


def test_knowledge_provenance_in_kb_and_curated_entries_kept(workspace, tmp_path):
    from kb.store import KBStore

    with serve(CannedTeacher) as url:
        e = get_dataset("gsm8k").load("train", limit=1, seed=3)[0]
        errors = tmp_path / "errs.jsonl"
        errors.write_text(
            json.dumps(
                {
                    "example_id": e.id,
                    "dataset": "gsm8k",
                    "task": "gsm8k",
                    "question": e.question,
                    "prompt": f"Question: {e.question}",
                    "response": "The answer is 3.",
                    "answer": e.answer,
                }
            )
            + "\n"
        )
        runner = CliRunner()
        out = runner.invoke(app, ["teach", "knowledge", "--errors", str(errors), "--teacher", url, "--model", "m"])
        assert out.exit_code == 0, out.output
        entry = KBStore().get(f"gsm8k-{e.id}-error_analysis")
        assert entry.status == "pending" and entry.task == "gsm8k"
        assert entry.source.kind == "error_analysis" and entry.source.example_id == e.id
        assert entry.source.question == e.question and entry.source.student_response == "The answer is 3."
        assert entry.source.teacher_model == "m" and entry.concepts[0] == "fractions of a quantity"
        # a curated entry is not overwritten by a re-run
        KBStore().set_status([entry.id], "accepted", by="me")
        runner.invoke(app, ["teach", "knowledge", "--errors", str(errors), "--teacher", url, "--model", "m"])
        assert KBStore().get(entry.id).status == "accepted"
        # SKIntern: question + gold answer, auto-accepted
        out = runner.invoke(
            app,
            [
                "teach",
                "knowledge",
                "--dataset",
                "gsm8k",
                "--limit",
                "2",
                "--with-answer",
                "--auto-accept",
                "--teacher",
                url,
                "--model",
                "m",
            ],
        )
        assert out.exit_code == 0, out.output
        skintern = KBStore().query(source_kind="example_knowledge").entries
        assert len(skintern) == 2 and all(x.status == "accepted" for x in skintern)


# ------------------------------------------------ knowledge for a rationale set: --from-set (issue 9)


class SecondSampleFixes(QuietHandler):
    """Well-formed knowledge, except for the question holding `shy`: malformed at its first
    sample (a request without a seed), well-formed at the next one."""

    shy = ""
    bodies: list = []

    def do_POST(self):  # noqa: N802
        body = read_body(self)
        SecondSampleFixes.bodies.append(body)
        malformed = self.shy in body["messages"][-1]["content"].split("### Your turn")[1] and "seed" not in body
        reply(self, 200, chat_completion("I cannot help with that." if malformed else WELL_FORMED, "m"))


def gold_set(name: str, split: str = "train", limit: int = 3) -> list:
    """A real rationale set in the workspace: GSM8K's own CoT rationales (`--teacher gold`)."""
    out = CliRunner().invoke(
        app,
        [
            "teach",
            "rationales",
            "--dataset",
            "gsm8k",
            "--split",
            split,
            "--limit",
            str(limit),
            "--teacher",
            "gold",
            "--out",
            name,
        ],
    )
    assert out.exit_code == 0, out.output
    return load_rationales(name)


def test_from_set_makes_the_knowledge_that_train_skintern_finds(workspace, tiny_model):  # noqa: F811
    """bench/reproduce.sh's pair: `teach knowledge --from-set r-cot --out r-skintern-knowledge`,
    then `train skintern --data r-cot`. Every question of the set gets an example_knowledge entry
    under its example id, asked with its gold answer, and stage 0's training prompt carries it.
    One question's first answer is malformed: it is asked again as sample 2, not left out."""
    from kb.store import KBStore

    records = gold_set("r-cot")
    SecondSampleFixes.shy, SecondSampleFixes.bodies = records[1].question, []
    with serve(SecondSampleFixes) as url:
        out = CliRunner().invoke(
            app,
            [
                "teach",
                "knowledge",
                "--from-set",
                "r-cot",
                "--out",
                "r-skintern-knowledge",
                "--teacher",
                url,
                "--model",
                "m",
            ],
        )
    assert out.exit_code == 0, out.output
    assert "3 entries (pending) from 3 cases; malformed 0 (not stored); asked again 1;" in out.output
    asked = [b["messages"][-1]["content"].split("### Your turn\n")[1] for b in SecondSampleFixes.bodies]
    assert [sum(a.startswith(f"Question: {r.question}\nAnswer: {r.answer}\n") for a in asked) for r in records] == [
        1,
        2,
        1,
    ]
    raw = (workspace / "teach" / "knowledge" / "r-skintern-knowledge" / "raw.jsonl").read_text().splitlines()
    assert [json.loads(line)["sample"] for line in raw] == [0, 0, 0, 1]
    entries = KBStore().query(source_kind="example_knowledge").entries
    assert sorted(e.source.example_id for e in entries) == sorted(r.example_id for r in records)

    trained = CliRunner().invoke(
        app,
        [
            "train",
            "skintern",
            "--data",
            "r-cot",
            "--output",
            "r-skintern",
            "--base-model",
            tiny_model,
            "--stages",
            "2",
            "--demos",
            "0",
            "--max-steps",
            "1",
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
        ],
    )
    assert trained.exit_code == 0, trained.output
    stage0 = (workspace / "adapters" / "r-skintern" / "stages" / "stage0" / "prompt_samples.jsonl").read_text()
    first = json.loads(stage0.splitlines()[0])
    assert "A fraction of a quantity is found by multiplying" in first["user"]  # the teacher's knowledge


def test_from_set_takes_a_shipped_set_by_name_and_its_first_questions(workspace):
    shipped = load_rationales("gsm8k-gold-cot")[:2]
    with serve(CannedTeacher) as url:
        out = CliRunner().invoke(
            app,
            ["teach", "knowledge", "--from-set", "gsm8k-gold-cot", "--limit", "2", "--teacher", url, "--model", "m"],
        )
    assert out.exit_code == 0, out.output
    from kb.store import KBStore

    stored = KBStore().query(source_kind="example_knowledge").entries
    assert sorted(e.source.example_id for e in stored) == sorted(r.example_id for r in shipped)
    assert (workspace / "teach" / "knowledge" / "gsm8k-gold-cot" / "raw.jsonl").is_file()


def test_knowledge_takes_one_source_and_never_a_test_question(workspace, tmp_path, errors_file):
    gold_set("r-cot")
    gold_set("r-test", split="test", limit=2)
    test_errors = tmp_path / "test-errors.jsonl"
    [e] = get_dataset("gsm8k").load("test", limit=1)
    test_errors.write_text(
        json.dumps(
            {
                "example_id": e.id,
                "dataset": "gsm8k",
                "task": "gsm8k",
                "question": e.question,
                "prompt": f"Question: {e.question}",
                "response": "3",
            }
        )
        + "\n"
    )
    sources = "give exactly one source: --errors FILE (NesyCD), --dataset NAME --with-answer or --from-set NAME"
    refused = {
        (): sources,
        ("--from-set", "r-cot", "--dataset", "gsm8k", "--with-answer"): "; not --dataset and --from-set together",
        ("--errors", str(errors_file), "--from-set", "r-cot"): "; not --errors and --from-set together",
        ("--from-set", "no-such-set"): "error: no rationale set 'no-such-set' (looked for ",
        ("--from-set", "r-cot", "--split", "test"): "--split goes with --dataset",
        ("--from-set", "r-test"): "knowledge jobs take training questions only: 2 of 2 questions are in a test split",
        ("--dataset", "gsm8k", "--split", "test", "--limit", "2", "--with-answer"): "training questions only: 2 of 2",
        ("--errors", str(test_errors)): f"training questions only: 1 of 1 questions are in a test split ({e.id})",
    }
    Scripted.calls = []
    with serve(Scripted) as url:
        for args, message in refused.items():
            out = CliRunner().invoke(app, ["teach", "knowledge", *args, "--teacher", url, "--model", "m"])
            assert out.exit_code == 2 and out.output.startswith("error: ") and out.output.count("\n") == 1, out.output
            assert message in out.output, (args, out.output)
    assert Scripted.calls == [] and not (workspace / "teach").exists()  # refused before any call or folder


def test_teach_cli_rejects_bad_input(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["teach", "rationales", "--dataset", "gsm8k", "--thoughts", "cot,xot"])
    assert out.exit_code == 2 and "--thoughts" in out.output
    out = runner.invoke(app, ["teach", "rationales", "--dataset", "arc_easy", "--thoughts", "pot"])
    assert out.exit_code == 2 and "numeric answers" in out.output
    out = runner.invoke(app, ["teach", "knowledge"])
    assert out.exit_code == 2 and "--errors" in out.output
    bad = tmp_path / "e.jsonl"
    bad.write_text('{"example_id": "1"}\n')
    out = runner.invoke(
        app, ["teach", "knowledge", "--errors", str(bad), "--teacher", "http://127.0.0.1:9/v1", "--model", "m"]
    )
    assert out.exit_code == 2 and "line 1: missing" in out.output
    out = runner.invoke(app, ["teach", "rationales", "--dataset", "nope"])
    assert out.exit_code == 2 and "unknown dataset" in out.output


def test_unreachable_teacher_fails_with_one_line(tmp_path, workspace):
    out = CliRunner().invoke(
        app,
        [
            "teach",
            "rationales",
            "--dataset",
            "gsm8k",
            "--limit",
            "2",
            "--teacher",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "--max-retries",
            "0",
        ],
    )
    assert out.exit_code == 2 and "every teacher call failed" in out.output
    raw = (workspace / "datasets" / "gsm8k-train" / "raw.jsonl").read_text().splitlines()
    assert len(raw) == 2 and all("error" in json.loads(line) for line in raw)
    assert (workspace / "datasets" / "gsm8k-train" / "records.jsonl").read_text() == ""
    out = CliRunner().invoke(app, ["teach", "rationales", "--dataset", "gsm8k", "--model", "nope-model"])
    assert out.exit_code == 2 and "--model must be a GGUF file" in out.output


def test_gold_teacher_turns_dataset_rationales_into_verified_cot_records(workspace):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.cli",
            "teach",
            "rationales",
            "--dataset",
            "gsm8k",
            "--split",
            "train",
            "--limit",
            "20",
            "--teacher",
            "gold",
            "--out",
            "g",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    records = load_rationales("g")
    assert len(records) == 20
    for record in records:
        assert "<<" not in record.rationale  # calculator annotations are stripped
        assert record.rationale.endswith(f"Therefore, the answer is {record.answer}.")
        assert record.teacher_model == "gold" and record.verified


def test_gold_teacher_refuses_a_dataset_without_rationales(workspace):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.cli",
            "teach",
            "rationales",
            "--dataset",
            "arc_easy",
            "--split",
            "train",
            "--limit",
            "5",
            "--teacher",
            "gold",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "has no rationales" in out.stderr


# ------------------------------------------------------------------ hardening (issue 8)


def nesy(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`nesy ...` in a real subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "distill.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture
def errors_file(tmp_path) -> Path:
    e = get_dataset("gsm8k").load("train", limit=1, seed=3)[0]
    path = tmp_path / "errs.jsonl"
    path.write_text(
        json.dumps(
            {
                "example_id": e.id,
                "dataset": "gsm8k",
                "task": "gsm8k",
                "question": e.question,
                "prompt": f"Question: {e.question}",
                "response": "The answer is 3.",
                "answer": e.answer,
            }
        )
        + "\n"
    )
    return path


@pytest.mark.parametrize("command", ["knowledge", "rationales"])
@pytest.mark.parametrize("value", ["ABS", "../../../outside", "sub/dir", "..", ".hidden", "a\nb"])
def test_out_takes_a_name_never_a_path(workspace, tmp_path, errors_file, command, value):
    target = tmp_path / "abs-out"
    out = str(target) if value == "ABS" else value
    head = (
        ["knowledge", "--errors", str(errors_file)]
        if command == "knowledge"
        else ["rationales", "--dataset", "gsm8k", "--limit", "1"]
    )
    result = CliRunner().invoke(
        app, ["teach", *head, "--out", out, "--teacher", "http://127.0.0.1:9/v1", "--model", "m", "--max-retries", "0"]
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --out") and result.output.count("\n") == 1, result.output
    assert not target.exists() and not (tmp_path / "outside").exists()
    assert files_under(workspace) == [], "nothing may be written for a refused name"


def test_out_refuses_a_symlinked_folder_that_leads_outside(workspace, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (workspace / "datasets").mkdir(parents=True)
    (workspace / "datasets" / "linked").symlink_to(elsewhere)
    out = nesy(
        "teach",
        "rationales",
        "--dataset",
        "gsm8k",
        "--limit",
        "2",
        "--teacher",
        "gold",
        "--out",
        "linked",
        env={"NESY_HOME": str(workspace)},
    )
    assert out.returncode == 2 and out.stderr.startswith("error: --out"), out.stderr
    assert list(elsewhere.iterdir()) == []


def test_knowledge_run_name_from_an_odd_error_file_name_is_a_plain_name(workspace, tmp_path, errors_file):
    odd = tmp_path / "my errors (1).jsonl"
    odd.write_text(errors_file.read_text())
    with serve(CannedTeacher) as url:
        result = CliRunner().invoke(app, ["teach", "knowledge", "--errors", str(odd), "--teacher", url, "--model", "m"])
    assert result.exit_code == 0, result.output
    run = workspace / "teach" / "knowledge" / "my-errors-1"
    assert (run / "raw.jsonl").is_file() and (run / ".nesy-owned").is_file()


@pytest.fixture
def trickle():
    Trickle.hits, Trickle.interval = [], 1.0
    with serve(Trickle) as url:
        yield url


class RateLimited(QuietHandler):
    """Always 429 with `Retry-After: 30`: the client backs off for the longest it may."""

    hits: list = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        RateLimited.hits.append(time.monotonic())
        reply(self, 429, {"error": {"message": "slow down"}}, {"Retry-After": "30"})


def test_timeout_is_the_total_deadline_through_the_cli(workspace, trickle):
    start = time.monotonic()
    out = nesy(
        "teach",
        "rationales",
        "--dataset",
        "gsm8k",
        "--limit",
        "1",
        "--teacher",
        trickle,
        "--model",
        "m",
        "--timeout",
        "3",
        "--max-retries",
        "1",
        env={"NESY_HOME": str(workspace)},
        timeout=90,
    )
    elapsed_after_first_call = time.monotonic() - Trickle.hits[0]
    assert out.returncode == 2 and "every teacher call failed" in out.stderr, out.stderr[-2000:]
    assert len(Trickle.hits) == 2 and elapsed_after_first_call < 12, time.monotonic() - start
    [row] = [json.loads(line) for line in (workspace / "datasets" / "gsm8k-train" / "raw.jsonl").open()]
    assert "after 2 attempts" in row["error"]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
@pytest.mark.parametrize("stuck", ["trickling-call", "retry-backoff"])
def test_a_stop_signal_ends_a_stuck_job_within_5_seconds(workspace, tmp_path, trickle, how, stuck):
    handler_hits = Trickle.hits
    with serve(RateLimited) as limited:
        RateLimited.hits = []
        url, handler_hits = (trickle, Trickle.hits) if stuck == "trickling-call" else (limited, RateLimited.hits)
        argv = [
            sys.executable,
            "-m",
            "distill.cli",
            "teach",
            "rationales",
            "--dataset",
            "gsm8k",
            "--limit",
            "3",
            "--concurrency",
            "2",
            "--teacher",
            url,
            "--model",
            "m",
            "--out",
            "stuck",
        ]
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, "NESY_HOME": str(workspace)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 90
            while not handler_hits and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            assert handler_hits and proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(1.0)  # well inside the hanging call / the 30 s back-off
            sent = time.monotonic()
            proc.send_signal(how)
            stdout, stderr = proc.communicate(timeout=30)
            took = time.monotonic() - sent
        finally:
            proc.kill()
    assert proc.returncode == 3, stderr[-2000:]
    assert took < 5, f"stopped after {took:.1f} s"
    assert "stopped; run the same command again" in stdout and "Traceback" not in stderr


def test_answers_with_lone_surrogates_never_kill_a_job(workspace):
    [example] = get_dataset("gsm8k").load("train", limit=1)
    Scripted.answers = [
        f"\ud800 so. Therefore, the answer is {example.answer}.",  # CoT: in the text
        "```python\nans = '\\ud800'\n```",
    ]  # PoT: the value
    Scripted.calls = []
    with serve(Scripted) as url:
        argv = [
            "teach",
            "rationales",
            "--dataset",
            "gsm8k",
            "--limit",
            "1",
            "--thoughts",
            "cot,pot",
            "--concurrency",
            "1",
            "--teacher",
            url,
            "--model",
            "m",
            "--out",
            "odd",
        ]
        first = nesy(*argv, env={"NESY_HOME": str(workspace)})
        again = nesy(*argv, env={"NESY_HOME": str(workspace)})  # every answer now from the cache
    for run in (first, again):
        assert run.returncode == 0 and "kept 1 verified of 2" in run.stdout, run.stderr[-2000:]
    assert len(Scripted.calls) == 2
    folder = workspace / "datasets" / "odd"
    raw = [json.loads(line) for line in (folder / "raw.jsonl").read_text(encoding="utf-8").splitlines()]
    assert raw[0]["response"].startswith("\ufffd so.") and all(r["cached"] for r in raw)
    assert load_rationales("odd")[0].rationale.startswith("\ufffd so.")


def test_an_answer_that_cannot_be_processed_is_a_failed_sample_and_the_job_goes_on(workspace):
    first, second = get_dataset("gsm8k").load("train", limit=2)
    # 400 digits: answer extraction overflows a float -> OverflowError while verifying
    Scripted.answers = [f"Therefore, the answer is {'9' * 400}.", f"Therefore, the answer is {second.answer}."]
    Scripted.calls = []
    with serve(Scripted) as url:
        argv = [
            "teach",
            "rationales",
            "--dataset",
            "gsm8k",
            "--limit",
            "2",
            "--concurrency",
            "1",
            "--teacher",
            url,
            "--model",
            "m",
            "--out",
            "overflow",
        ]
        runs = [nesy(*argv, env={"NESY_HOME": str(workspace)}) for _ in range(2)]
    for run in runs:  # the bad answer is cached: the re-run must survive it too
        assert run.returncode == 0, run.stderr[-2000:]
        assert "kept 1 verified of 2" in run.stdout and "failed calls 1" in run.stdout
    assert len(Scripted.calls) == 2
    raw = [json.loads(line) for line in (workspace / "datasets" / "overflow" / "raw.jsonl").open()]
    [failed] = [r for r in raw if "error" in r]
    assert failed["example_id"] == first.id and "could not process the answer" in failed["error"]


def test_an_empty_answer_is_asked_again_on_the_next_run(workspace):
    [example] = get_dataset("gsm8k").load("train", limit=1)
    Scripted.answers, Scripted.calls = [None, f"Therefore, the answer is {example.answer}."], []
    with serve(Scripted) as url:
        argv = ["teach", "rationales", "--dataset", "gsm8k", "--limit", "1", "--teacher", url, "--model", "m"]
        first = nesy(*argv, env={"NESY_HOME": str(workspace)})
        assert first.returncode == 2 and "every teacher call failed" in first.stderr, first.stdout
        raw = (workspace / "datasets" / "gsm8k-train" / "raw.jsonl").read_text()
        assert "empty answer" in raw
        second = nesy(*argv, env={"NESY_HOME": str(workspace)})
    assert second.returncode == 0 and "kept 1 verified of 1" in second.stdout, second.stderr
    assert len(Scripted.calls) == 2


KEY = "sk-test-0123456789-echoed-by-the-server"


@pytest.mark.parametrize("mode", ["error", "answer"])
def test_a_key_echoed_by_the_server_is_never_stored_or_printed(workspace, mode):
    EchoKey.mode, EchoKey.seen = mode, []
    with serve(EchoKey) as url:
        out = nesy(
            "teach",
            "knowledge",
            "--dataset",
            "gsm8k",
            "--limit",
            "1",
            "--with-answer",
            "--teacher",
            url,
            "--model",
            "m",
            "--api-key-env",
            "MY_TEACHER_KEY",
            "--max-retries",
            "0",
            env={"NESY_HOME": str(workspace), "MY_TEACHER_KEY": KEY},
        )
        assert set(EchoKey.seen) == {f"Bearer {KEY}"}  # a malformed answer is asked again: 3 calls
        assert out.returncode == (2 if mode == "error" else 0), out.stderr[-2000:]
        assert KEY not in out.stdout + out.stderr
        for path in files_under(workspace):
            assert KEY.encode() not in path.read_bytes(), path
        raw = (workspace / "teach" / "knowledge" / "gsm8k-train" / "raw.jsonl").read_text()
        assert "[redacted]" in raw
        # '' = no key at all, even when OPENAI_API_KEY is set in the environment
        nesy(
            "teach",
            "knowledge",
            "--dataset",
            "gsm8k",
            "--limit",
            "1",
            "--with-answer",
            "--teacher",
            url,
            "--model",
            "m2",
            "--api-key-env",
            "",
            "--max-retries",
            "0",
            env={"NESY_HOME": str(workspace), "OPENAI_API_KEY": KEY},
        )
        assert EchoKey.seen[-1] == "Bearer no-key"


# ------------------------------------------------------------------ the app's teacher page


def teacher_page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=60).run()
    at.switch_page("views/distill.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown_command(at) -> str:
    return "\n".join(code.value for code in at.code)


def test_the_app_offers_and_sends_only_declared_key_variables(workspace, monkeypatch):
    monkeypatch.setenv("SERVER_DB_PASSWORD", "hunter2-not-a-teacher-key")
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-secret-value")
    monkeypatch.delenv("NESY_TEACHER_KEY_ENVS", raising=False)
    at = teacher_page()
    at.radio(key="r:teacher").set_value("OpenAI-compatible server").run()
    at.text_input(key="r:model").set_value("qwen-72b").run()
    assert at.selectbox(key="r:env").options == ["(no key)"]  # nothing declared: nothing offered
    assert "--api-key-env ''" in shown_command(at)
    monkeypatch.setenv("NESY_TEACHER_KEY_ENVS", "MY_TEACHER_KEY@127.0.0.1:8000")
    at.run()
    assert at.selectbox(key="r:env").options == ["(no key)", "MY_TEACHER_KEY"]
    at.selectbox(key="r:env").select("MY_TEACHER_KEY").run()
    assert "--api-key-env MY_TEACHER_KEY" in shown_command(at)
    at.text_input(key="r:url").set_value("https://collector.example/v1").run()  # another host
    assert "MY_TEACHER_KEY" not in at.selectbox(key="r:env").options
    assert "--api-key-env ''" in shown_command(at)
    assert "SERVER_DB_PASSWORD" not in shown_command(at) and "hunter2" not in shown_command(at)


def test_the_app_takes_no_error_file_path_and_no_path_as_set_name(workspace):
    run = workspace / "adapters" / "sp-run"
    run.mkdir(parents=True)
    (run / "errors.jsonl").write_text("")
    at = teacher_page()
    at.radio(key="k:source").set_value("Student errors (NesyCD)").run()
    assert at.selectbox(key="k:errors").options == ["sp-run"]
    assert f"--errors {run / 'errors.jsonl'}" in shown_command(at)
    at.text_input(key="r:out").set_value("../../etc").run()
    assert at.button(key="r:start").disabled


def test_annotation_rationales_from_the_cli_are_separate_verified_sets(workspace):
    from distill.data import load_rationales

    runner = CliRunner()
    args = [
        "teach",
        "rationales",
        "--dataset",
        "gsm8k",
        "--split",
        "train",
        "--limit",
        "6",
        "--teacher",
        "annotations",
        "--out",
        "annot",
    ]
    result = runner.invoke(app, [*args, "--thoughts", "pot,eot"])
    assert result.exit_code == 0, result.output
    for thought in ("pot", "eot"):
        records = load_rationales(f"annot-{thought}")
        assert records and {r.thought for r in records} == {thought}
        assert {r.teacher_model for r in records} == {"gsm8k-annotations"}
    refused = runner.invoke(app, [*args, "--thoughts", "cot"])
    assert refused.exit_code == 2 and "--teacher gold" in refused.output


def test_teacher_answers_move_to_a_fresh_workspace_and_the_job_repeats_no_call(
    workspace, tmp_path, errors_file, monkeypatch
):
    from kb.store import KBStore

    carried = tmp_path / "teacher-cache.jsonl"
    knowledge = ["teach", "knowledge", "--errors", str(errors_file), "--model", "m"]
    Scripted.answers, Scripted.calls = [WELL_FORMED], []
    with serve(Scripted) as url:
        assert CliRunner().invoke(app, [*knowledge, "--teacher", url]).exit_code == 0
        out = CliRunner().invoke(app, ["teach", "cache", "export", str(carried)])
        assert out.exit_code == 0 and "exported 1 teacher answers" in out.output, out.output
        monkeypatch.setenv("NESY_HOME", str(tmp_path / "another-machine"))
        out = CliRunner().invoke(app, ["teach", "cache", "import", str(carried)])
        assert "imported 1 teacher answers" in out.output and "(0 already cached)" in out.output, out.output
        again = CliRunner().invoke(app, [*knowledge, "--teacher", url])
        assert again.exit_code == 0, again.output
    assert len(Scripted.calls) == 1  # the second workspace's job was answered from the file
    [entry] = KBStore().query().entries
    assert entry.learning_summary.startswith("When a problem gives a part and a fraction")
    out = CliRunner().invoke(app, ["teach", "cache", "import", str(carried)])
    assert "imported 0 teacher answers" in out.output and "(1 already cached)" in out.output


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda row: row.pop("text"), "line 2: text: Field required"),
        (lambda row: row.update(key="not-a-hash"), "line 2: key: String should match pattern"),
        (lambda row: row.update(created="yesterday"), "line 2: created: Input should be a valid number"),
        (lambda row: row.update(extra=1), "line 2: extra: Extra inputs are not permitted"),
    ],
)
def test_a_bad_teacher_cache_file_names_its_line_and_field_and_imports_nothing(workspace, tmp_path, change, named):
    from distill.teacher import TeacherCache

    good = {"request": "{}", "text": "an answer", "usage": "{}", "finish_reason": "stop", "model": "m", "created": 1.5}
    rows = [{**good, "key": "a" * 64}, {**good, "key": "b" * 64}]
    change(rows[1])
    path = tmp_path / "cache.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = CliRunner().invoke(app, ["teach", "cache", "import", str(path)])
    assert out.exit_code == 2 and out.output.startswith(f"error: {path}: {named}"), out.output
    assert len(out.output.strip().splitlines()) == 1
    assert TeacherCache().stats()["entries"] == 0  # the good first line was not imported either
    missing = CliRunner().invoke(app, ["teach", "cache", "import", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    (tmp_path / "binary.jsonl").write_bytes(b"\xf0\x28\x8c\x28\n")
    binary = CliRunner().invoke(app, ["teach", "cache", "import", str(tmp_path / "binary.jsonl")])
    assert binary.exit_code == 2 and "cannot be read as UTF-8 JSONL" in binary.output
    nowhere = CliRunner().invoke(app, ["teach", "cache", "export", str(tmp_path / "no-dir" / "c.jsonl")])
    assert nowhere.exit_code == 2 and nowhere.output.startswith("error: cannot write")  # not a traceback (1)
