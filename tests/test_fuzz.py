"""Property-based fuzzing of the front end (hypothesis): token-level mutations of every model in
models/, and generated valid models.

Properties, for every input:
* ``pcgraph.check`` raises nothing: every problem is a diagnostic;
* every diagnostic has a valid position (a line and column inside its file, or an option label);
* every accepted model round-trips through ``fmt`` (format, check again, same text);
* no input takes over 1 s of CPU time.

The default run executes 2,000+ cases (200 mutations of each of the 10 models, 300 generated
models); ``-m slow`` runs 155,000 (15 models x 10,000 mutations, 5,000 generated models; set
``PCGRAPH_FUZZ_REPORT=file.json`` for the figures: cases, outcomes, slowest input).
``benchmarks/fuzz_report.py`` runs the same strategies and properties round-robin over the models
in seeded chunks, recording failures instead of stopping (benchmarks/results/fuzz_report.json).
"""

from __future__ import annotations

import collections
import json
import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pcgraph
from pcgraph import format_model

MODELS = sorted((Path(__file__).resolve().parent.parent / "models").glob("*.pcg"))
TEXTS = {p.name: p.read_text() for p in MODELS}
TOKEN = re.compile(r'\s+|#[^\n]*|"[^"\n]*"|[A-Za-z_][A-Za-z0-9_]*|[0-9]+(?:\.[0-9]+)?'
                   r'(?:[eE][+-]?[0-9]+)?|->|~>|\|>|\.\.|//|.', re.S)
SEP = re.compile(r"\s")
# tokens a mutation may put in: punctuation, keywords, hostile numbers and line breaks
EXTRA = ["{", "}", "(", ")", "[", "]", ",", ":", ";", "=", "->", "~>", "|>", "..", "+", "-", "*",
         "/", "//", "%", "#", '"', "node", "for", "in", "use", "block", "param", "settings",
         "query", "clamp", "read", "init", "model", "include", "act", "energy", "prior", "dense",
         "identity", "conv", "flatten", "maxpool", "relu", "forward", "mem", "true", "false",
         "0", "1", "-1", "0.5", "1e999", "1e308", "9" * 30, "7" * 5000, "h{i}", "{a}", "x{",
         "g{1, 2}", "{}", "\r", "\r\n", "\f", "\x0b", "\x85", "\u2028", "\t", " ", "\x00", "é",
         '"lib.pcg"', '"models"', "1..100000", "steps", "batch_size", "nan", "inf"]
CPU_LIMIT_S = 1.0
MAX_INPUT = 100_000  # characters: no input below this may take over CPU_LIMIT_S
FIGURES = {"cases": 0, "outcomes": collections.Counter(), "slowest_s": 0.0, "slowest": ""}
COMMON = dict(deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])


