"""A corpus of malformed inputs: every one is refused with one line, no traceback, nothing made.

The bar (issue 9): malformed traces (Azure CSV, Mooncake JSONL), campaign configs and policy
files, each run through the command a user would type, give

- the documented exit status: 2 for a bad input; 3 when ``evaluate`` rejects a policy;
- exactly one line saying what is wrong (on stderr; for ``evaluate``'s rejection, one reason line
  in its verdict, since the file holds one fault), at most ``MAX_LINE`` characters;
- no "Traceback" anywhere;
- nothing left under the results folder.

The inputs are generated here, so the corpus grows by adding a line. Each case runs
``autotuner.commands.main.main`` in-process; a few also run in a fresh interpreter, as a user's
shell would start it. A config that is wrongly accepted must not start a campaign: ``Campaign._run``
is replaced by a guard that fails the case, so a regression costs a failure, not a campaign.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autotuner import campaign
from autotuner.commands.main import main

ROOT = Path(__file__).resolve().parents[1]
MAX_LINE = 1000  # characters in the one line; a 4,000-digit number must not be echoed whole

GOOD_POLICY = "TUNABLES = {}\n\n\ndef partition(replica, params):\n    return (512, ())\n"
CSV_HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens\n"
CSV_OK = CSV_HEADER + "0.0,100,10\n1.0,120,12\n"


@dataclass(frozen=True)
class Case:
    """One malformed input: the files to write and the command that must refuse it."""

    id: str
    files: dict[str, str | bytes]  # name -> content; "{tmp}" in text becomes the case folder
    argv: tuple[str, ...]  # "{tmp}" becomes the case folder
    rc: int = 2
    marks: tuple = field(default=())
    subprocess: bool = False


def _moon(**fields) -> str:
    row = {"timestamp": 0, "input_length": 600, "output_length": 3}
    row.update(fields)
    return json.dumps({k: v for k, v in row.items() if v is not ...})


def _moon_ok(n: int = 2) -> str:
    return "".join(_moon(timestamp=1000 * i) + "\n" for i in range(n))


# ------------------------------------------------------------------------------ traces
def trace(id_: str, name: str, content: str | bytes, *extra: str, sub: bool = False) -> Case:
    return Case(f"trace-{id_}", {name: content},
                ("simulate", "--trace", f"{{tmp}}/{name}", "--requests", "50", *extra),
                subprocess=sub)


BIG = 2**63
TRACES = [
    # Azure / Vidur CSV
    trace("csv-prompt-2^63", "t.csv", CSV_OK + f"2.0,{BIG},5\n", sub=True),
    trace("csv-output-2^63", "t.csv", CSV_OK + f"2.0,5,{BIG}\n"),
    trace("csv-prompt-2^64", "t.csv", CSV_OK + f"2.0,{2**64},5\n"),
    trace("csv-prompt-1e12", "t.csv", CSV_OK + "2.0,1000000000000,5\n"),
    trace("csv-output-1e12", "t.csv", CSV_OK + "2.0,5,1000000000000\n"),
    trace("csv-prompt-1e12-float", "t.csv", CSV_OK + "2.0,1e12,5\n"),
    trace("csv-prompt-5000-digits", "t.csv", CSV_OK + "2.0," + "9" * 5000 + ",5\n"),
    trace("csv-prompt-inf", "t.csv", CSV_OK + "2.0,inf,5\n"),
    trace("csv-prompt-nan", "t.csv", CSV_OK + "2.0,nan,5\n"),
    trace("csv-prompt-negative", "t.csv", CSV_OK + "2.0,-4,5\n"),
    trace("csv-prompt-zero", "t.csv", CSV_OK + "2.0,0,5\n"),
    trace("csv-prompt-fraction", "t.csv", CSV_OK + "2.0,3.5,5\n"),
    trace("csv-prompt-text", "t.csv", CSV_OK + "2.0,many,5\n"),
    trace("csv-output-negative", "t.csv", CSV_OK + "2.0,5,-1\n"),
    trace("csv-time-text", "t.csv", CSV_OK + "soon,5,5\n"),
    trace("csv-time-inf", "t.csv", CSV_OK + "inf,5,5\n"),
    trace("csv-time-1e400", "t.csv", CSV_OK + "1e400,5,5\n"),
    trace("csv-time-span-overflows", "t.csv",
          CSV_HEADER + "-1.7e308,5,5\n1.7e308,5,5\n"),
    trace("csv-datetime-5000-digit-fraction", "t.csv",
          "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,5,5\n"
          "2023-11-16 18:15:47." + "1" * 5000 + ",5,5\n"),
    trace("csv-datetime-garbage", "t.csv",
          "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-13-45 99:99:99,5,5\n"),
    trace("csv-short-row", "t.csv", CSV_OK + "2.0,5\n"),
    trace("csv-missing-column", "t.csv", "arrived_at,num_prefill_tokens\n0,1\n1,2\n"),
    trace("csv-unknown-header", "t.csv", "a,b,c\n1,2,3\n"),
    trace("csv-only-header", "t.csv", CSV_HEADER),
    trace("csv-empty", "t.csv", ""),
    trace("csv-blank-lines", "t.csv", "\n\n\n"),
    trace("csv-huge-field", "t.csv", CSV_OK + "2.0,5," + "1" * 200_000 + "\n"),
    trace("csv-unterminated-quote", "t.csv", CSV_OK + '2.0,"5,5\n3.0,5,5\n'),
    trace("csv-nul-byte", "t.csv", CSV_OK + "2.0,5\x00,5\n"),
    trace("csv-not-utf8", "t.csv", CSV_OK.encode() + b"2.0,\xff\xfe,5\n"),
    trace("csv-one-request", "t.csv", CSV_HEADER + "0.0,100,10\n"),
    trace("csv-all-at-one-instant", "t.csv", CSV_HEADER + "5.0,100,10\n5.0,100,10\n"),
    trace("csv-window-empty", "t.csv", CSV_OK, "--window", "100:200"),
    trace("csv-window-one-instant", "t.csv", CSV_OK, "--window", "0:0.5"),
    trace("csv-rate-scale-underflow", "t.csv", CSV_OK, "--rate-scale", "1e-320"),
    trace("csv-rate-scale-zero", "t.csv", CSV_OK, "--rate-scale", "0"),
    trace("csv-binary", "t.csv", bytes(range(256)) * 4),
    trace("txt-unknown-format", "t.txt", "hello world\n"),
    # Mooncake JSONL
    trace("jsonl-input-2^63", "t.jsonl", _moon_ok() + _moon(timestamp=5, input_length=BIG) + "\n",
          sub=True),
    trace("jsonl-output-2^63", "t.jsonl", _moon_ok() + _moon(timestamp=5, output_length=BIG)
          + "\n"),
    trace("jsonl-output-1e20", "t.jsonl", _moon_ok() + _moon(output_length=10**20) + "\n"),
    trace("jsonl-input-1e12", "t.jsonl", _moon_ok() + _moon(input_length=10**12) + "\n"),
    trace("jsonl-input-5000-digits", "t.jsonl",
          _moon_ok() + '{"timestamp": 5, "input_length": ' + "9" * 5000
          + ', "output_length": 3}\n'),
    trace("jsonl-deep-nesting", "t.jsonl", _moon_ok() + "[" * 100_000 + "]" * 100_000 + "\n",
          sub=True),
    trace("jsonl-deep-nesting-in-field", "t.jsonl",
          _moon_ok() + '{"timestamp": 5, "input_length": ' + "[" * 50_000 + "]" * 50_000
          + ', "output_length": 3}\n'),
    trace("jsonl-deep-object", "t.jsonl", _moon_ok() + '{"a":' * 50_000 + "1" + "}" * 50_000
          + "\n"),
    trace("jsonl-invalid-json", "t.jsonl", _moon_ok() + '{"timestamp": 1,\n'),
    trace("jsonl-array", "t.jsonl", "[1, 2]\n"),
    trace("jsonl-missing-field", "t.jsonl", _moon_ok() + _moon(input_length=...) + "\n"),
    trace("jsonl-bool-length", "t.jsonl", _moon_ok() + _moon(input_length=True) + "\n"),
    trace("jsonl-string-timestamp", "t.jsonl", _moon_ok() + _moon(timestamp="later") + "\n"),
    trace("jsonl-nan-timestamp", "t.jsonl", _moon_ok() + '{"timestamp": NaN, '
          '"input_length": 5, "output_length": 3}\n'),
    trace("jsonl-infinity-length", "t.jsonl", _moon_ok() + '{"timestamp": 1, '
          '"input_length": Infinity, "output_length": 3}\n'),
    trace("jsonl-hash-ids-not-list", "t.jsonl", _moon(hash_ids="0,1") + "\n"),
    trace("jsonl-hash-ids-nested", "t.jsonl", _moon(hash_ids=[[0], [1]]) + "\n"),
    trace("jsonl-hash-ids-2^70", "t.jsonl",
          _moon(hash_ids=[0]) + "\n" + _moon(timestamp=1000, hash_ids=[2**70]) + "\n"),
    trace("jsonl-hash-ids-too-many", "t.jsonl", _moon(hash_ids=[0, 1, 2]) + "\n"),
    trace("jsonl-hash-ids-mixed", "t.jsonl", _moon(hash_ids=[0]) + "\n" + _moon() + "\n"),
    trace("jsonl-empty", "t.jsonl", "\n\n"),
    trace("jsonl-one-request", "t.jsonl", _moon() + "\n"),
    trace("jsonl-not-utf8", "t.jsonl", b'{"timestamp": 0, "input_length": \xff}\n'),
    trace("jsonl-long-value-echo", "t.jsonl", _moon_ok() + _moon(input_length="x" * 100_000)
          + "\n"),
    Case("trace-missing-file", {}, ("simulate", "--trace", "{tmp}/absent.csv")),
    Case("trace-is-directory", {"d.csv/x": ""}, ("simulate", "--trace", "{tmp}/d.csv")),
]


# ------------------------------------------------------------------------------ configs
def config(id_: str, text: str, extra: dict[str, str | bytes] | None = None, *,
           marks: tuple = (), sub: bool = False) -> Case:
    files: dict[str, str | bytes] = {"c.toml": text, **(extra or {})}
    return Case(f"config-{id_}", files,
                ("run", "--config", "{tmp}/c.toml", "--results-dir", "{tmp}/results"),
                marks=marks, subprocess=sub)


def _traced(id_: str, content: str | bytes, name: str = "t.csv") -> Case:
    return config(f"trace-{id_}", f"[workloads]\ntraces = ['{{tmp}}/{name}']\n",
                  {name: content})


REFUSED_BASELINE = GOOD_POLICY + "import os\n"
CONFIGS = [
    config("not-toml", "[budget\n", sub=True),
    config("not-utf8", b"name = '\xff'\n"),
    config("nul-byte", "name = 'a\x00'\n"),
    config("unknown-key", "bogus = 1\n"),
    config("unknown-section-key", "[budget]\nproposal = 3\n"),
    config("wrong-type", "[budget]\ntrials = 'many'\n"),
    config("float-for-int", "[budget]\ntrials = 2.5\n"),
    config("table-for-scalar", "seed = { a = 1 }\n"),
    config("name-empty", "name = ''\n"),
    config("name-slash", "name = '../escape'\n"),
    config("name-too-long", f"name = '{'a' * 300}'\n"),
    config("seed-negative", "seed = -1\n"),
    config("seed-2^64", f"seed = {2**64}\n"),
    config("seed-huge", "seed = 99999999999999999999999999\n"),
    config("parallelism-0", "parallelism = 0\n"),
    config("parallelism-100000", "parallelism = 100000\n", sub=True),
    config("model-unknown", "[cluster]\nmodel = 'gpt-9'\n"),
    config("gpu-unknown", "[cluster]\ngpu = 'tpu9000'\n"),
    config("tp-0", "[cluster]\ntp = 0\n"),
    config("tp-3", "[cluster]\ntp = 3\n"),
    config("tp-1024", "[cluster]\ntp = 1024\n"),
    config("replicas-0", "[cluster]\nreplicas = 0\n"),
    config("replicas-100000", "[cluster]\nreplicas = 100000\n"),
    config("memory-utilization-1.5", "[cluster]\ngpu_memory_utilization = 1.5\n"),
    config("block-size-0", "[cluster]\nblock_size = 0\n"),
    config("block-size-1e9", "[cluster]\nblock_size = 1000000000\n"),
    config("max-batch-tokens-1e12", "[cluster]\nmax_batch_tokens = 1000000000000\n"),
    config("model-does-not-fit", "[cluster]\nmodel = 'llama-3-70b'\ngpu = 'h100'\n"),
    config("ttft-0", "[slo]\nttft_s = 0\n"),
    config("ttft-inf", "[slo]\nttft_s = inf\n"),
    config("ttft-1e300", "[slo]\nttft_s = 1e300\n"),
    config("tpot-negative", "[slo]\ntpot_s = -0.1\n"),
    config("share-1", "[slo]\nshare = 1.0\n"),
    config("scenario-unknown", "[workloads]\nscenarios = ['chatty']\n"),
    config("scenario-duplicate", "[workloads]\nscenarios = ['chat', 'chat']\nscreen = ['chat']\n"),
    config("no-workloads", "[workloads]\nscenarios = []\nscreen = []\n"),
    config("requests-5", "[workloads]\nrequests = 5\n"),
    config("requests-1e12", "[workloads]\nrequests = 1000000000000\n"),
    config("scenario-requests-1e12", "[workloads]\nscenario_requests = { chat = 1000000000000 }\n",
           sub=True),
    config("heldout-requests-1e12", "[workloads]\nheldout_requests = { chat = 1000000000000 }\n"),
    config("heldout-requests-unknown", "[workloads]\nheldout_requests = { chatty = 100 }\n"),
    config("seeds-empty", "[workloads]\ntrain_seeds = []\n"),
    config("seeds-overlap", "[workloads]\ntrain_seeds = [1]\nheldout_seeds = [1]\n"),
    config("seeds-negative", "[workloads]\ntrain_seeds = [-1]\n"),
    config("seeds-2^64", f"[workloads]\nheldout_seeds = [{2**64}, 3]\n"),
    config("seeds-duplicate", "[workloads]\nheldout_seeds = [1001, 1001, 1002]\n"),
    config("seeds-too-many", "[workloads]\nheldout_seeds = [" + ", ".join(
        str(2000 + i) for i in range(5000)) + "]\n"),
    config("window-reversed", "[workloads]\ntrain_window = [0.6, 0.0]\n"),
    config("window-three", "[workloads]\ntrain_window = [0.0, 0.3, 0.6]\n"),
    config("window-nan", "[workloads]\ntrain_window = [0.0, nan]\n"),
    config("traces-missing", "[workloads]\ntraces = ['{tmp}/absent.csv']\n"),
    config("traces-duplicate", "[workloads]\ntraces = ['{tmp}/t.csv', '{tmp}/t.csv']\n",
           {"t.csv": CSV_HEADER + "".join(f"{i}.0,100,10\n" for i in range(50))}),
    _traced("malformed-field", CSV_OK + "2.0,abc,5\n"),
    _traced("prompt-2^63", CSV_OK + f"2.0,{BIG},5\n"),
    _traced("prompt-1e12", CSV_OK + "2.0,1000000000000,5\n"),
    _traced("deep-json", _moon_ok() + "[" * 100_000 + "]" * 100_000 + "\n", "t.jsonl"),
    _traced("one-request", CSV_HEADER + "0.0,100,10\n"),
    _traced("prompt-over-kv-cache", CSV_HEADER + "".join(
        f"{i}.0,{2_000_000 if i == 30 else 100},10\n" for i in range(50))),
    _traced("empty-window", CSV_HEADER + "0.0,100,10\n0.1,100,10\n100.0,100,10\n"),
    config("ladder-empty", "[objective]\nladder = []\n"),
    config("ladder-negative", "[objective]\nladder = [1.0, -2.0]\n"),
    config("ladder-1e300", "[objective]\nladder = [1.0, 1e300]\n"),
    config("goodput-unknown", "[objective]\ngoodput = 'vibes'\n"),
    config("baseline-unknown", "[objective]\nbaseline = 'no_such_policy'\n"),
    config("baseline-missing-file", "[objective]\nbaseline = '{tmp}/absent.py'\n"),
    config("baseline-refused", "[objective]\nbaseline = '{tmp}/bad.py'\n",
           {"bad.py": REFUSED_BASELINE}),
    config("proposer-kind", "[proposer]\nkind = 'oracle'\n"),
    config("offline-seed-negative", "[proposer.offline]\nseed = -5\n"),
    config("proposals-negative", "[budget]\nproposals = -1\n"),
    config("proposals-1e12", "[budget]\nproposals = 1000000000000\n"),
    config("trials-0", "[budget]\ntrials = 0\n"),
    config("trials-1e9", "[budget]\ntrials = 1000000000\n"),
    config("wall-time-0", "[budget]\nwall_time_s = 0\n"),
    config("wall-time-1e300", "[budget]\nwall_time_s = 1e300\n"),
    config("tokens-negative", "[budget]\ntokens = -1\n"),
    config("tokens-2^64", f"[budget]\ntokens = {2**64}\n"),
    config("usd-negative", "[budget]\nusd = -0.5\n"),
    config("islands-0", "[search]\nislands = 0\n"),
    config("islands-1e6", "[search]\nislands = 1000000\n"),
    config("search-seed-unknown", "[search]\nseeds = ['no_such_policy']\n"),
    config("search-seed-missing-file", "[search]\nseeds = ['{tmp}/absent.py']\n"),
    config("in-flight-1e6", "[search]\nin_flight = 1000000\n"),
    config("finalists-0", "[search]\nfinalists = 0\n"),
    config("screen-threshold-nan", "[search]\nscreen_threshold = nan\n"),
    config("confidence-1.5", "[gate]\nconfidence = 1.5\n"),
    config("bootstrap-1e12", "[gate]\nbootstrap = 1000000000000\n"),
    config("bootstrap-10", "[gate]\nbootstrap = 10\n"),
    config("sandbox-backend", "[sandbox]\nbackend = 'chroot'\n"),
    config("sandbox-timeout-0", "[sandbox]\ntimeout_s = 0\n"),
    config("sandbox-memory-2^50", f"[sandbox]\nmemory_mb = {2**50}\n"),
    Case("config-missing-file", {}, ("run", "--config", "{tmp}/absent.toml",
                                     "--results-dir", "{tmp}/results")),
    Case("config-is-directory", {"d/x": ""}, ("run", "--config", "{tmp}/d",
                                              "--results-dir", "{tmp}/results")),
]


# ------------------------------------------------------------------------------ policies
def evaluated(id_: str, code: str | bytes) -> Case:
    """A policy ``evaluate`` rejects (exit 3) with one reason."""
    return Case(f"evaluate-{id_}", {"p.py": code},
                ("evaluate", "--policy", "{tmp}/p.py", "--sandbox", "process", "--requests",
                 "20"), rc=3)


def simulated(id_: str, code: str | bytes, *extra: str, sub: bool = False) -> Case:
    """A policy file ``simulate`` cannot use (exit 2)."""
    return Case(f"simulate-{id_}", {"p.py": code},
                ("simulate", "--policy", "{tmp}/p.py", "--requests", "20", *extra),
                subprocess=sub)


def _fn(body: str, head: str = "") -> str:
    """GOOD_POLICY with ``head`` at the top and ``body`` as partition's first line."""
    return (f"{head}TUNABLES = {{}}\n\n\ndef partition(replica, params):\n"
            f"    {body}\n    return (512, ())\n")


