"""Safe execution of model-written PoT programs and EoT equation systems.

Two layers, so that one mistake is not enough:
1. Static check in the app's process, before anything runs.
   - PoT: the program is parsed with `ast` and every node must be on a whitelist: plain
     statements and expressions, functions, loops, comprehensions; `import math` only; no
     dunder names or attributes, no frame/code attributes (`gi_frame`, `f_globals`, ...), no
     `open/exec/eval/compile/getattr/globals/...`, no classes, `with`, `global` or `yield`.
   - EoT: the text is parsed by a small recursive-descent parser for `lhs = rhs` lines over
     numbers, identifiers, `+ - * / ^ **`, parentheses and implicit multiplication (`3x`,
     `2(x+1)`); `%` starts a comment line, and after a number is a percent (`20%` = 20/100).
     The parse tree (plain JSON) is turned into sympy objects by hand (`Rational`, `Symbol`,
     `Add`, `Mul`, `Pow`) — model text never reaches eval or sympify.
2. Execution in another process. One long-lived worker (`python -I`, empty environment, temp
   cwd) serves requests; for each it forks a child that sets resource limits (address space =
   the worker's size + `memory_mb`, CPU seconds, FSIZE=0 so no file can be written, NOFILE,
   NPROC=0, no core dumps), points stdin/stdout/stderr at /dev/null, runs the job with
   restricted builtins and writes one JSON result to a pipe. The worker kills the child when the
   wall-clock `timeout` passes. The fork keeps each check in the millisecond range (sympy is
   imported once in the worker, not per call); a crashed or hung worker is replaced. The
   worker's cwd is a temp folder removed right after the worker starts: nothing is left in the
   system temp dir, and a relative path in the worker cannot create anything.
   Note: RLIMIT_NPROC does not bind root; process creation is then blocked by layer 1 alone
   (no `os`/`subprocess` can be reached).

`run_pot(code) -> ExecResult(ok, value, error)` reads `ans` (or calls `solution()` when the
program defines it and sets no `ans`); `solve_eot(text)` solves all equations over all free
symbols and reads `ans`. A numeric answer must be finite and below 1e300 in size (infinity, NaN
or an overflowing power is an error, never a value); an EoT division by zero says so.
"""

from __future__ import annotations

import ast
import atexit
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

MAX_CODE_CHARS = 20_000
MAX_EOT_LINES = 200
MAX_EOT_DEPTH = 60


@dataclass
class ExecResult:
    ok: bool
    value: float | str | None = None
    error: str | None = None


class Rejected(ValueError):
    """The static check refused the program or equations; the message says why."""


# ---------------------------------------------------------------- PoT static check

ALLOWED_NODES = (
    ast.Module,
    ast.Expr,
    ast.Assign,
    ast.AugAssign,
    ast.AnnAssign,
    ast.Name,
    ast.Load,
    ast.Store,
    ast.Del,
    ast.Delete,
    ast.Constant,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.keyword,
    ast.Attribute,
    ast.Subscript,
    ast.Slice,
    ast.Starred,
    ast.List,
    ast.Tuple,
    ast.Dict,
    ast.Set,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.comprehension,
    ast.FunctionDef,
    ast.arguments,
    ast.arg,
    ast.Return,
    ast.Lambda,
    ast.If,
    ast.For,
    ast.While,
    ast.Break,
    ast.Continue,
    ast.Pass,
    ast.Assert,
    ast.Import,
    ast.ImportFrom,
    ast.alias,
    ast.JoinedStr,
    ast.FormattedValue,
    ast.NamedExpr,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
    ast.expr_context,
)
FORBIDDEN_NAMES = frozenset(
    {
        "open",
        "exec",
        "eval",
        "compile",
        "getattr",
        "setattr",
        "delattr",
        "hasattr",
        "globals",
        "locals",
        "vars",
        "dir",
        "input",
        "breakpoint",
        "help",
        "exit",
        "quit",
        "memoryview",
        "type",
        "object",
        "super",
        "classmethod",
        "staticmethod",
        "property",
        "__import__",
        "__builtins__",
        "bytearray",
        "id",
        "format",
        "os",
        "sys",
        "subprocess",
        "builtins",
    }
)
FORBIDDEN_ATTRIBUTES = frozenset({"format", "format_map", "mro", "register"})
FRAME_ATTRIBUTE = re.compile(r"^(gi|f|tb|co|cr|ag)_")
ALLOWED_IMPORTS = frozenset({"math"})


