"""The sandbox's worker process: run as a script by distill/sandbox.py (`python -I <this file>`),
never imported by the tool itself.

It reads one JSON request per line on stdin, forks a child per request that drops its limits
(address space, CPU seconds, no files, no processes, 16 descriptors) and runs the already
statically checked PoT program or EoT system, and writes one JSON answer per line. It imports
nothing from the project, so the isolated interpreter needs only the standard library (and sympy
for EoT, imported before the limits apply).
"""

import json
import math
import os
import resource
import select
import signal
import sys
import time


def vm_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def limit(memory_mb, cpu_s):
    address_space = vm_bytes() + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))


class NotFinite(Exception):
    pass


def plain(value):
    """A JSON-safe answer: a finite float, or a short string (lone surrogates replaced)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        if not (abs(value) < 1e300):  # also NaN: every comparison with it is false
            raise NotFinite("the result is not a finite number")
        return float(value)
    return str(value)[:200].encode("utf-8", "replace").decode("utf-8")


SAFE_BUILTINS = {
    name: getattr(__builtins__, name) if not isinstance(__builtins__, dict) else __builtins__[name]
    for name in (
        "abs",
        "all",
        "any",
        "bool",
        "dict",
        "divmod",
        "enumerate",
        "filter",
        "float",
        "int",
        "isinstance",
        "len",
        "list",
        "map",
        "max",
        "min",
        "pow",
        "range",
        "reversed",
        "round",
        "set",
        "sorted",
        "str",
        "sum",
        "tuple",
        "zip",
        "ValueError",
        "ZeroDivisionError",
        "Exception",
        "True",
        "False",
        "None",
    )
}


def safe_import(name, globals=None, locals=None, fromlist=(), level=0):
    if name != "math" or level:
        raise ImportError("only math can be imported")
    return math


def run_pot(code):
    builtins = dict(SAFE_BUILTINS, __import__=safe_import, print=lambda *a, **k: None)
    scope = {"__builtins__": builtins, "__name__": "pot"}
    exec(compile(code, "<pot>", "exec"), scope)
    if "ans" not in scope and callable(scope.get("solution")):
        scope["ans"] = scope["solution"]()
    if "ans" not in scope:
        return {"ok": False, "error": "the program sets no 'ans'"}
    return {"ok": True, "value": plain(scope["ans"])}


def build(node, sympy, symbols):
    kind = node[0]
    if kind == "num":
        return sympy.Rational(node[1])
    if kind == "var":
        return symbols.setdefault(node[1], sympy.Symbol(node[1]))
    args = [build(child, sympy, symbols) for child in node[1:]]
    if kind == "neg":
        return -args[0]
    if kind == "add":
        return sympy.Add(args[0], args[1])
    if kind == "sub":
        return sympy.Add(args[0], -args[1])
    if kind == "mul":
        return sympy.Mul(args[0], args[1])
    if kind == "div":
        if args[1].is_zero:
            raise ZeroDivisionError("division by zero")
        return sympy.Mul(args[0], sympy.Pow(args[1], -1))
    if kind == "pow":
        if args[0].is_zero and args[1].is_negative:
            raise ZeroDivisionError("division by zero (0 to a negative power)")
        return sympy.Pow(args[0], args[1])
    raise ValueError("unknown node " + repr(kind))


def solve_eot(equations):
    import sympy

    symbols = {}
    system = [sympy.Eq(build(left, sympy, symbols), build(right, sympy, symbols)) for left, right in equations]
    system = [eq for eq in system if eq is not sympy.true]
    if any(eq is sympy.false for eq in system):
        return {"ok": False, "error": "the equations contradict each other"}
    solutions = sympy.solve(system, list(symbols.values()), dict=True)
    ans = symbols["ans"]
    for solution in solutions:
        value = solution.get(ans)
        if value is not None and not value.free_symbols:
            if value.has(sympy.zoo, sympy.nan):
                return {"ok": False, "error": "division by zero"}
            number = complex(sympy.N(value))
            if abs(number.imag) < 1e-9:
                return {"ok": True, "value": plain(number.real)}
    return {"ok": False, "error": "no unique numeric value for ans" if solutions else "no solution"}


def child(request, write_fd):
    limit(request["memory_mb"], request["cpu_s"])
    try:
        result = run_pot(request["code"]) if request["kind"] == "pot" else solve_eot(request["equations"])
    except MemoryError:
        result = {"ok": False, "error": "memory limit exceeded"}
    except RecursionError:
        result = {"ok": False, "error": "recursion too deep"}
    except NotFinite as e:
        result = {"ok": False, "error": str(e)}
    except ZeroDivisionError as e:
        result = {"ok": False, "error": "ZeroDivisionError: " + str(e)}
    except BaseException as e:
        result = {"ok": False, "error": type(e).__name__ + ": " + str(e)[:200]}
    try:
        data = json.dumps(result).encode()
    except BaseException:
        data = b'{"ok": false, "error": "unserialisable result"}'
    os.write(write_fd, data)
    os._exit(0)


WARM = False


def serve_one(request):
    global WARM
    if request["kind"] == "eot" and not WARM:
        # Import and exercise sympy once before forking, so every child starts warm.
        solve_eot(
            [
                [["var", "a"], ["num", "2"]],
                [["var", "ans"], ["mul", ["var", "a"], ["var", "x"]]],
                [["var", "x"], ["div", ["num", "1"], ["num", "3"]]],
            ]
        )
        WARM = True
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        child(request, write_fd)
    os.close(write_fd)
    chunks = []
    end = time.monotonic() + request["timeout"]
    while True:
        left = end - time.monotonic()
        ready = select.select([read_fd], [], [], max(left, 0))[0] if left > 0 else []
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            return {"ok": False, "error": f"time limit exceeded ({request['timeout']:.1f} s)"}
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        reason = {signal.SIGXCPU: "CPU limit exceeded", signal.SIGKILL: "killed"}.get(sig, "crashed")
        return {"ok": False, "error": f"{reason} (status {status})"}
    return json.loads(b"".join(chunks))


for line in sys.stdin:
    sys.stdout.write(json.dumps(serve_one(json.loads(line))) + "\n")
    sys.stdout.flush()
