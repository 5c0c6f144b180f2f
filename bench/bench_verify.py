"""Verification throughput: sandboxed PoT / EoT checks per second vs plain in-process execution,
in interleaved rounds.

    .venv/bin/python bench/bench_verify.py --n 40                 # README (5 rounds)

Each round runs --n checks of each kind, back to back, over the GSM8K demonstrations:
  PoT sandboxed     distill.sandbox.run_pot (a fork of a warm worker + resource limits + a static
                    check per call)
  PoT plain         `exec` in this process: what the reference pipelines do (unsafe)
  EoT sandboxed     distill.sandbox.solve_eot
  EoT plain         the same parsed equations solved by sympy in this process
  EoT plain, cold   the same with sympy's cache cleared before each solve (each sandboxed child
                    starts from the worker's cache, not the last solve's)
Ratios (bench/_measure.py: median with its min–max, machine load): plain/sandboxed checks per
second, i.e. how many times slower the sandbox is: the price of running untrusted code safely.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Load, Spread, interleave, per_second, ratio  # noqa: E402

from distill.rationales import GSM8K_DEMOS  # noqa: E402
from distill.sandbox import parse_eot, run_pot, solve_eot  # noqa: E402


def plain_pot(code):
    scope = {}
    exec(code, scope)  # noqa: S102 - the unsafe baseline being measured
    return scope["ans"]


def plain_eot(text):
    import sympy

    symbols = {}
    equations = []
    for lhs, rhs in parse_eot(text):
        equations.append(sympy.Eq(_build(lhs, symbols), _build(rhs, symbols)))
    return sympy.solve(equations, list(symbols.values()), dict=True)[0][symbols["ans"]]


def plain_eot_cold(text):
    from sympy.core.cache import clear_cache

    clear_cache()
    return plain_eot(text)


def _build(node, symbols):
    import sympy

    kind = node[0]
    if kind == "num":
        return sympy.Rational(node[1])
    if kind == "var":
        return symbols.setdefault(node[1], sympy.Symbol(node[1]))
    args = [_build(c, symbols) for c in node[1:]]
    return {
        "neg": lambda: -args[0],
        "add": lambda: args[0] + args[1],
        "sub": lambda: args[0] - args[1],
        "mul": lambda: args[0] * args[1],
        "div": lambda: args[0] / args[1],
        "pow": lambda: args[0] ** args[1],
    }[kind]()


def checks_per_second(check, items: list[str], n: int):
    """A side: n calls of `check`, cycling through the items; warmed up once (worker start, imports)."""
    check(items[0])
    return lambda: per_second(n, lambda: [check(items[i % len(items)]) for i in range(n)])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="checks of each kind per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pot = [d["pot"] for d in GSM8K_DEMOS]
    eot = [d["eot"] for d in GSM8K_DEMOS]
    sides = {
        "PoT sandboxed": checks_per_second(run_pot, pot, args.n),
        "PoT plain": checks_per_second(plain_pot, pot, args.n),
        "EoT sandboxed": checks_per_second(solve_eot, eot, args.n),
        "EoT plain": checks_per_second(plain_eot, eot, args.n),
        "EoT plain, cold": checks_per_second(plain_eot_cold, eot, args.n),
    }
    with Load() as load:
        rounds = interleave(sides, args.rounds)
    for name, per_s in rounds.items():
        print(f"{name:16}: {Spread(per_s, ' checks/s')} = {Spread([1000 / r for r in per_s], ' ms/call')}")
    print(f"PoT: sandboxed {ratio(rounds['PoT plain'], rounds['PoT sandboxed'])} slower than plain exec")
    print(
        f"EoT: sandboxed {ratio(rounds['EoT plain'], rounds['EoT sandboxed'])} slower than plain sympy, "
        f"{ratio(rounds['EoT plain, cold'], rounds['EoT sandboxed'])} slower than plain sympy with a cold cache"
    )
    print(load)


if __name__ == "__main__":
    main()