def check_pot(code: str) -> ast.Module:
    """Parse and whitelist-check a PoT program; raise Rejected with the first violation."""
    if len(code) > MAX_CODE_CHARS:
        raise Rejected(f"program longer than {MAX_CODE_CHARS} characters")
    try:
        tree = ast.parse(code, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise Rejected(f"does not parse: {type(e).__name__}: {e}") from None
    for node in ast.walk(tree):
        _check_node(node)
    return tree


def _check_node(node: ast.AST) -> None:
    where = f"line {getattr(node, 'lineno', '?')}"
    if not isinstance(node, ALLOWED_NODES):
        raise Rejected(f"{where}: {type(node).__name__} is not allowed")
    if isinstance(node, ast.Name) and (node.id.startswith("__") or node.id in FORBIDDEN_NAMES):
        raise Rejected(f"{where}: name {node.id!r} is not allowed")
    if isinstance(node, ast.Attribute):
        attr = node.attr
        if attr.startswith("_") or attr in FORBIDDEN_ATTRIBUTES or FRAME_ATTRIBUTE.match(attr):
            raise Rejected(f"{where}: attribute {attr!r} is not allowed")
    bound = _bound_name(node)
    if bound is not None and (bound.startswith("__") or bound in FORBIDDEN_NAMES):
        # e.g. `from math import pi as __builtins__`: a non-dict __builtins__ in the globals makes
        # CPython hand later frames the real builtins
        raise Rejected(f"{where}: binding the name {bound!r} is not allowed")
    if isinstance(node, ast.FunctionDef) and node.decorator_list:
        raise Rejected(f"{where}: decorators are not allowed")
    if isinstance(node, ast.Import) and any(a.name not in ALLOWED_IMPORTS or a.asname for a in node.names):
        raise Rejected(f"{where}: only 'import math' is allowed")
    if isinstance(node, ast.ImportFrom) and (
        node.module not in ALLOWED_IMPORTS
        or node.level
        or any(a.name == "*" or a.name.startswith("_") for a in node.names)
    ):
        raise Rejected(f"{where}: only 'from math import name' is allowed")
    if isinstance(node, ast.Constant) and isinstance(node.value, (bytes, str)) and len(node.value) > 10_000:
        raise Rejected(f"{where}: string constant too long")


def _bound_name(node: ast.AST) -> str | None:
    """The name a definition, argument, import alias or keyword argument binds (Name nodes are
    checked on their own)."""
    if isinstance(node, ast.FunctionDef):
        return node.name
    if isinstance(node, ast.arg):
        return node.arg
    if isinstance(node, ast.alias):
        return node.asname or node.name.split(".")[0]
    if isinstance(node, ast.keyword):
        return node.arg
    return None


# ---------------------------------------------------------------- EoT restricted grammar

TOKEN_RE = re.compile(r"\s*(?:(\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)(\s*%)?|([A-Za-z_][A-Za-z0-9_]*)|(\*\*|[-+*/^()]))")


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, pos, expr = [], 0, expr.rstrip()
    while pos < len(expr):
        match = TOKEN_RE.match(expr, pos)
        if not match:
            raise Rejected(f"unexpected character {expr[pos:].strip()[:1]!r} in {expr.strip()[:60]!r}")
        number, percent, name, op = match.groups()
        if number is not None:
            if len(number) > 30:
                raise Rejected("number too long")
            num = ("num", number.replace(",", ""))
            tokens += [("op", "("), num, ("op", "/"), ("num", "100"), ("op", ")")] if percent else [num]
        elif name is not None:
            if len(name) > 64:
                raise Rejected("identifier too long")
            tokens.append(("var", name))
        else:
            tokens.append(("op", "^" if op == "**" else op))
        pos = match.end()
    if len(tokens) > 400:
        raise Rejected("equation too long")
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary | implicit unary)*;
    unary := ('+'|'-') unary | power; power := atom ('^' unary)?; atom := num | var | '(' expr ')'."""

    def __init__(self, tokens):
        self.tokens, self.pos, self.depth = tokens, 0, 0

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def take(self):
        token = self.peek()
        self.pos += 1
        return token

    def parse(self):
        tree = self.expr()
        if self.peek()[0] != "end":
            raise Rejected(f"unexpected {self.peek()[1]!r}")
        return tree

    def expr(self):
        self.depth += 1
        if self.depth > MAX_EOT_DEPTH:
            raise Rejected("expression nested too deeply")
        node = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            node = ["add" if op == "+" else "sub", node, self.term()]
        self.depth -= 1
        return node

    def term(self):
        node = self.unary()
        while True:
            kind, value = self.peek()
            if (kind, value) in (("op", "*"), ("op", "/")):
                self.take()
                node = ["mul" if value == "*" else "div", node, self.unary()]
            elif kind in ("num", "var") or (kind, value) == ("op", "("):
                node = ["mul", node, self.unary()]  # implicit multiplication: 3x, 2(x+1), (a)(b)
            else:
                return node

    def unary(self):
        self.depth += 1
        if self.depth > MAX_EOT_DEPTH:
            raise Rejected("expression nested too deeply")
        kind, value = self.peek()
        if (kind, value) in (("op", "+"), ("op", "-")):
            self.take()
            operand = self.unary()
            node = ["neg", operand] if value == "-" else operand
        else:
            node = self.power()
        self.depth -= 1
        return node

    def power(self):
        base = self.atom()
        if self.peek() == ("op", "^"):
            self.take()
            return ["pow", base, self.unary()]
        return base

    def atom(self):
        kind, value = self.take()
        if kind == "num":
            return ["num", value]
        if kind == "var":
            return ["var", value]
        if (kind, value) == ("op", "("):
            node = self.expr()
            if self.take() != ("op", ")"):
                raise Rejected("missing ')'")
            return node
        raise Rejected(f"unexpected {value or 'end of line'!r}")


def parse_eot(text: str) -> list[list]:
    """EoT text -> [[lhs_tree, rhs_tree], ...]; needs an `ans = ...` line.

    Lines starting with '%' (comments) and lines without '=' (code fences, stray prose) are skipped;
    every other line must parse under the grammar, or the whole system is rejected. Inside an
    equation `20%` is 20/100; any other '%' is rejected (it used to cut the line silently).
    """
    equations = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("%") or "=" not in line:
            continue  # blank, comment, code fence or prose: never evaluated, so safe to skip
        if line.count("=") != 1:
            raise Rejected(f"line {number}: expected one '=' in {line[:60]!r}")
        lhs, rhs = line.split("=")
        try:
            equations.append([_Parser(tokenize(lhs)).parse(), _Parser(tokenize(rhs)).parse()])
        except Rejected as e:
            raise Rejected(f"line {number}: {e}") from None
        if len(equations) > MAX_EOT_LINES:
            raise Rejected(f"more than {MAX_EOT_LINES} equations")
    if not any(eq[0] == ["var", "ans"] for eq in equations):
        raise Rejected("no 'ans = ...' line")
    return equations


# ---------------------------------------------------------------- the worker process

WORKER = Path(__file__).with_name("sandbox_worker.py")  # a real module, run as a script


class _Worker:
    """The long-lived `python -I` worker; one request at a time, restarted when it dies."""

    def __init__(self):
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        cwd = tempfile.mkdtemp(prefix="nesy-sandbox-")
        try:
            return subprocess.Popen(
                [sys.executable, "-I", str(WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                text=True,
                bufsize=1,
            )
        finally:
            # The worker keeps a deleted, empty cwd: nothing is left behind, even after a SIGKILL,
            # and no relative path can create a file there.
            os.rmdir(cwd)

    def request(self, payload: dict, timeout: float) -> dict:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            self.proc.stdin.write(json.dumps(payload) + "\n")
            self.proc.stdin.flush()
            # The worker enforces `timeout`; the extra margin covers its own sympy import.
            if not select.select([self.proc.stdout], [], [], timeout + 30)[0]:
                self.stop()
                return {"ok": False, "error": "sandbox worker did not answer"}
            line = self.proc.stdout.readline()
            if not line:
                self.stop()
                return {"ok": False, "error": "sandbox worker died"}
            return json.loads(line)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


_WORKER = _Worker()
atexit.register(_WORKER.stop)


def _run(payload: dict, timeout: float, memory_mb: int) -> ExecResult:
    payload |= {"timeout": timeout, "memory_mb": memory_mb, "cpu_s": max(1, int(timeout + 1))}
    result = _WORKER.request(payload, timeout)
    return ExecResult(result.get("ok", False), result.get("value"), result.get("error"))


def run_pot(code: str, timeout: float = 5.0, memory_mb: int = 256) -> ExecResult:
    """Check and run a PoT program in the sandbox; the result is its `ans`."""
    try:
        check_pot(code)
    except Rejected as e:
        return ExecResult(False, None, f"rejected: {e}")
    return _run({"kind": "pot", "code": code}, timeout, memory_mb)


def solve_eot(text: str, timeout: float = 5.0, memory_mb: int = 512) -> ExecResult:
    """Parse an EoT equation system with the restricted grammar, solve it with sympy, read `ans`."""
    try:
        equations = parse_eot(text)
    except (Rejected, RecursionError) as e:
        return ExecResult(False, None, f"rejected: {e}")
    return _run({"kind": "eot", "equations": equations}, timeout, memory_mb)


def extract_code(text: str) -> str:
    """The program in a teacher/student PoT output: the first ``` fenced block, else the text."""
    match = re.search(r"```(?:python|py)?\s*\n(.*?)```", text, re.DOTALL)
    return (match.group(1) if match else text).strip()
