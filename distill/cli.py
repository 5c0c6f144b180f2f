"""The `nesy` command: a root that loads each area's sub-app only when it is called.

Each area owns its commands as a `cli = typer.Typer()` in its own module; the root maps command
names to those modules and imports lazily, so `nesy kb list` never pays for importing torch.
"""
from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup

SUBCOMMANDS = {  # name -> (module, help)
    "kb": ("kb.cli", "Browse, edit, search, import and export the knowledge base."),
    "models": ("distill.models_cli", "Show or prepare the embedded offline models."),
    "teach": ("distill.teach", "Teacher jobs: rationales (CoT/PoT/EoT) and knowledge."),
    "train": ("distill.train", "Train a student LoRA adapter (std-cot, nesycd, skintern, etd, eotd)."),
    "answer": ("distill.infer", "Answer a question with the student, with or without the KB."),
    "eval": ("distill.evaluate", "Evaluate student configurations side by side."),
    "jobs": ("distill.jobs", "List, show, cancel and resume background jobs."),
    "data": ("distill.data", "List datasets and register your own JSONL."),
}


class LazyGroup(TyperGroup):
    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        module = importlib.import_module(SUBCOMMANDS[name][0])
        command = typer.main.get_command(module.cli)
        command.name = name
        command.help = command.help or SUBCOMMANDS[name][1]
        return command

    def format_commands(self, ctx, formatter):
        # Help from the table, so `nesy --help` stays instant (no module imports).
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in SUBCOMMANDS.items()])


app = typer.Typer(cls=LazyGroup, no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="NeSy Studio: distil a teacher LLM into a small student, the neural-symbolic way.")


@app.callback()
def main() -> None:
    """NeSy Studio: distil a teacher LLM into a small student, the neural-symbolic way."""


if __name__ == "__main__":
    app()
