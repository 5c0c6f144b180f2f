"""The `nesy` command: a root that loads each area's sub-app only when it is called.

Each area owns its commands as a `cli = typer.Typer()` in its own module; the root maps command
names to those modules and imports lazily, so `nesy kb list` never pays for importing torch.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

SUBCOMMANDS = {  # name -> (module, help)
    "kb": ("kb.cli", "Browse, edit, search, import and export the knowledge base."),
    "models": ("distill.models_cli", "Show or prepare the embedded offline models."),
    "teach": ("distill.teach", "Teacher jobs: rationales (CoT/PoT/EoT) and knowledge."),
    "train": ("distill.train", "Train a student LoRA adapter (std-cot, nesycd, skintern, etd, eotd)."),
    "answer": ("distill.infer", "Answer a question with the student, with or without the KB."),
    "eval": ("distill.evaluate", "Evaluate student configurations side by side."),
    "export-adapter": ("distill.gguf_export", "Export a LoRA adapter as a GGUF LoRA for llama.cpp."),
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


app = typer.Typer(
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="NeSy Studio: distil a teacher LLM into a small student, the neural-symbolic way.",
)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks (or NESY_DEBUG=1).")) -> None:
    """NeSy Studio: distil a teacher LLM into a small student, the neural-symbolic way."""
    if debug:
        os.environ["NESY_DEBUG"] = "1"


def run(argv: list[str] | None = None) -> None:
    """The `nesy` entry point: domain errors become one line `error: …` (exit 2).

    Run as a job ($NESY_JOB_DIR set), the command records its own exit status, so the job
    registry is right even when the runner that watched it was killed meanwhile.
    """
    from kb.errors import NesyError

    code: int | str | None = 1
    try:
        app(args=argv)  # standalone: usage errors print click's message and exit 2
        code = 0
    except NesyError as e:
        if os.environ.get("NESY_DEBUG") == "1":
            raise
        typer.echo(f"error: {e}", err=True)
        code = e.exit_code
    except SystemExit as e:
        code = e.code if e.code is not None else 0
    finally:
        _record_exit(code)
    sys.exit(code)


def _record_exit(code) -> None:
    job_dir = os.environ.get("NESY_JOB_DIR")
    if job_dir and isinstance(code, int):
        try:
            Path(job_dir, "command_exit").write_text(str(code))
        except OSError:
            pass  # the job folder went away: the registry then reports the vanished process


if __name__ == "__main__":
    run()