POLICIES = [
    evaluated("import-os", "import os\n" + GOOD_POLICY),
    evaluated("import-os-in-function", _fn("import os")),
    evaluated("import-math-in-function", _fn("import math")),
    evaluated("from-os-in-function", _fn("from os import path")),
    evaluated("from-subprocess", "from subprocess import run\n" + GOOD_POLICY),
    evaluated("import-submodule", "import os.path\n" + GOOD_POLICY),
    evaluated("class-top-level", "class Helper:\n    pass\n\n\n" + GOOD_POLICY),
    evaluated("class-in-function", _fn("class Helper:\n        pass")),
    evaluated("with-block", _fn("with params:\n        pass")),
    evaluated("async-def", "async def helper():\n    return 1\n\n\n" + GOOD_POLICY),
    evaluated("dunder-attribute", _fn("x = ().__class__")),
    evaluated("dunder-name", _fn("x = __builtins__")),
    evaluated("private-attribute", _fn("x = replica._state")),
    evaluated("getattr", _fn("x = getattr(replica, 'waiting')")),
    evaluated("eval", _fn("x = eval('1')")),
    evaluated("open", _fn("x = open('/etc/passwd')")),
    evaluated("print", _fn("print(1)")),
    evaluated("type-call", _fn("x = type(replica)")),
    evaluated("shadow-builtin", _fn("len = 3")),
    evaluated("undefined-name", _fn("x = missing_name")),
    evaluated("format-attribute", _fn("x = '{0.waiting}'.format(replica)")),
    evaluated("bare-except", _fn("try:\n        x = 1\n    except:\n        x = 2")),
    evaluated("return-in-finally",
              "TUNABLES = {}\n\n\ndef partition(replica, params):\n    try:\n"
              "        x = 1\n    finally:\n        return 512\n"),
    evaluated("top-level-loop", "for i in range(3):\n    pass\n" + GOOD_POLICY),
    evaluated("int-bomb", _fn("x = 2 ** 10000000")),
    evaluated("repeat-bomb", _fn("x = 'a' * 10 ** 10")),
    evaluated("deep-nesting", _fn("x = " + "(" * 300 + "1" + ")" * 300)),
    evaluated("too-many-lines", GOOD_POLICY + "\n" * 3000),
    evaluated("too-big", GOOD_POLICY + "# " + "x" * 70_000 + "\n"),
    evaluated("not-utf8", GOOD_POLICY.encode() + b"# \xff\xfe\n"),
    evaluated("nul-byte", GOOD_POLICY + "\x00\n"),
    evaluated("syntax-error", GOOD_POLICY + "def broken(:\n"),
    evaluated("no-tunables", "def partition(replica, params):\n    return 512\n"),
    evaluated("tunables-not-dict", "TUNABLES = [1]\n\n\ndef partition(replica, params):\n"
              "    return 512\n"),
    evaluated("tunable-low-above-high",
              "TUNABLES = {'c': {'type': 'int', 'low': 10, 'high': 1, 'default': 5}}\n\n\n"
              "def partition(replica, params):\n    return 512\n"),
    evaluated("no-decision-point", "TUNABLES = {}\n\n\ndef helper():\n    return 1\n"),
    evaluated("wrong-signature", "TUNABLES = {}\n\n\ndef partition(replica):\n    return 512\n"),
    evaluated("unseeded-random", "import random\n" + _fn("x = random.Random()")),
    evaluated("random-module-function", "import random\n" + _fn("x = random.random()")),
    evaluated("empty-file", ""),
    simulated("syntax-error", GOOD_POLICY + "def broken(:\n", sub=True),
    simulated("nul-byte", GOOD_POLICY + "\x00\n", sub=True),
    simulated("not-utf8", GOOD_POLICY.encode() + b"# \xff\xfe\n"),
    simulated("no-tunables", "def partition(replica, params):\n    return 512\n"),
    simulated("no-decision-point", "TUNABLES = {}\n\n\ndef helper():\n    return 1\n"),
    simulated("tunable-bad-type",
              "TUNABLES = {'c': {'type': 'str', 'low': 1, 'high': 2, 'default': 1}}\n\n\n"
              "def partition(replica, params):\n    return 512\n"),
    simulated("tunable-huge-bound",
              "TUNABLES = {'c': {'type': 'int', 'low': 1, 'high': 10 ** 400, 'default': 1}}"
              "\n\n\ndef partition(replica, params):\n    return 512\n"),
    simulated("too-big", GOOD_POLICY + "# " + "x" * 70_000 + "\n"),
    simulated("empty-file", ""),
    simulated("unknown-param", GOOD_POLICY, "--param", "nope=1"),
    simulated("param-not-a-number", GOOD_POLICY, "--param", "x=abc"),
    Case("simulate-missing-policy", {}, ("simulate", "--policy", "{tmp}/absent.py")),
    Case("evaluate-missing-policy", {}, ("evaluate", "--policy", "{tmp}/absent.py",
                                         "--sandbox", "process")),
    Case("simulate-policy-is-directory", {"d.py/x": ""}, ("simulate", "--policy", "{tmp}/d.py")),
    Case("simulate-requests-1e12", {}, ("simulate", "--requests", "1000000000000")),
    Case("simulate-requests-0", {}, ("simulate", "--requests", "0")),
    Case("simulate-rate-inf", {}, ("simulate", "--rate", "inf", "--requests", "20")),
    Case("simulate-replicas-100000", {}, ("simulate", "--replicas", "100000", "--requests", "20")),
    Case("simulate-tp-3", {}, ("simulate", "--tp", "3")),
    Case("simulate-capacity-share-2", {}, ("simulate", "--requests", "20", "--capacity",
                                           "--capacity-share", "2")),
    Case("simulate-horizon-negative", {}, ("simulate", "--requests", "20", "--horizon", "-1")),
    Case("simulate-ttft-slo-inf", {}, ("simulate", "--requests", "20", "--ttft-slo", "inf")),
    Case("simulate-seed-negative", {}, ("simulate", "--requests", "20", "--seed", "-1")),
]

