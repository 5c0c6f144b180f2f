"""Sandboxed PoT execution and the restricted EoT solver: real GSM8K cases and a hostile suite.

Every hostile input must be either rejected by the static check or stopped by the process limits
within its time limit, and the host must be untouched (no file written, no secret read, the test
process alive and its cwd unchanged).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.answers import answers_match
from distill.data import get_dataset
from distill.sandbox import Rejected, check_pot, extract_code, parse_eot, run_pot, solve_eot

GSM8K = {
    e.id: e
    for e in get_dataset("gsm8k").load("train")
    if e.id in {"gsm8k-train-00000", "gsm8k-train-00001", "gsm8k-train-00002", "gsm8k-train-00003"}
}

POT = {
    "gsm8k-train-00000": "april = 48\nmay = april / 2\nans = april + may",
    "gsm8k-train-00001": "import math\ndef solution():\n    per_minute = 12 / 60\n    return per_minute * 50\n",
    "gsm8k-train-00002": "wallet = 100\nhas = wallet / 2\nparents = 15\ngrandparents = 2 * parents\n"
    "ans = wallet - has - parents - grandparents",
    "gsm8k-train-00003": "from math import floor\npages = [12, 12 * 2]\nleft = 120 - sum(pages)\nans = floor(left / 2)",
}
EOT = {
    "gsm8k-train-00000": "% Natalia sold 48 clips in April\napril_clips = 48\n% half as many in May\n"
    "may_clips = april_clips / 2\ntotal_clips = april_clips + may_clips\nans = total_clips",
    "gsm8k-train-00001": "hourly_rate = 12\nminutes = 50\nearned = hourly_rate / 60 * minutes\nans = earned",
    "gsm8k-train-00002": "% unknown: how much more Betty needs\nmore_needed = x\nwallet = 100\n"
    "parents = 15\n2 parents + wallet / 2 + parents + more_needed = wallet\nans = more_needed",
    "gsm8k-train-00003": "yesterday = 12\ntoday = 2yesterday\nremaining = 120 - (yesterday + today)\n"
    "tomorrow = remaining / 2\nans = tomorrow",
}


@pytest.mark.parametrize("example_id", sorted(POT))
def test_pot_solves_real_gsm8k(example_id):
    result = run_pot(POT[example_id])
    assert result.ok, result.error
    assert answers_match(str(result.value), GSM8K[example_id].answer, "number")


@pytest.mark.parametrize("example_id", sorted(EOT))
def test_eot_solves_real_gsm8k(example_id):
    result = solve_eot(EOT[example_id])
    assert result.ok, result.error
    assert answers_match(str(result.value), GSM8K[example_id].answer, "number")


def test_eot_grammar_details():
    assert solve_eot("a = 2^3\nb = 2**3\nans = a + b - (-1)").value == 17
    assert solve_eot("x + y = 10\nx - y = 2\nans = x").value == 6
    assert solve_eot("price = 1,200\nans = price * 3 / 4").value == 900
    assert not solve_eot("x = 1\nx = 2\nans = x").ok  # contradiction
    assert not solve_eot("ans = y").ok  # underdetermined
    assert "no 'ans" in solve_eot("a = 1").error
    assert parse_eot("ans = 3x") == [[["var", "ans"], ["mul", ["num", "3"], ["var", "x"]]]]
    fenced = "```text\n% the cost\ncost = 4\nSo we get:\nans = cost * 2\n```"
    assert solve_eot(fenced).value == 8


def test_pot_failures_are_reported_not_raised():
    assert run_pot("x = 1").error == "the program sets no 'ans'"
    assert "ZeroDivisionError" in run_pot("ans = 1 / 0").error
    assert run_pot("ans = 'seven'").value == "seven"
    assert "does not parse" in run_pot("ans = (").error
    assert extract_code("Here:\n```python\nans = 2\n```\nDone") == "ans = 2"


SECRET = Path("/etc/passwd").read_text()[:20]

# (name, code): each must be rejected statically or stopped at run time.
HOSTILE_POT = [
    ("import os", "import os\nos.system('touch /tmp/nesy_pwned')\nans = 1"),
    ("import subprocess", "import subprocess\nans = subprocess.run(['id'])"),
    ("from os import system", "from os import system\nans = system('id')"),
    ("import as alias", "import math as os\nans = 1"),
    ("__import__", "ans = __import__('os').getcwd()"),
    ("open passwd", "ans = open('/etc/passwd').read()"),
    ("open write", "open('/tmp/nesy_pwned', 'w').write('x')\nans = 1"),
    ("exec", "exec('import os')\nans = 1"),
    ("eval", "ans = eval('1+1')"),
    ("compile", "ans = compile('1', 'x', 'eval')"),
    ("getattr", "ans = getattr(1, '__class__')"),
    ("globals", "ans = globals()"),
    ("vars", "ans = vars()"),
    ("dunder class bases", "ans = ().__class__.__bases__[0].__subclasses__()"),
    ("dunder via string subscripts", "ans = [].__class__.__mro__[1].__subclasses__()"),
    ("builtins name", "ans = __builtins__['open']('/etc/passwd').read()"),
    ("generator frame escape", "g = (x for x in [1])\nans = g.gi_frame.f_globals"),
    ("format string attribute walk", "ans = '{0.__class__.__base__}'.format(1)"),
    ("type()", "ans = type(1)"),
    ("class definition", "class A:\n    pass\nans = 1"),
    ("with statement", "with x:\n    pass\nans = 1"),
    ("global statement", "def f():\n    global ans\n    ans = 1\nf()"),
    ("decorator", "@print\ndef f():\n    pass\nans = 1"),
    ("yield generator", "def f():\n    yield 1\nans = 1"),
    ("math private", "import math\nans = math.__loader__"),
    ("breakpoint", "breakpoint()\nans = 1"),
    ("os.fork", "import os\nos.fork()\nans = 1"),
    ("fork bomb via name", "fork()\nans = 1"),  # NameError at run time: no such builtin
    ("infinite loop", "while True:\n    pass"),
    ("recursion bomb", "def f(n):\n    return f(n + 1)\nans = f(0)"),
    ("memory bomb list", "x = [0] * (10 ** 10)\nans = 1"),
    ("memory bomb string", "x = 'a' * (2 ** 34)\nans = 1"),
    ("memory growth loop", "x = []\nwhile True:\n    x.append([0] * 100000)"),
    ("huge power", "ans = 9 ** 9 ** 9"),
    ("deep nesting", "ans = " + "(" * 5000 + "1" + ")" * 5000),
    ("deep unary", "ans = " + "-" * 200000 + "1"),
    ("very long program", "ans = 1\n" * 20000),
    ("syntax garbage", "ans = ]]]"),
    ("null bytes", "ans = 1\x00"),
    ("print flood", "for i in range(10 ** 9):\n    print('x' * 1000)"),
    ("raise SystemExit", "raise SystemExit(0)"),
    # binding dunder / forbidden names: a non-dict __builtins__ makes CPython give later frames
    # the real builtins
    ("from math import as __builtins__", "from math import pi as __builtins__\ndef f():\n    return print\nans = f()"),
    ("from math import as __import__", "from math import pi as __import__\nans = 1"),
    ("from math import as open", "from math import floor as open\nans = 1"),
    ("import math as __builtins__", "import math as __builtins__\nans = 1"),
    ("dunder keyword argument", "ans = dict(__builtins__=1)"),
    ("dunder lambda argument", "f = lambda __builtins__=1: __builtins__\nans = f()"),
    ("dunder function argument", "def f(__class__):\n    return 1\nans = f(1)"),
    ("walrus binds dunder", "ans = (__builtins__ := 1)"),
    ("for target dunder", "for __builtins__ in [1]:\n    pass\nans = 1"),
    ("comprehension target dunder", "ans = [1 for __loader__ in [1]]"),
    ("del builtins name", "del __builtins__\nans = 1"),
    ("function named like a dunder", "def __getattr__(x):\n    return 1\nans = 1"),
    ("function named open", "def open(x):\n    return 1\nans = open(1)"),
    # answers that are not finite numbers must never count as a value
    ("infinite float", "ans = float('inf')"),
    ("negative infinity", "ans = -float('inf')"),
    ("nan", "ans = float('nan')"),
    ("nan from arithmetic", "x = float('inf')\nans = x - x"),
    ("huge integer", "ans = 10 ** 400"),
    ("huge integer via solution()", "def solution():\n    return 7 ** 1000"),
    ("huge float power", "ans = 1e308 * 10"),
    ("str() digits limit", "ans = 10 ** 5000"),
]


@pytest.mark.parametrize("name,code", HOSTILE_POT, ids=[n for n, _ in HOSTILE_POT])
def test_hostile_pot_blocked_or_killed(name, code, tmp_path):
    cwd_before = sorted(os.listdir("."))
    timeout = 2.0
    start = time.monotonic()
    result = run_pot(code, timeout=timeout, memory_mb=128)
    elapsed = time.monotonic() - start
    assert not result.ok, f"{name} ran: {result}"
    assert elapsed < timeout + 3.0, f"{name} took {elapsed:.1f}s"
    assert SECRET not in str(result.value) + str(result.error)
    assert not Path("/tmp/nesy_pwned").exists()
    assert sorted(os.listdir(".")) == cwd_before


def test_static_check_rejects_before_running():
    for code in ("import os", "ans = ().__class__", "ans = open('x')", "x.gi_frame"):
        with pytest.raises(Rejected):
            check_pot(code)
    check_pot("import math\nans = [math.sqrt(i) for i in range(3)]")  # fine


HOSTILE_EOT = [
    ("python call", "ans = __import__('os')"),
    ("function call", "ans = exec(1)"),
    ("attribute", "ans = x.__class__"),
    ("string", "ans = 'abc'"),
    ("semicolon statements", "a = 1; import os\nans = a"),
    ("sympify injection", "ans = Symbol('x')"),
    ("two equals", "a = b = 1\nans = a"),
    ("deep parens", "ans = " + "(" * 5000 + "1" + ")" * 5000),
    ("huge power", "ans = 9^9^9"),
    ("huge power tower", "a = 2^2^2^2^2^2\nans = a"),
    ("lambda", "ans = lambda: 1"),
    ("brackets", "ans = [1, 2]"),
    # results that are not finite numbers
    ("power overflowing a float", "ans = 2^(10^8)"),
    ("power of ten beyond 1e300", "ans = 10^400"),
    ("division by zero", "ans = 1/0"),
    ("division by a zero expression", "a = 5\nans = a/(a - a)"),
    ("zero to a negative power", "ans = 0^(-1)"),
    ("zero over zero", "ans = 0/0"),
    ("comment hides nothing", "% ans = 1\nans = 1/(2 - 2)"),
    ("unicode operator", "ans = 2 \u00d7 3"),
    ("unicode identifier", "\u0430ns = 1\nans = \u0430ns / 0"),
]


@pytest.mark.parametrize("name,text", HOSTILE_EOT, ids=[n for n, _ in HOSTILE_EOT])
def test_hostile_eot_blocked_or_killed(name, text):
    start = time.monotonic()
    result = solve_eot(text, timeout=2.0)
    assert not result.ok, f"{name} solved: {result}"
    assert time.monotonic() - start < 5.0 + 10.0  # + the worker's one-off sympy import
    assert not Path("/tmp/nesy_pwned").exists()


def test_sandbox_survives_hostile_run_and_keeps_working():
    assert not run_pot("while True:\n    pass", timeout=1).ok
    assert run_pot("ans = 2 + 2").value == 4


def test_non_finite_and_huge_results_are_errors_not_answers():
    for text in ("ans = 2^(10^8)", "ans = 10^400"):
        result = solve_eot(text)
        assert not result.ok and "not a finite number" in result.error, (text, result)
    for code in ("ans = float('inf')", "ans = float('nan')", "ans = 10 ** 400"):
        result = run_pot(code)
        assert not result.ok and "not a finite number" in result.error, (code, result)
    assert solve_eot("ans = 10^299").ok and run_pot("ans = 1e299").ok  # large but finite is fine


def test_division_by_zero_is_named_as_such():
    for text in ("ans = 1/0", "a = 5\nans = a/(a - a)", "ans = 0^(-1)", "ans = 0/0"):
        result = solve_eot(text)
        assert not result.ok and "division by zero" in result.error, (text, result)
        assert "contradict" not in result.error
    assert "contradict" in solve_eot("2 = 3\nans = 1").error


def test_binding_a_dunder_or_forbidden_name_is_refused_statically():
    for code in (
        "from math import pi as __builtins__",
        "from math import floor as open",
        "ans = dict(__builtins__=1)",
        "f = lambda __x: 1",
    ):
        with pytest.raises(Rejected, match="binding the name"):
            check_pot(code)
    check_pot("from math import pi as circle_ratio\nans = circle_ratio")  # a plain alias is fine


def test_a_string_answer_with_a_lone_surrogate_comes_back_encodable():
    result = run_pot("ans = '\\ud800 seven'")
    assert result.ok and result.value.encode("utf-8") and "seven" in result.value


def test_importing_and_using_the_sandbox_leaves_nothing_in_the_temp_dir(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    script = (
        "import distill.sandbox as s\n"
        "assert s.run_pot('ans = 6 * 7').value == 42\n"
        "assert s.solve_eot('x = 2\\nans = 3x').value == 6\n"
        "s._WORKER.stop()\n"
        "assert s.run_pot('ans = 1').ok  # a restarted worker\n"
    )
    for code in ("import distill.sandbox", script):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=Path(__file__).parent.parent,
            env={**os.environ, "TMPDIR": str(temp)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert list(temp.iterdir()) == [], "the sandbox left files in the system temp dir"
