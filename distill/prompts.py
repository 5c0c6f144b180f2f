"""Every student prompt format lives here (see docs/ARCHITECTURE.md)."""
from __future__ import annotations

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
