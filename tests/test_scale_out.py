"""Scale-out, tested: `nesy train` under `accelerate launch` with two CPU processes (gloo) trains the
adapter one process trains at the same global batch, and the README's multi-GPU command is the one
this test runs.

Launching: accelerate 1.15's `--cpu` starts ONE process unless MPI is given a hostfile
(`simple_launcher`), so two processes are started the way GPUs are — `--multi_gpu`, i.e.
torch.distributed.run — and on a machine without a GPU distill/train.py puts them on the CPU, where
accelerate joins them with gloo (`on_cpu`). The same command on a GPU machine uses NCCL.

Why the two runs can agree: the same seed gives the same LoRA init (DDP also broadcasts rank 0's);
nothing is random in the forward pass (LoRA dropout 0 by default, SmolLM2's attention dropout 0);
every process walks the same seeded sample order (LengthGroupedSampler, its mega-batches sized by
the global batch) and accelerate deals the batches out round-robin, so each micro-step of the two
runs covers the same samples; the loss is the token mean over the whole global batch (Trainer counts
label tokens across accumulation steps and processes and scales the loss by the process count, which
DDP's gradient averaging undoes). What remains is float summation order (one packed row of 2 samples
vs 2 rows of 1, plus the all-reduce): small in fp32, not in bf16 autocast, so NESY_DTYPE=fp32 pins it
on machines that would pick bf16.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
# The 135M student, std-cot, the shipped gold CoT rationales: 36 samples (more than one process's
# mega-batch would hold if it were sized by the per-process batch), 3 steps at global batch 4.
RECIPE = ["train", "std-cot", "--data", "gsm8k-gold-cot", "--limit", "36", "--max-steps", "3"]
LAUNCH = [
    "accelerate",
    "launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--main_process_port",
    "0",
    "-m",
    "distill.cli",
    *RECIPE,
    "--batch-size",
    "1",
    "--grad-accum",
    "2",
    "--output",
    "ddp",
]
SINGLE = ["-m", "distill.cli", *RECIPE, "--batch-size", "2", "--grad-accum", "2", "--output", "single"]


def run(argv: list[str], env: dict) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.monotonic() - started


def relative_difference(a: dict, b: dict, keys) -> float:
    """‖a − b‖ / ‖b‖ over the given tensors together."""
    keys = list(keys)
    return float(torch.sqrt(sum((a[k] - b[k]).pow(2).sum() for k in keys) / sum(b[k].pow(2).sum() for k in keys)))


@pytest.mark.slow
def test_two_cpu_processes_train_the_adapter_one_process_trains(workspace):
    env = {**os.environ, "NESY_HOME": str(workspace), "NESY_DTYPE": "fp32", "OMP_NUM_THREADS": "1"}
    seconds = {
        "single": run([sys.executable, *SINGLE], env),
        "ddp": run([str(Path(sys.executable).parent / LAUNCH[0]), *LAUNCH[1:]], env),
    }
    adapters = {
        name: load_file(workspace / "adapters" / name / "adapter_model.safetensors") for name in ("single", "ddp")
    }
    cards = {
        name: json.loads((workspace / "adapters" / name / "card.json").read_text())["stages"]["main"]
        for name in ("single", "ddp")
    }
    assert (cards["ddp"]["processes"], cards["ddp"]["distributed_backend"]) == (2, "gloo")
    assert (cards["single"]["processes"], cards["single"]["distributed_backend"]) == (1, None)
    assert cards["ddp"]["global_batch"] == cards["single"]["global_batch"] == 4
    assert cards["ddp"]["steps"] == cards["single"]["steps"] == 3
    single, ddp = adapters["single"], adapters["ddp"]
    assert ddp.keys() == single.keys()
    learned = [k for k in single if "lora_B" in k]  # B starts at zero: all of it is training's doing
    assert all(single[k].norm() > 0 for k in learned)
    every = relative_difference(ddp, single, single)  # A's shared random init dominates this one
    update = relative_difference(ddp, single, learned)
    worst = max(relative_difference(ddp, single, [k]) for k in single)
    print(
        f"\nrelative difference of the LoRA weights: {every:.1e} all, {update:.1e} the B matrices, "
        f"{worst:.1e} the worst tensor; train loss {cards['single']['train_loss']} vs "
        f"{cards['ddp']['train_loss']}; {seconds['single']:.0f} s one process, {seconds['ddp']:.0f} s two"
    )
    # not 0: one packed row of 4 samples vs 2 rows of 2 plus an all-reduce add in another order, and
    # Adam divides by √v, which magnifies that where a gradient is near 0 (the worst tensor)
    assert every <= 1e-4 and update <= 1e-4 and worst <= 1e-3


def test_the_readme_scale_out_command_is_the_one_tested():
    assert shlex.join(LAUNCH) in (REPO / "README.md").read_text(encoding="utf-8")
