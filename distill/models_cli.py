"""`nesy models`: show where the embedded models are, or prepare them (convert / assemble)."""

from __future__ import annotations

import typer

from distill import models

cli = typer.Typer(help="Show or prepare the embedded offline models.", no_args_is_help=True)


@cli.command("list")
def list_models() -> None:
    """List each default model, whether it is ready, and where it lives."""
    for row in models.describe():
        mark = "ready  " if row["available"] else "missing"
        typer.echo(f"{row['role']:<26} {mark} {row['where']}")


@cli.command("prepare")
def prepare(
    teacher: str = typer.Option(models.DEFAULT_TEACHER, help="Teacher to assemble, or 'none'."),
    student: bool = typer.Option(True, help="Convert the student GGUF to an HF folder."),
) -> None:
    """Build what the app needs once: the student HF folder and the teacher GGUF."""
    try:
        if student:
            typer.echo(f"student  {models.student_path()}")
        if teacher != "none":
            typer.echo(f"teacher  {models.teacher_gguf_path(teacher)}")
    except (models.ModelNotAvailable, KeyError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