CASES = TRACES + CONFIGS + POLICIES


def _materialise(case: Case, tmp: Path) -> list[str]:
    for name, content in case.files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{tmp}", str(tmp)), encoding="utf-8")
    return [a.replace("{tmp}", str(tmp)) for a in case.argv]


def _the_line(case: Case, rc: int, out: str, err: str) -> str:
    """The one line of a refusal; fails the case on anything else."""
    assert "Traceback" not in out + err, f"a traceback:\n{err[-2000:]}"
    assert rc == case.rc, f"exit status {rc}, want {case.rc}; stderr: {err[-1000:]!r}"
    if case.rc == 3:  # evaluate's verdict: one reason, the file has one fault
        lines = [ln for ln in out.splitlines() if ln.startswith("  - ")]
    else:
        lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"{len(lines)} lines, want 1:\n" + "\n".join(lines)[:3000]
    assert len(lines[0]) <= MAX_LINE, f"a {len(lines[0])}-character line: {lines[0][:300]}..."
    return lines[0]


class Accepted(BaseException):
    """Raised where a campaign would start: a BaseException, so that the campaign's own
    one-line error handling (which catches Exception) cannot turn it into a refusal."""


def _accepted(self, *args, **kwargs):
    raise Accepted("the malformed config was accepted: a campaign started")


