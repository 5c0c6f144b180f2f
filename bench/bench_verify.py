"""Verification throughput: sandboxed PoT / EoT checks per second vs plain in-process execution.

    .venv/bin/python bench/bench_verify.py [--n 50]

Plain `exec` / in-process sympy is what the reference pipelines do (unsafe); the ratio is the
price of the sandbox (a fork of a warm worker + resource limits + a static check per call).
"""
from __future__ import annotations

import argparse
import time

from distill.sandbox import parse_eot, run_pot, solve_eot
from distill.rationales import GSM8K_DEMOS


def rate(fn, items, n):
    fn(items[0])  # warm up (worker start, sympy import)
    start = time.perf_counter()
    for i in range(n):
        fn(items[i % len(items)])
    elapsed = time.perf_counter() - start
    return n / elapsed, elapsed / n * 1000


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

    clear_cache()  # each sandboxed child starts from the worker's cache, not the last solve's
    return plain_eot(text)


def _build(node, symbols):
    import sympy

    kind = node[0]
    if kind == "num":
        return sympy.Rational(node[1])
    if kind == "var":
        return symbols.setdefault(node[1], sympy.Symbol(node[1]))
    args = [_build(c, symbols) for c in node[1:]]
    return {"neg": lambda: -args[0], "add": lambda: args[0] + args[1], "sub": lambda: args[0] - args[1],
            "mul": lambda: args[0] * args[1], "div": lambda: args[0] / args[1],
            "pow": lambda: args[0] ** args[1]}[kind]()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    n = parser.parse_args().n
    pot = [d["pot"] for d in GSM8K_DEMOS]
    eot = [d["eot"] for d in GSM8K_DEMOS]
    rows = [("PoT sandboxed", *rate(run_pot, pot, n)), ("PoT plain exec", *rate(plain_pot, pot, n)),
            ("EoT sandboxed", *rate(solve_eot, eot, n)), ("EoT plain sympy", *rate(plain_eot, eot, n)),
            ("EoT plain, cold", *rate(plain_eot_cold, eot, n))]
    print(f"{'check':18} {'checks/s':>10} {'ms/call':>10}")
    for name, per_s, ms in rows:
        print(f"{name:18} {per_s:10.1f} {ms:10.2f}")
    print(f"PoT sandbox overhead: {rows[0][2] - rows[1][2]:.2f} ms/call ({rows[1][1] / rows[0][1]:.0f}x slower)")
    print(f"EoT sandbox overhead: {rows[2][2] - rows[3][2]:.2f} ms/call ({rows[3][1] / rows[2][1]:.1f}x slower); "
          f"vs a cold sympy cache: {rows[2][2] - rows[4][2]:.2f} ms/call")


if __name__ == "__main__":
    main()
