"""Tiny student models and rationale sets for the training / inference / evaluation tests.

The tiny model is a randomly initialised Llama (hidden 64, 2 layers) with the REAL SmolLM2
tokenizer and chat template, so prompts, masking and generation go through the same code as the
real 135M student, at a fraction of the cost. Import the fixtures in a test module with
`from student_fixtures import tiny_model, gsm8k_records  # noqa: F401`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def real_tokenizer():
    from transformers import AutoTokenizer

    from distill.models import student_path

    return AutoTokenizer.from_pretrained(student_path())


def build_tiny_model(target: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = real_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(target)
    tok.save_pretrained(target)
    return target


def gsm8k_rows(n: int, split: str = "train") -> list[dict]:
    rows = []
    with gzip.open(REPO / "data" / "gsm8k" / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def rationale(row: dict, thought: str) -> str:
    """A verified-looking rationale of each thought type for a GSM8K row (answer is correct)."""
    if thought == "pot":
        return f"```python\nresult = {row['answer']}\nans = result\n```"
    if thought == "eot":
        return f"% the total asked for\ntotal = {row['answer']}\nans = total"
    return f"{row['rationale'].strip()}\nThe answer is {row['answer']}."


def write_records(path: Path, n: int = 12, thoughts=("cot",)) -> Path:
    """records.jsonl in the ARCHITECTURE.md format from the first n GSM8K train rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in gsm8k_rows(n):
            for thought in thoughts:
                f.write(
                    json.dumps(
                        {
                            "id": f"{row['id']}-{thought}",
                            "example_id": row["id"],
                            "dataset": "gsm8k",
                            "task": "gsm8k",
                            "question": row["question"],
                            "answer": row["answer"],
                            "choices": None,
                            "thought": thought,
                            "rationale": rationale(row, thought),
                            "extracted": row["answer"],
                            "verified": True,
                            "teacher_model": "fixture",
                        }
                    )
                    + "\n"
                )
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Path of a tiny random Llama with the real SmolLM2 tokenizer (built once per session)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-student")))


@pytest.fixture
def gsm8k_records(tmp_path) -> Path:
    return write_records(tmp_path / "rationales" / "records.jsonl", n=12)


def add_apples_entry() -> None:
    """One accepted KB entry that the apples question ("Tom has 3 apples…") retrieves."""
    from kb.schema import Entry
    from kb.store import KBStore

    KBStore().add(
        Entry(
            id="apples",
            task="gsm8k",
            status="accepted",
            learning_summary="Add what is bought.",
            supplementary_knowledge="Total = start + bought.",
        ),
        by="test",
    )