@pytest.fixture(autouse=True)
def _no_endpoint(monkeypatch):
    for key in ("OPENAI_MODEL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_refused_with_one_line(case: Case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(campaign.Campaign, "_run", _accepted)
    argv = _materialise(case, tmp_path)
    rc = main(argv)
    out, err = capsys.readouterr()
    line = _the_line(case, rc, out, err)
    assert line.strip()
    results = tmp_path / "results"
    assert not results.exists() or not any(results.iterdir()), "a folder was left behind"


SUBPROCESS_CASES = [c for c in CASES if c.subprocess]
# The real CLI in a fresh interpreter, with the same guard: a wrongly accepted config must fail
# the case, not start a campaign (and its worker pool) on a shared machine.
_GUARDED_CLI = """
import sys
from autotuner import campaign
from autotuner.commands.main import main

class Accepted(BaseException):
    pass

def _accepted(self, *args, **kwargs):
    raise Accepted("the malformed config was accepted: a campaign started")

campaign.Campaign._run = _accepted
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks)
                                  for c in SUBPROCESS_CASES])
def test_refused_with_one_line_as_a_real_process(case: Case, tmp_path):
    argv = _materialise(case, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _GUARDED_CLI, *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    _the_line(case, proc.returncode, proc.stdout, proc.stderr)
    results = tmp_path / "results"
    assert not results.exists() or not any(results.iterdir()), "a folder was left behind"


def test_controls_the_harness_would_catch(tmp_path, monkeypatch, capsys):
    """The same harness on well-formed inputs: they run (a BOM-prefixed policy included, as Python
    accepts it), and a good config reaches the guard, so an accepted malformed config cannot
    pass unnoticed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(campaign.Campaign, "_run", _accepted)
    (tmp_path / "p.py").write_text("\ufeff" + GOOD_POLICY, encoding="utf-8")
    (tmp_path / "t.csv").write_text(CSV_HEADER + "".join(f"{i}.0,100,10\n" for i in range(50)))
    assert main(["simulate", "--policy", str(tmp_path / "p.py"), "--trace",
                 str(tmp_path / "t.csv")]) == 0
    assert main(["evaluate", "--policy", str(tmp_path / "p.py"), "--sandbox", "process",
                 "--requests", "20"]) == 0
    (tmp_path / "c.toml").write_text(f"[workloads]\ntraces = ['{tmp_path / 't.csv'}']\n")
    with pytest.raises(Accepted, match="accepted"):
        main(["run", "--config", str(tmp_path / "c.toml"), "--results-dir",
              str(tmp_path / "results"), "--sandbox", "process"])
    capsys.readouterr()


def test_the_corpus_is_the_size_the_bar_asks_for():
    assert len(CASES) >= 130
    assert len({c.id for c in CASES}) == len(CASES)
    assert 5 <= len(SUBPROCESS_CASES) <= 10