@pytest.fixture(autouse=True, scope="module")
def _empty_cwd(tmp_path_factory):
    """Mutated text may include files relative to the working directory: make it empty."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("fuzz_cwd"))
    yield
    os.chdir(old)
    report = os.environ.get("PCGRAPH_FUZZ_REPORT")
    if report:
        doc = {**FIGURES, "outcomes": dict(FIGURES["outcomes"]),
               "slowest": FIGURES["slowest"][:2000]}
        Path(report).write_text(json.dumps(doc, indent=2))


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


@st.composite
def mutated(draw, name: str) -> str:
    toks = tokens(TEXTS[name])
    words = [i for i, t in enumerate(toks) if not SEP.match(t)]
    for _ in range(draw(st.integers(1, 4))):
        if not words:
            break
        i = words[draw(st.integers(0, len(words) - 1))]
        op = draw(st.sampled_from(["delete", "duplicate", "replace", "insert", "swap", "repeat"]))
        pool = st.sampled_from(EXTRA) | st.sampled_from(toks)
        if op == "delete":
            toks[i] = ""
        elif op == "duplicate":
            toks[i] = toks[i] + " " + toks[i]
        elif op == "replace":
            toks[i] = draw(pool)
        elif op == "insert":
            toks[i] = draw(pool) + " " + toks[i]
        elif op == "swap":
            j = words[min(words.index(i) + 1, len(words) - 1)]
            toks[i], toks[j] = toks[j], toks[i]
        else:  # a resource bomb: the token many times (the input stays under MAX_INPUT)
            times = draw(st.sampled_from([10, 500, 3000]))
            toks[i] = " ".join([toks[i]] * max(1, min(times, 20_000 // (len(toks[i]) + 1))))
    text = "".join(toks)
    return text[:MAX_INPUT]


def check_properties(text: str) -> None:
    t0 = time.process_time()
    c = pcgraph.check(text)  # must not raise
    for d in c.diagnostics:
        assert_position(d, c.sources)
        d.render(c.sources)
    if c.ok:
        out = format_model(c.model)
        again = pcgraph.check(out)
        assert again.ok, (out, [d.render(again.sources) for d in again.diagnostics])
        assert format_model(again.model) == out
    spent = time.process_time() - t0
    outcome = "accepted" if c.ok else "rejected: " + (
        c.diagnostics[0].code if c.diagnostics else "?")
    event(outcome)
    FIGURES["cases"] += 1
    FIGURES["outcomes"][outcome.split(":")[0] if c.ok else outcome] += 1
    if spent > FIGURES["slowest_s"]:
        FIGURES["slowest_s"], FIGURES["slowest"] = spent, text
    assert spent < CPU_LIMIT_S, f"{spent:.2f} s of CPU for {text[:300]!r}"


def assert_position(d, sources) -> None:
    s = d.span
    if s.line <= 0:  # an option of the API: labelled, never "<api>"
        assert s.file and s.file != "<api>", d
        return
    assert s.file in sources, (d, list(sources))
    lines = sources[s.file].split("\n")
    assert 1 <= s.line <= len(lines), d.render(sources)
    assert 1 <= s.col <= len(lines[s.line - 1]) + 1, d.render(sources)


# ------------------------------------------------------------------------------ mutations
def _mutation_test(n):
    @pytest.mark.parametrize("name", sorted(TEXTS))
    def test(name):
        @settings(max_examples=n, **COMMON)
        @given(mutated(name))
        def run(text):
            check_properties(text)

        # one-off costs (building the parser, first lowering of this model) are not the input's:
        # warm them up outside the timed cases
        format_model(pcgraph.check(TEXTS[name]).model)
        run()

    return test


test_mutations_of_every_model = _mutation_test(200)
test_mutations_of_every_model_long = pytest.mark.slow(_mutation_test(10_000))


# ------------------------------------------------------------------------------ valid models
ACTS = ["identity", "relu", "tanh", "gelu", "sigmoid"]


@st.composite
def valid_models(draw) -> str:
    n = draw(st.integers(2, 7))
    widths = [draw(st.integers(1, 12)) for _ in range(n)]
    lines = ["model gen {"]
    if draw(st.booleans()):
        steps = draw(st.integers(1, 50))
        lr = draw(st.floats(1e-4, 1.0, allow_nan=False, allow_infinity=False))
        lines.append(f"  settings {{ steps = {steps}; activity_lr = {lr!r} }}")
    loop = draw(st.booleans())
    if loop:  # a chain written as a loop
        lines.append(f"  param w = {widths[1]}")
        lines.append(f"  node h0: [{widths[0]}]")
        lines.append(f"  for i in 1..{n - 1} {{ node h{{i}}: [w] act = "
                     f"{draw(st.sampled_from(ACTS))} }}")
        lines.append("  h0 -> h1 : dense")
        if n > 2:
            lines.append(f"  for i in 2..{n - 1} {{ h{{i-1}} -> h{{i}} : "
                         f"dense(pre = {draw(st.sampled_from(ACTS))}) + identity }}")
    else:
        for i, w in enumerate(widths):
            opt = ""
            if draw(st.booleans()):
                opt += f" act = {draw(st.sampled_from(ACTS))}"
            if i and draw(st.booleans()):
                p = draw(st.floats(0.01, 100, allow_nan=False, allow_infinity=False))
                opt += f" energy = gaussian(precision = {p!r})"
            lines.append(f"  node h{i}: [{w}]{opt}")
        for i in range(1, n):
            bias = draw(st.booleans())
            lines.append(f"  h{i - 1} -> h{i} : dense(bias = {str(bias).lower()})")
        if n > 2 and draw(st.booleans()):
            lines.append(f"  h0 -> h{n - 1} : dense")
    lines.append(f"  query train {{ clamp h0, h{n - 1} }}")
    lines.append(f"  query test {{ clamp h0; read h{n - 1} }}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _valid_test(n):
    @settings(max_examples=n, **COMMON)
    @given(valid_models())
    def test(text):
        c = pcgraph.check(text)
        assert c.ok, [d.render(c.sources) for d in c.diagnostics]
        check_properties(text)

    return test


test_generated_models_are_accepted_and_round_trip = _valid_test(300)
test_generated_models_long = pytest.mark.slow(_valid_test(5_000))
