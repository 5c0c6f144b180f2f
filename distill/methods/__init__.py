"""The distillation methods, one module each; this registry maps a name to its parts.

    std_cot.py   Std-CoT: question -> teacher rationale (also NesyCD's S_P)
    nesycd.py    NesyCD (Liao et al., 2024): S_P -> its errors -> teacher knowledge in the KB -> S_E
    skintern.py  SKIntern (Liao et al., 2024): knowledge + demonstrations removed stage by stage
    etd.py       ETD / EoTD (Zhu et al., 2024): CoT / PoT / EoT thoughts selected by a trigger

Each module holds its config (a dataclass extending `distill.train.TrainOptions`, every field with
help text), its prompt builder (used by training AND inference), its sample builder, its recipe
(`run`: the stages) and what its adapter card records (`Config.inference()`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distill.methods import etd, nesycd, skintern, std_cot
from distill.train import ConfigError, TrainOptions, check_output


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    config: type[TrainOptions]
    run: Callable[[TrainOptions], Path]
    build_prompt: Callable[..., str]  # (question, *, task_description, knowledge, thought) -> user text


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("std-cot", std_cot.SUMMARY, std_cot.StdCoTConfig, std_cot.run, std_cot.build_prompt),
        Method("nesycd", nesycd.SUMMARY, nesycd.NesyCDConfig, nesycd.run, nesycd.build_prompt),
        Method("skintern", skintern.SUMMARY, skintern.SKInternConfig, skintern.run, skintern.build_prompt),
        Method("etd", etd.SUMMARY, etd.ETDConfig, etd.run, etd.build_prompt),
        Method("eotd", etd.EOTD_SUMMARY, etd.EoTDConfig, etd.run, etd.build_prompt),
    )
}


def get(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def train(cfg: TrainOptions) -> Path:
    """Run cfg's method; returns the adapter folder."""
    check_output(cfg)  # a folder nesy did not create stops here, before any work
    return get(cfg.method).run(cfg)
