"""Tests for catop: python3 -m unittest -v test_catop

Every expected number here was computed by hand from the rates in prices.json
(USD per token); none is read back from catop itself.  No test touches the
network or the real home folder.
"""

import collections
import contextlib
import io
import json
import os
import pickle
import random
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

import catop

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "examples")
AGENT_EXAMPLES = os.path.join(EXAMPLES, "agents")


def real_catop_folders():
    """The catop folders of the real state and cache homes, which no test may touch."""
    home = os.path.expanduser("~")
    return [os.path.join(os.environ.get(variable) or os.path.join(home, *default), "catop")
            for variable, default in (("XDG_STATE_HOME", (".local", "state")),
                                      ("XDG_CACHE_HOME", (".cache",)),
                                      ("XDG_CONFIG_HOME", (".config",)))]


def folder_fingerprint(folder):
    """{relative path: (size, mtime)} of every file under folder ({} if none)."""
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            try:
                info = os.stat(path)
            except OSError:
                continue
            found[os.path.relpath(path, folder)] = (info.st_size, info.st_mtime_ns)
    return found


_REAL_FOLDERS = {}
_MODULE_ENV = []


def setUpModule():
    """The whole run gets a home of its own (a test that forgets IsolatedEnv writes
    there, not into the user's history), and the real one is checked at the end."""
    for folder in real_catop_folders():
        _REAL_FOLDERS[folder] = folder_fingerprint(folder)
    home = tempfile.mkdtemp(prefix="catop-test-home-")
    patcher = mock.patch.dict(os.environ, {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",   # LiteLLM would fetch its map: no network
        "HOME": home, "XDG_STATE_HOME": os.path.join(home, "state"),
        "XDG_CACHE_HOME": os.path.join(home, "cache"),
        "XDG_CONFIG_HOME": os.path.join(home, "config")})
    patcher.start()
    _MODULE_ENV.append((patcher, home))


def tearDownModule():
    for patcher, home in _MODULE_ENV:
        patcher.stop()
        shutil.rmtree(home, True)
    touched = [folder for folder, before in _REAL_FOLDERS.items()
               if folder_fingerprint(folder) != before]
    if touched:
        raise AssertionError("a test wrote into the real %s" % ", ".join(touched))


def example(name):
    return os.path.join(EXAMPLES, name)


def bundled_prices():
    with open(os.path.join(HERE, "prices.json"), "rb") as handle:
        return catop.PriceBook(json.loads(handle.read()), "test")


PRICES = bundled_prices()


def read_examples(name):
    with open(example(name), "rb") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def cost_of(req, prices=PRICES):
    return catop.request_cost(req, prices.rates(req.model, req.provider))


def usage_tuple(req):
    return (req.miss, req.cache_read, req.cache_write_5m, req.cache_write_1h,
            req.output, req.reasoning)


class IsolatedEnv(unittest.TestCase):
    """Each test gets its own HOME and XDG folders; no agent variables leak in."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="catop-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "GEMINI_DATA_DIR",
                            "OPENCODE_DATA_DIR", "OPENCLAW_DIR", "COLUMNS")}
        env.update(HOME=self.tmp, XDG_CACHE_HOME=os.path.join(self.tmp, "cache"),
                   XDG_STATE_HOME=os.path.join(self.tmp, "state"),
                   XDG_CONFIG_HOME=os.path.join(self.tmp, "config"))
        patcher = mock.patch.dict(os.environ, env, clear=True)
        patcher.start()
        self.addCleanup(patcher.stop)
        network = mock.patch.object(catop, "fetch_prices", side_effect=AssertionError(
            "a test tried to fetch prices from the network"))
        network.start()
        self.addCleanup(network.stop)

    def run_main(self, *argv, stdin=None):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = catop.main(list(argv))
            except SystemExit as exit_:
                code = exit_.code
        return code, out.getvalue(), err.getvalue()

    def run_json(self, *argv):
        code, out, err = self.run_main(*(argv + ("--format", "json", "--offline",
                                                 "--no-history")))
        self.assertEqual(code, 0, err)
        return json.loads(out)

    def copy_agent_examples(self, folder, variable=None):
        """A writable copy of examples/agents/<folder>; variable, if given, points the
        agent at it."""
        root = os.path.join(self.tmp, folder)
        shutil.copytree(os.path.join(AGENT_EXAMPLES, folder), root)
        if variable:
            os.environ[variable] = root
        return root

    def point_agents_at_examples(self, home=None):
        os.environ.update(agent_variables(home or AGENT_EXAMPLES))


def agent_variables(home):
    """Every agent's variable pointed at its folder of the examples (copied to home)."""
    folders = {"CLAUDE_CONFIG_DIR": "claude", "CODEX_HOME": "codex",
               "GEMINI_DATA_DIR": os.path.join("gemini", "tmp"), "OPENCODE_DATA_DIR": "opencode",
               "OPENCLAW_DIR": "openclaw", "AMP_DATA_DIR": "amp", "DROID_SESSIONS_DIR": "droid",
               "CODEBUFF_DATA_DIR": "codebuff", "HERMES_HOME": "hermes",
               "PI_CODING_AGENT_DIR": "pi", "GOOSE_PATH_ROOT": "goose", "KILO_DATA_DIR": "kilo",
               "COPILOT_HOME": "copilot", "ANTIGRAVITY_DATA_DIR": "antigravity",
               "QWEN_DATA_DIR": "qwen", "GROK_HOME": "grok", "ZCODE_HOME": "zcode"}
    found = dict((name, os.path.join(home, folder)) for name, folder in folders.items())
    found["KIMI_DATA_DIR"] = ",".join(os.path.join(home, "kimi", part)
                                      for part in (".kimi", ".kimi-code"))
    return found


# ------------------------------------------------------------------ parsers

class UsageShapeTests(unittest.TestCase):
    """Every usage shape of formats.md section 2, decoded by hand."""

    CASES = [
        # file, line, (miss, read, 5m write, 1h write, output, reasoning), model, provider
        ("openai-chat.jsonl", 0, (500, 1500, 0, 0, 300, 0), "gpt-4o", "openai"),
        ("openai-chat.jsonl", 1, (2000, 8000, 0, 0, 2000, 1500), "o3", "openai"),
        ("openai-responses.jsonl", 0, (904, 4096, 0, 0, 800, 512), "gpt-5", "openai"),
        ("anthropic-messages.jsonl", 0, (50, 20000, 1000, 2000, 400, 0),
         "claude-sonnet-4-5-20250929", "anthropic"),
        ("anthropic-messages.jsonl", 1, (10, 0, 5000, 0, 100, 0), "claude-haiku-4-5",
         "anthropic"),
        ("litellm.jsonl", 0, (500, 9000, 2500, 0, 250, 0), "anthropic/claude-sonnet-4-5",
         "anthropic"),
        ("litellm.jsonl", 1, (952, 2048, 0, 0, 100, 0), "gpt-4o-mini", "openai"),
        ("bedrock-converse.jsonl", 0, (100, 8000, 1000, 0, 200, 0),
         "eu.anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic"),
        ("gemini.jsonl", 0, (50000, 200000, 0, 0, 4000, 3000), "gemini-2.5-pro", "google"),
        ("gemini.jsonl", 1, (1000, 0, 0, 0, 50, 0), "gemini-2.5-pro", "google"),
        ("deepseek.jsonl", 0, (500, 2500, 0, 0, 200, 0), "deepseek-chat", "deepseek"),
        ("deepseek.jsonl", 1, (50, 100, 0, 0, 10, 0), "deepseek-chat", "deepseek"),
        ("otel.jsonl", 0, (1000, 3000, 0, 0, 100, 0), "gpt-4o-2024-08-06", "openai"),
        ("otel.jsonl", 1, (500, 4000, 1500, 0, 300, 100), "claude-haiku-4-5", "anthropic"),
        ("camelcase.jsonl", 0, (5, 10000, 500, 0, 100, 0), "claude-sonnet-4-5", "anthropic"),
    ]

    def test_every_shape(self):
        for name, index, tokens, model, provider in self.CASES:
            with self.subTest(file=name, line=index):
                req = catop.normalize_record(read_examples(name)[index])
                self.assertEqual(usage_tuple(req), tokens)
                self.assertEqual(req.model, model)
                self.assertEqual(req.provider, provider)

    def test_peer_tool_example_anthropic_names_are_exclusive(self):
        # The earlier tool's log: Anthropic-named input_tokens beside cache fields,
        # with no input_tokens_details, is uncached input only.
        record = {"agent": "claude-code", "model": "claude-sonnet-4-5",
                  "litellm_provider": "anthropic",
                  "metadata": {"project": "eval-runner", "session_id": "eval-2026-05-14"},
                  "usage": {"input_tokens": 8200, "completion_tokens": 900,
                            "cache_read_input_tokens": 6100,
                            "cache_creation_input_tokens": 450},
                  "response_cost": 0.028}
        req = catop.normalize_record(record)
        self.assertEqual(usage_tuple(req), (8200, 6100, 450, 0, 900, 0))
        self.assertEqual((req.agent, req.project, req.session),
                         ("claude-code", "eval-runner", "eval-2026-05-14"))
        self.assertEqual(req.observed_cost, 0.028)
        spend = catop.normalize_record({"model": "deepseek-chat", "spend": 0.001, "usage": {
            "input_tokens": 2400, "output_tokens": 300, "cache_read_input_tokens": 1500,
            "cache_creation_input_tokens": 120}})
        self.assertEqual(usage_tuple(spend), (2400, 1500, 120, 0, 300, 0))
        self.assertEqual(spend.observed_cost, 0.001)

    def test_attribution_and_time(self):
        chat = catop.normalize_record(read_examples("openai-chat.jsonl")[0])
        self.assertEqual((chat.project, chat.session), ("rag-api", "rag-1"))
        self.assertEqual(chat.ts, 1773129600.0)  # 2026-03-10T08:00:00Z
        litellm = read_examples("litellm.jsonl")
        first = catop.normalize_record(litellm[0])
        self.assertEqual((first.project, first.session), ("search-team", "t-1"))
        self.assertAlmostEqual(first.ts, 1773133200.123, places=3)
        self.assertEqual(first.observed_cost, 0.0158)
        slo = catop.normalize_record(litellm[1])
        self.assertEqual((slo.project, slo.session, slo.ts), ("ci-key", "trace-9", 1773133200.5))
        self.assertEqual(slo.observed_cost, 0.0004)
        responses = catop.normalize_record(read_examples("openai-responses.jsonl")[0])
        self.assertEqual((responses.ts, responses.project), (1773129600.0, "agent-loop"))
        bedrock = catop.normalize_record(read_examples("bedrock-converse.jsonl")[0])
        self.assertEqual(bedrock.ts, 1773136800.0)  # epoch milliseconds
        otel = read_examples("otel.jsonl")
        self.assertEqual(catop.normalize_record(otel[0]).session, "conv-1")
        self.assertEqual(catop.normalize_record(otel[0]).ts, 1773140400.0)
        self.assertEqual(catop.normalize_record(otel[1]).ts, 1773140460.0)
        camel = catop.normalize_record(read_examples("camelcase.jsonl")[0])
        self.assertEqual(camel.observed_cost, 0.006)

    def test_a_per_request_id_is_never_a_session(self):
        req = catop.normalize_record({"id": "chatcmpl-1", "request_id": "r-1", "model": "gpt-4o",
                                      "usage": {"prompt_tokens": 10, "completion_tokens": 1}})
        self.assertEqual(req.session, "")

    def test_no_timestamp_stays_none(self):
        req = catop.normalize_record({"model": "gpt-4o", "usage": {"prompt_tokens": 10}})
        self.assertIsNone(req.ts)

    def test_absent_cache_field_does_not_override_present_one(self):
        req = catop.normalize_record({"usage": {
            "prompt_tokens": 1000, "completion_tokens": 1,
            "prompt_tokens_details": {"audio_tokens": 0}, "cache_read_input_tokens": 600}})
        self.assertEqual(usage_tuple(req), (400, 600, 0, 0, 1, 0))

    def test_inclusive_miss_is_clamped_at_zero(self):
        req = catop.normalize_record({"usage": {"prompt_tokens": 100, "completion_tokens": 1,
                                                "prompt_tokens_details": {"cached_tokens": 150}}})
        self.assertEqual(req.miss, 0)
        self.assertEqual(req.cache_read, 150)

    def test_damaged_counts_raise(self):
        for bad in (float("nan"), float("inf"), -1, True, "12a", 10 ** 12, 1.5, [1], {"a": 1}):
            with self.subTest(value=bad):
                with self.assertRaises((ValueError, TypeError)):
                    catop.normalize_record({"usage": {"prompt_tokens": bad}})
        self.assertEqual(catop.as_count("42"), 42)
        self.assertEqual(catop.as_count(" 42 "), 42)
        self.assertEqual(catop.as_count(42.0), 42)
        self.assertEqual(catop.as_count("4.2e1"), 42)

    def test_timestamps(self):
        cases = [("2026-03-10T08:00:00Z", 1773129600.0), ("2026-03-10T08:00:00.250Z", 1773129600.25),
                 ("2026-03-10T09:00:00+01:00", 1773129600.0), ("2026-03-10 08:00:00", 1773129600.0),
                 (1773129600, 1773129600.0), (1773129600000, 1773129600.0),
                 (1773129600000000, 1773129600.0), ("1773129600", 1773129600.0),
                 ("1773129600000000000", 1773129600.0), ("garbage", None), ("", None),
                 (-5, None), (float("nan"), None), ("2026-13-40T00:00:00Z", None), (None, None)]
        for value, expected in cases:
            with self.subTest(value=value):
                self.assertEqual(catop.parse_timestamp(value), expected)

    def test_a_damaged_second_is_not_read_from_the_cached_minute(self):
        self.assertEqual(catop.parse_timestamp("2026-03-10T08:00:00Z"), 1773129600.0)
        for text, expected in (("2026-03-10T08:00:nanZ", None), ("2026-03-10T08:00:1e9Z", None),
                               ("2026-03-10T08:00:-5Z", None), ("2026-03-10T08:00:07.Z", None),
                               ("2026-03-10T08:00:07,5Z", 1773129607.5),
                               ("2026-03-10T08:00:07.123456789Z", 1773129607.123456789),
                               ("2026-03-10T08:00:7.5Z", None), ("2026-03-10T08:00:075Z", None),
                               ("2026-03-10T08:00:07.5.1Z", None), ("2026-03-10T08:00:.75Z", None),
                               ("2026-03-10T08:00:0_7Z", None), ("2026-03-10T08:00:5.Z", None),
                               ("2026-03-10T08:00:\u0660\u0667.5Z", 1773129607.5)):
            with self.subTest(text=text):
                self.assertEqual(catop.parse_timestamp(text), expected)
        # the first sight of a minute (parsed in full) and the later ones (cached) agree
        first = catop._parse_iso("2026-03-11T08:00:07.123456789Z")
        self.assertEqual(catop.parse_timestamp("2026-03-11T08:00:07.123456789Z"), first)

    def test_json_lines_decode_exactly_as_json_loads(self):
        lines = [b'{"a": 1}', b'  {"a": 1}', b'{"a": 1}  \r', b'{"a": 1} x', b'{"a": 1}\x0c',
                 b'{"a": 1}{"b": 2}', b'[1, 2]', b'"text"', b'NaN', b'{"a": Infinity}',
                 b'{"a": 1e999}', b'', b'   ', b'{"a": 1', b'\xff{"a": 1}', b'{"\xc3\xa9": 1}',
                 b'{"a": "\\ud800"}', b'{"a":1,"a":2}', b'\t{"a": [1, {"b": null}]}\n', b'x']
        for line in lines:
            with self.subTest(line=line):
                try:
                    expected = ("value", json.loads(line.decode("utf-8")))
                except ValueError as error:
                    expected = ("error", type(error).__mro__[-3])  # ValueError
                try:
                    got = ("value", catop.decode_json_line(line))
                except ValueError as error:
                    got = ("error", type(error).__mro__[-3])
                self.assertEqual(repr(got), repr(expected))

    def test_compiled_shapes_agree_with_the_interpreter(self):
        records = []
        for name in sorted(os.listdir(EXAMPLES)):
            with open(example(name), "rb") if name.endswith(".jsonl") else io.BytesIO() as lines:
                for line in lines:
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        pass
        records = [record for record in records if type(record) is dict]
        marks = random.Random(3)   # failed calls' marks on good records, and on damaged ones
        for record in records[:300] + [{"model": "gpt-4o", "usage": {"prompt_tokens": 0}}] * 20:
            copy = json.loads(json.dumps(record))
            slo = copy.get("standard_logging_object")
            holder = marks.choice([copy, slo if type(slo) is dict else copy])
            holder[marks.choice(["status", "error_str", "exception"])] = marks.choice(
                ["failure"] * 4 + ["success", "429 Too Many Requests", "", None, 0, {"x": 1}])
            records.append(copy)
        records += random_records(seed=11, count=600)
        wanted_sets = (catop.ALL_ATTRIBUTES, frozenset({"model", "provider", "time", "cost"}),
                       frozenset({"agent", "project", "session"}),
                       catop.Aggregate(PRICES).wanted_attributes())   # advice_project
        compared = produced = failed = 0
        functions = {}
        for record in records:
            usage, attributes = record.get("usage"), None
            if type(usage) is not dict or not usage:
                usage, attributes = catop.find_usage(record)
                if usage is None:
                    continue
            for wanted in wanted_sets:
                interpreted = outcome(catop.interpret_record, record, usage, attributes, wanted)
                shape = (wanted, tuple(record), tuple(usage), attributes is not None)
                if shape not in functions:
                    functions[shape] = catop.compile_shape(*shape)
                compiled = outcome(functions[shape], record, usage, attributes)
                self.assertEqual(compiled, interpreted, record)
                compared += 1
                produced += interpreted[0] == "request"
                failed += interpreted[1] is catop.FAILED
        self.assertGreater(compared, 1000)
        self.assertGreater(produced, 150)  # the generator makes real requests, not only junk
        self.assertGreater(failed, 20)

    def test_a_frequent_shape_is_compiled_and_reads_the_same(self):
        record = {"model": "gpt-4o", "shape-of-this-test": 1,
                  "usage": {"prompt_tokens": 1000, "completion_tokens": 10,
                            "prompt_tokens_details": {"cached_tokens": 800}}}
        shape = (catop.ALL_ATTRIBUTES, tuple(record), tuple(record["usage"]), False)
        first = catop.normalize_record(record)
        for _ in range(catop.COMPILE_AFTER_SIGHTINGS):
            self.assertEqual(catop.normalize_record(record), first)
        self.assertIn(shape, catop._COMPILED_SHAPES)
        self.assertEqual(usage_tuple(first), (200, 800, 0, 0, 10, 0))

    def test_no_text_of_the_log_reaches_compiled_code(self):
        hostile = "x'); __import__('os').system('false') #"
        record = {hostile: 1, "model": "gpt-4o", "usage": {hostile: 2, "prompt_tokens": 10}}
        plan = catop.UsagePlan(tuple(record["usage"]))
        source = "\n".join(catop._usage_source(plan) + catop._attribution_source(
            catop.attribution_plan(tuple(record), catop.ALL_ATTRIBUTES)))
        self.assertNotIn("__import__", source)
        self.assertNotIn("system", source)
        compiled = catop.compile_shape(catop.ALL_ATTRIBUTES, tuple(record), tuple(record["usage"]))
        self.assertEqual(compiled(record, record["usage"], None).miss, 10)

    def test_a_log_of_many_shapes_compiles_only_a_few_and_reads_them_all(self):
        lines = [json.dumps({"model": "gpt-4o", "key-%d" % shape: 1,
                             "usage": {"prompt_tokens": 100 + shape, "completion_tokens": 5}}
                            ).encode() for shape in range(6) for _ in range(10)]
        with mock.patch.object(catop, "_COMPILED_SHAPES", {}), \
                mock.patch.object(catop, "_SHAPE_SIGHTINGS", {}), \
                mock.patch.object(catop, "COMPILED_SHAPES_LIMIT", 2):
            requests = []
            catop.scan_request_lines(lines, catop.SourceStats("x"), requests.append)
            self.assertEqual(len(catop._COMPILED_SHAPES), 2)
        self.assertEqual(len(requests), 60)
        self.assertEqual(sum(req.miss for req in requests), 10 * sum(range(100, 106)))

    def test_clean_removes_control_and_bidi_characters(self):
        self.assertEqual(catop.clean("a\x1b]0;x\x07b\x1b[2Jc\u202ed\x9be\r\n"), "a]0;xb[2Jcde")
        self.assertEqual(catop.clean(None), "")
        self.assertEqual(catop.clean(12), "12")

    def test_clean_removes_format_characters_and_invisibles(self):
        # soft hyphen, Arabic letter mark, zero-width space and joiner, word joiner, a tag
        # letter, a Hangul filler: each draws nothing, so "gpt-4o" and "gpt-4o" + one of
        # them would look alike in a table
        for invisible in "\u00ad\u061c\u200b\u200d\u2060\U000e0041\u3164\u115f\u034f":
            with self.subTest(char="U+%04X" % ord(invisible)):
                self.assertEqual(catop.clean("gpt-" + invisible + "4o"), "gpt-4o")
        self.assertEqual(catop.clean("a\u3000b\u00a0c"), "a b c")    # spaces stay spaces
        self.assertEqual(catop.clean("\u6a21\u578b e\u0301"), "\u6a21\u578b e\u0301")

    def test_look_alike_names_are_one_model_priced_as_it(self):
        records = [{"model": "gpt-4o" + extra, "usage": {"prompt_tokens": 1000}}
                   for extra in ("", "\u200b", "\u00ad", "\ufe0f", "\U000e0041", "\x1b[0m")]
        requests = []
        catop.scan_request_lines([json.dumps(r).encode() for r in records],
                                 catop.SourceStats("x"), requests.append)
        self.assertEqual({req.model for req in requests}, {"gpt-4o", "gpt-4o[0m"})
        self.assertEqual(sum(1 for req in requests if req.model == "gpt-4o"), 5)

    def test_csv_cells_never_start_a_formula(self):
        cases = [("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"), ("+1", "'+1"), ("-1", "'-1"),
                 ("@SUM(A1)", "'@SUM(A1)"), ("\t=1+1", "'=1+1"), ("\r=1", "'=1"),
                 ("\x00=1", "'=1"), ("gpt-4o", "gpt-4o"), (3, 3), (-0.5, -0.5), (None, ""),
                 (True, "true"), (False, "false")]   # (a subagent's flag read "True")
        for value, cell in cases:
            with self.subTest(value=value):
                self.assertEqual(catop.csv_cell(value), cell)


def outcome(function, *args):
    """("request", Request) / ("none", None) / ("error", kind) of a call."""
    try:
        result = function(*args)
    except (ValueError, TypeError, OverflowError) as error:
        return ("error", type(error).__name__)
    return ("none", None) if result is None else ("request", result)


def random_records(seed, count):
    """Log records of random shapes with damaged, missing and odd values in every place
    a usage or an attribute can sit."""
    rng = random.Random(seed)
    diagnoses = random.Random(seed * 7919 + 1)
    usage_keys = sorted(set(catop._USAGE_KEYS) | {
        path[0] for path in catop._CACHE_READ_PATHS + catop._CACHE_WRITE_PATHS
        + catop._REASONING_PATHS} | {"cache_creation", "prompt_cache_miss_tokens",
                                     "thoughtsTokenCount", "cost", "total_tokens",
                                     "cacheDetails", "toolUsePromptTokenCount",
                                     "server_tool_use", "service_tier", "speed"})
    inner_keys = ["cached_tokens", "cache_write_tokens", "reasoning_tokens", "read", "write",
                  "ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens", "total",
                  "response_cost", "cache_creation_token_details", "cache_creation_input_tokens",
                  "ttl", "inputTokens", "web_search_requests"]
    attribute_keys = sorted(set(catop._MODEL_KEYS + catop._PROVIDER_KEYS + catop._PROJECT_KEYS
                                + catop._SESSION_KEYS + catop._TIME_KEYS + catop._COST_KEYS
                                + ("agent",)))

    def value(depth=0):
        roll = rng.random()
        if roll < 0.35:
            return rng.choice([0, 1, 7, 12345, 10 ** 9, 10 ** 9 + 1, -3])
        if roll < 0.45:
            return rng.choice(["12", " 40 ", "1e3", "x", "", "3.5", "nan", "-1"])
        if roll < 0.55:
            return rng.choice([1.0, 2.5, float("nan"), float("inf"), 7.0])
        if roll < 0.6:
            return rng.choice([True, False, None])
        if roll < 0.7:
            return rng.choice(["gpt-4o", "claude-sonnet-4-5", "s1", "2026-03-10T00:01:08.509Z",
                               1773102626.9])
        if roll < 0.8 and depth < 2:
            return {rng.choice(inner_keys + attribute_keys): value(depth + 1)
                    for _ in range(rng.randint(0, 3))}
        return [1, 2] if roll < 0.85 else rng.randint(0, 500000)

    def usage():
        return {key: value() for key in rng.sample(usage_keys, rng.randint(0, 6))}

    records = []
    for _ in range(count):
        record = {key: value() for key in rng.sample(attribute_keys, rng.randint(0, 6))}
        for place in rng.sample(["metadata", "response", "message", "standard_logging_object",
                                 "attributes"], rng.randint(0, 3)):
            inner = {key: value() for key in rng.sample(attribute_keys, rng.randint(0, 5))}
            if rng.random() < 0.3:
                inner["usage"] = usage()
            if place == "standard_logging_object" and rng.random() < 0.5:
                inner["metadata"] = {key: value() for key in rng.sample(attribute_keys, 3)}
                if rng.random() < 0.5:
                    inner["metadata"]["usage_object"] = usage()
            record[place] = inner if rng.random() > 0.1 else value()
        if rng.random() < 0.7:
            record["usage"] = usage()
        elif rng.random() < 0.5:
            record.update(usage())
        if diagnoses.random() < 0.5:   # its own generator: the records above stay the same
            holder = record
            place = diagnoses.choice(["", "response", "message", "standard_logging_object"])
            if place and type(record.get(place)) is dict:
                holder = record[place]
                if place == "standard_logging_object":
                    holder = holder.setdefault("response", {})
            if type(holder) is dict:
                key = diagnoses.choice(catop.DIAGNOSIS_KEYS)
                holder[key] = diagnoses.choice(RANDOM_DIAGNOSIS_VALUES + [value()])
        records.append(record)
    return records


# diagnoses good and bad, in both providers' shapes (either may sit under either key)
RANDOM_DIAGNOSIS_VALUES = [
    None, {}, [], "tools_changed", {"cache_miss_reason": None},
    {"cache_miss_reason": {"type": "tools_changed", "cache_missed_input_tokens": 900}},
    {"cache_miss_reason": {"type": "unavailable"}}, {"cache_miss_reason": {"type": 3}},
    {"cache_miss_reason": {"type": "model_changed", "cache_missed_input_tokens": -2}},
    {"type": "cache_hit"}, {"type": "cache_miss", "reason": "verbosity_changed",
                            "cache_missed_tokens": 10},
    {"type": "cache_miss"}, {"type": "comparison_response_not_found"},
    {"type": "cache_miss", "reason": "input_changed", "cache_missed_tokens": 1e30}]


# ------------------------------------------------------------------ pricing

class MoreShapesTests(unittest.TestCase):
    """formats.md section 2's second table, row by row, by the interpreter and by the
    compiled reader alike: (miss, read, 5m write, 1h write, output, reasoning)."""

    ROWS = [
        ("Bedrock cacheDetails: the TTL split of the writes",
         {"modelId": "anthropic.claude-sonnet-4-5", "usage": {
             "inputTokens": 100, "cacheReadInputTokens": 5000, "cacheWriteInputTokens": 3000,
             "cacheDetails": [{"ttl": "5m", "inputTokens": 1000},
                              {"ttl": "1h", "inputTokens": 2000}], "outputTokens": 50}},
         (100, 5000, 1000, 2000, 50, 0)),
        ("Bedrock cacheDetails of an unknown TTL: the flat figure",
         {"modelId": "x", "usage": {"inputTokens": 100, "cacheWriteInputTokens": 3000,
                                    "cacheDetails": [{"ttl": "2h", "inputTokens": 3000}],
                                    "outputTokens": 5}},
         (100, 0, 3000, 0, 5, 0)),
        ("LiteLLM cache_creation_token_details",
         {"model": "claude-sonnet-4-5", "usage": {
             "prompt_tokens": 10000, "completion_tokens": 100, "cache_read_input_tokens": 6000,
             "cache_creation_input_tokens": 3000, "prompt_tokens_details": {
                 "cached_tokens": 6000, "cache_creation_token_details": {
                     "ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000}}}},
         (1000, 6000, 1000, 2000, 100, 0)),
        ("xAI: reasoning outside completion_tokens, as total_tokens says",
         {"model": "grok-4", "usage": {
             "prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1500,
             "completion_tokens_details": {"reasoning_tokens": 300},
             "prompt_tokens_details": {"cached_tokens": 400}}},
         (600, 400, 0, 0, 500, 300)),
        ("OpenAI: the total is prompt + completion, reasoning inside",
         {"model": "o3", "usage": {
             "prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
             "completion_tokens_details": {"reasoning_tokens": 150}}},
         (1000, 0, 0, 0, 200, 150)),
        ("Moonshot's top-level cached_tokens, inside prompt_tokens",
         {"model": "kimi-k2", "usage": {"prompt_tokens": 2000, "completion_tokens": 50,
                                        "cached_tokens": 1500}},
         (500, 1500, 0, 0, 50, 0)),
        ("Gemini's toolUsePromptTokenCount: uncached input on top",
         {"modelVersion": "gemini-2.5-pro", "usageMetadata": {
             "promptTokenCount": 4000, "cachedContentTokenCount": 1000,
             "candidatesTokenCount": 100, "thoughtsTokenCount": 50,
             "toolUsePromptTokenCount": 700}},
         (3700, 1000, 0, 0, 150, 50)),
        ("DashScope's writes inside prompt_tokens, with their split",
         {"model": "qwen-plus", "usage": {"prompt_tokens": 5000, "completion_tokens": 20,
                                          "prompt_tokens_details": {
                                              "cached_tokens": 2000,
                                              "cache_creation_input_tokens": 1000,
                                              "cache_creation": {
                                                  "ephemeral_5m_input_tokens": 1000}}}},
         (2000, 2000, 1000, 0, 20, 0)),
        ("DashScope's writes, no split",
         {"model": "qwen-plus", "usage": {"prompt_tokens": 5000, "completion_tokens": 20,
                                          "prompt_tokens_details": {
                                              "cache_creation_input_tokens": 1000}}},
         (4000, 0, 1000, 0, 20, 0)),
    ]

    def test_each_row(self):
        for name, record, want in self.ROWS:
            with self.subTest(name):
                usage, attributes = record.get("usage"), None
                if usage is None:
                    usage, attributes = catop.find_usage(record)
                interpreted = catop.interpret_record(record, usage, attributes,
                                                     catop.ALL_ATTRIBUTES)
                compiled = catop.compile_shape(catop.ALL_ATTRIBUTES, tuple(record),
                                               tuple(usage), attributes is not None)(
                    record, usage, attributes)
                self.assertEqual(usage_tuple(interpreted), want)
                self.assertEqual(compiled, interpreted)

    def test_a_project_is_read_for_the_advice_only_where_the_ttl_is_a_choice(self):
        wanted = catop.Aggregate(PRICES).wanted_attributes()
        for provider, project in (("anthropic", "shop"), ("openai", ""), ("bedrock", "shop")):
            record = {"model": "m", "provider": provider, "metadata": {"project": "shop"},
                      "usage": {"prompt_tokens": 10, "completion_tokens": 1}}
            shape = (wanted, tuple(record), tuple(record["usage"]), False)
            compiled = catop.compile_shape(*shape)(record, record["usage"], None)
            interpreted = catop.interpret_record(record, record["usage"], None, wanted)
            self.assertEqual((compiled.project, interpreted.project), (project, project))
        self.assertEqual(catop.Aggregate(PRICES, ("project",)).wanted_attributes() >=
                         {"project"}, True)

    def test_openrouter_cost_is_observed(self):
        record = {"model": "openai/gpt-4o", "usage": {"prompt_tokens": 100,
                                                      "completion_tokens": 10, "cost": 0.00042}}
        for req in (catop.interpret_record(record, record["usage"], None, catop.ALL_ATTRIBUTES),
                    catop.compile_shape(catop.ALL_ATTRIBUTES, tuple(record),
                                        tuple(record["usage"]))(record, record["usage"], None)):
            self.assertEqual(req.observed_cost, 0.00042)
        openclaw = {"model": "m", "usage": {"input": 5, "output": 1, "cost": {"total": 0.5}}}
        self.assertEqual(catop.normalize_record(openclaw).observed_cost, 0.5)

    def test_gemini_cli_tool_tokens_are_uncached_input(self):
        ctx = catop.FileContext("x.jsonl")
        _, req = catop.parse_gemini({"type": "gemini", "id": "g1", "model": "gemini-2.5-pro",
                                     "tokens": {"input": 5000, "cached": 3000, "output": 100,
                                                "thoughts": 40, "tool": 600, "total": 5740}}, ctx)
        self.assertEqual(usage_tuple(req), (2600, 3000, 0, 0, 140, 40))


class PriceDimensionTests(IsolatedEnv):
    """formats.md section 4, price dimensions: the rate a request was billed at."""


    def test_the_readmes_tiers_example(self):
        """examples/dimensions/tiers.jsonl, as the README shows it, computed by hand."""
        doc = self.run_json("--file", os.path.join(EXAMPLES, "dimensions", "tiers.jsonl"))
        gpt5 = 8000 * 1.25e-6 + 2000 * 1.25e-7 + 500 * 1e-5          # standard: $0.01525
        opus = 1000 * 5e-6 + 500 * 2.5e-5                               # $0.0175
        want = {"priority": (1, 2 * gpt5), "flex": (1, gpt5 / 2),
                "retention:24h": (1, 2000 * 4e-6 + 8000 * 1e-5 + 500 * 2e-5),   # 12 h writes
                "fast": (2, 2 * opus + opus)}   # Opus 4.6 has no fast rate: base, listed
        self.assertEqual(sorted(doc["tiers"]), sorted(want))
        for tier, (requests, cost) in want.items():
            self.assertEqual(doc["tiers"][tier]["requests"], requests, tier)
            self.assertAlmostEqual(doc["tiers"][tier]["cost_usd"], cost, places=12)
        self.assertEqual(doc["tier_fallback"], {"requests": 1,
                                                "models": {"claude-opus-4-6 (fast)": 1}})
        self.assertAlmostEqual(doc["totals"]["cost_usd"],
                               2 * gpt5 + gpt5 / 2 + 0.098 + 3 * opus + gpt5, places=12)

    def cost(self, *records, prices=None):
        path = os.path.join(self.tmp, "tiers.jsonl")
        with open(path, "w") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        argv = ("--file", path) + (("--prices", prices) if prices else ())
        return self.run_json(*argv)

    def test_openai_service_tiers(self):
        usage = {"prompt_tokens": 5500, "completion_tokens": 1000}
        # gpt-5: 1.25e-6 in and 1e-5 out; flex and batch the map's halves, priority 2x
        for tier, want in ((None, 5500 * 1.25e-6 + 1000 * 1e-5),
                           ("default", 5500 * 1.25e-6 + 1000 * 1e-5),
                           ("flex", 5500 * 6.25e-7 + 1000 * 5e-6),
                           ("batch", 5500 * 6.25e-7 + 1000 * 5e-6),
                           ("priority", 5500 * 2.5e-6 + 1000 * 2e-5),
                           ("scale", 5500 * 2.5e-6 + 1000 * 2e-5)):
            with self.subTest(tier=tier):
                record = {"model": "gpt-5", "usage": usage}
                if tier:
                    record["service_tier"] = tier
                doc = self.cost(record)
                self.assertAlmostEqual(doc["totals"]["cost_usd"], want, places=12)
                self.assertEqual(doc["tier_fallback"]["requests"], 0)
        self.assertAlmostEqual(want, 0.03375, places=12)
        doc = self.cost({"model": "gpt-5", "service_tier": "flex", "usage": usage})
        self.assertEqual(doc["tiers"], {"flex": {"requests": 1, "cost_usd": 0.0084375}})

    def test_extended_retention_writes_at_the_12_hour_rate(self):
        def record(prompt, read, write, **extra):
            return dict({"model": "gpt-5.6", "usage": {
                "prompt_tokens": prompt, "completion_tokens": 100, "prompt_tokens_details": {
                    "cached_tokens": read, "cache_write_tokens": write}}}, **extra)
        # gpt-5.6: in 4e-6, read 4e-7, write 5e-6 (12 h: 1e-5), out 2e-5; priority and
        # above 272k: in 1.6e-5, read 1.6e-6, 12 h write 4e-5, out 6e-5
        small, large = (10000, 4000, 3000), (300000, 200000, 50000)
        for sizes, extra, want, fallback in (
                (small, {}, 3000 * 4e-6 + 4000 * 4e-7 + 3000 * 5e-6 + 100 * 2e-5, 0),
                (small, {"prompt_cache_retention": "in_memory"}, 0.0306, 0),
                (small, {"prompt_cache_retention": "24h"}, 0.012 + 0.0016 + 0.03 + 0.002, 0),
                (small, {"prompt_cache_retention": "24h", "service_tier": "priority"},
                 3000 * 8e-6 + 4000 * 8e-7 + 3000 * 2e-5 + 100 * 4e-5, 0),
                (large, {"prompt_cache_retention": "24h"},
                 50000 * 8e-6 + 200000 * 8e-7 + 50000 * 2e-5 + 100 * 3e-5, 0),
                (large, {"prompt_cache_retention": "24h", "service_tier": "priority"},
                 50000 * 1.6e-5 + 200000 * 1.6e-6 + 50000 * 4e-5 + 100 * 6e-5, 0),
                # hostile or unknown: at base; a number is no retention at all
                (small, {"prompt_cache_retention": "99999h"}, 0.0306, 1),
                (small, {"prompt_cache_retention": "2h"}, 0.0306, 1),
                (small, {"prompt_cache_retention": 24}, 0.0306, 0)):
            with self.subTest(extra=extra, sizes=sizes):
                doc = self.cost(*[record(*sizes, **extra)] * 9)   # compiled after 8
                self.assertAlmostEqual(doc["totals"]["cost_usd"], 9 * want, places=10)
                self.assertEqual(doc["tier_fallback"]["requests"], 9 * fallback)
        self.assertAlmostEqual(want, 0.0306, places=12)
        # on the response object, where OpenAI echoes it; gpt-5 has no 12 h key: the 5 m rate
        doc = self.cost({"response": {"model": "gpt-5.6", "prompt_cache_retention": "24h",
                                      "usage": record(*small)["usage"]}},
                        {"model": "gpt-5", "prompt_cache_retention": "24h", "usage": {
                            "prompt_tokens": 1000, "completion_tokens": 0}})
        self.assertAlmostEqual(doc["totals"]["cost_usd"], 0.0456 + 1000 * 1.25e-6, places=12)
        self.assertEqual(doc["tiers"]["retention:24h"]["requests"], 2)

    def test_openai_regional_processing_uplift(self):
        # gpt-5.4: 2.5e-6 in, 2.5e-7 read, 1.5e-5 out; processed in the EU or the US 1.1x
        usage = {"prompt_tokens": 10000, "completion_tokens": 100,
                 "prompt_tokens_details": {"cached_tokens": 4000}}
        base = 6000 * 2.5e-6 + 4000 * 2.5e-7 + 100 * 1.5e-5
        for residency, factor, fallback in (("eu", 1.1, 0), ("US", 1.1, 0), ("jp", 1.0, 1)):
            with self.subTest(residency=residency):
                doc = self.cost({"model": "gpt-5.4", "data_residency": residency,
                                 "usage": usage})
                self.assertAlmostEqual(doc["totals"]["cost_usd"], base * factor, places=12)
                self.assertEqual(doc["tier_fallback"]["requests"], fallback)
        # a LiteLLM record names no region, but its host does (the compiled reader too)
        for api_base, factor in (("https://eu.api.openai.com/v1", 1.1),
                                 ("https://us.api.openai.com", 1.1),
                                 ("https://api.openai.com/v1", 1.0),
                                 ("https://eu.example.com/api.openai.com", 1.0)):
            with self.subTest(api_base=api_base):
                doc = self.cost(*[{"model": "gpt-5.4", "api_base": api_base,
                                   "usage": usage}] * 9)
                self.assertAlmostEqual(doc["totals"]["cost_usd"], 9 * base * factor,
                                       places=11)

    def test_xai_higher_rates_start_where_the_prompt_reaches_the_threshold(self):
        # docs.x.ai: "Requests whose prompt reaches 200k tokens are billed at the
        # higher rate"; grok-4.20 1.25e-6 in, 2e-7 read, 2.5e-6 out, twice that at 200k
        for prompt, rates in ((199999, (1.25e-6, 2e-7, 2.5e-6)), (200000, (2.5e-6, 4e-7, 5e-6))):
            with self.subTest(prompt=prompt):
                doc = self.cost({"model": "grok-4.20", "provider": "xai", "usage": {
                    "prompt_tokens": prompt, "completion_tokens": 100, "total_tokens":
                    prompt + 100, "prompt_tokens_details": {"cached_tokens": 50000}}})
                self.assertAlmostEqual(doc["totals"]["cost_usd"], (prompt - 50000) * rates[0]
                                       + 50000 * rates[1] + 100 * rates[2], places=12)
        # anyone else's threshold is passed, not reached: gpt-5.4 at exactly 272,000
        doc = self.cost({"model": "gpt-5.4", "usage": {"prompt_tokens": 272000,
                                                       "completion_tokens": 0}})
        self.assertAlmostEqual(doc["totals"]["cost_usd"], 272000 * 2.5e-6, places=12)

    ITERATION_PRICES = {
        "exec": {"litellm_provider": "anthropic", "input_cost_per_token": 1e-6,
                 "output_cost_per_token": 1e-5, "cache_read_input_token_cost": 1e-7,
                 "cache_creation_input_token_cost": 1.25e-6,
                 "input_cost_per_token_above_200k_tokens": 2e-6,
                 "output_cost_per_token_above_200k_tokens": 2e-5,
                 "cache_read_input_token_cost_above_200k_tokens": 2e-7,
                 "cache_creation_input_token_cost_above_200k_tokens": 2.5e-6},
        "adv": {"litellm_provider": "anthropic", "input_cost_per_token": 5e-6,
                "output_cost_per_token": 2.5e-5, "cache_read_input_token_cost": 5e-7,
                "cache_creation_input_token_cost": 6.25e-6}}

    @staticmethod
    def iterated_usage(top_input=150, top_output=500):
        def part(kind, miss, read, write, output, model=None):
            found = {"type": kind, "input_tokens": miss, "cache_read_input_tokens": read,
                     "cache_creation_input_tokens": write, "output_tokens": output}
            if model:
                found["model"] = model
            return found
        return {"input_tokens": top_input, "cache_read_input_tokens": 330000,
                "cache_creation_input_tokens": 30000, "output_tokens": top_output,
                "iterations": [part("message", 100, 150000, 0, 200),
                               part("advisor_message", 2000, 0, 0, 700, "adv"),
                               part("message", 50, 180000, 30000, 300)]}

    def test_server_side_iterations_priced_each_on_its_own(self):
        prices = os.path.join(self.tmp, "iterations.json")
        with open(prices, "w") as handle:
            json.dump(self.ITERATION_PRICES, handle)
        # the first message iteration 150,100 tokens (base), the second 210,050 (above
        # 200k), the advisor at its own model's rates
        first = 100 * 1e-6 + 150000 * 1e-7 + 200 * 1e-5
        second = 50 * 2e-6 + 180000 * 2e-7 + 30000 * 2.5e-6 + 300 * 2e-5
        advisor = 2000 * 5e-6 + 700 * 2.5e-5
        for label, usage, want, requests in (
                # the top level is the message iterations' sum: the advisor beside it
                ("advisor beside", self.iterated_usage(), first + second + advisor, 3),
                # the top level counts the advisor too: the same three requests
                ("advisor inside", self.iterated_usage(2150, 1200), first + second + advisor,
                 3),
                # it adds up to neither: the top level alone, once (above 200k)
                ("no sum", self.iterated_usage(150, 999), 150 * 2e-6 + 330000 * 2e-7 +
                 30000 * 2.5e-6 + 999 * 2e-5, 1)):
            with self.subTest(case=label):
                doc = self.cost(*[{"model": "exec", "provider": "anthropic",
                                   "usage": usage}] * 9, prices=prices)   # compiled after 8
                self.assertAlmostEqual(doc["totals"]["cost_usd"], 9 * want, places=10)
                self.assertEqual(doc["totals"]["requests"], 9 * requests)
        self.assertAlmostEqual(first + second + advisor, 0.1617, places=12)
        # a Claude Code response: an early line without its iterations gives way
        root = os.path.join(self.tmp, "claude", "projects", "-p")
        os.makedirs(root)
        line = {"type": "assistant", "sessionId": "s", "requestId": "r1",
                "timestamp": "2026-03-10T08:00:00Z", "message": {
                    "id": "m1", "model": "exec", "usage": {
                        "input_tokens": 150, "cache_read_input_tokens": 330000,
                        "cache_creation_input_tokens": 30000, "output_tokens": 10}}}
        with open(os.path.join(root, "s.jsonl"), "w") as handle:
            handle.write(json.dumps(line) + "\n")
            line["message"]["usage"] = self.iterated_usage()
            handle.write(json.dumps(line) + "\n")
            handle.write(json.dumps(line) + "\n")   # and written twice
        os.environ["CLAUDE_CONFIG_DIR"] = os.path.join(self.tmp, "claude")
        doc = self.run_json("--agent", "claude-code", "--prices", prices, "--group-by",
                            "model")
        self.assertAlmostEqual(doc["totals"]["cost_usd"], 0.1617, places=10)
        self.assertEqual(sorted((g["key"]["model"], g["requests"]) for g in doc["groups"]),
                         [("adv", 1), ("exec", 2)])
        self.assertEqual(doc["sources"][0]["skipped"]["duplicate"], 4)

    def test_the_table_tells_tiers_per_group(self):
        usage = {"prompt_tokens": 5500, "completion_tokens": 1000}
        path = os.path.join(self.tmp, "tiers.jsonl")
        with open(path, "w") as handle:
            for model, tier in (("gpt-5", "flex"), ("gpt-5", "flex"), ("gpt-5", "priority"),
                                ("gpt-5-mini", "flex"), ("gpt-5-mini", None)):
                record = {"model": model, "usage": usage}
                if tier:
                    record["service_tier"] = tier
                handle.write(json.dumps(record) + "\n")
        code, out, _ = self.run_main("--file", path, "--offline", "--no-history",
                                     "--width", "200", "--group-by", "model")
        # gpt-5 flex 0.0084375 a request, priority 0.03375; gpt-5-mini flex (its
        # _flex keys): 5500 * 1.25e-7 + 1000 * 1e-6 = 0.0016875; flex 3: 0.0185625
        self.assertIn("tiers  priority 1 request $0.0338 | flex 3 requests $0.0186 "
                      "(the rest at the standard rate)\n"
                      "  gpt-5: priority 1 request $0.0338 | flex 2 requests $0.0169\n"
                      "  gpt-5-mini: flex 1 request $0.0017\n", out)
        code, out, _ = self.run_main("--file", path, "--offline", "--no-history",
                                     "--width", "200", "--group-by", "provider")
        self.assertIn("tiers  priority 1 request $0.0338 | flex 3 requests $0.0186 "
                      "(the rest at the standard rate)\n", out)
        self.assertNotIn("  openai: ", out)   # one group: no lines of its own

    def test_anthropic_batch_fast_and_region(self):
        usage = {"input_tokens": 1000, "cache_read_input_tokens": 10000,
                 "cache_creation_input_tokens": 3000, "output_tokens": 500,
                 "cache_creation": {"ephemeral_5m_input_tokens": 2000,
                                    "ephemeral_1h_input_tokens": 1000}}
        # claude-opus-4-6 batch: the _batches keys; its 1 h write has none: half of 1e-5
        doc = self.cost({"model": "claude-opus-4-6", "provider": "anthropic",
                         "usage": dict(usage, service_tier="batch")})
        self.assertAlmostEqual(doc["totals"]["cost_usd"], 1000 * 2.5e-6 + 10000 * 2.5e-7 +
                               2000 * 3.125e-6 + 1000 * 5e-6 + 500 * 1.25e-5, places=12)
        # claude-opus-4-8: fast 2x and us 1.1x of every rate
        base = 1000 * 5e-6 + 10000 * 5e-7 + 2000 * 6.25e-6 + 1000 * 1e-5 + 500 * 2.5e-5
        for extra, factor in (({"speed": "fast"}, 2.0), ({"inference_geo": "us"}, 1.1),
                              ({"speed": "fast", "inference_geo": "us"}, 2.2),
                              ({"speed": "standard", "inference_geo": "global"}, 1.0)):
            with self.subTest(extra=extra):
                doc = self.cost({"model": "claude-opus-4-8", "provider": "anthropic",
                                 "usage": dict(usage, **extra)})
                self.assertAlmostEqual(doc["totals"]["cost_usd"], base * factor, places=12)
                self.assertEqual(doc["tier_fallback"]["requests"], 0)
        # a model with no fast rate was served at the standard speed: base, and listed
        doc = self.cost({"model": "claude-opus-4-6", "provider": "anthropic",
                         "usage": dict(usage, speed="fast")})
        self.assertEqual(doc["tier_fallback"], {"requests": 1,
                                                "models": {"claude-opus-4-6 (fast)": 1}})

    def test_claude_code_lines_carry_their_dimensions(self):
        ctx = catop.FileContext("s.jsonl")
        record = {"type": "assistant", "sessionId": "s", "timestamp": "2026-03-10T08:00:00Z",
                  "message": {"id": "m", "model": "claude-opus-4-8", "usage": {
                      "input_tokens": 10, "output_tokens": 5, "service_tier": "standard",
                      "speed": "fast", "inference_geo": "us"}}}
        self.assertEqual(catop.parse_claude_code(record, ctx)[1].tier, "fast+geo:us")
        record["message"]["usage"].update(speed=["fast"], inference_geo=7)
        self.assertEqual(catop.parse_claude_code(record, ctx)[1].tier, "")

    def test_every_size_threshold(self):
        # gpt-5.4 above 272k: 5e-6 in, 5e-7 read, 2.25e-5 out (base 2.5e-6, 2.5e-7, 1.5e-5)
        for prompt, rates in ((272000, (2.5e-6, 2.5e-7, 1.5e-5)),
                              (272001, (5e-6, 5e-7, 2.25e-5))):
            with self.subTest(prompt=prompt):
                doc = self.cost({"model": "gpt-5.4", "usage": {
                    "prompt_tokens": prompt, "completion_tokens": 1000,
                    "prompt_tokens_details": {"cached_tokens": 200000}}})
                self.assertAlmostEqual(doc["totals"]["cost_usd"], (prompt - 200000) * rates[0]
                                       + 200000 * rates[1] + 1000 * rates[2], places=12)
        # a map of two thresholds and one of ranges: the highest exceeded decides
        prices = os.path.join(self.tmp, "sizes.json")
        with open(prices, "w") as handle:
            json.dump({"two": {"input_cost_per_token": 1e-6, "output_cost_per_token": 0,
                               "input_cost_per_token_above_128k_tokens": 2e-6,
                               "input_cost_per_token_above_200k_tokens": 3e-6},
                       "ranged": {"tiered_pricing": [
                           {"range": [256000, 1000000], "input_cost_per_token": 2.5e-7,
                            "output_cost_per_token": 2e-6},
                           {"range": [0, 256000], "input_cost_per_token": 5e-8,
                            "output_cost_per_token": 4e-7}]},
                       "overlapping": {"tiered_pricing": [
                           {"range": [0, 300000], "input_cost_per_token": 1e-6},
                           {"range": [256000, 1000000], "input_cost_per_token": 2e-6}]},
                       "backwards": {"input_cost_per_token": 1e-6, "tiered_pricing": [
                           {"range": [300000, 100000], "input_cost_per_token": 9e-6}]},
                       "only-63k": {"input_cost_per_token": 1e-6,
                                    "input_cost_per_token_above_63k_tokens": 4e-6}}, handle)
        for model, prompt, want in (("two", 100000, 100000 * 1e-6),
                                    ("two", 150000, 150000 * 2e-6),
                                    ("two", 250000, 250000 * 3e-6),
                                    ("ranged", 100000, 100000 * 5e-8 + 10 * 4e-7),
                                    ("ranged", 300000, 300000 * 2.5e-7 + 10 * 2e-6),
                                    ("backwards", 400000, 400000 * 1e-6),
                                    ("only-63k", 64000, 64000 * 4e-6),
                                    ("only-63k", 60000, 60000 * 1e-6)):
            with self.subTest(model=model, prompt=prompt):
                doc = self.cost({"model": model, "usage": {"prompt_tokens": prompt,
                                                           "completion_tokens": 10}},
                                prices=prices)
                self.assertAlmostEqual(doc["totals"]["cost_usd"], want, places=12)
        doc = self.cost({"model": "overlapping", "usage": {"prompt_tokens": 10,
                                                           "completion_tokens": 1}},
                        {"model": "backwards", "usage": {"prompt_tokens": 10,
                                                         "completion_tokens": 1}},
                        prices=prices)
        self.assertEqual(doc["unpriced_models"], ["overlapping"])   # no rate it can trust
        self.assertEqual(doc["refused_values"], {"price range": 1})   # backwards: flat rates
        self.assertAlmostEqual(doc["totals"]["cost_usd"], 10 * 1e-6, places=12)
        self.assertNotIn("Infinity", json.dumps(doc))

    def test_web_searches_are_priced_per_search(self):
        # the issue's call: 100 in and 100 out of claude-sonnet-4-5 is $0.0018, and its
        # one web search $0.01 more, as LiteLLM's response_cost says ($0.0118)
        usage = {"input_tokens": 100, "output_tokens": 100,
                 "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 2}}
        doc = self.cost({"model": "claude-sonnet-4-5", "provider": "anthropic", "usage": usage},
                        {"model": "claude-sonnet-4-5", "provider": "anthropic", "usage": dict(
                            usage, server_tool_use={"web_search_requests": "many"})})
        totals = doc["totals"]
        self.assertAlmostEqual(totals["cost_usd"], 2 * 0.0018 + 0.01, places=12)
        self.assertAlmostEqual(totals["no_cache_cost_usd"], 2 * 0.0018 + 0.01, places=12)
        self.assertEqual((totals["web_searches"], totals["web_search_cost_usd"]), (1, 0.01))
        self.assertEqual(doc["refused_values"], {"web search count": 1})
        code, out, _ = self.run_main("--file", os.path.join(self.tmp, "tiers.jsonl"),
                                     "--offline", "--no-history")
        self.assertIn("searches  1 server-side web searches: $0.0100, inside the cost", out)
        ctx = catop.FileContext("s.jsonl")
        record = {"type": "assistant", "sessionId": "s", "message": {
            "id": "m", "model": "claude-sonnet-4-5", "usage": usage}}
        self.assertEqual(catop.parse_claude_code(record, ctx)[1].searches, 1)

    def test_hostile_dimensions_are_priced_at_base_and_counted(self):
        prices = os.path.join(self.tmp, "map.json")
        entry = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
        table = {"m-zero": dict(entry, provider_specific_entry={"fast": 0}),
                 "m-negative": dict(entry, provider_specific_entry={"fast": -1}),
                 "m-huge": dict(entry, provider_specific_entry={"fast": 1e308}),
                 "m-text": dict(entry, provider_specific_entry={"fast": "2x"}),
                 "m-flex-text": dict(entry, input_cost_per_token_flex="cheap")}
        with open(prices, "w") as handle:
            json.dump(table, handle)
        records = [{"model": name, "usage": {"input_tokens": 1000, "output_tokens": 100,
                                             "speed": "fast"}}
                   for name in ("m-zero", "m-negative", "m-huge", "m-text")]
        records.append({"model": "m-flex-text", "service_tier": "flex",
                        "usage": {"prompt_tokens": 1000, "completion_tokens": 100}})
        records.append({"model": "m-zero", "service_tier": "turbo-ultra",
                        "usage": {"prompt_tokens": 1000, "completion_tokens": 100}})
        doc = self.cost(*records, prices=prices)
        self.assertAlmostEqual(doc["totals"]["cost_usd"], 6 * (1000 * 1e-6 + 100 * 2e-6),
                               places=12)
        self.assertEqual(doc["tier_fallback"]["requests"], 6)
        self.assertIn("m-zero (turbo-ultra)", doc["tier_fallback"]["models"])
        self.assertNotIn("Infinity", json.dumps(doc))
        code, out, _ = self.run_main("--file", os.path.join(self.tmp, "tiers.jsonl"),
                                     "--prices", prices, "--no-history", "--width", "250")
        self.assertIn("tier fallback: m-flex-text (flex) 1, m-huge (fast) 1", out)


class PlatformPriceTests(IsolatedEnv):
    """A model the map has only under a cloud platform's key is priced at it, and
    says so; a Claude entry without cache keys takes Anthropic's multipliers."""

    def test_the_map_holds_the_coding_agents_models(self):
        # refreshed from LiteLLM's map: Vertex-only Gemini previews, GitHub Copilot's
        # and OpenCode Go's own rates, DashScope's and MiniMax's coding models
        for model, provider, key, rates in (
                ("gemini-3-pro-preview", "", "vertex_ai/gemini-3-pro-preview", (2e-6, 1.2e-5)),
                ("claude-haiku-4.5", "github_copilot", "github_copilot/claude-haiku-4.5",
                 (1e-6, 5e-6)),
                ("glm-5.2", "opencode_go", "opencode_go/glm-5.2", (1.4e-6, 4.4e-6)),
                ("MiniMax-M2.5", "minimax", "minimax/MiniMax-M2.5", (3e-7, 1.2e-6))):
            with self.subTest(model=model):
                self.assertEqual(PRICES.resolve(model, provider) or
                                 PRICES.platform_name(model), key)
                base = PRICES.rates(model, provider)[0]
                self.assertEqual((base[0], base[4]), rates)

    def test_claude_opus_4_1_priced_as_bedrocks_entry(self):
        path = os.path.join(self.tmp, "opus.jsonl")
        with open(path, "w") as handle:
            handle.write(json.dumps({"model": "claude-opus-4-1-20250805", "provider": "anthropic",
                                     "usage": {"input_tokens": 1000,
                                               "cache_read_input_tokens": 10000,
                                               "cache_creation_input_tokens": 3000,
                                               "cache_creation": {
                                                   "ephemeral_5m_input_tokens": 2000,
                                                   "ephemeral_1h_input_tokens": 1000},
                                               "output_tokens": 500}}) + "\n")
        doc = self.run_json("--file", path)
        # Bedrock's entry: 1.5e-5 in, 1.5e-6 read, 1.875e-5 5 m write, no 1 h key: 2 x
        # input (3e-5), 7.5e-5 out
        self.assertAlmostEqual(doc["totals"]["cost_usd"], 1000 * 1.5e-5 + 10000 * 1.5e-6 +
                               2000 * 1.875e-5 + 1000 * 3e-5 + 500 * 7.5e-5, places=12)
        self.assertEqual(doc["unpriced_models"], [])
        self.assertEqual(doc["prices"]["priced_as"], {
            "claude-opus-4-1-20250805": "anthropic.claude-opus-4-1-20250805-v1:0"})
        code, out, _ = self.run_main("--file", path, "--offline", "--no-history",
                                     "--width", "200")
        self.assertIn("priced as: claude-opus-4-1-20250805 as "
                      "anthropic.claude-opus-4-1-20250805-v1:0 - a cloud platform's entry", out)

    def test_failed_calls_are_not_requests(self):
        path = os.path.join(self.tmp, "litellm.jsonl")
        usage = {"prompt_tokens": 1000, "completion_tokens": 10}
        with open(path, "w") as handle:
            for record in (
                    {"standard_logging_object": {"status": "failure", "model": "gpt-4o",
                                                 "metadata": {"usage_object": usage}}},
                    {"model": "gpt-4o", "status": "failure", "usage": usage},
                    {"model": "gpt-4o", "error_str": "429 Too Many Requests",
                     "usage": {"prompt_tokens": 0, "completion_tokens": 0}},
                    # counted: an error beside real usage, a Responses status, a success
                    {"model": "gpt-4o", "exception": "timeout after the reply",
                     "usage": usage},
                    {"model": "gpt-4o", "status": "completed", "usage": usage},
                    {"standard_logging_object": {"status": "success", "model": "gpt-4o",
                                                 "metadata": {"usage_object": usage}}}):
                handle.write(json.dumps(record) + "\n")
        doc = self.run_json("--file", path)
        self.assertEqual(doc["sources"][0]["skipped"]["failed"], 3)
        self.assertEqual((doc["sources"][0]["records"], doc["totals"]["requests"]), (3, 3))
        self.assertAlmostEqual(doc["totals"]["cost_usd"], 3 * (1000 * 2.5e-6 + 10 * 1e-5),
                               places=12)

    def test_lookups(self):
        book = catop.PriceBook({
            "anthropic.claude-x-1-20250101-v1:0": {"input_cost_per_token": 1e-5},
            "vertex_ai/gemini-z": {"input_cost_per_token": 2e-6, "output_cost_per_token": 1e-5},
            "gpt-q": {"input_cost_per_token": 1e-6}}, "test")
        # no cache keys on a Claude entry: 0.1 x, 1.25 x and 2 x the input rate
        for got, want in zip(book.rates("claude-x-1-20250101")[0][:4],
                             (1e-5, 1e-6, 1.25e-5, 2e-5)):
            self.assertAlmostEqual(got, want, places=15)
        self.assertEqual(book.rates("claude-x-1")[0][0], 1e-5)     # undated, a dated key
        self.assertEqual(book.priced_as["claude-x-1"], "anthropic.claude-x-1-20250101-v1:0")
        self.assertEqual(book.rates("gemini-z")[0][0], 2e-6)
        # elsewhere, a missing cache key is the input rate (no saving claimed)
        self.assertEqual(book.rates("gpt-q")[0][:4], (1e-6, 1e-6, 1e-6, 1e-6))
        self.assertIsNone(book.rates("claude-nothing-9"))
        self.assertNotIn("gpt-q", book.priced_as)


class PricingTests(unittest.TestCase):

    EXPECTED = [
        # file, line, cost, no-cache cost (both by hand from prices.json rates)
        ("openai-chat.jsonl", 0, 0.006125, 0.008),
        ("openai-chat.jsonl", 1, 0.024, 0.036),
        ("openai-responses.jsonl", 0, 0.009642, 0.01425),
        ("anthropic-messages.jsonl", 0, 0.0279, 0.07515),      # 1-hour writes at 6e-6
        ("anthropic-messages.jsonl", 1, 0.00676, 0.00551),     # writes never read: saved < 0
        ("litellm.jsonl", 0, 0.017325, 0.03975),
        ("litellm.jsonl", 1, 0.0003564, 0.00051),
        ("bedrock-converse.jsonl", 0, 0.010395, 0.03333),       # eu. entry, 10 % premium
        ("gemini.jsonl", 0, 0.235, 0.685),                     # whole request above 200k
        ("gemini.jsonl", 1, 0.00175, 0.00175),
        ("deepseek.jsonl", 0, 0.000294, 0.000924),
        ("otel.jsonl", 0, 0.00725, 0.011),
        ("otel.jsonl", 1, 0.004275, 0.0075),
        ("camelcase.jsonl", 0, 0.00639, 0.033015),
    ]

    def test_costs_to_the_micro_dollar(self):
        for name, index, cost, no_cache in self.EXPECTED:
            with self.subTest(file=name, line=index):
                req = catop.normalize_record(read_examples(name)[index])
                got_cost, got_no_cache = cost_of(req)
                self.assertAlmostEqual(got_cost, cost, places=10)
                self.assertAlmostEqual(got_no_cache, no_cache, places=10)

    def test_one_hour_write_is_not_priced_at_the_five_minute_rate(self):
        req = catop.Request(model="claude-sonnet-4-5", cache_write_1h=1000000)
        self.assertAlmostEqual(cost_of(req)[0], 6.0)
        req = catop.Request(model="claude-sonnet-4-5", cache_write_5m=1000000)
        self.assertAlmostEqual(cost_of(req)[0], 3.75)

    def test_tier_applies_above_200k_only(self):
        at = catop.Request(model="gemini-2.5-pro", miss=200000)
        above = catop.Request(model="gemini-2.5-pro", miss=200001)
        self.assertAlmostEqual(cost_of(at)[0], 0.25)
        self.assertAlmostEqual(cost_of(above)[0], 200001 * 2.5e-06)

    def test_reasoning_rate_and_tier_fallbacks(self):
        table = {"thinker": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06,
                             "output_cost_per_reasoning_token": 5e-06,
                             "input_cost_per_token_above_200k_tokens": 3e-06},
                 "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0}}
        book = catop.PriceBook(table, "test")
        self.assertEqual(len(book), 1)
        req = catop.Request(model="thinker", miss=1000, output=300, reasoning=100)
        # 1000 x 1e-6 + 200 x 2e-6 + 100 x 5e-6
        self.assertAlmostEqual(cost_of(req, book)[0], 0.0019)
        big = catop.Request(model="thinker", miss=300000, cache_read=1000, output=300,
                            reasoning=100)
        # tier input 3e-6; read falls back to the base read rate (= base input 1e-6)
        self.assertAlmostEqual(cost_of(big, book)[0], 0.9 + 0.001 + 0.0004 + 0.0005)
        self.assertIsNone(book.rates("sample_spec"))

    def test_unpriced_model_costs_zero_and_is_counted(self):
        agg = catop.Aggregate(PRICES, ("model",))
        agg.add(catop.Request(model="my-finetune-7b", miss=1000, output=10))
        agg.add(catop.Request(model="gpt-4o", miss=1000, output=10))
        self.assertEqual(agg.totals.unpriced_requests, 1)
        self.assertEqual(agg.unpriced_models, {"my-finetune-7b": 1})
        self.assertAlmostEqual(agg.totals.cost, 0.0026)
        self.assertEqual(agg.totals.input, 2000)

    def test_model_name_resolution(self):
        table = {"gpt-4o": {"input_cost_per_token": 1e-06},
                 "claude-sonnet-4-5": {"input_cost_per_token": 2e-06},
                 "anthropic.claude-haiku-4-5-20251001-v1:0": {"input_cost_per_token": 3e-06},
                 "gemini/gemini-2.5-pro": {"input_cost_per_token": 4e-06},
                 "MixedCase-Model": {"input_cost_per_token": 5e-06}}
        book = catop.PriceBook(table, "test")
        cases = [("gpt-4o", "", "gpt-4o"), ("GPT-4o", "", "gpt-4o"),
                 ("openai/gpt-4o", "", "gpt-4o"), ("openrouter/openai/gpt-4o", "", "gpt-4o"),
                 ("gpt-4o-2024-08-06", "", "gpt-4o"),
                 ("claude-sonnet-4-5-20250929", "", "claude-sonnet-4-5"),
                 ("anthropic/claude-sonnet-4-5-20250929", "", "claude-sonnet-4-5"),
                 ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "",
                  "anthropic.claude-haiku-4-5-20251001-v1:0"),
                 ("gemini-2.5-pro", "gemini", "gemini/gemini-2.5-pro"),
                 ("mixedcase-model", "", "MixedCase-Model"),
                 ("claude-opus-4-1-20250805", "", None), ("", "", None)]
        for model, provider, expected in cases:
            with self.subTest(model=model):
                self.assertEqual(book.resolve(model, provider) if model else None, expected)

    def test_embedded_table_agrees_with_prices_json(self):
        embedded = catop.embedded_price_map()
        for model, entry in embedded.items():
            with self.subTest(model=model):
                self.assertIn(model, PRICES.table)
                self.assertEqual(catop.rates_from_entry(entry),
                                 catop.rates_from_entry(PRICES.table[model]))

    def test_prices_json_is_a_chat_price_map_with_cache_keys(self):
        self.assertGreater(len(PRICES), 500)
        for model in ("claude-sonnet-4-5", "claude-opus-4-5", "gpt-5", "gpt-4o",
                      "gemini-2.5-pro", "deepseek-chat"):
            self.assertIn("cache_read_input_token_cost", PRICES.table[model])
        self.assertIn("cache_creation_input_token_cost_above_1hr",
                      PRICES.table["claude-sonnet-4-5"])


class PriceOriginTests(IsolatedEnv):
    """The price origin chain with a fake fetch: no test touches the network."""

    def setUp(self):
        super().setUp()
        self.cache = os.path.join(self.tmp, "cache", "catop", "prices.json")
        self.fetches = 0
        self.warnings = []

    def fake_fetch(self, data=b'{"fetched-model": {"input_cost_per_token": 1e-06}}'):
        def fetch():
            self.fetches += 1
            if data is None:
                raise catop.CatopError("network unreachable")
            return data
        return fetch

    def load(self, fetch=None, **kwargs):
        kwargs.setdefault("now", time.time())
        return catop.load_prices(fetch=fetch or self.fake_fetch(), warn=self.warnings.append,
                                 cache=self.cache, **kwargs)

    def test_fetch_then_fresh_cache(self):
        book = self.load()
        self.assertEqual(book.origin, "url:" + catop.PRICES_URL)
        self.assertIn("fetched-model", book.table)
        self.assertTrue(os.path.exists(self.cache))
        again = self.load()
        self.assertTrue(again.origin.startswith("cache:"))
        self.assertEqual(self.fetches, 1)

    def test_offline_never_fetches_and_falls_back_to_bundled(self):
        book = self.load(offline=True)
        self.assertEqual(self.fetches, 0)
        self.assertEqual(book.origin, "file:prices.json")

    def test_failure_is_remembered_for_an_hour(self):
        now = time.time()
        first = self.load(fetch=self.fake_fetch(None), now=now)
        self.assertEqual(first.origin, "file:prices.json")
        self.load(fetch=self.fake_fetch(None), now=now + 60)
        self.assertEqual(self.fetches, 1)
        self.load(fetch=self.fake_fetch(None), now=now + 3700)
        self.assertEqual(self.fetches, 2)
        self.assertTrue(any("network unreachable" in w for w in self.warnings))

    def test_stale_cache_refetched_and_used_when_fetch_fails(self):
        self.load()
        old = time.time() - 2 * 86400
        os.utime(self.cache, (old, old))
        book = self.load(fetch=self.fake_fetch(None))
        self.assertEqual(self.fetches, 2)
        self.assertTrue(book.origin.endswith("(stale)"))
        self.assertGreater(book.age_s, 86400)

    def test_corrupt_or_non_object_cache_is_ignored_with_a_warning(self):
        os.makedirs(os.path.dirname(self.cache))
        for content in (b"{not json", b"[1, 2, 3]"):
            with open(self.cache, "wb") as handle:
                handle.write(content)
            book = self.load(offline=True)
            self.assertEqual(book.origin, "file:prices.json")
        self.assertEqual(len(self.warnings), 2)

    def test_refresh_fetches_despite_fresh_cache(self):
        self.load()
        self.load(refresh=True)
        self.assertEqual(self.fetches, 2)

    def test_prices_flag_and_embedded_fallback(self):
        path = os.path.join(self.tmp, "mine.json")
        with open(path, "w") as handle:
            json.dump({"m": {"input_cost_per_token": 1e-06}}, handle)
        self.assertEqual(self.load(prices_path=path).origin, "file:" + path)
        with self.assertRaises(catop.PriceError):
            self.load(prices_path=os.path.join(self.tmp, "missing.json"))
        with mock.patch.object(catop, "bundled_prices_path",
                               return_value=os.path.join(self.tmp, "none.json")):
            book = self.load(offline=True)
        self.assertEqual(book.origin, "embedded")
        self.assertIn("claude-sonnet-4-5", book.table)

    def test_atomic_write_leaves_no_temporary_file(self):
        target = os.path.join(self.tmp, "d", "f.json")
        catop.write_atomic(target, b"{}")
        catop.write_atomic(target, b'{"a": 1}')
        self.assertEqual(os.listdir(os.path.dirname(target)), ["f.json"])


# -------------------------------------------------------------- aggregation

class AggregationTests(unittest.TestCase):

    def requests(self):
        return [catop.Request(ts=1000.0, model="gpt-4o", project="a", session="s1", miss=100,
                              cache_read=300, output=10),
                catop.Request(ts=2000.0, model="gpt-4o", project="b", session="s2", miss=50,
                              output=5, observed_cost=0.01),
                catop.Request(ts=None, model="claude-sonnet-4-5", project="a", session="s1",
                              miss=10, cache_write_1h=90, output=1)]

    def test_a_tally_spans_its_first_and_last_request_in_any_order(self):
        tally = catop.Tally()
        for ts, searches in ((5.0, 0), (3.0, 2), (None, 0), (9.0, 0), (4.0, 1), (1.0, 0),
                             (9.5, 0), (9.5, 0)):
            tally.count(catop.Request(ts=ts, searches=searches, miss=1))
        self.assertEqual((tally.first_ts, tally.last_ts, tally.requests, tally.searches,
                          tally.miss), (1.0, 9.5, 8, 3, 8))
        untimed = catop.Tally()
        untimed.count(catop.Request(ts=None))
        self.assertEqual((untimed.first_ts, untimed.last_ts), (None, None))

    def test_window_bounds_inclusive_exclusive_and_untimed(self):
        agg = catop.Aggregate(PRICES, (), since=1000.0, until=2000.0)
        for req in self.requests():
            agg.add(req)
        self.assertEqual(agg.totals.requests, 1)
        self.assertEqual(agg.outside_window, 2)
        everything = catop.Aggregate(PRICES, ())
        for req in self.requests():
            everything.add(req)
        self.assertEqual(everything.totals.requests, 3)

    def test_totals_and_groups(self):
        agg = catop.Aggregate(PRICES, ("project",))
        for req in self.requests():
            agg.add(req)
        t = agg.totals
        self.assertEqual((t.requests, t.input, t.miss, t.cache_read, t.cache_write,
                          t.cache_write_1h, t.output), (3, 550, 160, 300, 90, 90, 16))
        self.assertAlmostEqual(t.hit_rate, 300 / 550)
        self.assertEqual(t.observed_cost, 0.01)
        self.assertEqual(t.observed_requests, 1)
        self.assertEqual(sorted(agg.groups), [("a",), ("b",)])
        self.assertEqual(agg.groups[("a",)].requests, 2)
        # a: gpt-4o 100*2.5e-6 + 300*1.25e-6 + 10*1e-5 ; sonnet 10*3e-6 + 90*6e-6 + 1*1.5e-5
        self.assertAlmostEqual(agg.groups[("a",)].cost, 0.000725 + 0.000585)

    def test_group_by_day_is_local_date(self):
        agg = catop.Aggregate(PRICES, ("day",))
        agg.add(catop.Request(ts=1773129600.0, model="gpt-4o", miss=1))
        agg.add(catop.Request(ts=None, model="gpt-4o", miss=1))
        expected = time.strftime("%Y-%m-%d", time.localtime(1773129600.0))
        self.assertEqual(sorted(agg.groups), [("(no time)",), (expected,)])

    def test_merge_equals_sequential(self):
        whole = catop.Aggregate(PRICES, ("model", "project"))
        left = catop.Aggregate(PRICES, ("model", "project"))
        right = catop.Aggregate(PRICES, ("model", "project"), part=True)
        for index, req in enumerate(self.requests() * 3):
            whole.add(req)
            (left if index % 2 else right).add(req)
        left.merge(right)
        self.assertEqual(left.totals.as_dict(), whole.totals.as_dict())
        self.assertEqual({k: v.as_dict() for k, v in left.groups.items()},
                         {k: v.as_dict() for k, v in whole.groups.items()})

    def test_a_group_is_priced_class_by_class(self):
        # one project; gpt-4o, and gemini-2.5-pro under and over its 200k tier
        def request(model, miss, read, output):
            return catop.Request(ts=1000.0, model=model, project="a", session="s",
                                 miss=miss, cache_read=read, output=output)
        agg = catop.Aggregate(PRICES, ("project",))
        agg.add(request("gpt-4o", 100, 300, 10))              # 0.00025 + 0.000375 + 0.0001
        agg.add(request("gemini-2.5-pro", 1000, 100000, 100))  # 0.00125 + 0.0125 + 0.001
        agg.add(request("gemini-2.5-pro", 150000, 100000, 100))  # 0.375 + 0.025 + 0.0015
        for _ in range(2):  # read twice: pricing sets a class's cost, never adds to it
            group = agg.groups[("a",)]
            self.assertAlmostEqual(group.cost, 0.000725 + 0.01475 + 0.4015, places=12)
            # no cache: 400 x 2.5e-6 + 0.0001; 101,000 x 1.25e-6 + 0.001; 250,000 x 2.5e-6 + 0.0015
            self.assertAlmostEqual(group.no_cache_cost, 0.0011 + 0.12725 + 0.6265, places=12)
            self.assertEqual((group.requests, group.miss, group.cache_read), (3, 151100, 200300))
        agg.add(request("gemini-2.5-pro", 1000, 100000, 100))  # after a read: priced in too
        self.assertEqual(agg.totals.requests, 4)
        self.assertAlmostEqual(agg.totals.cost, 0.000725 + 2 * 0.01475 + 0.4015, places=12)

    def test_sort_and_top(self):
        agg = catop.Aggregate(PRICES, ("project",))
        for req in self.requests():
            agg.add(req)
        by_requests = catop.sorted_groups(agg.groups, "requests")
        self.assertEqual([k for k, _ in by_requests], [("a",), ("b",)])
        ascending = catop.sorted_groups(agg.groups, "requests", descending=False)
        self.assertEqual([k for k, _ in ascending], [("b",), ("a",)])
        self.assertEqual(len(catop.sorted_groups(agg.groups, "cost", top=1)), 1)

    def test_windows_and_bounds(self):
        now = time.mktime((2026, 3, 11, 15, 30, 0, 0, 0, -1))  # a Wednesday, local time
        self.assertEqual(catop.window_start("1h", now), now - 3600)
        self.assertEqual(catop.window_start("today", now),
                         time.mktime((2026, 3, 11, 0, 0, 0, 0, 0, -1)))
        self.assertEqual(catop.window_start("week", now),
                         time.mktime((2026, 3, 9, 0, 0, 0, 0, 0, -1)))
        self.assertEqual(catop.window_start("month", now),
                         time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1)))
        self.assertIsNone(catop.window_start("all", now))
        self.assertEqual(catop.parse_time_bound("90m", now), now - 5400)
        self.assertEqual(catop.parse_time_bound("7d", now), now - 7 * 86400)
        self.assertEqual(catop.parse_time_bound("2026-03-10T08:00:00Z", now), 1773129600.0)
        self.assertEqual(catop.parse_time_bound("2026-03-10", now),
                         time.mktime((2026, 3, 10, 0, 0, 0, 0, 0, -1)))
        with self.assertRaises(ValueError):
            catop.parse_time_bound("yesterday-ish", now)
        since, until = catop.resolve_window("24h", "2h", "1h", now)
        self.assertEqual((since, until), (now - 7200, now - 3600))


# ----------------------------------------------------------------------- io

class LineReadingTests(unittest.TestCase):

    def test_partial_lines_wait_for_their_newline(self):
        reader = catop.LineReader()
        self.assertEqual(reader.feed(b'{"a"'), [])
        self.assertEqual(reader.feed(b': 1}\n{"b": '), [b'{"a": 1}'])
        self.assertEqual(reader.line_start, 9)
        self.assertEqual(reader.feed(b"2}\n"), [b'{"b": 2}'])
        self.assertEqual(reader.finish(), b"")

    def test_oversized_line_is_dropped_and_counted(self):
        with mock.patch.object(catop, "MAX_LINE_BYTES", 10):
            reader = catop.LineReader()
        lines = reader.feed(b"ok\n" + b"x" * 25)
        lines += reader.feed(b"y" * 25)
        lines += reader.feed(b"zz\nfine\n" + b"w" * 11 + b"\nlast\n")
        self.assertEqual(lines, [b"ok", b"", b"fine", b"", b"last"])
        self.assertEqual(reader.oversized, 2)

    def test_a_bom_is_dropped_at_the_start_only(self):
        reader = catop.LineReader()
        self.assertEqual(reader.feed(b"\xef\xbb"), [])       # cut inside the mark
        self.assertEqual(reader.feed(b"\xbf{}\n\xef\xbb\xbf{}\n"), [b"{}", b"\xef\xbb\xbf{}"])
        self.assertEqual(catop.LineReader(5).feed(b"\xef\xbb\xbf{}\n"), [b"\xef\xbb\xbf{}"])
        reader = catop.LineReader()
        self.assertEqual(reader.feed_block(b"\xef\xbb\xbf{}\n{"), b"{}\n")
        self.assertEqual(catop.LineReader().finish(), b"")

    def test_every_way_of_reading_lines_equals_a_plain_split(self):
        """The three outputs of LineReader, fed random data in random pieces, against a
        reference: split at newlines, drop the first line's BOM, drop lines over the
        limit; located lines carry the offset where they start in the stream."""
        bom = catop.UTF8_BOM
        rng = random.Random(11)
        for trial in range(1500):
            limit = rng.choice([3, 5, 10, 50])
            parts = [bytes(rng.choice(b"ab{}\r") for _ in range(rng.choice([0, 1, 4, 12, 60])))
                     for _ in range(rng.randint(0, 10))]
            data = (bom if trial % 3 == 0 else b"") + b"\n".join(parts) + b"\n" * (trial % 2)
            pieces = data.split(b"\n")
            if data.startswith(bom) and limit < len(pieces[0]) <= limit + 3:
                continue  # the mark counts to the limit while the line is incomplete
            expected, offset = [], 0
            for index, piece in enumerate(pieces[:-1]):
                line = piece[3:] if index == 0 and piece.startswith(bom) else piece
                if line and len(piece) <= limit:
                    expected.append((offset, line))
                offset += len(piece) + 1
            for method in ("feed", "feed_located", "feed_block"):
                with mock.patch.object(catop, "MAX_LINE_BYTES", limit):
                    reader = catop.LineReader()
                got, at = [], 0
                while at < len(data):
                    size = rng.randint(1, 7)
                    out = getattr(reader, method)(data[at:at + size])
                    at += size
                    got += (out if method == "feed_located" else
                            [line for line in (out if method == "feed" else out.split(b"\n"))
                             if line])
                want = expected if method == "feed_located" else [l for _, l in expected]
                self.assertEqual(got, want, (method, data, limit))
                self.assertEqual(reader.line_start, offset, (method, data, limit))

    def test_read_new_blocks_appends_truncation_and_rotation(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "log.jsonl")
        state = catop.FileState(path)
        with open(path, "wb") as handle:
            handle.write(b"one\ntw")
        self.assertEqual(list(catop.read_new_blocks(state, final=False)), [b"one\n"])
        with open(path, "ab") as handle:
            handle.write(b"o\nthree\n")
        self.assertEqual(b"".join(catop.read_new_blocks(state, final=False)), b"two\nthree\n")
        self.assertEqual(list(catop.read_new_blocks(state, final=False)), [])
        with open(path, "wb") as handle:        # truncated and rewritten
            handle.write(b"new\n")
        self.assertEqual(b"".join(catop.read_new_blocks(state, final=False)), b"new\n")
        os.rename(path, path + ".1")            # rotated: a new file, same name
        with open(path, "wb") as handle:
            handle.write(b"fresh file with more bytes\n")
        self.assertEqual(b"".join(catop.read_new_blocks(state, final=False)),
                         b"fresh file with more bytes\n")

    def test_candidate_lines_keep_order_and_skip_the_rest(self):
        block = b'a "x"\nb\nc "y" "x"\nd "y"\n'
        self.assertEqual(catop.candidate_lines(block, (b'"x"', b'"y"')),
                         [b'a "x"', b'c "y" "x"', b'd "y"'])

    def test_parallel_scan_equals_serial(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "big.jsonl")
        lines = []
        for name in sorted(os.listdir(EXAMPLES)):
            if name.endswith(".jsonl"):
                with open(example(name), "rb") as handle:
                    lines.append(handle.read())
        with open(path, "wb") as handle:
            handle.write(b"".join(lines) * 40)
        results = []
        for threshold, workers in ((10 ** 12, 1), (1, 2), (1, 3), (1, 5)):
            # the examples repeated go back in time: every cut falls inside a session
            with mock.patch.object(catop, "PARALLEL_MIN_BYTES", threshold), \
                    mock.patch.object(catop, "worker_count", return_value=workers):
                agg = catop.Aggregate(PRICES, ("model",))
                stats = catop.SourceStats("x")
                catop.scan_request_file(path, agg, stats)
                agg.finish(NOW)
                effects = agg.effects
                results.append((agg.totals.as_dict(), stats.as_dict()["skipped"], stats.records,
                                {k: v.as_dict() for k, v in agg.groups.items()},
                                [b.as_dict() for b in effects.breaks],
                                {k: {p: [round(v[0], 12)] + v[1:] for p, v in g.items()}
                                 for k, g in effects.what_if.items()},
                                {k: [v[0], round(v[1], 12)] for k, v in effects.wasted.items()},
                                {k: v[:5] + [round(v[5], 12)]
                                 for k, v in catop.gap_histograms(effects).items()},
                                catop.ttl_advice(effects)))
        for result in results[1:]:
            self.assertEqual(result, results[0])
        self.assertTrue(results[0][4])  # the repeated sessions do break across the cut
        self.assertEqual(results[0][2], 40 * 58)
        # the first copy's (each copy after it goes back in time, and is not paired here)
        self.assertEqual(sum(b["cause_source"] == "reported" for b in results[0][4]), 17)

    def test_a_log_of_a_session_a_request_is_read_in_one_pass(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)

        def write(name, sessions):
            path = os.path.join(folder, name)
            with open(path, "w") as handle:
                for n in range(1200):
                    handle.write(json.dumps({
                        "timestamp": NOW + n, "model": "claude-sonnet-4-5",
                        "provider": "anthropic", "trace_id": "t%d" % (n % sessions),
                        "usage": {"input_tokens": 10, "cache_read_input_tokens": 3000 * (n % 3),
                                  "cache_creation_input_tokens": 2000,
                                  "output_tokens": 5}}) + "\n")
            return path

        unique, long_lived = write("unique.jsonl", 1200), write("long.jsonl", 40)

        def half(path):
            return catop.split_points(path, os.path.getsize(path), 2)[1]
        with mock.patch.object(catop, "PROBE_BYTES", 20000), \
                mock.patch.object(catop, "PROBE_MIN_RECORDS", 50):
            template = catop.Aggregate(PRICES)
            self.assertIsNone(catop.scan_first_range(template, unique, 0, half(unique)))
            parts = catop.scan_first_range(template, long_lived, 0, half(long_lived))
            # the probe's 20 kB, then the rest of the range, into the same part
            with open(long_lived, "rb") as handle:
                lines = handle.read(half(long_lived)).count(b"\n")
            self.assertGreater(half(long_lived), 20000 * 2)
            self.assertEqual(parts[0][1].records, lines)
            self.assertEqual(len(parts[0][0].effects.last), 40)
            for path in (unique, long_lived):
                results = []
                for threshold in (10 ** 12, 1):
                    with mock.patch.object(catop, "PARALLEL_MIN_BYTES", threshold), \
                            mock.patch.object(catop, "worker_count", return_value=2):
                        agg = catop.Aggregate(PRICES, ("model",))
                        stats = catop.SourceStats("x")
                        catop.scan_request_file(path, agg, stats)
                        agg.finish(NOW + 10 ** 6)
                        results.append((stats.records, agg.totals.as_dict(),
                                        [b.as_dict() for b in agg.effects.breaks],
                                        agg.effects.wasted))
                self.assertEqual(results[1], results[0])
                self.assertEqual(results[0][0], 1200)
                # long-lived: a break wherever a request reads 0 after one that read
                # 6,000 (n % 3 == 0) and is not its session's first (n >= 40): 42..1197
                self.assertEqual(len(results[0][2]), 0 if path == unique else 386)

    def test_a_break_at_the_cut_is_marked_in_the_session_timeline(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "cut.jsonl")

        def write(break_at):
            with open(path, "w") as handle:
                for n in range(20):
                    read = 0 if n == break_at else 1000 * n
                    line = json.dumps({"timestamp": NOW + n, "model": "gpt-4o",
                                       "session_id": "s", "usage": {
                                           "prompt_tokens": 1000 * n + 2000,
                                           "completion_tokens": 1,
                                           "prompt_tokens_details": {"cached_tokens": read}}})
                    handle.write(line.ljust(200) + "\n")  # lines alike: the cut is known
        write(None)
        cut = catop.split_points(path, os.path.getsize(path), 2)[1] // 201
        write(cut)
        timelines = []
        for threshold in (10 ** 12, 1):
            with mock.patch.object(catop, "PARALLEL_MIN_BYTES", threshold), \
                    mock.patch.object(catop, "worker_count", return_value=2):
                agg = catop.Aggregate(PRICES, session="s")
                catop.scan_request_file(path, agg, catop.SourceStats("x"))
                timelines.append(sorted((req.ts, found and found.cause)
                                        for req, _, found in agg.timeline))
        self.assertEqual(timelines[1], timelines[0])
        self.assertEqual([ts - NOW for ts, cause in timelines[0] if cause], [cut])

    def test_group_keys_are_tuples_of_the_fields(self):
        req = catop.Request(ts=time.mktime((2026, 3, 11, 15, 30, 0, 0, 0, -1)), agent="a",
                            provider="p", model="m", project="x", session="s")
        self.assertEqual(catop.group_key_function(())(req), ())
        self.assertEqual(catop.group_key_function(("model",))(req), ("m",))
        self.assertEqual(catop.group_key_function(("project", "session", "agent"))(req),
                         ("x", "s", "a"))
        self.assertEqual(catop.group_key_function(("model", "day"))(req), ("m", "2026-03-11"))
        self.assertEqual(catop.group_key_function(("week",))(req), ("2026-W11",))

    def test_merged_parts_pair_as_one_stream_does(self):
        # each part numbers its models and sums keys itself: the merge must translate
        def request(session, ts, model):
            return catop.Request(ts=NOW + ts, session=session, provider="anthropic",
                                 model=model, miss=10, cache_read=0, cache_write_5m=5000)
        stream = [[request("s", 0, "claude-sonnet-4-5"), request("t", 1, "claude-haiku-4-5")],
                  [request("t", 60, "claude-haiku-4-5"), request("s", 61, "claude-haiku-4-5")],
                  [request("s", 62, "claude-haiku-4-5")]]
        serial = catop.CacheEffects(PRICES, lambda req: ())
        merged = catop.CacheEffects(PRICES, lambda req: ())
        for requests in stream:
            part = catop.CacheEffects(PRICES, lambda req: (), part=True)
            for req in requests:
                serial.add(req)
                part.add(req)
            merged.merge(part, lambda ts: True)
        for effects in (serial, merged):
            effects.finish(None)
            self.assertEqual([(b.session, b.ts - NOW, b.cause) for b in effects.breaks],
                             [("t", 60, "prefix_changed"), ("s", 61, "model_switch"),
                              ("s", 62, "prefix_changed")])
            tokens, premium = effects.wasted[()]
            self.assertEqual(tokens, 25000)  # every write, none read back
            # 5m writes at 1.25x the input rate: the premium is a quarter of it
            self.assertAlmostEqual(premium, 5000 * (0.75 + 0.25 + 0.25 + 0.25 + 0.25) * 1e-6,
                                   places=12)

    def test_sessions_going_back_across_a_cut_are_seen(self):
        def effects(*requests):
            part = catop.CacheEffects(PRICES, lambda req: (), part=True)
            for session, ts in requests:
                part.add(catop.Request(ts=ts, session=session, provider="openai",
                                       model="gpt-4o", miss=100))
            return part
        before = effects(("a", 10.0), ("b", 10.0))
        self.assertFalse(catop.sessions_go_back(before, [effects(("a", 11.0), ("c", 1.0)),
                                                         effects(("c", 2.0), ("b", 10.0))]))
        self.assertTrue(catop.sessions_go_back(before, [effects(("a", 9.0))]))
        self.assertTrue(catop.sessions_go_back(before, [effects(("c", 5.0)),
                                                        effects(("c", 4.0))]))

    def test_budgets_count_the_spend_read_by_workers(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "today.jsonl")
        with open(path, "w") as handle:
            for n in range(200):  # gpt-4o: 1,000 input tokens at $2.50 and 10 output at $10 a million
                handle.write(json.dumps({"timestamp": NOW - 60 - n, "model": "gpt-4o",
                                         "usage": {"prompt_tokens": 1000,
                                                   "completion_tokens": 10}}) + "\n")
        spent = []
        for threshold in (10 ** 12, 1):
            with mock.patch.object(catop, "PARALLEL_MIN_BYTES", threshold), \
                    mock.patch.object(catop, "worker_count", return_value=2):
                agg = catop.Aggregate(PRICES)
                agg.budgets = catop.BudgetTracker({"daily": 1.0, "monthly": 10.0}, NOW)
                catop.scan_request_file(path, agg, catop.SourceStats("x"))
                spent.append({period: round(value, 9) for period, value
                              in agg.budgets.spent.items()})
        self.assertEqual(spent[0], {"daily": 0.52, "monthly": 0.52})  # 200 x $0.0026
        self.assertEqual(spent[1], spent[0])

    def test_break_survives_the_trip_from_a_worker(self):
        found = catop.CacheBreak("s1", 1700000000.5, "gpt-4o", "ttl_expired", 12000, 100,
                                 11900, 400.25, 0.0123456789)
        back = pickle.loads(pickle.dumps(found, pickle.HIGHEST_PROTOCOL))
        self.assertEqual(back.as_dict(), {
            "session": "s1", "ts": "2023-11-14T22:13:20Z", "model": "gpt-4o",
            "cause": "ttl_expired", "expected_read_tokens": 12000, "read_tokens": 100,
            "rewritten_tokens": 11900, "gap_s": 400.25, "cost_usd": 0.012345679,
            "thread": None, "cause_source": "inferred", "reported_reason": None,
            "reported_missed_tokens": None})
        found = catop.CacheBreak("s1", 1700000000.5, "gpt-4o", "tools_changed", 12000, 100,
                                 11900, 400.25, 0.0123456789, "agent-7", True,
                                 "tools_changed", 11500, "ttl_expired")
        back = pickle.loads(pickle.dumps(found, pickle.HIGHEST_PROTOCOL))
        self.assertEqual(back.as_json(), json.dumps(found.as_dict()))
        self.assertEqual((back.thread, back.cause_source, back.reported_missed, back.inferred),
                         ("agent-7", "reported", 11500, "ttl_expired"))


# ------------------------------------------------------------------- agents

class AgentTests(IsolatedEnv):
    """The example agent logs, with every trap of formats.md section 3."""

    def agent_totals(self, name, *extra):
        self.point_agents_at_examples()
        return self.run_json("--agent", name, *extra)

    def test_claude_code(self):
        doc = self.agent_totals("claude-code", "--group-by", "model")
        t = doc["totals"]
        self.assertEqual((t["requests"], t["miss_tokens"], t["cache_read_tokens"],
                          t["cache_write_tokens"], t["cache_write_1h_tokens"],
                          t["output_tokens"]), (6, 44, 37000, 19600, 2000, 1760))
        # A 0.018015 + B 0.023856 (1-hour write at 6e-6) + C 0.007509 + legacy 0.010185
        # + opus D 0.06004 + haiku subagent E 0.006681
        self.assertAlmostEqual(t["cost_usd"], 0.126286, places=6)
        self.assertEqual(t["observed_cost_usd"], 0.0123)
        self.assertEqual(doc["sources"], [{"name": "agent:claude-code", "records": 6,
                                           "skipped": {"malformed": 1, "no_usage": 0, "failed": 0,
                                                       "duplicate": 3}}])
        models = {g["key"]["model"]: g["requests"] for g in doc["groups"]}
        # dated names are grouped under the undated one priced alike (one model, one row)
        self.assertEqual(models, {"claude-sonnet-4-5": 4, "claude-opus-4-5": 1,
                                  "claude-haiku-4-5": 1})

    def test_claude_code_subagent_rolls_into_parent_session(self):
        doc = self.agent_totals("claude-code", "--group-by", "session,project")
        sessions = {(g["key"]["session"], g["key"]["project"]): g["requests"]
                    for g in doc["groups"]}
        self.assertEqual(sessions, {
            ("1111aaaa-2222-4bbb-8ccc-333333333333", "/home/dev/shop"): 5,
            ("2222bbbb-0000-4000-8000-000000000002", "/home/dev/legacy"): 1})
        code, out, _ = self.run_main("--agent", "claude-code", "--offline", "--session",
                                     "1111", "--width", "120")
        self.assertEqual(code, 0)
        self.assertEqual(out.count("subagent"), 1)
        self.assertIn("(5 requests)", out)

    def test_claude_code_dedup_is_global_across_files(self):
        self.point_agents_at_examples()
        copy = self.copy_agent_examples("claude")
        shutil.copy(os.path.join(copy, "projects", "-home-dev-legacy",
                                 "2222bbbb-0000-4000-8000-000000000002.jsonl"),
                    os.path.join(copy, "projects", "-home-dev-legacy", "copy.jsonl"))
        os.environ["CLAUDE_CONFIG_DIR"] = "%s,%s" % (copy, os.path.join(self.tmp, "absent"))
        doc = self.run_json("--agent", "claude-code")
        self.assertEqual(doc["totals"]["requests"], 6)
        self.assertEqual(doc["sources"][0]["skipped"]["duplicate"], 4)

    def test_claude_code_keeps_the_largest_line_even_when_it_comes_first(self):
        def line(output, read):
            return json.dumps({
                "type": "assistant", "sessionId": "s-big", "requestId": "req_big",
                "timestamp": "2026-03-10T09:00:00Z", "cwd": "/p",
                "message": {"id": "msg_big", "model": "claude-sonnet-4-5", "usage": {
                    "input_tokens": 10, "cache_read_input_tokens": read,
                    "cache_creation_input_tokens": 0, "output_tokens": output}}}) + "\n"
        folder = os.path.join(self.tmp, "claude", "projects", "-p")
        os.makedirs(folder)
        with open(os.path.join(folder, "a.jsonl"), "w") as handle:
            handle.write(line(800, 5000) + line(3, 5000))   # complete line first
        with open(os.path.join(folder, "b.jsonl"), "w") as handle:
            handle.write(line(5, 5000))                     # a partial copy elsewhere
        os.environ["CLAUDE_CONFIG_DIR"] = os.path.join(self.tmp, "claude")
        for threshold in (10 ** 12, 1):   # one process, then a worker reading b.jsonl
            with mock.patch.object(catop, "PARALLEL_MIN_BYTES", threshold), \
                    mock.patch.object(catop, "worker_count", return_value=2):
                doc = self.run_json("--agent", "claude-code")
            t = doc["totals"]
            self.assertEqual((t["requests"], t["miss_tokens"], t["cache_read_tokens"],
                              t["output_tokens"]), (1, 10, 5000, 800))
            self.assertEqual(doc["sources"][0]["skipped"]["duplicate"], 2)

    def test_codex(self):
        doc = self.agent_totals("codex", "--group-by", "model,session")
        t = doc["totals"]
        self.assertEqual((t["requests"], t["miss_tokens"], t["cache_read_tokens"],
                          t["cache_write_tokens"], t["output_tokens"], t["reasoning_tokens"]),
                         (6, 10836, 12864, 0, 1650, 586))
        self.assertAlmostEqual(t["cost_usd"], 0.015625, places=9)
        self.assertEqual(doc["sources"][0]["skipped"]["duplicate"], 2)  # re-emit + fork replay
        groups = {(g["key"]["model"], g["key"]["session"]): g["requests"] for g in doc["groups"]}
        self.assertEqual(groups, {("gpt-5-codex", "codex-s1"): 2, ("gpt-5", "codex-s1"): 1,
                                  ("gpt-5", "codex-s2"): 1, ("unknown", "codex-old"): 2})
        self.assertEqual(doc["unpriced_models"], ["unknown"])

    def test_gemini(self):
        doc = self.agent_totals("gemini", "--group-by", "model")
        t = doc["totals"]
        self.assertEqual((t["requests"], t["miss_tokens"], t["cache_read_tokens"],
                          t["output_tokens"], t["reasoning_tokens"]), (3, 14000, 9000, 1020, 700))
        # g1 0.0183 + g2 0.00765 + flash g0 0.000705 (thoughts billed as output)
        self.assertAlmostEqual(t["cost_usd"], 0.026655, places=9)
        self.assertEqual(doc["sources"][0]["skipped"]["duplicate"], 2)

    def test_openclaw(self):
        doc = self.agent_totals("openclaw")
        t = doc["totals"]
        self.assertEqual((t["requests"], t["miss_tokens"], t["cache_read_tokens"],
                          t["cache_write_tokens"], t["output_tokens"]), (2, 4, 9120, 10460, 508))
        self.assertAlmostEqual(t["cost_usd"], 0.035649 + 0.013944, places=9)
        self.assertAlmostEqual(t["observed_cost_usd"], 0.049593, places=9)

    def test_opencode_database_and_legacy_files_counted_once(self):
        self.point_agents_at_examples()
        data = self.copy_agent_examples("opencode")
        with open(os.path.join(data, "storage", "message", "ses_oc", "msg_oc1.json")) as handle:
            legacy = handle.read()
        reasoning = {"id": "msg_oc2", "sessionID": "ses_oc", "role": "assistant",
                     "time": {"created": 1773136900000}, "modelID": "gpt-5",
                     "providerID": "openai", "path": {"cwd": "/home/dev/shop"},
                     "tokens": {"input": 100, "output": 50, "reasoning": 20,
                                "cache": {"read": 0, "write": 0}}}
        database = sqlite3.connect(os.path.join(data, "opencode.db"))
        database.execute("CREATE TABLE message (id TEXT PRIMARY KEY, session_id TEXT, data TEXT)")
        database.executemany("INSERT INTO message VALUES (?, ?, ?)", [
            ("msg_oc1", "ses_oc", legacy), ("msg_oc2", "ses_oc", json.dumps(reasoning)),
            ("msg_bad", "ses_oc", "{not json")])
        database.commit()
        database.close()
        os.environ["OPENCODE_DATA_DIR"] = data
        doc = self.run_json("--agent", "opencode")
        t = doc["totals"]
        self.assertEqual((t["requests"], t["miss_tokens"], t["cache_read_tokens"],
                          t["cache_write_tokens"], t["output_tokens"], t["reasoning_tokens"]),
                         (2, 106, 21840, 1536, 458, 20))
        # msg_oc1 0.01815 + msg_oc2 100 x 1.25e-6 + 70 x 1e-5
        self.assertAlmostEqual(t["cost_usd"], 0.01815 + 0.000825, places=9)
        self.assertEqual(doc["sources"][0]["skipped"]["duplicate"], 1)

    def test_session_listing_shows_span_models_project_and_compactions(self):
        self.point_agents_at_examples()
        code, out, _ = self.run_main("--agent", "claude-code", "--agent", "codex", "--offline",
                                     "--group-by", "session", "--width", "250")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        header = next(line for line in lines if line.startswith("SESSION"))
        self.assertEqual(header.split()[:6], ["SESSION", "FIRST", "LAST", "MODELS", "PROJECT",
                                              "COMPACT"])
        row = next(line for line in lines if line.startswith("1111aaaa"))
        first = time.strftime("%m-%d %H:%M", time.localtime(1773129607.0))  # 08:00:07Z
        last = time.strftime("%m-%d %H:%M", time.localtime(1773129900.0))   # 08:05:00Z
        self.assertIn("%s  %s" % (first, last), row)
        self.assertIn("claude-haiku-4-5-20251001, claude-opus-4-5, claude-sonnet-4-5-20250929",
                      row)
        self.assertIn("dev/shop", row)
        cells = row.split()
        self.assertEqual(cells[cells.index("dev/shop") + 1:cells.index("dev/shop") + 3],
                         ["1", "5"])  # one compaction, five requests
        codex = next(line for line in lines if line.startswith("codex-s1")).split()
        self.assertEqual(codex[codex.index("dev/shop") + 1:codex.index("dev/shop") + 3],
                         ["1", "3"])

    def test_where_catop_differs_from_ccusage_on_purpose(self):
        """ccusage 20.0.24 agrees with catop's token totals on ordinary logs (bench_catop.py
        compares them), but not in three places where formats.md asks otherwise:

        1. A Claude Code response logged without requestId on two lines (msg_C: output
           20, then 200): catop keeps the largest line once; ccusage's daily report also
           keeps the partial line (its output total is 1,780 where catop's is 1,760, its
           cache read 52,000 where catop's is 37,000).
        2. A forked Codex session replays its parent's token_count history within a
           second of starting: catop does not count the replay (formats.md), ccusage
           counts it again (cache read 15,864 instead of 12,864).
        3. A Codex rollout that never logged its model: ccusage prices it as gpt-5,
           catop reports it as 'unknown' and lists it as unpriced rather than guess.
        """
        claude = self.agent_totals("claude-code")["totals"]
        self.assertEqual((claude["output_tokens"], claude["cache_read_tokens"]), (1760, 37000))
        codex = self.agent_totals("codex")
        self.assertEqual(codex["totals"]["cache_read_tokens"], 12864)
        self.assertEqual(codex["unpriced_models"], ["unknown"])

    # agent: (requests, miss, cache read, 5m write, 1h write, output, reasoning),
    # (malformed, duplicates) skipped, observed cost; by hand from each agent's format
    # (the fixtures in examples/agents/<agent>, what each one tests in its comment)
    MORE_AGENTS = {
        # a newer message without a usageLedger event beside ledger-only ones; a cut file
        "amp": ((6, 2465, 55134, 30680, 0, 3602, 0), (1, 0), None),
        # running totals a session; a stale flat copy of one ranks below the live one;
        # thinking beside output; a child's inclusiveTokenUsage not added again
        "droid": ((4, 23030, 1469900, 111740, 0, 30665, 7170), (1, 0), None),
        # OpenRouter-style prompt_tokens include cached_tokens; run-state's history
        # replays the chat: only its last step is the reply's
        "codebuff": ((5, 32545, 42500, 31100, 0, 5330, 1200), (1, 0), 0.0803),
        # sessions rows (one a session, its per-model rows not added again), auxiliary
        # calls (titles, compression) besides, a named profile's own state.db
        "hermes": ((7, 55250, 345000, 29700, 0, 15012, 1300), (1, 0), None),
        # a fork copies its parent's lines (entry id and time kept): counted once
        "pi": ((7, 3961, 53900, 19150, 0, 6160, 0), (0, 2), None),
        # an imported session's copy of the counters; Gemini thoughts beside the output
        "goose": ((5, 499400, 0, 0, 0, 28200, 3200), (1, 1), None),
        # a forked session's copies (new ids, same times and tokens, cost 0)
        "kilo": ((7, 13640, 35248, 10500, 0, 3390, 700), (1, 2), 0.101241),
        # every session.shutdown is one run of the CLI (a resumed run counts too);
        # inputTokens include both caches; one event read twice counts once
        "copilot": ((5, 76000, 278000, 27000, 0, 16200, 5556), (1, 2), None),
        # one call in its step, its generation and its retry; a never-initialized database
        "antigravity": ((6, 15700, 29000, 19500, 0, 2650, 680), (1, 7), None),
        # Kimi CLI and Kimi Code: subagent events relayed to the parent's wire, a /fork's
        # copies, a session-scope call (a compaction) that is a call of its own
        "kimi": ((11, 20141, 67598, 15800, 0, 5391, 0), (3, 4), None),
        # /branch copies keep their uuid; thoughts inside candidates but on Gemini's API
        "qwen": ((6, 25600, 62080, 0, 0, 6862, 3460), (0, 2), None),
        # a turn split by model; the same turn in two sessions; cost in 1e-10 USD ticks
        "grok": ((5, 36700, 61440, 0, 0, 4456, 2078), (0, 2), 0.115832),
        # completed rows of model_usage only; input holds both cache slices
        "zcode": ((8, 51666, 59016, 11000, 0, 6407, 0), (1, 0), None),
    }

    def test_thirteen_more_agents(self):
        self.assertEqual(set(self.MORE_AGENTS) | {"claude-code", "codex", "gemini", "opencode",
                                                  "openclaw"}, set(catop.AGENTS))
        for name, (tokens, (malformed, duplicates), cost) in sorted(self.MORE_AGENTS.items()):
            with self.subTest(agent=name):
                doc = self.agent_totals(name)
                t, source = doc["totals"], doc["sources"][0]
                self.assertEqual((t["requests"], t["miss_tokens"], t["cache_read_tokens"],
                                  t["cache_write_tokens"] - t["cache_write_1h_tokens"],
                                  t["cache_write_1h_tokens"], t["output_tokens"],
                                  t["reasoning_tokens"]), tokens)
                self.assertEqual((source["skipped"]["malformed"],
                                  source["skipped"]["duplicate"]), (malformed, duplicates))
                if cost is not None:
                    self.assertAlmostEqual(t["observed_cost_usd"], cost, places=9)

    def test_opencode_database_rows_keep_no_id_in_their_json(self):
        # OpenCode's and Kilo's message table keeps id and session in columns only: two
        # messages of one session are two requests, and each belongs to its session
        data = os.path.join(self.tmp, "opencode")
        os.makedirs(data)
        database = sqlite3.connect(os.path.join(data, "opencode.db"))
        database.execute("CREATE TABLE message (id TEXT PRIMARY KEY, session_id TEXT, data TEXT)")
        for number in range(2):
            database.execute("INSERT INTO message VALUES (?, ?, ?)", (
                "msg_%d" % number, "ses_a", json.dumps({
                    "role": "assistant", "modelID": "gpt-4o", "providerID": "openai",
                    "time": {"created": 1773136900000 + number}, "tokens": {
                        "input": 100, "output": 10, "reasoning": 0,
                        "cache": {"read": 0, "write": 0}}})))
        database.commit()
        database.close()
        os.environ["OPENCODE_DATA_DIR"] = data
        doc = self.run_json("--agent", "opencode", "--group-by", "session")
        self.assertEqual(doc["totals"]["requests"], 2)
        self.assertEqual([g["key"]["session"] for g in doc["groups"]], ["ses_a"])

    def test_a_folder_of_another_version_is_told_in_one_line(self):
        self.point_agents_at_examples()
        folder = os.path.join(self.tmp, "qwen", "projects", "-p", "chats")
        os.makedirs(folder)
        with open(os.path.join(folder, "s.jsonl"), "w") as handle:
            handle.write('{"type": "message", "usage": {"input_tokens": 5}}\n')
        os.environ["QWEN_DATA_DIR"] = os.path.join(self.tmp, "qwen")
        code, out, err = self.run_main("--offline", "--no-history", "--width", "300")
        self.assertEqual(code, 0)
        self.assertIn("source  agent:qwen: 0 records [no assistant records with usageMetadata "
                      "in 1 file (%s): written by another version of qwen?]"
                      % os.path.join(folder, "s.jsonl"), out)
        self.assertIn("source  agent:kimi: 11 records", out)   # the others still read
        self.assertNotIn("Traceback", err)

    def test_scan_with_no_source_finds_every_agent(self):
        self.point_agents_at_examples()
        doc = self.run_json()
        names = [s["name"] for s in doc["sources"]]
        self.assertEqual(names, ["agent:" + a for a in catop.AGENTS])
        # the first five, then amp droid codebuff hermes pi goose kilo copilot antigravity
        # kimi qwen grok zcode
        self.assertEqual(doc["totals"]["requests"], 6 + 6 + 3 + 1 + 2 + 6 + 4 + 5 + 7 + 7 + 5
                         + 7 + 5 + 6 + 11 + 6 + 5 + 8)

    def test_nothing_found_says_where_it_looked(self):
        code, out, err = self.run_main("--offline")
        self.assertEqual(code, 1)
        self.assertIn("no data found", err)
        self.assertIn(os.path.join(self.tmp, ".claude"), err)
        self.assertIn("--demo", err)

    def test_parallel_agent_scan_equals_serial(self):
        self.point_agents_at_examples()
        serial = self.run_json("--agent", "claude-code", "--agent", "codex")
        with mock.patch.object(catop, "PARALLEL_MIN_BYTES", 1), \
                mock.patch.object(catop, "worker_count", return_value=2):
            parallel = self.run_json("--agent", "claude-code", "--agent", "codex")
        for doc in (serial, parallel):
            doc.pop("generated_at")
            doc["prices"].pop("age_s")
        self.assertEqual(serial, parallel)

    def test_a_bom_at_the_start_of_any_file_changes_nothing(self):
        """Editors on Windows write one: it cost the first record of a request log, and
        a forked Codex rollout its fork marker (the parent's history counted again)."""
        self.point_agents_at_examples()
        plain = self.run_json("--agent", "codex", "--agent", "claude-code", "--agent",
                              "gemini", "--agent", "openclaw", "--group-by", "session")
        copy = os.path.join(self.tmp, "bom")
        shutil.copytree(AGENT_EXAMPLES, copy)
        for folder, _, names in os.walk(copy):
            for name in names:
                if name.endswith(".jsonl"):
                    path = os.path.join(folder, name)
                    with open(path, "rb") as handle:
                        data = handle.read()
                    with open(path, "wb") as handle:
                        handle.write(catop.UTF8_BOM + data)
        os.environ.update(CLAUDE_CONFIG_DIR=os.path.join(copy, "claude"),
                          CODEX_HOME=os.path.join(copy, "codex"),
                          GEMINI_DATA_DIR=os.path.join(copy, "gemini", "tmp"),
                          OPENCLAW_DIR=os.path.join(copy, "openclaw"))
        with_bom = self.run_json("--agent", "codex", "--agent", "claude-code", "--agent",
                                 "gemini", "--agent", "openclaw", "--group-by", "session")
        self.assertEqual(with_bom["totals"], plain["totals"])
        self.assertEqual(with_bom["groups"], plain["groups"])
        for name in sorted(os.listdir(EXAMPLES)):
            if name.endswith(".jsonl"):
                with self.subTest(log=name):
                    path = os.path.join(self.tmp, name)
                    with open(example(name), "rb") as source, open(path, "wb") as out:
                        out.write(catop.UTF8_BOM + source.read())
                    self.assertEqual(self.run_json("--file", path)["totals"],
                                     self.run_json("--file", example(name))["totals"])

    @staticmethod
    def claude_line(session, message_id, ts, tokens, kind="assistant"):
        return json.dumps({"type": kind, "cwd": "/w", "sessionId": session,
                           "requestId": "r-" + message_id, "timestamp": ts,
                           "message": {"id": message_id, "model": "claude-sonnet-4-5",
                                       "usage": {"input_tokens": tokens,
                                                 "output_tokens": 10}}}) + "\n"

    def resumed_home(self, original_name):
        """A Claude Code home: a session S1 (in original_name), then S2 resumed from it,
        whose file starts with a verbatim copy of S1's response m1 (same ids, same
        usage, its own sessionId), and a third session that has nothing to do with it."""
        folder = os.path.join(self.tmp, "claude", "projects", "-w")
        os.makedirs(folder)
        files = {original_name: [self.claude_line("S1", "m0", "2026-03-10T08:00:00Z", 1,
                                                  "user"),
                                 self.claude_line("S1", "m1", "2026-03-10T08:01:00Z", 1000)],
                 "5-resumed.jsonl": [self.claude_line("S2", "m1", "2026-03-10T08:01:00Z", 1000),
                                     self.claude_line("S2", "m2", "2026-03-10T09:00:00Z", 10)],
                 "0-other.jsonl": [self.claude_line("S0", "m9", "2026-03-10T07:00:00Z", 1)]}
        for name, lines in files.items():
            with open(os.path.join(folder, name), "w") as handle:
                handle.write("".join(lines))
        os.environ["CLAUDE_CONFIG_DIR"] = os.path.join(self.tmp, "claude")

    def sessions(self, *argv):
        doc = self.run_main(*(("--agent", "claude-code", "--group-by", "session", "--format",
                               "json", "--offline") + argv))
        self.assertEqual(doc[0], 0, doc[2])
        return {g["key"]["session"]: g["input_tokens"] for g in json.loads(doc[1])["groups"]}

    def test_a_resumed_sessions_copies_belong_to_the_session_that_made_them(self):
        """formats.md section 3: among equal copies, the file whose earliest record is
        oldest keeps the response; on a tie the smaller path.  Whatever the order of
        reading, the number of processes and the history."""
        for original, owner in (("9-original.jsonl", "S1"), ("1-original.jsonl", "S1")):
            with self.subTest(original=original):
                shutil.rmtree(os.path.join(self.tmp, "claude"), True)
                self.resumed_home(original)
                want = {owner: 1000, "S2": 10, "S0": 1}
                history = os.path.join(self.tmp, "h-%s.sqlite3" % original)
                with mock.patch.object(catop, "PARALLEL_MIN_BYTES", 1):
                    for jobs in ("1", "2", "3"):
                        self.assertEqual(self.sessions("--no-history", "--jobs", jobs), want)
                    self.assertEqual(self.sessions("--history", history, "--jobs", "2"), want)
                    self.assertEqual(self.sessions("--history", history), want)     # warm
                    self.assertEqual(self.sessions("--history", history + "2", "--jobs",
                                                   "1"), want)
        # the original's first record (a user line, 08:00) is older than any of the
        # resumed file's; copy it too, and the two files tie: the smaller path keeps m1
        shutil.rmtree(os.path.join(self.tmp, "claude"), True)
        self.resumed_home("9-original.jsonl")
        resumed = os.path.join(self.tmp, "claude", "projects", "-w", "5-resumed.jsonl")
        with open(resumed) as handle:
            lines = handle.read()
        with open(resumed, "w") as handle:
            handle.write(self.claude_line("S2", "m0", "2026-03-10T08:00:00Z", 1, "user") + lines)
        for jobs in ("1", "2"):
            with mock.patch.object(catop, "PARALLEL_MIN_BYTES", 1):
                self.assertEqual(self.sessions("--no-history", "--jobs", jobs),
                                 {"S2": 1010, "S0": 1})

    def test_the_history_shows_only_what_lies_under_the_folders_read_now(self):
        self.copy_agent_examples("claude", "CLAUDE_CONFIG_DIR")
        self.assertEqual(len(self.sessions()), 2)
        other = os.path.join(self.tmp, "other", "projects", "-x")
        os.makedirs(other)
        with open(os.path.join(other, "b.jsonl"), "w") as handle:
            handle.write(self.claude_line("B", "mb", "2026-03-10T08:00:00Z", 7))
        os.environ["CLAUDE_CONFIG_DIR"] = os.path.join(self.tmp, "other")
        self.assertEqual(self.sessions(), {"B": 7})           # A's rows stay stored, unshown
        code, out, _ = self.run_main("--format", "json", "--offline")   # no source: all
        self.assertEqual(json.loads(out)["totals"]["requests"], 6 + 1)

    def test_an_agent_is_one_entry_in_the_table_and_one_parser(self):
        """A made-up agent, added to the table alone, is found, read, de-duplicated,
        stored in the history and read back like the shipped ones."""
        def parse_toy(record, ctx):
            if record.get("kind") != "reply":
                return None
            ctx.session = str(record.get("chat") or "")
            req = catop.Request(catop.parse_timestamp(record.get("at")), "toy", "anthropic",
                                "claude-sonnet-4-5", "/toy", ctx.session,
                                catop.as_count(record["in"]), catop.as_count(record["hit"]),
                                0, 0, catop.as_count(record["out"]))
            return str(record["id"]), req
        root = os.path.join(self.tmp, "toy")
        os.makedirs(os.path.join(root, "logs"))
        with open(os.path.join(root, "logs", "a.jsonl"), "w") as handle:
            for n, copies in ((1, 1), (2, 2)):     # reply 2 is written twice: counted once
                for _ in range(copies):
                    handle.write(json.dumps({"kind": "reply", "id": "r%d" % n, "chat": "c",
                                             "at": NOW + n, "in": 10 * n, "hit": 100 * n,
                                             "out": n}) + "\n")
        spec = catop.AgentSpec("toy", "TOY_HOME", ((".toy",),),
                               lambda root: catop._walk_files(os.path.join(root, "logs"),
                                                              (".jsonl",)),
                               parse_toy, (b'"reply"',))
        os.environ["TOY_HOME"] = root
        with mock.patch.dict(catop.AGENT_TABLE, {"toy": spec}):
            for argv in (("--no-history",), ("--history", os.path.join(self.tmp, "h")),
                         ("--history", os.path.join(self.tmp, "h"))):
                doc = self.run_main("--agent", "toy", "--format", "json", "--offline", *argv)
                totals = json.loads(doc[1])["totals"]
                self.assertEqual((totals["requests"], totals["miss_tokens"],
                                  totals["cache_read_tokens"]), (2, 30, 300), doc[2])
            code, out, _ = self.run_main("--scan-agents", "--format", "json", "--offline",
                                         "--no-history")
            self.assertIn("agent:toy", [s["name"] for s in json.loads(out)["sources"]])

    def test_appended_lines_are_read_on_rescan(self):
        self.point_agents_at_examples()
        root = self.copy_agent_examples("claude", "CLAUDE_CONFIG_DIR")
        source = catop.AgentSource("claude-code")
        source.scan(final=False)
        self.assertEqual(len(source.deduplicated()[0]), 6)
        path = os.path.join(root, "projects", "-home-dev-legacy",
                            "2222bbbb-0000-4000-8000-000000000002.jsonl")
        with open(path, "a") as handle:
            handle.write(json.dumps({"type": "assistant", "sessionId": "x", "requestId": "r9",
                                     "message": {"id": "m9", "model": "claude-haiku-4-5",
                                                 "usage": {"input_tokens": 5,
                                                           "output_tokens": 7}}}) + "\n")
        source.scan(final=False)
        self.assertEqual(len(source.deduplicated()[0]), 7)


# ------------------------------------------------------------------- render

class RenderTests(IsolatedEnv):

    def report(self, group_by=("model",)):
        agg = catop.Aggregate(PRICES, group_by)
        for name in ("openai-chat.jsonl", "anthropic-messages.jsonl", "gemini.jsonl"):
            for record in read_examples(name):
                agg.add(catop.normalize_record(record))
        stats = catop.SourceStats("file:examples")
        stats.records = agg.totals.requests
        return catop.Report(agg, [stats], catop.PriceBook(PRICES.table, "file:prices.json", 0),
                            now=1773158400.0)

    GOLDEN_80 = """\
MODEL              REQ   READ  WRITE   MISS    OUT   HIT%     COST     SAVED
gemini-2.5-pro       2   200k      0  51.0k  4,050  79.7%  $0.2367   $0.4500
claude-sonnet-4-5    1  20.0k  3,000     50    400  86.8%  $0.0279   $0.0473
o3                   1  8,000      0  2,000  2,000  80.0%  $0.0240   $0.0120
claude-haiku-4-5     1      0  5,000     10    100   0.0%  $0.0068  -$0.0013
gpt-4o               1  1,500      0    500    300  75.0%  $0.0061   $0.0019
TOTAL                6   230k  8,000  53.6k  6,850  78.8%  $0.3015   $0.5099
"""

    def test_golden_table_at_80_columns(self):
        report = self.report()
        lines = catop.render_group_table(report.rows, catop.group_labels(("model",)), 80,
                                         report.aggregate.totals)
        self.assertEqual("\n".join(lines) + "\n", self.GOLDEN_80)

    def test_text_is_never_cut_inside_a_number(self):
        """A narrow summary read 'read 124,115,42~' for 124,115,427: another number."""
        line = "input     133,151,191 = read 124,115,427"
        self.assertEqual(catop.fit(line, 32, "~"), "input     133,151,191 = read ~")
        self.assertEqual(catop.fit(line, 22, "~"), "input     133,151,191~")   # whole: kept
        self.assertEqual(catop.fit("cost $15.89 saved $39.12", 10, "~"), "cost ~")
        self.assertEqual(catop.fit("read 1.2M  write 300k", 8, "~"), "read ~")
        self.assertEqual(catop.fit("catop  01:53:04  window", 12, "~"), "catop  ~")
        self.assertEqual(catop.fit("\u2713 read 1,234,567", 12, "\u2026"), "\u2713 read \u2026")
        # words are cut as before, numbers in them too: only a number alone is kept whole
        self.assertEqual(catop.fit("claude-sonnet-4-5-20250929", 16, "~"), "claude-sonnet-4~")
        self.assertEqual(catop.fit("gpt-4.1-mini", 7, "~"), "gpt-4.~")
        self.assertEqual(catop.fit("12345678", 5, "~"), "~")

    def test_wide_characters_keep_the_columns_aligned(self):
        self.assertEqual(catop.display_width("\u6a21\u578b\U0001f680e\u0301"), 7)
        self.assertEqual(catop.fit("\u7528\u6237\u9879\u76ee", 5), "\u7528\u6237~")
        self.assertEqual(catop.fit("\u7528\u6237\u9879\u76ee", 4), "\u7528~")
        self.assertEqual(catop.pad("\u7528~", 4), "\u7528~ ")
        self.assertEqual(catop.fit("abcdef", 4, ""), "abcd")
        agg = catop.Aggregate(PRICES, ("project", "model"))
        for project, model in (("/home/\u7528\u6237/\u6570\u636e\u9879\u76ee", "gpt-4o"),
                               ("/home/me/plain", "gpt-4o"),
                               ("/srv/\uff46\uff55\uff4c\uff4c/\u30d7\u30ed\u30b8\u30a7"
                                "\u30af\u30c8\u540d\u524d\u304c\u9577\u3044\u9577\u3044",
                                "\u6a21\u578b\U0001f680e\u0301")):
            agg.add(catop.Request(ts=1773129600.0, project=project, model=model,
                                  provider="openai", miss=1000, cache_read=800, output=10))
        rows = catop.sorted_groups(agg.groups, "cost", True)
        for width in (40, 60, 80, 200):
            lines = catop.render_group_table(rows, catop.group_labels(("project", "model")),
                                             width, agg.totals)
            with self.subTest(width=width):
                # the last column is right-aligned: every row ends at the same column
                self.assertEqual({catop.display_width(line) for line in lines},
                                 {catop.display_width(lines[0])})
                self.assertLessEqual(catop.display_width(lines[0]), width)

    def test_full_numbers_when_wide(self):
        report = self.report()
        lines = catop.render_group_table(report.rows, catop.group_labels(("model",)), 200,
                                         report.aggregate.totals)
        self.assertEqual(lines[0].split(), ["MODEL", "REQ", "INPUT", "READ", "WRITE", "MISS",
                                            "OUT", "HIT%", "COST", "SAVED"])
        self.assertIn("251,000", lines[1])
        self.assertEqual(lines[-1].split(), ["TOTAL", "6", "291,060", "229,500", "8,000",
                                             "53,560", "6,850", "78.8%", "$0.3015", "$0.5099"])

    def test_no_line_exceeds_the_width(self):
        report = self.report(("model", "project"))
        for width in (1, 20, 40, 80, 200):
            with self.subTest(width=width):
                text = catop.format_table(report, width)
                for line in text.splitlines():
                    self.assertLessEqual(len(line), width)

    def test_narrow_table_keeps_cost(self):
        report = self.report()
        lines = catop.render_group_table(report.rows, catop.group_labels(("model",)), 30,
                                         report.aggregate.totals)
        self.assertIn("COST", lines[0])
        self.assertTrue(all(len(line) <= 30 for line in lines))

    def test_summary_and_unpriced_lines(self):
        agg = catop.Aggregate(PRICES, ("model",))
        agg.add(catop.Request(model="mystery\x1b[31m", miss=10, observed_cost=0.5))
        report = catop.Report(agg, [catop.SourceStats("s")], PRICES, now=0.0)
        text = catop.format_table(report, 120)
        self.assertIn("unpriced: mystery[31m (1)", text)
        self.assertIn("observed  $0.5000 reported by the logs for 1 requests", text)
        self.assertNotIn("\x1b", text)

    def test_formatters(self):
        self.assertEqual(catop.fmt_tokens(1234567), "1,234,567")
        self.assertEqual(catop.fmt_tokens(1234567, True), "1.2M")
        self.assertEqual(catop.fmt_tokens(9999, True), "9,999")
        self.assertEqual(catop.fmt_tokens(123456, True), "123k")
        self.assertEqual(catop.fmt_usd(1234.5), "$1,234")
        self.assertEqual(catop.fmt_usd(12.345), "$12.35")
        self.assertEqual(catop.fmt_usd(0.01234), "$0.0123")
        self.assertEqual(catop.fmt_usd(-0.5), "-$0.5000")
        self.assertEqual(catop.fmt_pct(None), "-")
        self.assertEqual(catop.short_project("/home/dev/acme-api"), "dev/acme-api")


# ---------------------------------------------------------------------- cli

class CliTests(IsolatedEnv):

    TOTAL_FIELDS = ["requests", "input_tokens", "miss_tokens", "cache_read_tokens",
                    "cache_write_tokens", "cache_write_1h_tokens", "output_tokens",
                    "reasoning_tokens", "hit_rate", "cost_usd", "no_cache_cost_usd", "saved_usd",
                    "observed_cost_usd", "unpriced_requests", "web_searches",
                    "web_search_cost_usd"]

    def test_json_schema_is_exact(self):
        doc = self.run_json("--file", example("litellm.jsonl"), "--file", example("hostile.jsonl"))
        self.assertEqual(list(doc), ["catop_version", "generated_at", "window", "sources",
                                     "prices", "totals", "groups", "tiers", "tier_fallback",
                                     "unpriced_models", "breaks",
                                     "break_summary", "what_if", "wasted_writes",
                                     "ttl_advice", "gaps", "session_gaps", "warm_sessions",
                                     "refused_values"])
        self.assertEqual(list(doc["window"]), ["since", "until"])
        self.assertEqual(list(doc["prices"]), ["origin", "models", "age_s", "priced_as"])
        self.assertEqual(doc["prices"]["origin"], "file:prices.json")
        self.assertEqual(list(doc["totals"]), self.TOTAL_FIELDS)
        self.assertEqual(list(doc["groups"][0]), ["key", "models"] + self.TOTAL_FIELDS)
        self.assertEqual(doc["sources"][1], {
            "name": "file:" + example("hostile.jsonl"), "records": 3,
            "skipped": {"malformed": 9, "no_usage": 1, "duplicate": 0, "failed": 0}})
        # names are cleaned where they are read: every output shows the same one
        self.assertEqual(doc["unpriced_models"], ["evil]0;pwned[2J", "my-finetune-7b"])
        self.assertRegex(doc["generated_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        t = doc["totals"]
        self.assertEqual(t["requests"], 5)
        # litellm 0.017325 + 0.0003564 ; hostile: gpt-4o 120 x 2.5e-6 + 7 x 1e-5
        self.assertAlmostEqual(t["cost_usd"], 0.017325 + 0.0003564 + 0.00037, places=9)
        self.assertAlmostEqual(t["observed_cost_usd"], 0.0162, places=9)

    def test_item_encoder_writes_as_json_dumps(self):
        dumps = catop.item_encoder()
        for value in [{"session": "s\u00e9\x1b[2J\"", "ts": "2026-03-10T08:00:00Z", "n": 12,
                       "cost": 0.1 + 0.2, "gap": None, "ok": True, "list": [1, "a", {}]},
                      float("nan"), float("-inf"), 1e300, -0.0, "text", [], {}, None, 10 ** 30]:
            # as json.dumps writes it, but NaN and infinities (not JSON) as null
            self.assertEqual(dumps(value), json.dumps(catop.finite_json(value)))
        self.assertEqual(dumps({"a": [1.5, float("inf")], "b": float("nan")}),
                         '{"a": [1.5, null], "b": null}')

    def test_a_break_as_json_is_its_dict_as_json_dumps_writes_it(self):
        for session, ts, gap, cost in [("s\u00e9\x1b[2J\"\\", NOW + 0.25, 24.5714, 0.01444375),
                                       ("s", NOW, None, 1e-05), ("s", 86400.0, 0.0, -0.0),
                                       ("s", NOW, 1e300, float("nan")), ("s", NOW, 3.0, 1e17),
                                       ("s", NOW, float("inf"), float("-inf"))]:
            item = catop.CacheBreak(session, ts, "m\u2028", "ttl_expired", 10 ** 30, 0, 12,
                                    gap, cost)
            self.assertEqual(item.as_json(), json.dumps(catop.finite_json(item.as_dict()),
                                                        allow_nan=False))

    def test_long_lists_are_written_an_item_a_line_in_chunks(self):
        agg = catop.Aggregate(PRICES, group_by=("session",))
        for index in range(7):
            agg.add(catop.Request(ts=NOW + index, session="s%d" % index, provider="openai",
                                  model="gpt-4o", miss=100))
        agg.finish(NOW)
        report = catop.Report(agg, [], PRICES, NOW)
        for chunk in (2, 3, 7, 500):
            text = "".join(catop.iter_json(report, chunk_items=chunk))
            lines = text.split("\n")
            start = lines.index('  "groups": [')
            self.assertEqual([json.loads(line.rstrip(","))["key"]["session"]
                              for line in lines[start + 1:start + 8]],
                             ["s%d" % i for i in range(7)])
            self.assertEqual(lines[start + 8], "  ],")
            self.assertIn('  "breaks": [],', lines)
            self.assertEqual(json.loads(text)["totals"]["requests"], 7)

    def test_sessions_read_by_two_processes_list_alike_in_json_and_table(self):
        path = os.path.join(self.tmp, "sessions.jsonl")
        with open(path, "w") as handle:
            for n in range(300):
                handle.write(json.dumps({
                    "timestamp": NOW - 3600 + n, "model": "gpt-4o", "project": "p%d" % (n // 150),
                    "session_id": "s%d" % (n % 3),
                    "usage": {"prompt_tokens": 1000, "completion_tokens": 10}}) + "\n")
        with mock.patch.object(catop, "PARALLEL_MIN_BYTES", 1), \
                mock.patch.object(catop, "worker_count", return_value=2):
            doc = self.run_json("--file", path, "--group-by", "session", "--window", "all")
            code, table, err = self.run_main("--file", path, "--group-by", "session",
                                             "--window", "all", "--offline", "--no-history",
                                             "--format", "table", "--width", "200")
        self.assertEqual(sorted((g["key"]["session"], g["requests"]) for g in doc["groups"]),
                         [("s0", 100), ("s1", 100), ("s2", 100)])
        self.assertEqual(code, 0, err)
        # the table lists each session's models and projects: p0 from one half, p1 the other
        rows = [line for line in table.splitlines() if line.startswith(("s0 ", "s1 ", "s2 "))]
        self.assertEqual(len(rows), 3)
        for row in rows:
            self.assertIn(" gpt-4o ", row)
            self.assertIn(" p0, p1 ", row)

    def test_the_script_exits_with_the_gate_status(self):
        result = subprocess.run(
            [sys.executable, os.path.join(HERE, "catop.py"), "--file", example("litellm.jsonl"),
             "--offline", "--no-history", "--format", "csv", "--max-cost", "0.001"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(result.returncode, 3)
        self.assertTrue(result.stdout.endswith(
            b"\ngpt-4o-mini,1,3000,952,2048,0,0,100,0,0.682667,0.0003564,0.00051,0.0001536,"
            b"0.0004,0,0,0.0\n"), result.stdout)
        self.assertEqual(result.stderr, b"catop: gate: cost $0.0177 exceeds --max-cost $0.0010\n")

    def test_utc_times_are_written_as_datetime_would(self):
        from datetime import datetime, timezone
        for ts in (0.0, 1773129600.0, 1773129600.9999994, 1773129600.9999995, 1773129600.9999996,
                   1773129601.5, 4102444800.25):
            with self.subTest(ts=ts):
                self.assertEqual(catop.iso_utc(ts), datetime.fromtimestamp(ts, timezone.utc)
                                 .strftime("%Y-%m-%dT%H:%M:%SZ"))
        rng = random.Random(5)
        times = [1773129540 + step * 0.7 for step in range(400)]  # minutes, from the cache too
        times += [rng.uniform(0, 4102444800) for _ in range(300)]
        for ts in times + times:
            self.assertEqual(catop.iso_utc(ts), datetime.fromtimestamp(ts, timezone.utc)
                             .strftime("%Y-%m-%dT%H:%M:%SZ"))

    def test_counts_read_in_the_singular_and_a_nameless_model_is_not_sent_online(self):
        path = os.path.join(self.tmp, "one.jsonl")
        with open(path, "w") as handle:
            handle.write(json.dumps({"timestamp": NOW, "session_id": "s",
                                     "usage": {"prompt_tokens": 10}}) + "\n")
        code, out, _ = self.run_main("--file", path, "--offline", "--no-history",
                                     "--session", "s")
        self.assertIn("1 record\n", out)
        self.assertIn("(1 request)", out)
        self.assertIn("unpriced: (unknown model) (1) - tokens counted, cost shown as $0; the logs "
                      "name no model, so no price can be found", out)

    def test_errors_are_one_line_and_name_what_was_given(self):
        empty = os.path.join(self.tmp, "empty")
        os.makedirs(empty)
        log = os.path.join(self.tmp, "one.jsonl")
        with open(log, "w") as handle:
            handle.write(json.dumps({"model": "gpt-4o", "usage": {"prompt_tokens": 1}}) + "\n")
        cases = [(("--file", empty), 1, "catop: no .jsonl log in the folder %s\n" % empty),
                 (("--file", log, "--file", empty), 1,
                  "catop: no .jsonl log in the folder %s\n" % empty),
                 (("--agent", "codex"), 1, "catop: no codex logs found in %s (set CODEX_HOME "
                  "to the folder that holds them)\n" % os.path.join(self.tmp, ".codex")),
                 (("--width", "19", "--demo"), 2, "catop: error: argument --width: at least "
                  "20 columns (catop --help for more)\n"),
                 (("--group-by", "day,model,day", "--demo"), 2, "catop: error: argument "
                  "--group-by: day given twice (catop --help for more)\n"),
                 (("--since", "2026-03-10", "--until", "2026-03-09", "--demo"), 2,
                  "catop: error: --until 2026-03-09 is not after the start of the window "
                  "(catop --help for more)\n"),
                 (("--sort", "colour"), 2, None)]
        for argv, status, message in cases:
            with self.subTest(argv=argv):
                code, out, err = self.run_main(*(argv + ("--offline", "--no-history")))
                self.assertEqual(code, status)
                self.assertEqual(err.count("\n"), 1, err)
                if message:
                    self.assertEqual(err, message)
                self.assertTrue(err.startswith("catop: "))

    def test_a_dated_and_an_undated_name_of_one_model_are_one_row(self):
        path = os.path.join(self.tmp, "names.jsonl")
        with open(path, "w") as handle:
            for model in ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", "gpt-4o"):
                handle.write(json.dumps({"model": model, "timestamp": NOW,
                                         "usage": {"input_tokens": 1000}}) + "\n")
        doc = self.run_json("--file", path, "--group-by", "model")
        self.assertEqual([(g["key"]["model"], g["models"], g["requests"]) for g in doc["groups"]],
                         [("claude-sonnet-4-5", ["claude-sonnet-4-5",
                                                 "claude-sonnet-4-5-20250929"], 2),
                          ("gpt-4o", ["gpt-4o"], 1)])
        # 2,000 tokens at Sonnet's $3 a million, 1,000 at gpt-4o's $2.50
        self.assertAlmostEqual(doc["totals"]["cost_usd"], 0.006 + 0.0025, places=12)

    def test_what_runs_again_as_a_module(self):
        """A big request log or a big agents' folder (24 MB, read across cores); never a
        small run, nor one process only."""
        folder = os.path.join(self.tmp, "claude", "projects", "p")
        os.makedirs(folder)
        os.environ["CLAUDE_CONFIG_DIR"] = os.path.join(self.tmp, "claude")
        log = os.path.join(folder, "s.jsonl")
        with open(log, "wb") as handle:
            handle.truncate(catop.PARALLEL_MIN_BYTES - 1)     # sparse: no disk used
        parse = catop.build_parser().parse_args
        with mock.patch.object(catop, "JOBS_LIMIT", [2]):
            for argv, want in ((["--agent", "claude-code"], False), (["--scan-agents"], False),
                               ([], False), (["--file", EXAMPLES], False),
                               (["--file", log], False)):
                self.assertEqual(catop.worth_running_as_module(parse(argv)), want, argv)
            with open(log, "r+b") as handle:
                handle.truncate(catop.PARALLEL_MIN_BYTES)
            for argv in (["--agent", "claude-code"], ["--scan-agents"], [], ["--file", log],
                         ["--file", EXAMPLES, "--agent", "claude-code"]):
                self.assertTrue(catop.worth_running_as_module(parse(argv)), argv)
            self.assertFalse(catop.worth_running_as_module(parse(["--file", EXAMPLES])))
        with mock.patch.object(catop, "JOBS_LIMIT", [1]):
            self.assertFalse(catop.worth_running_as_module(parse(["--agent", "claude-code"])))

    def test_the_script_runs_itself_as_a_module_and_answers_alike(self):
        """python3 catop.py on a big request log re-executes as an imported module (its
        syntax tree, ~17 MB a process, is then not kept; CATOP_AS_MODULE=1 asks for it
        whatever the log); CATOP_AS_SCRIPT=1 runs the script itself: one answer."""
        outputs = []
        for extra in ({"CATOP_AS_MODULE": "1"}, {"CATOP_AS_SCRIPT": "1"}):
            result = subprocess.run(
                [sys.executable, os.path.join(HERE, "catop.py"), "--file", EXAMPLES, "--offline",
                 "--no-history", "--format", "json", "--group-by", "session"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, **extra),
                timeout=60)
            self.assertEqual((result.returncode, result.stderr), (0, b""))
            doc = json.loads(result.stdout)
            doc.pop("generated_at")
            doc["prices"].pop("age_s")
            outputs.append(doc)
        self.assertEqual(outputs[0], outputs[1])
        result = subprocess.run([sys.executable, os.path.join(HERE, "catop.py"), "--width", "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                                env=dict(os.environ, CATOP_AS_MODULE="1"))
        self.assertEqual((result.returncode, result.stderr.decode()),
                         (2, "catop: error: argument --width: at least 20 columns "
                             "(catop --help for more)\n"))

    def test_a_renamed_copy_runs_itself_as_a_module_and_keeps_its_bytecode(self):
        """/usr/local/bin/catop (no .py) beside another catop.py, with bytecode writing
        turned off: the copy loads itself by its path, never the catop.py beside it
        (it was imported by name), and keeps its compiled form in catop's cache."""
        folder = os.path.join(self.tmp, "b\u00efn 'x\" \U0001f600")
        os.makedirs(folder)
        shutil.copy(os.path.join(HERE, "catop.py"), os.path.join(folder, "catop"))
        shutil.copy(os.path.join(HERE, "prices.json"), folder)
        with open(os.path.join(folder, "catop.py"), "w") as handle:
            handle.write("raise SystemExit('the other catop.py was imported')\n")
        cache = os.path.join(self.tmp, "cache")
        env = dict(os.environ, CATOP_AS_MODULE="1", PYTHONDONTWRITEBYTECODE="1",
                   XDG_CACHE_HOME=cache)
        argv = [sys.executable, os.path.join(folder, "catop"), "--file", EXAMPLES,
                "--offline", "--no-history", "--format", "json"]
        runs = [subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                               timeout=60) for _ in range(2)]
        for result in runs:
            self.assertEqual((result.returncode, result.stderr), (0, b""))
        script = subprocess.run(argv, stdout=subprocess.PIPE, timeout=60,
                                env=dict(env, CATOP_AS_MODULE="", CATOP_AS_SCRIPT="1"))
        docs = [json.loads(result.stdout) for result in runs + [script]]
        for doc in docs:
            doc.pop("generated_at")
            doc["prices"].pop("age_s")
        self.assertEqual(docs[0], docs[2])
        self.assertEqual(docs[1], docs[2])
        kept = [os.path.join(where, name) for where, _, names in
                os.walk(os.path.join(cache, "catop", "bytecode")) for name in names]
        self.assertEqual(len(kept), 1)   # catop's own; the standard modules' stay theirs
        self.assertTrue(os.path.basename(kept[0]).startswith("catop") and
                        kept[0].endswith(".pyc"), kept)
        self.assertFalse(os.path.exists(os.path.join(folder, "__pycache__")))
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(cache, "catop")).st_mode), 0o700)
        # a damaged compiled form (its header intact) is compiled again from the file
        with open(kept[0], "r+b") as handle:
            handle.seek(16)
            handle.write(b"\x00garbage")
            handle.truncate()
        damaged = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                 timeout=60)
        self.assertEqual((damaged.returncode, damaged.stderr), (0, b""))
        doc = json.loads(damaged.stdout)
        doc.pop("generated_at")
        doc["prices"].pop("age_s")
        self.assertEqual(doc, docs[2])

    def test_the_module_run_keeps_the_interpreter_options(self):
        """python3 -E catop.py ignores PYTHONIOENCODING; run again as a module, it must
        still (the options pass to the interpreter started in its place)."""
        path = os.path.join(self.tmp, "log.jsonl")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"model": "gpt-4o", "session_id": "caf\u00e9",
                                     "usage": {"prompt_tokens": 10, "completion_tokens": 1}}) + "\n")
        outputs = []
        for extra in ({"CATOP_AS_MODULE": "1"}, {"CATOP_AS_SCRIPT": "1"}):
            env = dict(os.environ, PYTHONIOENCODING="ascii", LC_ALL="C.UTF-8", **extra)
            result = subprocess.run(
                [sys.executable, "-E", os.path.join(HERE, "catop.py"), "--file", path,
                 "--offline", "--no-history", "--group-by", "session", "--no-color"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=60)
            self.assertEqual((result.returncode, result.stderr), (0, b""))
            outputs.append(result.stdout)
        self.assertIn("caf\u00e9".encode("utf-8"), outputs[1])
        self.assertEqual(outputs[0].split(b"\n")[2:], outputs[1].split(b"\n")[2:])

    def test_a_closed_pipe_ends_quietly(self):
        """`catop | head -1`: the reader goes away; catop exits 0, and nothing such as
        'Exception ignored' or a traceback reaches stderr."""
        for argv in (("--demo",), ("--demo", "--format", "json", "--group-by", "session")):
            with self.subTest(argv=argv):
                process = subprocess.Popen(
                    [sys.executable, os.path.join(HERE, "catop.py"), "--offline",
                     "--no-history"] + list(argv), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, env=dict(os.environ))
                process.stdout.readline()
                process.stdout.close()             # as head does after its line
                _, err = process.communicate(timeout=60)
                self.assertEqual(process.returncode, 0)
                self.assertEqual(err.decode(), "")

    def test_days_weeks_and_months_are_listed_in_time_order(self):
        path = os.path.join(self.tmp, "days.jsonl")
        with open(path, "w") as handle:
            for day, tokens in ((9, 100), (10, 900), (11, 500)):     # costliest in the middle
                for model in ("gpt-4o", "o3"):
                    handle.write(json.dumps({"timestamp": "2026-03-%02dT12:00:00Z" % day,
                                             "model": model, "usage": {
                                                 "prompt_tokens": tokens}}) + "\n")
        doc = self.run_json("--file", path, "--group-by", "day,model")
        self.assertEqual([tuple(g["key"].values()) for g in doc["groups"]],
                         [("2026-03-09", "gpt-4o"), ("2026-03-09", "o3"),
                          ("2026-03-10", "gpt-4o"), ("2026-03-10", "o3"),
                          ("2026-03-11", "gpt-4o"), ("2026-03-11", "o3")])
        by_cost = self.run_json("--file", path, "--group-by", "day", "--sort", "cost")
        self.assertEqual([g["key"]["day"] for g in by_cost["groups"]],
                         ["2026-03-10", "2026-03-11", "2026-03-09"])
        for extra in ((), ("--ascending",)):
            names = self.run_json("--file", path, "--group-by", "model", "--sort", "name",
                                  *extra)
            self.assertEqual([g["key"]["model"] for g in names["groups"]], ["gpt-4o", "o3"])

    def test_piped_output_is_never_cut_unless_a_width_is_given(self):
        code, out, _ = self.run_main("--demo", "--offline", "--no-history")   # not a terminal
        self.assertEqual(code, 0)
        self.assertGreater(max(map(len, out.splitlines())), 80)
        self.assertFalse([line for line in out.splitlines() if line.endswith(("~", "\u2026"))])
        for argv, env in ((("--width", "60"), {}), ((), {"COLUMNS": "60"})):
            with self.subTest(argv=argv, env=env), mock.patch.dict(os.environ, env):
                code, out, _ = self.run_main("--demo", "--offline", "--no-history", *argv)
                self.assertEqual(max(map(len, out.splitlines())), 60)

    def test_csv_rows_and_totals_row(self):
        code, out, _ = self.run_main("--file", example("openai-chat.jsonl"), "--format", "csv",
                                     "--offline", "--sort", "name")
        self.assertEqual(code, 0)
        rows = out.splitlines()
        self.assertEqual(rows[0], "model," + ",".join(self.TOTAL_FIELDS))
        self.assertEqual(rows[1],
                         "gpt-4o,1,2000,500,1500,0,0,300,0,0.75,0.006125,0.008,0.001875,,0,0,0.0")
        self.assertEqual(rows[2], "o3,1,10000,2000,8000,0,0,2000,1500,0.8,0.024,0.036,0.012,,0,0,0.0")
        code, out, _ = self.run_main("--file", example("openai-chat.jsonl"), "--format", "csv",
                                     "--offline", "--group-by", "none")
        self.assertEqual(out.splitlines()[1],
                         "2,12000,2500,9500,0,0,2300,1500,0.791667,0.030125,0.044,0.013875,,0,0,0.0")

    def test_csv_of_a_hostile_model_name_is_text_not_a_formula(self):
        path = os.path.join(self.tmp, "evil.jsonl")
        with open(path, "w") as handle:
            for model in ("=cmd|' /C calc'!A0", "\t=1+1"):
                handle.write(json.dumps({"model": model, "timestamp": 1773129600,
                                         "usage": {"prompt_tokens": 10}}) + "\n")
        code, out, _ = self.run_main("--file", path, "--format", "csv", "--offline",
                                     "--sort", "name")
        self.assertEqual(code, 0)
        cells = [row.split(",")[0] for row in out.splitlines()[1:]]
        self.assertEqual(sorted(cells), ["'=1+1", "'=cmd|' /C calc'!A0"])
        code, out, _ = self.run_main("--export-history", "csv")
        self.assertEqual(code, 0)
        models = sorted(row.split(",")[3] for row in out.splitlines()[1:])
        self.assertEqual(models, ["'=1+1", "'=cmd|' /C calc'!A0"])

    def test_gates(self):
        path = example("openai-chat.jsonl")
        code, _, err = self.run_main("--file", path, "--offline", "--min-hit-rate", "0.8")
        self.assertEqual(code, 3)
        self.assertEqual(err, "catop: gate: hit rate 79.2% is below --min-hit-rate 80.0%\n")
        code, _, _ = self.run_main("--file", path, "--offline", "--min-hit-rate", "0.79")
        self.assertEqual(code, 0)
        code, _, err = self.run_main("--file", path, "--offline", "--max-cost", "0.03")
        self.assertEqual(code, 3)
        self.assertIn("cost $0.0301 exceeds --max-cost $0.0300", err)
        code, _, _ = self.run_main("--file", path, "--offline", "--max-cost", "0.031")
        self.assertEqual(code, 0)
        code, _, err = self.run_main("--file", path, "--offline", "--max-cost", "0")
        self.assertEqual((code, err), (3, "catop: gate: cost $0.0301 exceeds --max-cost $0.00\n"))
        code, _, _ = self.run_main("--file", path, "--offline", "--max-break-cost", "0")
        self.assertEqual(code, 0)      # no break in that log: a gate of 0 holds
        code, _, err = self.run_main("--file", path, "--offline", "--max-cost", "-1")
        self.assertEqual(code, 2)
        self.assertIn("argument --max-cost: 0 or more", err)

    def test_usage_and_runtime_errors(self):
        for argv in (["--min-hit-rate", "2"], ["--group-by", "color"], ["--top", "0"],
                     ["--refresh-prices", "--offline"], ["--demo", "--since", "whenever"]):
            with self.subTest(argv=argv):
                code, _, err = self.run_main(*argv)
                self.assertEqual(code, 2)
                self.assertNotIn("Traceback", err)
        code, out, err = self.run_main("--file", os.path.join(self.tmp, "missing.jsonl"),
                                       "--offline")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("no such file or folder", err)

    def test_folder_means_its_jsonl_and_repeats_count_once(self):
        doc = self.run_json("--file", EXAMPLES, "--file", example("gemini.jsonl"))
        self.assertEqual(len(doc["sources"]), 11)
        self.assertEqual(doc["totals"]["requests"], 18 + 40)   # cache-diagnosis.jsonl: 40

    def test_session_timeline(self):
        code, out, _ = self.run_main("--file", example("openai-chat.jsonl"), "--offline",
                                     "--session", "rag", "--width", "100")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        start = lines.index("session rag-1  (2 requests)") + 1    # then its facts
        self.assertEqual(lines[start], "project rag-api  models gpt-4o, o3  from 03-10 08:00 "
                                       "to 03-10 08:05")
        self.assertEqual(lines[start + 1].split(), ["TIME", "MODEL", "MISS", "READ", "WRITE",
                                                    "OUT", "HIT%", "COST"])
        self.assertIn("gpt-4o", lines[start + 2])
        self.assertIn("$0.0061", lines[start + 2])
        self.assertIn("o3", lines[start + 3])
        code, _, err = self.run_main("--file", example("openai-chat.jsonl"), "--offline",
                                     "--session", "nope")
        self.assertEqual(code, 1)
        self.assertIn("no requests of session nope", err)

    def test_a_narrow_timeline_gives_up_columns_never_a_number(self):
        self.point_agents_at_examples()
        expected = {200: ["TIME", "MODEL", "MISS", "READ", "WRITE", "OUT", "HIT%", "COST"],
                    80: ["TIME", "MODEL", "MISS", "READ", "WRITE", "HIT%", "COST"],
                    60: ["TIME", "MODEL", "READ", "HIT%", "COST"],
                    40: ["TIME", "MODEL", "READ", "COST"], 20: ["TIME", "COST"]}
        for width, columns in sorted(expected.items()):
            with self.subTest(width=width):
                code, out, _ = self.run_main("--agent", "claude-code", "--offline",
                                             "--no-history", "--session", "1111",
                                             "--width", str(width))
                lines = out.splitlines()
                start = 1 + [n for n, line in enumerate(lines)
                             if line.startswith("session 1111")][0]   # then its facts
                self.assertEqual(lines[start + 1].split(), columns)
                for line in lines[start + 1:]:
                    self.assertLessEqual(len(line), width)
                    self.assertFalse(re.search(r"(^|\s)[\d$][\d,.%]*[~\u2026]", line), line)
                if width == 20:   # the date and minute (two words), then the cost in full
                    self.assertEqual([line.split()[2] for line in lines[start + 2:start + 7]],
                                     ["$0.0180", "$0.0239", "$0.0067", "$0.0075", "$0.0600"])

    def test_a_narrow_breaks_panel_keeps_gap_cost_and_whole_session_ids(self):
        frame = catop.Frame()
        frame.breaks = [catop.CacheBreak("codex-d3a1f2e4-0c55-4d1e-9a77-6b1f00c0ffee", NOW,
                                         "gpt-5-codex", "ttl_expired", 48211, 1109, 47102,
                                         612.0, 0.04392),
                        catop.CacheBreak("1111aaaa-2222-4bbb-8ccc-333333333333", NOW + 60,
                                         "claude-sonnet-4-5-20250929", "model_switch", 12000,
                                         0, 12000, 20.0, 0.0121)]
        for width in (200, 80, 60, 40):
            with self.subTest(width=width):
                lines = ["".join(text for text, _ in line) for line in
                         catop._breaks_lines(frame, catop.View(), width, 10, "~")][1:]
                for line in lines:
                    self.assertLessEqual(len(line), width)
                    self.assertFalse(re.search(r"(^|\s)[\d$][\d,.%]*~", line), line)
                header = lines[0].split()
                self.assertEqual(header[-1], "COST")
                self.assertTrue(lines[2].rstrip().endswith("$0.0439"), lines[2])
                if width >= 60:
                    self.assertIn("GAP", header)
                    self.assertIn("10m", lines[2])
                if width >= 80:     # a UUID session id: enough of it to tell it apart
                    self.assertIn("codex-d3a1f2e4-0c55-4d1e-9a77", lines[2])
                if width == 200:
                    self.assertIn("1,109", lines[2])

    def test_session_is_a_report_of_that_session_in_every_format(self):
        self.point_agents_at_examples()
        doc = self.run_json("--agent", "claude-code", "--session", "1111")
        # the session's five requests (examples/agents/claude), none of the legacy one's
        self.assertEqual((doc["totals"]["requests"], doc["totals"]["input_tokens"]),
                         (5, 55124))
        self.assertEqual([t["cache_read_tokens"] for t in doc["timeline"]],
                         [10000, 12000, 0, 15000, 0])
        # the haiku request is the subagent's first, not a break of the main thread
        self.assertEqual([(b["session"][:4], b["cause"], b["thread"]) for b in doc["breaks"]],
                         [("1111", "model_switch", None)])
        self.assertEqual([t["thread"] for t in doc["timeline"]],
                         [None, None, "agent-a1", None, None])
        self.assertEqual(sum(g["requests"] for g in doc["groups"]), 5)
        code, out, _ = self.run_main("--agent", "claude-code", "--session", "1111",
                                     "--format", "csv", "--offline", "--no-history")
        rows = out.splitlines()
        self.assertEqual(rows[0].split(",")[:3], ["ts", "session", "model"])
        self.assertEqual(len(rows), 1 + 5)
        header = rows[0].split(",")
        self.assertEqual([row.split(",")[header.index("break")] for row in rows[1:]],
                         ["", "", "", "", "model_switch"])
        self.assertEqual(rows[3].split(",")[header.index("thread")], "agent-a1")
        code, out, _ = self.run_main("--agent", "claude-code", "--session", "1111",
                                     "--offline", "--no-history", "--width", "200")
        self.assertIn("requests  5 ", out)
        self.assertIn("agent claude-code  project dev/shop  models claude-haiku-4-5-20251001, "
                      "claude-opus-4-5, claude-sonnet-4-5-20250929  from ", out)

    def test_ambiguous_session_prefix_is_a_usage_error(self):
        self.point_agents_at_examples()
        code, _, err = self.run_main("--agent", "codex", "--offline", "--session", "codex-s")
        self.assertEqual(code, 2)
        self.assertIn("matches 2 sessions", err)
        code, _, err = self.run_main("--demo", "--once", "--offline", "--no-history",
                                     "--session", "claude-code")   # six: five, then the count
        self.assertEqual(code, 2)
        self.assertRegex(err, r"matches 6 sessions: (claude-code-[0-9a-f]{4}, ){4}"
                              r"claude-code-[0-9a-f]{4} and 1 more \(catop --help")

    def test_window_flags_on_dated_examples(self):
        doc = self.run_json("--file", example("openai-chat.jsonl"), "--since",
                            "2026-03-10T08:01:00Z", "--until", "2026-03-10T09:00:00Z")
        self.assertEqual(doc["totals"]["requests"], 1)
        self.assertEqual(doc["window"], {"since": "2026-03-10T08:01:00Z",
                                         "until": "2026-03-10T09:00:00Z"})
        doc = self.run_json("--file", example("otel.jsonl"), "--window", "24h")
        self.assertEqual(doc["totals"]["requests"], 0)

    def test_demo_is_deterministic_and_has_every_shape_of_traffic(self):
        now = 1773158400.0
        first = catop.demo_requests(7, now)
        self.assertEqual(first, catop.demo_requests(7, now))
        self.assertNotEqual(first, catop.demo_requests(8, now))
        self.assertEqual({r.provider for r in first},
                         {"anthropic", "openai", "google", "deepseek"})
        self.assertGreater(len({r.session for r in first}), 10)
        self.assertTrue(any(r.cache_write_1h for r in first))
        self.assertTrue(all(r.ts < now for r in first))
        code, out, _ = self.run_main("--demo", "--offline", "--width", "100")
        self.assertEqual(code, 0)
        self.assertIn("claude-sonnet-4-5", out)

    def test_the_demo_is_the_same_traffic_on_every_path(self):
        """--demo --once showed six hours (1,373 requests, $53.62) where the live view
        and --once --duration showed the two hours before now (524, $15.89)."""
        now = 1773158400.0
        model = catop.LiveModel([catop.LiveDemoSource(3, clock=lambda: now)], PRICES,
                                clock=lambda: now)
        model.poll()
        live = catop.aggregate_model(model, (), None, None, None, now)
        with mock.patch.object(catop.time, "time", return_value=now):
            once = self.run_json("--demo", "--seed", "3", "--once")
        self.assertGreater(live.totals.requests, 100)
        self.assertEqual((once["totals"]["requests"], once["totals"]["cost_usd"],
                          len(once["breaks"])),
                         (live.totals.requests, round(live.totals.cost, 9),
                          len(live.effects.breaks)))

    def hostile_bytes(self):
        with open(example("hostile.jsonl"), "rb") as handle:
            return handle.read()

    def test_deep_nesting_and_huge_lines(self):
        path = os.path.join(self.tmp, "big.jsonl")
        huge = {"model": "gpt-4o", "usage": {"prompt_tokens": 1000, "completion_tokens": 10},
                "messages": ["x" * (5 * 1024 * 1024)]}
        with open(path, "w") as handle:
            handle.write("[" * 200000 + "\n")
            handle.write('{"a":' * 100000 + "1" + "}" * 100000 + "\n")
            handle.write(json.dumps(huge) + "\n")
            handle.write("\n   \n")
        doc = self.run_json("--file", path)
        self.assertEqual(doc["sources"][0]["records"], 1)
        self.assertEqual(doc["sources"][0]["skipped"], {"malformed": 2, "no_usage": 0, "failed": 0,
                                                        "duplicate": 0})
        self.assertEqual(doc["totals"]["input_tokens"], 1000)

    def test_piped_subprocess_with_hostile_input(self):
        env = dict(os.environ, NO_COLOR="1")
        result = subprocess.run(
            [sys.executable, os.path.join(HERE, "catop.py"), "--stdin", "--offline"],
            input=self.hostile_bytes(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn(b"\x1b", result.stdout)
        self.assertNotIn(b"Traceback", result.stderr)
        self.assertIn(b"stdin: 3 records (skipped 9 malformed, 1 no usage)", result.stdout)

    def test_run_as_a_module_reads_as_the_script_does(self):
        outputs = []
        for launcher in ([os.path.join(HERE, "catop.py")], ["-m", "catop"]):
            result = subprocess.run(
                [sys.executable] + launcher + ["--file", example("litellm.jsonl"), "--offline",
                                               "--no-history", "--format", "csv"],
                cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"), timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            outputs.append(result.stdout)
        self.assertEqual(outputs[0], outputs[1])
        self.assertIn(b"anthropic/claude-sonnet-4-5,1,12000,500,9000,2500,", outputs[1])

    def test_closed_pipe_is_quiet(self):
        script = ("import subprocess, sys; p = subprocess.Popen([sys.executable, %r, '--demo', "
                  "'--offline', '--group-by', 'session', '--width', '200'], "
                  "stdout=subprocess.PIPE, stderr=subprocess.PIPE); p.stdout.read(10); "
                  "p.stdout.close(); err = p.stderr.read(); print(p.wait()); "
                  "sys.stdout.write(err.decode())") % os.path.join(HERE, "catop.py")
        result = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=60)
        self.assertNotIn(b"Traceback", result.stdout)


if __name__ == "__main__":
    unittest.main()


# ---------------------------------------------------------------- live view

class FakeSource(catop.LiveSource):
    """A live source whose requests the test sets."""

    generation = None

    def __init__(self, requests, name="fake"):
        self.requests = list(requests)
        self.stats = catop.SourceStats(name)
        self.stats.records = len(self.requests)
        self.fresh = True

    def poll(self, rediscover=False):
        fresh, self.fresh = self.fresh, False
        return fresh

    def compaction_times(self):
        return ()


def live_model(requests):
    model = catop.LiveModel([FakeSource(requests)], PRICES, clock=lambda: NOW)
    model.poll()
    return model


NOW = 1773158400.0  # 2026-03-10T16:00:00Z


def recent_requests():
    """Two sessions in the last quarter hour: one caching well, one not at all."""
    good = [catop.Request(NOW - 600 + 60 * i, "claude-code", "anthropic", "claude-sonnet-4-5",
                          "/home/dev/shop", "s-good", 10, 20000 + 1000 * i, 1000, 0, 300)
            for i in range(8)]
    bad = [catop.Request(NOW - 150 + 30 * i, "rag", "openai", "gpt-4o", "rag-api", "s-bad",
                         50000, 0, 0, 0, 0) for i in range(6)]
    return good + bad


class RenderScreenTests(unittest.TestCase):

    META = {"prices_origin": "file:prices.json", "prices_age": 60, "sources": []}

    def frame(self, view, requests=None):
        model = live_model(requests if requests is not None else recent_requests())
        return catop.build_frame(model, view, NOW), model

    def test_the_sources_line_counts_the_malformed_lines_skipped(self):
        """It said `file:bad.jsonl 1` where the snapshot said `(skipped 2 malformed)`."""
        stats = catop.SourceStats("file:bad.jsonl")
        stats.records, stats.skipped["malformed"], stats.skipped["duplicate"] = 1, 2, 5
        clean_one = catop.SourceStats("agent:codex")
        meta = dict(self.META, sources=[stats, clean_one])
        frame, _ = self.frame(catop.View())
        lines = ["".join(text for text, _ in line)
                 for line in catop.render_screen(frame, catop.View(), meta, 120, 30)]
        self.assertIn("sources  file:bad.jsonl 1 (2 malformed skipped)  agent:codex 0", lines)

    def test_every_size_fits(self):
        for width in (20, 80, 200):
            for height in (6, 24, 60):
                with self.subTest(width=width, height=height):
                    view = catop.View()
                    frame, _ = self.frame(view)
                    lines = catop.render_screen(frame, view, self.META, width, height)
                    self.assertLessEqual(len(lines), height)
                    self.assertTrue(lines[0][0][0].startswith("catop"))
                    for line in lines:
                        text = "".join(t for t, _ in line)
                        self.assertLessEqual(len(text), width)
                        self.assertEqual(text, catop.clean(text))
                    self.assertIn(lines[-1][0][0][:1], ("q", "f", ">"))

    def test_tiny_and_empty_screens(self):
        view = catop.View()
        frame, _ = self.frame(view)
        self.assertEqual(catop.render_screen(frame, view, self.META, 0, 10), [])
        self.assertEqual(len(catop.render_screen(frame, view, self.META, 10, 1)), 1)
        empty, _ = self.frame(view, [])
        text = [" ".join(t for t, _ in l) for l in
                catop.render_screen(empty, view, self.META, 80, 24)]
        self.assertTrue(any("no requests in this view" in line for line in text))

    def test_sections_and_styles(self):
        view = catop.View()
        frame, _ = self.frame(view)
        lines = catop.render_screen(frame, view, self.META, 120, 30)
        texts = ["".join(t for t, _ in line) for line in lines]
        # hit: read 188,000 of input 196,080 + 300,000
        self.assertTrue(texts[1].startswith("req 14  hit 37.9%"), texts[1])
        self.assertTrue(texts[2].startswith("1/5/15m  req/min 2.0 1.6 0.9   tok/min 100k"),
                        texts[2])
        self.assertTrue(texts[3].startswith("hit 1h  "))
        header = texts.index(next(t for t in texts if t.startswith("MODEL")))
        first = lines[header + 1]
        self.assertTrue("".join(t for t, _ in first).startswith("gpt-4o"))
        self.assertEqual({style for _, style in first}, {"select"})
        claude = lines[header + 2]
        self.assertIn(("95.9%", ""), [(t, s) for t, s in claude if "%" in t])
        view.selected = 1
        lines = catop.render_screen(frame, view, self.META, 120, 30)
        self.assertIn((" 0.0%", "bad"), [(t, s) for t, s in lines[header + 1] if "%" in t])
        alerts = [t for t in texts if t.startswith("! ")]
        self.assertEqual(alerts, ["! " + text for text in frame.alerts[:2]])
        # newest first: the break at NOW, the minute with no output, the 5-minute hit rate
        self.assertEqual(frame.alerts[0], "cache break 0s ago in s-bad (gpt-4o): prefix "
                                          "changed, $0.0625 paid again")
        self.assertEqual(frame.alerts[1], "$0.2500 spent in the last minute with no output "
                                          "tokens: a tool loop?")
        # last 5 min (NOW-300, NOW]: read 26,000 + 27,000 of input 55,020 + 300,000
        self.assertEqual(frame.alerts[2], "hit rate 14.9% over the last 5 min: likely a "
                                          "changed prompt prefix (system prompt, tools or "
                                          "early messages)")

    def test_ascii_fallback(self):
        view = catop.View()
        frame, _ = self.frame(view)
        lines = catop.render_screen(frame, view, self.META, 120, 30, unicode_ok=False)
        text = "\n".join("".join(t for t, _ in line) for line in lines)
        self.assertTrue(all(ord(c) < 128 for c in text))
        self.assertIn("up/dn move", text)

    def test_rates_and_sparkline(self):
        model = live_model(recent_requests())
        rates = catop.rolling_rates(model.buckets, NOW)
        # windows are (NOW - span, NOW]: 1 min holds s-bad at -30 and 0; 5 min all six
        # of s-bad and s-good at -240 and -180; 15 min all fourteen
        self.assertEqual([r[0] for r in rates], [2.0, 8 / 5.0, 14 / 15.0])
        self.assertEqual(rates[0][1], 2 * 50000 + 0)
        self.assertAlmostEqual(rates[0][2], 2 * 50000 * 2.5e-06 * 60)
        self.assertEqual(rates[0][3], 0.0)
        series = catop.hit_series(model.buckets, NOW, count=4, span_s=3600)
        self.assertEqual(series[:3], [None, None, None])
        self.assertEqual(catop.sparkline([None, 0.0, 0.5, 1.0]), " \u2581\u2585\u2588")
        self.assertEqual(catop.sparkline([None, 0.0, 1.0], unicode_ok=False), " _#")


class LiveModelTests(unittest.TestCase):

    def test_merge_into_sorted_re_sorts_only_the_tail(self):
        items = [1, 3, 5, 7]
        self.assertEqual(catop.merge_into_sorted(items, [8, 6], lambda x: x), 3)
        self.assertEqual(items, [1, 3, 5, 6, 7, 8])
        keys = list(items)
        self.assertEqual(catop.merge_into_sorted(items, [9], lambda x: x, keys), 6)
        self.assertEqual(items, [1, 3, 5, 6, 7, 8, 9])

    def test_appends_out_of_order_and_breaks_found_incrementally(self):
        m = "claude-sonnet-4-5"
        source = FakeSource(chain((0, m, 5, 10000, 2000, 0), (60, m, 5, 12000, 500, 0)))
        source.generation = 0
        model = catop.LiveModel([source], PRICES, clock=lambda: NOW)
        model.poll()
        self.assertEqual(model.breaks, [])
        source.requests.extend(chain((400, m, 5, 0, 12500, 0), (30, m, 5, 11000, 1000, 0)))
        source.fresh = True
        model.poll()
        self.assertIsNotNone(model.appended)
        self.assertEqual([e.req.ts - NOW for e in model.timeline.timed], [0, 30, 60, 400])
        self.assertEqual([(b.cause, b.ts - NOW) for b in model.breaks], [("ttl_expired", 400)])
        self.assertEqual(model.buckets.sums(NOW, NOW + 401)[0], 4)


    def test_rate_buckets_hold_only_the_last_hour_of_the_models_clock(self):
        m = "claude-sonnet-4-5"
        old_and_new = chain((-7200, m, 5, 0, 100, 0), (-3000, m, 5, 100, 0, 0),
                            (-10, m, 5, 100, 0, 0), session="t")
        model = catop.LiveModel([FakeSource(old_and_new)], PRICES, clock=lambda: NOW)
        model.poll()
        self.assertEqual(sorted(model.buckets.seconds), [int(NOW) - 3000, int(NOW) - 10])
        self.assertEqual(len(model.timeline.timed), 3)   # the table still has all three
        self.assertEqual(catop.rolling_rates(model.buckets, NOW)[0][0], 1.0)


class KeyTests(unittest.TestCase):

    def app(self):
        model = live_model(recent_requests())
        clock = [NOW]
        app = catop.LiveApp(model, catop.View(), dict(RenderScreenTests.META),
                            clock=lambda: clock[0])
        app.tick()
        app.screen(120, 30)
        return app, clock

    def test_w_cycles_through_every_window_the_flag_takes(self):
        """90d, a --window, was never reached by w."""
        app, _ = self.app()
        seen = []
        for _ in range(len(catop.WINDOWS)):
            app.press("w")
            seen.append(app.view.window)
        self.assertEqual(sorted(seen), sorted(catop.WINDOWS))

    def test_drill_down_and_back(self):
        app, _ = self.app()
        view = app.view
        self.assertEqual([k for k, _ in app.frame.rows], [("gpt-4o",), ("claude-sonnet-4-5",)])
        app.press("down")
        app.press("enter")
        app.screen(120, 30)
        self.assertEqual(view.level(), "sessions")
        self.assertEqual([k for k, _ in app.frame.rows], [("s-good",)])
        app.press("enter")
        app.screen(120, 30)
        self.assertEqual(view.level(), "timeline")
        self.assertEqual(len(app.frame.rows), 8)
        app.press("esc")
        self.assertEqual(view.level(), "sessions")
        app.press("backspace")
        self.assertEqual(view.level(), "groups")

    def test_a_session_drilled_into_from_a_model_is_shown_whole(self):
        m1, m2 = "claude-sonnet-4-5", "claude-haiku-4-5"
        requests = chain((-300, m1, 5, 0, 10000, 0), (-240, m1, 5, 10000, 500, 0),
                         (-200, m2, 5, 0, 11000, 0), (-150, m1, 5, 0, 11000, 0),
                         session="mixed")
        model = live_model(requests)
        app = catop.LiveApp(model, catop.View(), dict(RenderScreenTests.META),
                            clock=lambda: NOW)
        app.tick()
        app.screen(120, 30)
        haiku = [k for k, _ in app.frame.rows].index((m2,))
        app.view.selected = haiku
        app.press("enter")      # the haiku model's sessions
        app.screen(120, 30)
        app.press("enter")      # the session
        lines = app.screen(120, 30)
        self.assertEqual(app.view.level(), "timeline")
        self.assertEqual(len(app.frame.rows), 4)          # the whole session, both models
        models = [(text.strip(), style) for line in lines for text, style in line
                  if text.strip() in (m1, m2) and style != "select"]
        self.assertEqual(sorted(set(models)), [(m2, "title"), (m1, "")])
        self.assertEqual(len(app.frame.breaks), 2)       # the switch and the one after

    def screen_text(self, app, width=120, height=30):
        return ["".join(text for text, _ in line) for line in app.screen(width, height)]

    def test_a_filter_totals_what_it_shows_and_esc_clears_it(self):
        app, _ = self.app()
        everything = app.frame.totals.requests
        for key in ("/", "g", "p", "t", "enter"):      # rows of gpt-4o only
            app.press(key)
        summary = self.screen_text(app)[1]
        self.assertTrue(summary.startswith("/gpt: req 6 "), summary)
        self.assertEqual(app.frame.totals.requests, 6)
        self.assertLess(6, everything)
        app.press("esc")
        self.assertEqual(app.view.filter, "")
        self.assertTrue(self.screen_text(app)[1].startswith("req %d " % everything))

    def test_enter_on_a_break_opens_its_session_at_it(self):
        app, _ = self.app()
        app.press("b")
        lines = self.screen_text(app)
        self.assertTrue([line for line in lines if line.startswith("cache breaks  ")])
        newest = app.frame.breaks[-1]
        app.press("enter")
        self.screen_text(app)
        self.assertEqual((app.view.level(), app.view.stack[-1]), ("timeline", newest.session))
        selected = app.frame.rows[app.view.selected][0]
        self.assertEqual(selected.ts, newest.ts)

    def test_help_scrolls_and_lists_what_g_cycles_and_r_says_rescanned(self):
        app, _ = self.app()
        app.press("?")
        lines = self.screen_text(app, 100, 12)
        self.assertIn("  g              cycle group-by: " + ", ".join(catop.View.GROUPINGS),
                      "\n".join(catop.help_text()))
        self.assertTrue([line for line in lines if line.startswith("catop keys")])
        app.press("down")                 # scrolled by a line: the title is off the top
        self.assertTrue(app.view.help)
        lines = self.screen_text(app, 100, 12)
        self.assertFalse([line for line in lines if line.startswith("catop keys")])
        self.assertTrue([line for line in lines if line.startswith("  q, Ctrl-C")])
        app.press("x")
        self.assertFalse(app.view.help)
        app.press("r")
        self.assertTrue([line for line in self.screen_text(app) if line.startswith("rescanned: ")])

    def test_help_and_keys_at_80_columns_lose_no_word_and_no_key(self):
        """The help was cut mid-word with no mark (`... / flip the`, `wri`), and the
        key line lost `b breaks t trends r rescan`."""
        app, _ = self.app()
        lines = self.screen_text(app, 80, 24)
        self.assertTrue(lines[-1].endswith(" g w s / p b t r"), lines[-1])
        app.press("?")
        text = self.screen_text(app, 80, 60)
        self.assertTrue(all(len(line) <= 80 for line in text))
        words = " ".join(" ".join(catop.help_text()).split())
        shown = " ".join(" ".join(line for line in text if line.strip()).split())
        self.assertIn(words[:1500], shown)   # every word, in order, none cut

    def test_an_80_by_24_screen_keeps_the_saving_and_the_hit_rates(self):
        app, _ = self.app()
        lines = self.screen_text(app, 80, 24)
        self.assertIn("saved $", lines[1])
        self.assertFalse(lines[1].endswith(("~", "\u2026")), lines[1])
        self.assertIn("hit ", lines[2].split("$/h")[-1])
        self.assertFalse(lines[2].endswith(("~", "\u2026")), lines[2])

    def test_the_sort_column_is_marked_in_the_header(self):
        app, _ = self.app()
        header = [("".join(text for text, _ in line)) for line in app.screen(120, 30)
                  if "COST" in "".join(text for text, _ in line)][0]
        self.assertIn("\u25bcCOST", header)
        app.press("s")                   # saved
        app.press("S")                   # smallest first
        lines = app.screen(120, 30)
        header = [("".join(text for text, _ in line)) for line in lines
                  if "SAVED" in "".join(text for text, _ in line)][0]
        self.assertIn("\u25b2SAVED", header)
        self.assertNotIn("\u25bcCOST", header)
        self.assertEqual(len(header.split()), len(header.replace("\u25b2", " ").split()))

    def test_every_sort_of_the_flag_holds_in_the_live_view(self):
        """--sort write (or miss, observed, time) started the live view sorted by cost,
        and s never reached the WRITE and MISS columns."""
        model = live_model(recent_requests())
        for sort in ("write", "miss", "observed", "time"):
            self.assertEqual(catop.View(sort=sort).sort, sort)
        app = catop.LiveApp(model, catop.View(sort="write"), dict(RenderScreenTests.META),
                            clock=lambda: NOW)
        app.tick()

        def order_and_header():
            lines = ["".join(text for text, _ in line) for line in app.screen(120, 30)]
            header = [line for line in lines if "COST" in line and "REQ" in line][0]
            return [key for key, _ in app.frame.rows], lines[0], header
        rows, title, header = order_and_header()   # writes: Sonnet 8,000, GPT-4o none
        self.assertEqual(rows, [("claude-sonnet-4-5",), ("gpt-4o",)])
        self.assertIn("sort write \u25bc", title)   # (WRITE's cell has no room for the mark)
        app.press("s")                             # misses: GPT-4o 300,000, Sonnet 80
        rows, title, header = order_and_header()
        self.assertEqual(app.view.sort, "miss")
        self.assertEqual(rows, [("gpt-4o",), ("claude-sonnet-4-5",)])
        self.assertIn("sort miss \u25bc", title)
        self.assertIn("\u25bcMISS", header)
        self.assertNotIn("\u25bcCOST", header)

    def test_group_window_sort_filter_pause_help_quit(self):
        app, clock = self.app()
        view = app.view
        app.press("down")
        self.assertEqual(view.selected, 1)
        app.press("down")
        self.assertEqual(view.selected, 1)  # clamped to the last row
        app.press("g")
        self.assertEqual(view.group_by, ("project",))
        app.press("w")
        self.assertEqual(view.window, "today")
        app.press("s")
        self.assertEqual(view.sort, "saved")
        app.press("S")
        self.assertFalse(view.descending)
        for key in ("/", "r", "a", "g", "enter"):
            app.press(key)
        app.screen(120, 30)
        self.assertEqual(view.filter, "rag")
        self.assertEqual([k for k, _ in app.frame.rows], [("rag-api",)])
        app.press("p")
        paused = app.current_frame()
        clock[0] += 60
        self.assertIs(app.current_frame(), paused)
        app.press("p")
        self.assertIsNot(app.current_frame(), paused)
        app.press("?")
        self.assertTrue(view.help)
        app.press("x")
        self.assertFalse(view.help)
        self.assertEqual(app.press("q"), "quit")

    def test_trends_panel(self):
        app, clock = self.app()
        app.press("t")
        lines = app.screen(120, 30)
        texts = ["".join(t for t, _ in line) for line in lines]
        # all fourteen requests fall on one day: the last slot of each line
        cost = next(t for t in texts if t.startswith("trend 30d  cost"))
        total = sum(cost_of(r)[0] for r in recent_requests())
        self.assertTrue(cost.endswith("\u2588  " + catop.fmt_usd(total, 2)), cost)
        self.assertTrue(any(t.startswith("trend 90d") for t in texts))
        app.press("esc")
        self.assertFalse(app.view.trends_panel)

    def test_filter_typing_keys(self):
        view = catop.View()
        frame = catop.Frame()
        catop.handle_key(view, "/", frame)
        for key in ("a", "b", "backspace", "c"):
            catop.handle_key(view, key, frame)
        self.assertEqual(view.typing, "ac")
        catop.handle_key(view, "esc", frame)
        self.assertIsNone(view.typing)
        self.assertEqual(view.filter, "")

    def test_duration_expires(self):
        app, clock = self.app()
        app.duration_s = 5
        self.assertFalse(app.expired())
        clock[0] += 5
        self.assertTrue(app.expired())


class FakeWindow(object):
    def __init__(self, height, width):
        self.height, self.width = height, width
        self.writes = []

    def getmaxyx(self):
        return self.height, self.width

    def erase(self):
        self.writes = []

    def addstr(self, row, column, text, attr=0):
        self.writes.append((row, column, text, attr))

    def noutrefresh(self):
        pass


class DrawTests(unittest.TestCase):

    def test_clipped_and_never_the_bottom_right_cell(self):
        try:
            import curses
        except ImportError:
            self.skipTest("no curses module in this Python")
        window = FakeWindow(3, 10)
        lines = [[("0123456789ABC", "title")], [("ab", ""), ("cd\x1b[2J", "bad")],
                 [("xxxxxxxxxxxx", "")], [("beyond", "")]]
        with mock.patch("curses.doupdate"):
            catop.draw_lines(window, lines, {"title": 1, "bad": 2, "": 0})
        self.assertEqual(window.writes, [(0, 0, "0123456789", 1), (1, 0, "ab", 0),
                                         (1, 2, "cd[2J", 2), (2, 0, "xxxxxxxxx", 0)])

    def test_no_colour_keeps_the_terminals_own_colours(self):
        """NO_COLOR painted every cell white on black (curses.wrapper starts colour,
        and only the colour path asked for the terminal's default colours)."""
        import curses
        for use_colour, pairs in ((False, 0), (True, 5)):
            with mock.patch.object(curses, "has_colors", return_value=True), \
                    mock.patch.object(curses, "start_color"), \
                    mock.patch.object(curses, "use_default_colors") as defaults, \
                    mock.patch.object(curses, "init_pair") as init_pair, \
                    mock.patch.object(curses, "color_pair", side_effect=lambda n: n << 8):
                styles = catop.curses_styles(use_colour)
            self.assertEqual(defaults.call_count, 1)
            self.assertEqual(init_pair.call_count, pairs)
            self.assertEqual(styles["bad"], curses.A_BOLD | (
                curses.A_UNDERLINE if not use_colour else 4 << 8))


class TailTests(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)
        self.path = os.path.join(self.tmp, "live.jsonl")

    def line(self, tokens):
        return json.dumps({"model": "gpt-4o", "usage": {"prompt_tokens": tokens,
                                                        "completion_tokens": 1}})

    def test_partial_lines_truncation_and_rotation(self):
        source = catop.LiveFileSource(self.path)
        with open(self.path, "w") as handle:
            handle.write(self.line(100) + "\n" + self.line(200)[:10])
        self.assertTrue(source.poll())
        self.assertEqual([r.miss for r in source.requests], [100])
        with open(self.path, "a") as handle:
            handle.write(self.line(200)[10:] + "\n")
        self.assertTrue(source.poll())
        self.assertEqual([r.miss for r in source.requests], [100, 200])
        self.assertFalse(source.poll())
        with open(self.path, "w") as handle:     # truncated and rewritten: what it held
            handle.write(self.line(7) + "\n")    # before happened, and is kept
        self.assertTrue(source.poll())
        self.assertEqual([r.miss for r in source.requests], [100, 200, 7])
        self.assertEqual(source.stats.records, 3)
        os.rename(self.path, self.path + ".1")   # rotated: gone for a moment
        self.assertTrue(source.poll())
        self.assertIn("unreadable", source.stats.error)
        self.assertFalse(source.poll())
        with open(self.path, "w") as handle:
            handle.write(self.line(8) + "\n" + self.line(9) + "\n")
        self.assertTrue(source.poll())
        self.assertEqual([r.miss for r in source.requests], [100, 200, 7, 8, 9])
        self.assertIsNone(source.stats.error)

    def test_copy_truncate_refilled_past_the_old_size_is_read_from_the_start(self):
        source = catop.LiveFileSource(self.path)
        with open(self.path, "w") as handle:
            handle.write("".join(self.line(100 + n) + "\n" for n in range(50)))
        source.poll()
        with open(self.path, "r+") as handle:   # copied away, truncated in place, refilled
            handle.truncate(0)
            handle.write("".join(self.line(1000 + n) + "\n" for n in range(100)))
        source.poll()
        self.assertEqual(len(source.requests), 150)
        self.assertEqual(sum(r.miss for r in source.requests),
                         sum(range(100, 150)) + sum(range(1000, 1100)))

    def test_a_log_rewritten_whole_with_more_lines_is_read_on(self):
        """Written whole to a temporary file and renamed over the log, with its lines and
        more: the lines it held counted again (a new inode read from the start)."""
        for count in (2, 50):   # under and over the fingerprints' kilobyte
            with self.subTest(lines=count):
                source = catop.LiveFileSource(self.path)
                lines = [self.line(100 + n) + "\n" for n in range(count)]
                with open(self.path, "w") as handle:
                    handle.write("".join(lines))
                source.poll()
                with open(self.path + ".tmp", "w") as handle:
                    handle.write("".join(lines + [self.line(7) + "\n", self.line(8) + "\n"]))
                os.replace(self.path + ".tmp", self.path)
                self.assertTrue(source.poll())
                self.assertEqual([r.miss for r in source.requests],
                                 list(range(100, 100 + count)) + [7, 8])
                with open(self.path + ".tmp", "w") as handle:   # another log: from its start
                    handle.write(self.line(9) + "\n")
                os.replace(self.path + ".tmp", self.path)
                source.poll()
                self.assertEqual(sum(r.miss for r in source.requests),
                                 sum(range(100, 100 + count)) + 7 + 8 + 9)
                self.assertEqual(source.state.restarts, 1)

    def test_a_log_rotated_onto_another_tailed_log_counts_once(self):
        """app.jsonl and app-1.jsonl tailed, then rotated (app-1 renamed to app-2, app to
        app-1, a new app): app-1 read app's old lines again from its start while app
        kept them (6 requests where the three logs hold 4)."""
        app, first = self.path, os.path.join(self.tmp, "live-1.jsonl")
        for order in ((app, first), (first, app)):    # polled in either order
            with self.subTest(first=os.path.basename(order[0])):
                for path in (app, first, first + ".2"):
                    if os.path.exists(path):
                        os.remove(path)
                with open(app, "w") as handle:
                    handle.write(self.line(100) + "\n" + self.line(200) + "\n")
                with open(first, "w") as handle:
                    handle.write(self.line(1000) + "\n")
                peers = []
                sources = {path: catop.LiveFileSource(path, peers) for path in order}
                model = catop.LiveModel(list(sources.values()), PRICES)
                model.poll()
                os.rename(first, first + ".2")
                os.rename(app, first)
                with open(app, "w") as handle:
                    handle.write(self.line(5) + "\n")
                model.poll()
                model.poll()
                self.assertEqual(sorted(r.miss for r in sources[first].requests),
                                 [100, 200, 1000])
                self.assertEqual([r.miss for r in sources[app].requests], [5])
                self.assertEqual((sources[app].stats.records, sources[first].stats.records), (1, 3))
                timeline = model.timeline.untimed + model.timeline.timed
                self.assertEqual(sum(entry.req.miss for entry in timeline), 1305)
                with open(first, "a") as handle:      # read on from where app stopped
                    handle.write(self.line(7) + "\n")
                model.poll()
                self.assertEqual(sorted(r.miss for r in sources[first].requests),
                                 [7, 100, 200, 1000])

    def test_a_copy_tailed_before_its_log_was_truncated_counts_once(self):
        app, copy = self.path, os.path.join(self.tmp, "live-1.jsonl")
        with open(app, "w") as handle:
            handle.write(self.line(1) + "\n" + self.line(2) + "\n")
        open(copy, "w").close()
        peers = []
        sources = [catop.LiveFileSource(path, peers) for path in (app, copy)]
        model = catop.LiveModel(sources, PRICES)
        model.poll()
        shutil.copy(app, copy)
        model.poll()                          # both hold the lines: both count them
        self.assertEqual(len(sources[0].requests) + len(sources[1].requests), 4)
        with open(app, "w") as handle:
            handle.write(self.line(100) + "\n")
        model.poll()
        self.assertEqual(([r.miss for r in sources[0].requests],
                          [r.miss for r in sources[1].requests]), ([100], [1, 2]))
        self.assertEqual(len(model.timeline.untimed + model.timeline.timed), 3)

    def test_new_agent_files_appear(self):
        clock = [1000.0]
        root = os.path.join(self.tmp, "codex")
        shutil.copytree(os.path.join(AGENT_EXAMPLES, "codex"), root)
        with mock.patch.dict(os.environ, {"CODEX_HOME": root}):
            source = catop.LiveAgentSource("codex", clock=lambda: clock[0])
            self.assertTrue(source.poll())
            self.assertEqual(len(source.requests), 6)
            self.assertFalse(source.poll())
            new = os.path.join(root, "sessions", "2026", "03", "11", "rollout-new.jsonl")
            os.makedirs(os.path.dirname(new))
            shutil.copy(os.path.join(AGENT_EXAMPLES, "codex", "archived_sessions",
                                     "rollout-2025-09-05T14-00-00-codex-old.jsonl"), new)
            self.assertFalse(source.poll())          # not looked for yet
            clock[0] += catop.DISCOVERY_INTERVAL_S
            self.assertTrue(source.poll())
            self.assertEqual(len(source.requests), 8)

    def test_live_agent_source_counts_as_once_does(self):
        # the sources line of the live view (and --once --duration) shows these figures
        with mock.patch.dict(os.environ, {"CLAUDE_CONFIG_DIR":
                                          os.path.join(AGENT_EXAMPLES, "claude")}):
            source = catop.LiveAgentSource("claude-code", clock=lambda: NOW)
            model = catop.LiveModel([source], PRICES)
            self.assertTrue(model.poll())
            self.assertFalse(model.poll())
        stats = model.stats()[0]
        self.assertEqual(len(model.timeline.timed), 6)
        self.assertEqual(stats.records, 6)
        self.assertEqual(stats.skipped["duplicate"], 3)  # 2 repeated lines + 1 subagent replay

    def test_stream_source_reads_a_pipe_without_blocking(self):
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        source = catop.LiveStreamSource(read)
        self.assertFalse(source.poll())
        os.write(write, (self.line(5) + "\n" + self.line(6)[:5]).encode())
        self.assertTrue(source.poll())
        self.assertEqual([r.miss for r in source.requests], [5])
        os.write(write, (self.line(6)[5:]).encode())
        os.close(write)
        source.poll()
        self.assertTrue(source.closed)
        self.assertEqual([r.miss for r in source.requests], [5, 6])


# ------------------------------------------------------------------- breaks

def chain(*specs, session="s", provider="anthropic"):
    """Requests of one session from (seconds, model, miss, read, write_5m, write_1h)."""
    return [catop.Request(NOW + t, "a", provider, model, "p", session, miss, read, w5, w1, 10)
            for t, model, miss, read, w5, w1 in specs]


def detect_breaks(requests, prices, compactions=None):
    """The plain reference of the break engine: every break, thread by thread (the
    session's main conversation, each subagent) in time order, each request compared
    with the one before it.  CacheEffects (held state, price classes, parts merged
    across processes) is pinned to it."""
    compactions = compactions or {}
    by_thread = {}
    for req in requests:
        if req.session and req.ts is not None:
            by_thread.setdefault((req.session, req.thread), []).append(req)
    found = []
    for (session, _), requests_of_session in by_thread.items():
        requests_of_session.sort(key=lambda r: r.ts)
        for before, after in zip(requests_of_session, requests_of_session[1:]):
            expected = catop.expected_cached(before)
            if expected >= catop.BREAK_MIN_EXPECTED_TOKENS and after.cache_read * 2 < expected:
                found.append(catop.make_break(after, before.ts, after.model != before.model,
                                              catop.ttl_in_force(before), expected, prices,
                                              compactions.get(session, ())))
    found.sort(key=lambda b: (b.ts, b.session))
    return found


def break_tuples(breaks):
    return [(b.session, b.ts, b.model, b.cause, b.expected, b.read, b.rewritten, b.gap_s,
             round(b.cost, 12), b.thread, b.reported, b.reported_reason, b.reported_missed,
             b.inferred) for b in breaks]


# diagnoses a random stream draws from: changes, a clean comparison, non-verdicts
RANDOM_DIAGNOSES = [None, None, None, ("tools_changed", "tools_changed", 4000),
                    (catop.NO_CHANGE, None, None), (None, "unavailable", None),
                    ("settings_changed", "reasoning_effort_changed", 900),
                    (None, None, None), ("model_switch", "model_changed", None)]


class BreakEngineTests(unittest.TestCase):
    """CacheEffects, the --once snapshot and the live model against the reference."""

    def random_stream(self, seed):
        rng = random.Random(seed)
        models = ["claude-sonnet-4-5", "claude-opus-4-5", "gpt-4o", "gemini-2.5-pro"]
        requests, compactions = [], {}
        for session in ["s%d" % n for n in range(rng.randint(1, 6))]:
            ts, cached = NOW + rng.uniform(0, 1000), 0
            for _ in range(rng.randint(1, 25)):
                ts += rng.choice([1, 20, 200, 299, 301, 900, 4000])
                model = rng.choice(models[:2]) if rng.random() < 0.9 else rng.choice(models)
                read = cached if rng.random() < 0.7 else rng.randint(0, cached)
                write = rng.choice([0, 500, 5000, 20000])
                requests.append(catop.Request(ts, "a", catop.infer_provider(model), model, "p",
                                              session, rng.randint(0, 300), read,
                                              write if rng.random() < 0.8 else 0,
                                              write if rng.random() < 0.2 else 0, 50,
                                              thread=rng.choice(["", "", "", "agent-1"]),
                                              diagnosis=rng.choice(RANDOM_DIAGNOSES)))
                cached = read + write
                if rng.random() < 0.05:
                    compactions.setdefault(session, []).append(ts + 1)
        rng.shuffle(requests)
        late = rng.sample(requests, min(3, len(requests)))   # the rest in time order
        on_time = sorted((r for r in requests if r not in late), key=lambda r: r.ts)
        return on_time + late, compactions

    def test_every_engine_equals_the_reference_on_random_streams(self):
        for seed in range(150):
            requests, compactions = self.random_stream(seed)
            want = break_tuples(detect_breaks(requests, PRICES, compactions))
            with self.subTest(seed=seed):
                effects = catop.CacheEffects(PRICES, catop._NO_GROUP, dict(compactions))
                for req in sorted(requests, key=catop.request_order):
                    effects.add(req)
                effects.finish(NOW + 10 ** 6)
                self.assertEqual(break_tuples(effects.breaks), want)

                class Source(catop.LiveSource):      # appends, as a file tail does
                    generation, stats = 0, catop.SourceStats("x")

                    def __init__(self):
                        self.requests, self.pending = [], list(requests)

                    def poll(self, rediscover=False):
                        self.requests.extend(self.pending[:7])
                        del self.pending[:7]
                        return True

                    def compaction_times(self):
                        return [(s, t) for s, times in compactions.items() for t in times]
                source = Source()
                model = catop.LiveModel([source], PRICES)
                while source.pending:
                    model.poll()
                self.assertEqual(break_tuples(model.breaks), want)


class BreakTests(unittest.TestCase):

    def causes(self, requests, compactions=None):
        return [(b.cause, b.expected, b.read, b.rewritten) for b in
                detect_breaks(requests, PRICES, compactions)]

    def test_each_cause(self):
        m = "claude-sonnet-4-5"
        switch = chain((0, m, 5, 10000, 2000, 0), (30, "claude-opus-4-5", 5, 0, 12000, 0))
        self.assertEqual(self.causes(switch), [("model_switch", 12000, 0, 12000)])
        compact = chain((0, m, 5, 10000, 2000, 0), (30, m, 5, 3000, 4000, 0))
        self.assertEqual(self.causes(compact, {"s": [NOW + 10]}),
                         [("compaction", 12000, 3000, 4005)])
        idle = chain((0, m, 5, 10000, 2000, 0), (301, m, 5, 0, 12500, 0))
        self.assertEqual(self.causes(idle), [("ttl_expired", 12000, 0, 12000)])
        prefix = chain((0, m, 5, 10000, 2000, 0), (60, m, 5, 2000, 10500, 0))
        self.assertEqual(self.causes(prefix), [("prefix_changed", 12000, 2000, 10000)])

    def test_not_breaks(self):
        m = "claude-sonnet-4-5"
        # a long gap under a 1-hour TTL
        self.assertEqual(self.causes(chain((0, m, 5, 10000, 0, 2000), (3000, m, 5, 12000, 500, 0)
                                           )), [])
        # ... but past it, the same gap is a break
        self.assertEqual(self.causes(chain((0, m, 5, 10000, 0, 2000), (3700, m, 5, 0, 12500, 0)
                                           ))[0][0], "ttl_expired")
        # a session that never caches, below 1,024 tokens
        self.assertEqual(self.causes(chain((0, m, 900, 0, 0, 0), (10, m, 950, 0, 0, 0))), [])
        # a growing conversation: each read covers what the last left
        growing = chain(*[(10 * i, m, 3, 5000 + 800 * i, 800, 0) for i in range(6)])
        self.assertEqual(self.causes(growing), [])
        # a cold start: the first request of a session is never a break
        self.assertEqual(self.causes(chain((0, m, 5, 0, 30000, 0))), [])
        # OpenAI reports no writes: the whole input is what the next may read
        openai = chain((0, "gpt-4o", 4000, 0, 0, 0), (20, "gpt-4o", 500, 3500, 0, 0),
                       provider="openai")
        self.assertEqual(self.causes(openai), [])

    def test_break_cost(self):
        m = "claude-sonnet-4-5"
        idle = chain((0, m, 5, 10000, 2000, 0), (400, m, 5, 0, 12500, 0))
        item = detect_breaks(idle, PRICES)[0]
        # 12,000 tokens rewritten at the 5-minute write rate instead of the read rate
        self.assertAlmostEqual(item.cost, 12000 * (3.75e-06 - 3e-07))
        mixed = chain((0, m, 5, 10000, 2000, 0), (400, m, 2000, 0, 5000, 5000))
        # rewritten = min(12,000, 10,000 written + 2,000 missed); writes at their 5m/1h mix
        item = detect_breaks(mixed, PRICES)[0]
        self.assertAlmostEqual(item.cost, 5000 * (3.75e-06 - 3e-07) + 5000 * (6e-06 - 3e-07) +
                               2000 * (3e-06 - 3e-07))
        openai = chain((0, "gpt-4o", 4000, 0, 0, 0), (900, "gpt-4o", 4200, 0, 0, 0),
                       provider="openai")
        item = detect_breaks(openai, PRICES)[0]
        self.assertEqual((item.cause, item.rewritten), ("ttl_expired", 4000))
        self.assertAlmostEqual(item.cost, 4000 * (2.5e-06 - 1.25e-06))


class WhatIfTests(IsolatedEnv):

    def effects(self, requests, now=NOW + 10000):
        effects = catop.CacheEffects(PRICES, lambda req: (req.agent,))
        for req in requests:
            effects.add(req)
        effects.finish(now)
        return effects

    def test_one_hour_policy_avoids_an_idle_break(self):
        m = "claude-sonnet-4-5"
        effects = self.effects(chain((0, m, 5, 10000, 2000, 0), (400, m, 5, 0, 12500, 0),
                                     (460, m, 5, 12500, 500, 0)))
        self.assertEqual([(b.cause, b.rewritten) for b in effects.breaks],
                         [("ttl_expired", 12000)])
        one_hour, five_min = effects.what_if[("a",)]["ttl_1h"], effects.what_if[("a",)]["ttl_5m"]
        # writes at 6e-6 instead of 3.75e-6: 2,000 (first) + 500 (rest of the second) + 500;
        # the break's 12,000 x (3.75e-6 - 3e-7) is not paid, nor are those 12,000 written
        self.assertAlmostEqual(one_hour[0], 0.0045 + 0.001125 + 0.001125 - 0.0414, places=12)
        self.assertEqual(one_hour[1:], [1, 0])
        self.assertEqual(five_min, [0.0, 0, 0])
        # actual cost of the three requests the policy re-prices
        costs = sum(cost_of(r)[0] for r in chain((0, m, 5, 10000, 2000, 0),
                                                   (400, m, 5, 0, 12500, 0),
                                                   (460, m, 5, 12500, 500, 0)))
        self.assertAlmostEqual(effects.policy_cost[("a",)], costs)

    def test_only_requests_paired_in_a_session_are_repriced(self):
        m = "claude-sonnet-4-5"
        paired = chain((0, m, 5, 10000, 2000, 0), (60, m, 5, 12000, 500, 0))
        alone = catop.Request(NOW + 30, "a", "anthropic", m, "p", "", 5, 0, 4000, 0, 10)
        late = catop.Request(NOW + 10, "a", "anthropic", m, "p", "s", 5, 0, 3000, 0, 10)
        effects = self.effects(paired + [alone, late])
        self.assertEqual((effects.unordered, effects.breaks), (1, []))
        self.assertAlmostEqual(effects.policy_cost[("a",)], sum(cost_of(r)[0] for r in paired),
                               places=12)
        # one hour: the paired requests' 2,500 5m writes at 6e-6 instead of 3.75e-6
        self.assertAlmostEqual(effects.what_if[("a",)]["ttl_1h"][0], 2500 * 2.25e-06, places=12)
        # only the session's last 500 writes expired unread
        tokens, premium = effects.wasted[("a",)]
        self.assertEqual(tokens, 500)
        self.assertAlmostEqual(premium, 500 * (3.75e-06 - 3e-06), places=12)

    def test_five_minute_policy_adds_a_break(self):
        m = "claude-sonnet-4-5"
        effects = self.effects(chain((0, m, 5, 10000, 0, 2000), (1200, m, 5, 12000, 0, 500)))
        self.assertEqual(effects.breaks, [])
        five_min = effects.what_if[("a",)]["ttl_5m"]
        # the 12,000 read after 20 minutes would have expired: rewritten at 3.75e-6;
        # 2,500 one-hour writes re-priced to 3.75e-6
        self.assertAlmostEqual(five_min[0], 12000 * (3.75e-06 - 3e-07) - 2500 * 2.25e-06,
                               places=12)
        self.assertEqual(five_min[1:], [0, 1])
        self.assertEqual(effects.what_if[("a",)]["ttl_1h"], [0.0, 0, 0])

    def test_wasted_writes(self):
        m = "claude-sonnet-4-5"
        requests = chain((0, m, 5, 10000, 2000, 0), (400, m, 5, 0, 12500, 0),
                         (460, m, 5, 12500, 500, 0))
        effects = self.effects(requests)
        # 2,000 expired before the next request; 500 were the last and expired too;
        # the premium over the input rate is 0.75e-6 a token
        self.assertEqual(effects.wasted[("a",)][0], 2500)
        self.assertAlmostEqual(effects.wasted[("a",)][1], 2500 * 0.75e-06)
        pending = self.effects(requests, now=NOW + 500)  # the last write may still be read
        self.assertEqual(pending.wasted[("a",)][0], 2000)

    def test_json_and_table_and_gate(self):
        path = os.path.join(self.tmp, "s.jsonl")   # (its history in the test's own home)
        m = "claude-sonnet-4-5"
        with open(path, "w") as handle:
            for req in chain((0, m, 5, 10000, 2000, 0), (400, m, 5, 0, 12500, 0),
                             (460, m, 5, 12500, 500, 0)):
                handle.write(json.dumps({"timestamp": req.ts, "model": m, "session_id": "s",
                                         "agent": "a", "usage": {
                                             "input_tokens": req.miss,
                                             "cache_read_input_tokens": req.cache_read,
                                             "cache_creation_input_tokens": req.cache_write_5m,
                                             "output_tokens": 10}}) + "\n")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = catop.main(["--file", path, "--offline", "--format", "json",
                               "--group-by", "agent"])
        doc = json.loads(out.getvalue())
        self.assertEqual(code, 0)
        self.assertEqual(doc["breaks"], [{
            "session": "s", "ts": catop.iso_utc(NOW + 400), "model": m, "cause": "ttl_expired",
            "expected_read_tokens": 12000, "read_tokens": 0, "rewritten_tokens": 12000,
            "gap_s": 400.0, "cost_usd": 0.0414, "thread": None, "cause_source": "inferred",
            "reported_reason": None, "reported_missed_tokens": None}])
        self.assertEqual(doc["break_summary"]["count"], 1)
        self.assertEqual(doc["break_summary"]["by_cause"]["ttl_expired"],
                         {"count": 1, "cost_usd": 0.0414})
        self.assertEqual(doc["what_if"]["ttl_1h"]["delta_usd"], -0.03465)
        self.assertEqual(doc["what_if"]["ttl_1h"]["breaks_avoided"], 1)
        self.assertEqual(doc["what_if"]["groups"][0]["key"], {"agent": "a"})
        self.assertEqual(doc["wasted_writes"]["tokens"], 2500)
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = catop.main(["--file", path, "--offline", "--max-break-cost", "0.04"])
        self.assertEqual(code, 3)
        self.assertIn("cache breaks cost $0.0414, over --max-break-cost $0.0400", err.getvalue())
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = catop.main(["--file", path, "--offline", "--max-break-cost", "0"])
        self.assertEqual((code, err.getvalue()), (3, "catop: gate: cache breaks cost $0.0414, "
                                                     "over --max-break-cost $0.00\n"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            catop.main(["--file", path, "--offline", "--width", "120", "--session", "s"])
        text = out.getvalue()
        self.assertIn("cache breaks  1, costing $0.0414 above the cache-read rate", text)
        self.assertIn("what-if  all cache writes 5 m: would have cost the same (0 breaks "
                      "avoided, 0 added)", text)
        self.assertIn("what-if  all cache writes 1 h: would have saved $0.0347 (1 break "
                      "avoided, 0 added)", text)
        self.assertIn("break: ttl_expired", text)

    def test_demo_has_breaks_of_every_cause(self):
        requests, compactions = catop.demo_traffic(1, NOW)
        by_session = {}
        for session, ts in compactions:
            by_session.setdefault(session, []).append(ts)
        causes = {b.cause for b in detect_breaks(requests, PRICES, by_session)}
        self.assertEqual(causes, set(catop.BREAK_CAUSES))


# Rates per token of prices.json, typed here (not read from catop) for the hand sums:
# a break's cost is what its rewritten tokens paid above the cache-read rate.
SONNET_5M_ABOVE_READ = 3.75e-6 - 3e-7      # claude-sonnet-4-5, written at 5 m
OPUS_5M_ABOVE_READ = 6.25e-6 - 5e-7        # claude-opus-4-5
OPUS_INPUT_ABOVE_READ = 5e-6 - 5e-7
MINI_INPUT_ABOVE_READ = 2.5e-7 - 2.5e-8    # gpt-5-mini, which reports no writes
DIAGNOSIS_HOME = os.path.join(EXAMPLES, "cache-diagnosis", "claude")


def break_rows(doc):
    return [(b["session"], b["ts"][11:19], b["cause"], b["cause_source"], b["reported_reason"],
             b["reported_missed_tokens"], b["expected_read_tokens"], b["cost_usd"])
            for b in doc["breaks"]]


class DiagnosisTests(IsolatedEnv):
    """formats.md section 6: the provider's cache-miss diagnosis, row by row, on the
    fixtures of examples/cache-diagnosis*, every figure worked out by hand."""

    def test_request_log_every_reason_of_both_providers(self):
        doc = self.run_json("--file", example("cache-diagnosis.jsonl"))
        # a-1: Anthropic responses; each break rewrites all it expected (the write
        # before it), at the 5 m write rate.  o-1: OpenAI Responses, which bill no
        # writes: the whole input before it, at the input rate.
        a = lambda ts, cause, source, raw, missed, expected, rate: (
            "a-1", ts, cause, source, raw, missed, expected, round(expected * rate, 9))
        o = lambda ts, cause, source, raw, missed, expected, rewritten=None: (
            "o-1", ts, cause, source, raw, missed, expected,
            round((rewritten or expected) * MINI_INPUT_ABOVE_READ, 9))
        S, O = SONNET_5M_ABOVE_READ, OPUS_5M_ABOVE_READ
        want = sorted([
            a("08:01:00", "tools_changed", "reported", "tools_changed", 19000, 20000, S),
            a("08:03:00", "system_changed", "reported", "system_changed", 20000, 21100, S),
            a("08:05:00", "messages_changed", "reported", "messages_changed", 15000, 21700, S),
            a("08:07:00", "model_switch", "reported", "model_changed", 22000, 22200, O),
            # diagnostics: null, a cold read 60 s after the last: the entry was evicted
            a("08:09:00", "evicted", "reported", None, None, 22600, O),
            # ... and 660 s after it, past the 5 m TTL: expired
            a("08:20:00", "ttl_expired", "reported", None, None, 22700, O),
            # no verdict (unavailable, not found, pending, none): the inference stands
            a("08:21:00", "prefix_changed", "inferred", "unavailable", None, 23000, O),
            a("08:22:00", "prefix_changed", "inferred", "previous_message_not_found", None,
              23200, O),
            a("08:23:00", "prefix_changed", "inferred", None, None, 23400, O),
            a("08:24:00", "prefix_changed", "inferred", None, None, 23600, O),
            o("08:00:30", "model_switch", "reported", "model_changed", 12000, 12000),
            o("08:01:30", "settings_changed", "reported", "prompt_cache_key_changed", 13000,
              13000),
            o("08:02:30", "tools_changed", "reported", "tools_changed", 14000, 14000),
            o("08:03:30", "settings_changed", "reported", "text_format_changed", 15000, 15000),
            o("08:04:30", "settings_changed", "reported", "reasoning_effort_changed", 16000,
              16000),
            o("08:05:30", "settings_changed", "reported", "verbosity_changed", 17000, 17000),
            # the compacted context is 6,500 tokens: that is all there was to rewrite
            o("08:06:30", "compaction", "reported", "context_compacted", 18000, 18000, 6500),
            o("08:07:30", "prefix_changed", "reported", "input_changed", 2000, 7000),
            o("08:08:30", "settings_changed", "reported", "service_tier_changed", 20000,
              20000),
            o("08:09:30", "evicted", "reported", "cache_hit", 0, 21000),
            o("08:20:00", "ttl_expired", "reported", "cache_hit", None, 21500),
            o("08:20:30", "prefix_changed", "inferred", "comparison_response_not_found", None,
              22000),
            o("08:21:00", "prefix_changed", "inferred", "unavailable", None, 22500),
            o("08:21:30", "prefix_changed", "inferred", None, None, 23000),
        ], key=lambda row: (row[1], row[0]))
        self.assertEqual(break_rows(doc), want)
        # a reported change whose read hit (08:25, tools_changed) is no break; a clean
        # comparison (08:02) neither
        summary = doc["break_summary"]
        self.assertEqual(summary["by_source"], {"reported": 17, "inferred": 7})
        # the heuristic cannot see an eviction: it calls both a changed prefix
        self.assertEqual(summary["agreement"], {"compared": 17, "agree": 15, "disagreements": [
            {"reported": "evicted", "inferred": "prefix_changed", "count": 2}]})
        self.assertEqual(summary["by_cause"]["settings_changed"]["count"], 5)
        self.assertEqual(doc["refused_values"], {})
        code, out, _ = self.run_main("--file", example("cache-diagnosis.jsonl"), "--offline",
                                     "--no-history", "--width", "200")
        self.assertIn("  causes: 17 reported by the provider, 7 inferred; inferred causes agree "
                      "with the provider on 15 of 17 breaks", out)
        self.assertIn("  where they differ (reported, inferred): evicted/prefix_changed 2", out)

    def test_the_estimate_is_shown_never_priced(self):
        """Without any diagnosis the same log has the same tokens, costs and breaks
        (only their causes and sources differ)."""
        stripped = os.path.join(self.tmp, "stripped.jsonl")
        with open(example("cache-diagnosis.jsonl")) as src, open(stripped, "w") as dst:
            for line in src:
                record = json.loads(line)
                for holder in (record, record.get("response") or {},
                               (record.get("standard_logging_object") or {}).get("response")
                               or {}):
                    holder.pop("diagnostics", None)
                    holder.pop("prompt_cache_diagnostics", None)
                dst.write(json.dumps(record) + "\n")
        with_it = self.run_json("--file", example("cache-diagnosis.jsonl"))
        without = self.run_json("--file", stripped)
        self.assertEqual(with_it["totals"], without["totals"])
        self.assertEqual([(b["ts"], b["cost_usd"], b["rewritten_tokens"])
                          for b in with_it["breaks"]],
                         [(b["ts"], b["cost_usd"], b["rewritten_tokens"])
                          for b in without["breaks"]])
        self.assertEqual(without["break_summary"]["by_source"], {"reported": 0, "inferred": 24})

    def test_claude_code_home_with_a_subagent_and_every_anthropic_reason(self):
        os.environ["CLAUDE_CONFIG_DIR"] = DIAGNOSIS_HOME
        doc = self.run_json("--agent", "claude-code")
        sid = "7e1d0c2a-5b3f-4a61-9d28-0c4e8f1a2b3c"
        S, O = SONNET_5M_ABOVE_READ, OPUS_5M_ABOVE_READ
        row = lambda ts, cause, source, raw, missed, expected, cost: (
            sid, ts, cause, source, raw, missed, expected, round(cost, 9))
        self.assertEqual(break_rows(doc), [
            # the subagent's two requests (09:01:30, 09:02:00) read 0 then 8,000 while
            # the parent had 51,000 cached: its own thread, never a break of the parent's
            row("09:03:30", "tools_changed", "reported", "tools_changed", 50000, 52500,
                52500 * S),
            row("09:05:00", "system_changed", "reported", "system_changed", 52000, 52800,
                52800 * S),
            row("09:07:00", "messages_changed", "reported", "messages_changed", 30000, 53200,
                53200 * S),
            row("09:09:00", "model_switch", "reported", "model_changed", 53500, 53500,
                53500 * O),
            row("09:10:00", "evicted", "reported", None, None, 53700, 53700 * O),
            row("09:30:00", "ttl_expired", "reported", None, None, 53700, 53700 * O),
            row("09:31:00", "prefix_changed", "inferred", "unavailable", None, 53900,
                53900 * O),
            row("09:32:00", "prefix_changed", "inferred", "previous_message_not_found", None,
                54100, 54100 * O),
            row("09:33:00", "prefix_changed", "inferred", None, None, 54300, 54300 * O),
            # after the compact boundary: 9,000 written and 6 fresh, all it had
            row("09:34:00", "compaction", "inferred", None, None, 54500,
                9000 * O + 6 * OPUS_INPUT_ABOVE_READ),
            row("09:35:00", "prefix_changed", "inferred", None, None, 9000, 9000 * O),
        ])
        self.assertEqual(doc["break_summary"]["agreement"]["agree"], 5)
        self.assertEqual(doc["sources"][0]["skipped"]["malformed"], 1)
        # 20 responses: the streamed early lines of two are one response each
        self.assertEqual(doc["totals"]["requests"], 20)
        # gaps per thread: the main one's 17 and the subagent's 1 (30 s)
        self.assertEqual(doc["gaps"], {"under_1m": 4, "1m_5m": 13, "5m_1h": 1, "over_1h": 0,
                                       "past_ttl": 1,
                                       "past_ttl_cost_usd": round(53700 * O, 9)})
        timeline = self.run_json("--agent", "claude-code", "--session", sid[:8])["timeline"]
        self.assertEqual([t["thread"] for t in timeline[1:5]],
                         [None, "agent-b7", "agent-b7", None])
        self.assertEqual([(t["break"], t["cause_source"], t["reported_reason"])
                          for t in timeline[5:7]],
                         [("tools_changed", "reported", "tools_changed"), (None, None, None)])
        code, out, _ = self.run_main("--agent", "claude-code", "--session", sid[:8],
                                     "--offline", "--no-history", "--width", "160")
        self.assertIn("  break: tools_changed (reported; 50.0k missed)", out)
        self.assertIn("  break: model_switch (reported model_changed; 53.5k missed)", out)
        self.assertIn("  break: prefix_changed (provider: unavailable)", out)
        self.assertIn("  subagent agent-b7", out)

    def test_the_same_by_every_path(self):
        """The history (cold and warm) and --jobs keep threads and diagnoses."""
        os.environ["CLAUDE_CONFIG_DIR"] = DIAGNOSIS_HOME
        want = self.run_json("--agent", "claude-code")["breaks"]
        store = os.path.join(self.tmp, "h.sqlite3")
        for argv in (("--jobs", "1"), ("--jobs", "3"), ("--history", store),
                     ("--history", store)):
            code, out, err = self.run_main("--agent", "claude-code", "--format", "json",
                                           "--offline", *argv)
            self.assertEqual(code, 0, err)
            self.assertEqual(json.loads(out)["breaks"], want, argv)
        want = self.run_json("--file", example("cache-diagnosis.jsonl"))["breaks"]
        for argv in (("--history", store), ("--history", store), ("--jobs", "2")):
            code, out, err = self.run_main("--file", example("cache-diagnosis.jsonl"),
                                           "--format", "json", "--offline", *argv)
            self.assertEqual(json.loads(out)["breaks"], want, argv)
        with open(example("cache-diagnosis.jsonl")) as handle:
            log = [json.loads(line) for line in handle]
        reqs = [catop.normalize_record(record) for record in log * 9]   # compiled by then
        self.assertEqual(reqs[:40], reqs[-40:])

    def test_hostile_diagnoses_are_counted_and_ignored(self):
        bad_anthropic = ["tools_changed", 7, [], {}, {"cache_miss_reason": "tools_changed"},
                         {"cache_miss_reason": {}},
                         {"cache_miss_reason": {"type": "gremlins"}},
                         {"cache_miss_reason": {"type": 7}},
                         {"cache_miss_reason": {"type": ["tools_changed"]}},
                         {"cache_miss_reason": {"type": "tools_changed",
                                                "cache_missed_input_tokens": -5}},
                         {"cache_miss_reason": {"type": "tools_changed",
                                                "cache_missed_input_tokens": 10 ** 30}},
                         {"cache_miss_reason": {"type": "tools_changed",
                                                "cache_missed_input_tokens": "many"}},
                         {"cache_miss_reason": {"type": "tools_changed",
                                                "cache_missed_input_tokens": 2.5}},
                         {"cache_miss_reason": {"type": "tools_changed",
                                                "cache_missed_input_tokens": float("nan")}}]
        bad_openai = [[], "cache_miss", {"type": "cache_miss"}, {"type": "cache_miss",
                                                                  "reason": None},
                      {"type": "cache_miss", "reason": "gremlins"}, {"type": "bogus"}, {},
                      {"type": "cache_miss", "reason": "tools_changed",
                       "cache_missed_tokens": -1},
                      {"type": "cache_hit", "cache_missed_tokens": 1e300},
                      {"type": "cache_miss", "reason": "tools_changed",
                       "cache_missed_tokens": True}]
        path = os.path.join(self.tmp, "bad.jsonl")
        clean_path = os.path.join(self.tmp, "clean.jsonl")
        with open(path, "w") as bad, open(clean_path, "w") as clean:
            n = 0
            for key, values in (("diagnostics", bad_anthropic),
                                ("prompt_cache_diagnostics", bad_openai)):
                for value in values:
                    for read in (20000, 0):    # a hit, then a cold read: a break
                        record = {"timestamp": NOW + n * 30, "session_id": "h",
                                  "model": "claude-sonnet-4-5", "provider": "anthropic",
                                  "usage": {"input_tokens": 10, "cache_read_input_tokens": read,
                                            "cache_creation_input_tokens": 20000 - read + 100,
                                            "output_tokens": 5}}
                        clean.write(json.dumps(record) + "\n")
                        record[key] = value
                        bad.write(json.dumps(record) + "\n")
                        n += 1
        hostile = self.run_json("--file", path)
        plain = self.run_json("--file", clean_path)
        self.assertEqual(hostile["refused_values"],
                         {"cache-miss report": 2 * (len(bad_anthropic) + len(bad_openai))})
        self.assertEqual(hostile["totals"], plain["totals"])
        self.assertEqual(hostile["breaks"], plain["breaks"])
        self.assertEqual(hostile["break_summary"]["by_source"]["reported"], 0)
        # and on Claude Code's lines
        home = os.path.join(self.tmp, "claude")
        shutil.copytree(DIAGNOSIS_HOME, home)
        transcript = os.path.join(home, "projects", "-home-dev-diag",
                                  "7e1d0c2a-5b3f-4a61-9d28-0c4e8f1a2b3c.jsonl")
        os.environ["CLAUDE_CONFIG_DIR"] = home
        want = self.run_json("--agent", "claude-code")
        with open(transcript) as handle:
            lines = handle.read().splitlines()
        rng = random.Random(5)
        with open(transcript, "w") as handle:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    handle.write(line + "\n")
                    continue
                if record.get("type") == "assistant":
                    record["message"]["diagnostics"] = rng.choice(bad_anthropic)
                handle.write(json.dumps(record) + "\n")
        got = self.run_json("--agent", "claude-code")
        self.assertEqual(got["totals"], want["totals"])
        self.assertEqual([(b["ts"], b["cost_usd"]) for b in got["breaks"]],
                         [(b["ts"], b["cost_usd"]) for b in want["breaks"]])
        self.assertEqual(got["break_summary"]["by_source"]["reported"], 0)
        # one a line: 18 responses, two of them streamed on two lines
        self.assertEqual(got["refused_values"], {"cache-miss report": 20})

    def test_the_litellm_callback_keeps_the_diagnosis_and_nothing_else(self):
        usage = {"prompt_tokens": 100, "completion_tokens": 5}
        record = catop.litellm_log_record({}, {"usage": usage, "id": "SECRET", "diagnostics": {
            "cache_miss_reason": {"type": "tools_changed", "cache_missed_input_tokens": 80,
                                  "detail": "SECRET"}, "other": "SECRET"}})
        self.assertEqual(record["diagnostics"], {"cache_miss_reason": {
            "type": "tools_changed", "cache_missed_input_tokens": 80}})
        self.assertNotIn("SECRET", json.dumps(record))
        # null is Anthropic's "no divergence": kept as null
        record = catop.litellm_log_record({}, {"usage": usage, "diagnostics": None})
        self.assertIsNone(record["diagnostics"])
        self.assertEqual(catop.normalize_record(record).diagnosis, (catop.NO_CHANGE, None, None))

        class Response(object):     # an SDK object, the diagnosis in its extra fields
            def __init__(self):
                self.usage = usage
                self.provider_specific_fields = {"prompt_cache_diagnostics": {
                    "type": "cache_miss", "reason": "input_changed", "cache_missed_tokens": 60,
                    "comparison_reusable_tokens": 40, "input": "SECRET"}}
        record = catop.litellm_log_record({}, Response())
        self.assertEqual(record["prompt_cache_diagnostics"], {
            "type": "cache_miss", "reason": "input_changed", "cache_missed_tokens": 60,
            "comparison_reusable_tokens": 40})
        self.assertEqual(catop.normalize_record(record).diagnosis,
                         ("prefix_changed", "input_changed", 60))
        self.assertNotIn("diagnostics", catop.litellm_log_record({}, {"usage": usage}))

    def test_a_codex_subagent_is_its_own_thread_under_its_parent(self):
        day = os.path.join(self.tmp, "codex", "sessions", "2026", "03", "10")
        os.makedirs(day)
        os.environ["CODEX_HOME"] = os.path.join(self.tmp, "codex")

        def rollout(name, meta, counts):
            with open(os.path.join(day, "rollout-2026-03-10T08-00-00-%s.jsonl" % name), "w") as f:
                f.write(json.dumps({"timestamp": "2026-03-10T08:00:00.000Z",
                                    "type": "session_meta", "payload": meta}) + "\n")
                f.write(json.dumps({"timestamp": "2026-03-10T08:00:00.100Z",
                                    "type": "turn_context",
                                    "payload": {"model": "gpt-5", "cwd": "/p"}}) + "\n")
                for second, fresh, cached in counts:
                    f.write(json.dumps({
                        "timestamp": "2026-03-10T08:%02d:%02d.000Z" % divmod(second, 60),
                        "type": "event_msg", "payload": {"type": "token_count", "info": {
                            "last_token_usage": {"input_tokens": fresh,
                                                 "cached_input_tokens": cached,
                                                 "output_tokens": 10}}}}) + "\n")
        # the parent keeps 20,000+ cached; its subagent starts cold between two of its turns
        rollout("parent", {"id": "parent", "timestamp": "2026-03-10T08:00:00.000Z",
                           "cwd": "/p"}, [(10, 20000, 0), (40, 21000, 20000),
                                          (100, 22000, 21000)])
        rollout("sub", {"id": "sub-1", "forked_from_id": "parent",
                        "timestamp": "2026-03-10T08:00:20.000Z", "cwd": "/p",
                        "source": {"subagent": "review"}}, [(30, 5000, 0), (60, 6000, 5000)])
        doc = self.run_json("--agent", "codex", "--session", "parent")
        self.assertEqual(doc["breaks"], [])
        self.assertEqual([(t["ts"][14:19], t["thread"]) for t in doc["timeline"]],
                         [("00:10", None), ("00:30", "sub-1"), ("00:40", None),
                          ("01:00", "sub-1"), ("01:40", None)])
        self.assertEqual(doc["totals"]["requests"], 5)

    def test_every_cause_has_a_text(self):
        self.assertEqual(set(catop.CAUSE_TEXT), set(catop.BREAK_CAUSES))
        self.assertEqual(set(catop._CAUSE_KINDS), set(catop.BREAK_CAUSES))


def claude_code_stream(count, gap, first, then, read_step=0, sidechain=False, agent=None,
                       session="cc"):
    """count Claude Code requests gap seconds apart: the first writes first tokens,
    each after it then tokens; read_step > 0 makes each read all before it."""
    requests, cached = [], 0
    for n in range(count):
        writes = first if n == 0 else then
        read = cached if read_step else 0
        w5, w1 = writes
        requests.append(catop.Request(NOW + n * gap, agent or "claude-code", "anthropic",
                                      "claude-sonnet-4-5", "p", session, 0, read, w5, w1, 0,
                                      sidechain=sidechain,
                                      thread="agent-x" if sidechain else ""))
        cached = read + w5 + w1
    return requests


def effects_of(requests, now=NOW + 10 ** 6):
    agg = catop.Aggregate(PRICES)
    for req in sorted(requests, key=catop.request_order):
        agg.add(req)
    agg.finish(now)
    return agg


class AdviceTests(IsolatedEnv):
    """TTL advice from the what-if, the gap histogram and the warm sessions: by hand."""

    def test_claude_code_main_thread_told_to_write_for_an_hour(self):
        # 21 requests 10 min apart, each writing its 10,000-token prefix again (5 m):
        # paid 21 x 10,000 x 3.75e-6 = 0.7875; with 1 h writes one write at 6e-6 and
        # 20 reads at 3e-7: 0.06 + 0.06 = 0.12
        agg = effects_of(claude_code_stream(21, 600, (10000, 0), (10000, 0)))
        self.assertEqual(catop.ttl_advice(agg.effects), [{
            "scope": {"agent": "claude-code", "thread": "main"}, "requests": 21,
            "cost_usd": 0.7875, "ttl_5m_cost_usd": 0.7875, "ttl_1h_cost_usd": 0.12,
            "cheaper": "ttl_1h", "saving_usd": 0.6675, "breaks_avoided": 20, "breaks_added": 0,
            "setting": 'set "promptCacheTtl": "1h" in Claude Code\'s settings.json '
                       '(or ENABLE_PROMPT_CACHING_1H=1 in the environment)'}])
        counts = catop.gap_histograms(agg.effects)["cc"]
        self.assertEqual(counts[:5] + [round(counts[5], 9)],
                         [0, 0, 20, 0, 20, round(20 * 10000 * SONNET_5M_ABOVE_READ, 9)])

    def test_an_hour_of_writes_read_every_minute_is_told_to_go_back_to_five(self):
        # a 10,000-token prefix written for 1 h, then 20 requests a minute apart, each
        # reading all before it and writing 1,000 more (1 h): the 30,000 written would
        # have cost 3.75e-6 instead of 6e-6, and no read was more than 5 min later
        agg = effects_of(claude_code_stream(21, 60, (0, 10000), (0, 1000), read_step=1))
        advice = catop.ttl_advice(agg.effects)
        self.assertEqual([(a["cheaper"], a["cost_usd"], a["ttl_5m_cost_usd"], a["saving_usd"])
                          for a in advice],
                         [("ttl_5m", round(30000 * 6e-6 + 390000 * 3e-7, 9),
                           round(30000 * 3.75e-6 + 390000 * 3e-7, 9), 0.0675)])
        self.assertIn('"promptCacheTtl": "5m"', advice[0]["setting"])

    def test_subagents_apart_and_no_advice_under_twenty_requests_or_a_cent(self):
        main = claude_code_stream(21, 600, (10000, 0), (10000, 0))
        subagents = claude_code_stream(21, 600, (10000, 0), (10000, 0), sidechain=True)
        advice = catop.ttl_advice(effects_of(main + subagents).effects)
        self.assertEqual([(a["scope"], a["saving_usd"]) for a in advice],
                         [({"agent": "claude-code", "thread": "main"}, 0.6675),
                          ({"agent": "claude-code", "thread": "subagents"}, 0.6675)])
        self.assertEqual(advice[1]["setting"],
                         'set "subagentPromptCacheTtl": "1h" in Claude Code\'s settings.json')
        self.assertEqual(catop.ttl_advice(effects_of(main[:19] + subagents).effects)[0]["scope"],
                         {"agent": "claude-code", "thread": "subagents"})  # 19: too few
        # 1 h writes read every minute: 5 m would save 3,000 x 2.25e-6, under a cent
        tiny = claude_code_stream(21, 60, (0, 1000), (0, 100), read_step=1)
        self.assertEqual(catop.ttl_advice(effects_of(tiny).effects), [])
        self.assertAlmostEqual(effects_of(tiny).effects.advice[("claude-code", "main")][
            "ttl_5m"][0], -3000 * 2.25e-6, places=12)
        # a request log: by model and project, as the request's cache_control
        logged = claude_code_stream(21, 600, (10000, 0), (10000, 0), agent="rag")
        advice = catop.ttl_advice(effects_of(logged).effects)
        self.assertEqual((advice[0]["scope"], advice[0]["setting"]),
                         ({"model": "claude-sonnet-4-5", "project": "p"},
                          'send cache_control {"type": "ephemeral", "ttl": "1h"}'))

    def test_advice_and_gaps_in_the_report(self):
        path = os.path.join(self.tmp, "cc.jsonl")
        with open(path, "w") as handle:
            for req in claude_code_stream(21, 600, (10000, 0), (10000, 0)):
                handle.write(json.dumps({
                    "timestamp": req.ts, "project": "shop-api", "session_id": "cc",
                    "model": req.model, "provider": "anthropic", "usage": {
                        "input_tokens": 0, "cache_read_input_tokens": 0,
                        "cache_creation_input_tokens": 10000, "output_tokens": 0}}) + "\n")
        doc = self.run_json("--file", path)
        self.assertEqual(doc["ttl_advice"][0]["saving_usd"], 0.6675)
        self.assertEqual(doc["gaps"], {"under_1m": 0, "1m_5m": 0, "5m_1h": 20, "over_1h": 0,
                                       "past_ttl": 20, "past_ttl_cost_usd": 0.69})
        self.assertEqual(doc["session_gaps"], [dict(doc["gaps"], session="cc")])
        self.assertEqual(doc["ttl_advice"][0]["scope"],
                         {"model": "claude-sonnet-4-5", "project": "shop-api"})
        code, out, _ = self.run_main("--file", path, "--offline", "--no-history",
                                     "--width", "250")
        self.assertIn("gaps between requests  under 1 min 0 | 1-5 min 0 | 5-60 min 20 | "
                      "over 1 h 0; 20 past the TTL in force, their breaks costing $0.6900", out)
        # a request log is told per model and project, as the request's cache_control
        self.assertIn("advice  claude-sonnet-4-5 in shop-api: 1 h cache writes would have cost "
                      "$0.6675 less over the window ($0.1200, not $0.7875): send cache_control "
                      "{\"type\": \"ephemeral\", \"ttl\": \"1h\"}", out)

    def test_gaps_are_against_the_ttl_in_force(self):
        # 1 h writes: 20 min away is inside it; 61 min is past it
        agg = effects_of(claude_code_stream(3, 1200, (0, 10000), (0, 500), read_step=1) + [
            catop.Request(NOW + 2400 + 3660, "claude-code", "anthropic", "claude-sonnet-4-5",
                          "p", "cc", 0, 0, 0, 11000, 0)])
        counts = catop.gap_histograms(agg.effects)["cc"]
        # the break: 11,000 expected, all written again at 1 h: 11,000 x (6e-6 - 3e-7)
        self.assertEqual(counts[:5], [0, 0, 2, 1, 1])
        self.assertAlmostEqual(counts[5], 11000 * (6e-6 - 3e-7), places=12)

    def test_warm_sessions(self):
        now = NOW + 1000
        requests = [
            # written 100 s ago for 5 m: 200 s left; rewriting 20,000 at 3.75e-6 - 3e-7
            catop.Request(now - 100, "claude-code", "anthropic", "claude-sonnet-4-5", "p", "five",
                          10, 0, 20000, 0, 5),
            # 400 s ago: gone; 1 h writes 1,000 s ago: 2,600 s left, at 6e-6 - 3e-7
            catop.Request(now - 400, "claude-code", "anthropic", "claude-sonnet-4-5", "p", "gone",
                          10, 0, 20000, 0, 5),
            catop.Request(now - 1000, "claude-code", "anthropic", "claude-sonnet-4-5", "p",
                          "hour", 10, 0, 0, 20000, 5),
            # OpenAI: the whole input stays cached for 5 m, rewritten at the input rate
            catop.Request(now - 50, "rag", "openai", "gpt-5-mini", "p", "oa", 12000, 0, 0, 0, 5),
            # under 1,024 tokens nothing is cached
            catop.Request(now - 10, "rag", "openai", "gpt-5-mini", "p", "small", 900, 0, 0, 0, 5),
            catop.Request(now - 30, "claude-code", "anthropic", "claude-sonnet-4-5", "p", "five",
                          10, 0, 4000, 0, 5, sidechain=True, thread="agent-q")]
        agg = effects_of(requests, now)
        self.assertEqual(catop.warm_sessions(agg.effects, now), [
            {"session": "five", "thread": None, "model": "claude-sonnet-4-5",
             "expires_at": now + 200, "rewrite_cost_usd": round(20000 * SONNET_5M_ABOVE_READ, 9),
             "cached_tokens": 20000},
            {"session": "five", "thread": "agent-q", "model": "claude-sonnet-4-5",
             "expires_at": now + 270, "rewrite_cost_usd": round(4000 * SONNET_5M_ABOVE_READ, 9),
             "cached_tokens": 4000},
            {"session": "oa", "thread": None, "model": "gpt-5-mini", "expires_at": now + 250,
             "rewrite_cost_usd": round(12000 * MINI_INPUT_ABOVE_READ, 9),
             "cached_tokens": 12000},
            {"session": "hour", "thread": None, "model": "claude-sonnet-4-5",
             "expires_at": now + 2600, "rewrite_cost_usd": round(20000 * (6e-6 - 3e-7), 9),
             "cached_tokens": 20000}][:1] + sorted([
            {"session": "oa", "thread": None, "model": "gpt-5-mini", "expires_at": now + 250,
             "rewrite_cost_usd": round(12000 * MINI_INPUT_ABOVE_READ, 9),
             "cached_tokens": 12000},
            {"session": "five", "thread": "agent-q", "model": "claude-sonnet-4-5",
             "expires_at": now + 270, "rewrite_cost_usd": round(4000 * SONNET_5M_ABOVE_READ, 9),
             "cached_tokens": 4000},
            {"session": "hour", "thread": None, "model": "claude-sonnet-4-5",
             "expires_at": now + 2600, "rewrite_cost_usd": round(20000 * (6e-6 - 3e-7), 9),
             "cached_tokens": 20000}], key=lambda item: item["expires_at"]))
        doc = catop.report_dict(catop.Report(agg, [], PRICES, now))
        self.assertEqual([(w["session"], w["expires_at"], w["expires_in_s"])
                          for w in doc["warm_sessions"]],
                         [("five", catop.iso_utc(now + 200), 200.0),
                          ("oa", catop.iso_utc(now + 250), 250.0),
                          ("five", catop.iso_utc(now + 270), 270.0),
                          ("hour", catop.iso_utc(now + 2600), 2600.0)])

    def test_the_live_view_counts_the_warm_sessions_down(self):
        view = catop.View()
        model = live_model(recent_requests())
        # s-good wrote last 180 s ago (5 m): 120 s left, 28,000 tokens at 3.45e-6; s-bad's
        # 50,000-token input (gpt-4o, 2.5e-6 - 1.25e-6) was sent just now: 300 s left
        for now, expect in ((NOW, "cache  2 sessions warm \u00b7 next to expire: s-good 2:00 "
                                  "(rewrite $0.0966), s-bad 5:00 (rewrite $0.0625)"),
                            (NOW + 75, "cache  2 sessions warm \u00b7 next to expire: s-good "
                                       "0:45 (rewrite $0.0966), s-bad 3:45 (rewrite $0.0625)"),
                            (NOW + 200, "cache  1 session warm \u00b7 next to expire: s-bad "
                                        "1:40 (rewrite $0.0625)"),
                            (NOW + 400, "cache  no session warm")):
            frame = catop.build_frame(model, view, now, cache={})
            lines = ["".join(t for t, _ in line) for line in
                     catop.render_screen(frame, view, RenderScreenTests.META, 130, 30)]
            self.assertIn(expect, lines)
        view.breaks_panel = True
        frame = catop.build_frame(model, view, NOW)
        lines = ["".join(t for t, _ in line) for line in
                 catop.render_screen(frame, view, RenderScreenTests.META, 130, 40)]
        self.assertIn("warm  2 sessions, the soonest to expire first:", lines)
        self.assertIn("  s-good  claude-sonnet-4-5  expires in 2:00  28.0k tokens cached; "
                      "rewriting them would cost $0.0966", lines)
        self.assertTrue(any(line.startswith("gaps between requests  under 1 min 5 | 1-5 min 7 |")
                            for line in lines), lines)


class StatuslineTests(IsolatedEnv):
    """--statusline as Claude Code runs it: JSON on stdin, one line out, exit 0."""

    SESSION = "7e1d0c2a-5b3f-4a61-9d28-0c4e8f1a2b3c"

    def transcript(self, home=DIAGNOSIS_HOME):
        return os.path.join(home, "projects", "-home-dev-diag", self.SESSION + ".jsonl")

    def call(self, document, *argv, encoding="utf-8", raw=None):
        data = raw if raw is not None else json.dumps(document).encode()
        stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
        out = io.BytesIO()
        stdout = io.TextIOWrapper(out, encoding=encoding, errors="replace")
        with mock.patch.object(sys, "stdin", stdin), mock.patch.object(sys, "stdout", stdout):
            code = catop.main(["--statusline"] + list(argv))
            stdout.flush()
        self.assertEqual(code, 0)
        text = out.getvalue().decode(encoding)
        self.assertEqual(text.count("\n"), 1, text)
        plain = re.sub(r"\x1b\[\d+m", "", text[:-1])     # colours, and nothing else
        self.assertEqual(plain, catop.clean(plain))
        return text[:-1]

    def input(self, transcript=None, **extra):
        doc = {"session_id": self.SESSION, "transcript_path": transcript or self.transcript(),
               "cwd": "/home/dev/diag", "model": {"id": "claude-opus-4-5",
                                                   "display_name": "Opus 4.5"},
               "workspace": {"current_dir": "/home/dev/diag"}, "version": "2.1.262",
               "cost": {"total_cost_usd": 2.5, "total_duration_ms": 60000}}
        doc.update(extra)
        return doc

    def test_the_line_of_the_example_session(self):
        os.environ["NO_COLOR"] = "1"
        # the figures --once gives the same session (one engine): 34.8% hit, $3.09,
        # saved $0.3051; the last break of the main thread is 09:35's
        os.environ["CLAUDE_CONFIG_DIR"] = DIAGNOSIS_HOME
        totals = self.run_json("--agent", "claude-code")["totals"]
        self.assertEqual((round(totals["hit_rate"], 3), round(totals["cost_usd"], 2)),
                         (0.348, 3.09))
        at = time.strftime("%H:%M", time.localtime(catop.parse_timestamp(
            "2026-03-11T09:35:00.400Z")))
        want = ("\u26a135% \u00b7 $3.09 saved $0.3051 \u00b7 cold \u00b7 last miss "
                "prefix_changed " + at + " \u2212$0.0517")
        self.assertEqual(self.call(self.input()), want)
        self.assertEqual(self.call(self.input()), want)      # warm, from the state
        # an older build: no cost, no model; a newer one: prompt_cache's ratio and cause
        self.assertEqual(self.call({"session_id": self.SESSION,
                                    "transcript_path": self.transcript()}), want)
        cache = {"warm": False, "hit_ratio": 0.41, "last_miss_at": catop.parse_timestamp(
            "2026-03-11T09:35:00Z"), "last_miss_cause": {"causes": ["tools_changed"]}}
        self.assertEqual(self.call(self.input(prompt_cache=cache)),
                         want.replace("35%", "41%").replace("prefix_changed", "tools_changed"))
        # a cause catop cannot match to a break of its own is shown without a cost
        cache["last_miss_at"] -= 3600
        self.assertTrue(self.call(self.input(prompt_cache=cache)).endswith(
            "last miss tools_changed %s" % time.strftime(
                "%H:%M", time.localtime(cache["last_miss_at"]))))
        # ASCII where the terminal's encoding is not UTF-8
        self.assertEqual(self.call(self.input(), encoding="ascii"),
                         "35% | $3.09 saved $0.3051 | cold | last miss prefix_changed " + at +
                         " -$0.0517")
        self.assertEqual(self.call(self.input(), "--statusline-format", "{model}: {hit} hit"),
                         "Opus 4.5: 35% hit")
        os.environ["COLUMNS"] = "40"       # the width hint: the last parts give way first
        self.assertEqual(self.call(self.input()), "\u26a135% \u00b7 $3.09 saved $0.3051 "
                                                  "\u00b7 cold")

    def test_colour_unless_no_color(self):
        line = self.call(self.input())
        self.assertIn("\x1b[33m35%\x1b[0m", line)
        os.environ["NO_COLOR"] = "1"
        self.assertNotIn("\x1b", self.call(self.input()))
        del os.environ["NO_COLOR"]
        self.assertNotIn("\x1b", self.call(self.input(), "--no-color"))

    def test_warm_counts_down_and_a_budget_adds_its_share(self):
        os.environ["NO_COLOR"] = "1"
        home = os.path.join(self.tmp, "claude")
        folder = os.path.join(home, "projects", "-p")
        os.makedirs(folder)
        path = os.path.join(folder, self.SESSION + ".jsonl")
        now = time.time()
        with open(path, "w") as handle:
            for n, (ago, read, write) in enumerate(((200, 0, 20000), (100, 20000, 1000))):
                handle.write(json.dumps({
                    "type": "assistant", "sessionId": self.SESSION, "cwd": "/p",
                    "timestamp": catop.iso_utc(now - ago), "requestId": "r%d" % n,
                    "message": {"id": "m%d" % n, "model": "claude-sonnet-4-5", "usage": {
                        "input_tokens": 0, "cache_read_input_tokens": read,
                        "cache_creation_input_tokens": write, "output_tokens": 0}}}) + "\n")
        config = os.path.join(self.tmp, "config", "catop")
        os.makedirs(config)
        with open(os.path.join(config, "config.json"), "w") as handle:
            json.dump({"budgets": {"daily": 1.0}}, handle)
        line = self.call(self.input(path))
        # 20,000 at 3.75e-6 + 20,000 at 3e-7 + 1,000 at 3.75e-6 = $0.08475 of $1.00
        match = re.match(r"^\u26a1\d+% \u00b7 \$0\.0848 saved \$[\d.]+ \u00b7 warm (\d):(\d\d) "
                         r"\u00b7 8% of \$1\.00 today$", line)
        self.assertTrue(match, line)
        left = int(match.group(1)) * 60 + int(match.group(2))
        self.assertTrue(195 <= left <= 200, line)   # 300 s from the last, 100 s ago

    def copied_session(self):
        """(transcript path, its lines, the state folder) of a copy of the example home."""
        os.environ["NO_COLOR"] = "1"
        home = os.path.join(self.tmp, "claude")
        shutil.copytree(DIAGNOSIS_HOME, home)
        path = self.transcript(home)
        with open(path) as handle:
            lines = handle.read().splitlines(True)
        return path, lines, os.path.join(self.tmp, "cache", "catop", "statusline")

    def test_the_state_follows_a_transcript_that_grows_is_cut_and_is_replaced(self):
        path, lines, state_dir = self.copied_session()

        def stateless():
            shutil.rmtree(state_dir, ignore_errors=True)
            return self.call(self.input(path))
        for cut in (10, 25, len(lines)):            # grows, in pieces
            with open(path, "w") as handle:
                handle.writelines(lines[:cut])
            with_state = self.call(self.input(path))
            self.assertTrue(os.path.isdir(state_dir))
            self.assertEqual(with_state, stateless())
            self.call(self.input(path))              # the state again, for the next piece
        state_file = [n for n in os.listdir(state_dir) if n.endswith(".json")][0]
        with open(os.path.join(state_dir, state_file)) as handle:
            offsets = {p: f["offset"] for p, f in json.load(handle)["files"].items()}
        self.assertEqual(offsets[path], os.path.getsize(path))    # read to its end, once
        with open(path, "w") as handle:              # cut short (a rewrite in place)
            handle.writelines(lines[:12])
        self.assertEqual(self.call(self.input(path)), stateless())
        self.call(self.input(path))
        os.unlink(path)                              # replaced by another file
        with open(path, "w") as handle:
            handle.writelines(lines[:30])
        self.assertEqual(self.call(self.input(path)), stateless())
        with open(os.path.join(state_dir, state_file), "w") as handle:
            handle.write('{"version": 1, "transcript": %s, "effects": 7}' % json.dumps(path))
        self.assertEqual(self.call(self.input(path)), stateless())   # a damaged state

    def test_never_in_the_way(self):
        os.environ["NO_COLOR"] = "1"
        for raw in (b"", b"garbage", b"[1, 2]", b"\xff\xfe", b'{"transcript_path": 7}',
                    b'{"model": "x", "cost": [], "prompt_cache": 3}',
                    json.dumps({"transcript_path": os.path.join(self.tmp, "none.jsonl"),
                                "model": {"display_name": "Opus\x1b[2J 4"},
                                "cost": {"total_cost_usd": 1.5}}).encode()):
            with self.subTest(raw=raw):
                line = self.call(None, raw=raw)
                self.assertTrue(line)
        self.assertEqual(self.call(None, raw=json.dumps({
            "transcript_path": "/nope", "cost": {"total_cost_usd": 1.5}}).encode()),
            "$1.50 (Claude Code)")
        # a cache folder that cannot be made (a file is in its place): still the line
        blocked = os.path.join(self.tmp, "not-a-folder")
        open(blocked, "w").close()
        os.environ["XDG_CACHE_HOME"] = blocked
        self.assertTrue(self.call(self.input()).startswith("\u26a135% \u00b7 $3.09"))

    def test_why_goes_to_the_log(self):
        self.call(None, raw=b"garbage")
        with open(os.path.join(self.tmp, "cache", "catop", "statusline",
                               "statusline.log")) as handle:
            self.assertIn("stdin is not JSON", handle.read())

    def test_install_prints_and_merges_the_settings_entry(self):
        code, out, _ = self.run_main("--statusline", "--install")
        entry = json.loads(out)["statusLine"]
        self.assertEqual((entry["type"], entry["padding"]), ("command", 0))
        folder = os.path.dirname(os.path.abspath(catop.__file__))
        self.assertTrue(entry["command"].startswith("%s -S -E -c 'import sys\n" % sys.executable))
        self.assertTrue(entry["command"].endswith("sys.exit(catop.main())' --statusline"))
        self.assertIn('SourceFileLoader("catop", "%s")' % os.path.join(folder, "catop.py"),
                      entry["command"])
        home = os.path.join(self.tmp, "claude-config")
        os.makedirs(home)
        os.environ["CLAUDE_CONFIG_DIR"] = home
        settings = os.path.join(home, "settings.json")
        with open(settings, "w") as handle:
            json.dump({"model": "opus", "statusLine": {"type": "command",
                                                       "command": "ccusage statusline"}},
                      handle)
        code, _, err = self.run_main("--statusline", "--install", "--write")
        self.assertEqual(code, 1)
        self.assertIn("already has a status line", err)
        with open(settings) as handle:
            self.assertEqual(json.load(handle)["statusLine"]["command"], "ccusage statusline")
        code, out, _ = self.run_main("--statusline", "--install", "--write", "--force")
        self.assertEqual(code, 0)
        with open(settings) as handle:
            merged = json.load(handle)
        self.assertEqual(merged, {"model": "opus", "statusLine": entry})
        # catop's own entry is replaced without --force, with a template
        code, _, _ = self.run_main("--statusline", "--install", "--write",
                                   "--statusline-format", "{hit} {warm}")
        self.assertEqual(code, 0)
        with open(settings) as handle:
            self.assertTrue(json.load(handle)["statusLine"]["command"].endswith(
                "--statusline-format '{hit} {warm}'"))
        code, _, err = self.run_main("--statusline", "--install", "--statusline-format", "{x}")
        self.assertEqual(code, 2)
        self.assertIn("unknown field {x}", err)
        code, _, err = self.run_main("--install")
        self.assertEqual(code, 2)
        code, _, err = self.run_main("--statusline", "--write")
        self.assertEqual(code, 2)

    def test_write_keeps_a_linked_settings_file_and_its_mode_and_refuses_what_it_cannot_read(self):
        home = os.path.join(self.tmp, "claude-config")
        dotfiles = os.path.join(self.tmp, "dotfiles")
        os.makedirs(home)
        os.makedirs(dotfiles)
        os.environ["CLAUDE_CONFIG_DIR"] = home
        target = os.path.join(dotfiles, "settings.json")
        with open(target, "w") as handle:
            json.dump({"theme": "dark"}, handle)
        os.chmod(target, 0o644)
        os.symlink(target, os.path.join(home, "settings.json"))
        self.assertEqual(self.run_main("--statusline", "--install", "--write")[0], 0)
        self.assertTrue(os.path.islink(os.path.join(home, "settings.json")))
        with open(target) as handle:
            self.assertEqual(sorted(json.load(handle)), ["statusLine", "theme"])
        self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o644)
        os.unlink(os.path.join(home, "settings.json"))
        os.mkdir(os.path.join(home, "settings.json"))   # not a file: never replaced
        code, _, err = self.run_main("--statusline", "--install", "--write")
        self.assertEqual(code, 1)
        self.assertIn("cannot read", err)
        self.assertTrue(os.path.isdir(os.path.join(home, "settings.json")))

    def test_the_command_never_imports_from_the_project_folder(self):
        project = os.path.join(self.tmp, "project")
        os.makedirs(project)
        for name in ("catop.py", "base64.py", "json.py", "types.py", "warnings.py",
                     "functools.py", "importlib.py"):
            with open(os.path.join(project, name), "w") as handle:
                handle.write("print('PWNED')\nraise SystemExit(9)\n")
        result = subprocess.run(catop.statusline_command(), shell=True, cwd=project,
                                input=json.dumps(self.input()).encode(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(os.environ, PYTHONPATH=project), timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn(b"PWNED", result.stdout)
        self.assertIn(b"$3.09", result.stdout)

    def test_a_streamed_response_that_grows_in_a_quiet_file_is_counted_whole(self):
        """The last response of a file stays open while the file is quiet: its final
        line, written later, replaces the early one, as a fresh read counts it."""
        path, lines, state_dir = self.copied_session()
        early = [n for n, line in enumerate(lines) if '"id":"msg_01Diag0002"' in line][0]
        with open(path, "w") as handle:
            handle.write(lines[early])          # the early line, output 1
        self.call(self.input(path))
        self.call(self.input(path))              # nothing new: it must stay open
        with open(path, "a") as handle:
            handle.write(lines[early + 1])      # the final line, output 120
        grown = self.call(self.input(path))
        shutil.rmtree(state_dir)
        self.assertEqual(grown, self.call(self.input(path)))
        # and a transcript fed in random pieces ends where a fresh read does
        rng = random.Random(3)
        data = "".join(lines)
        with open(path, "w") as handle:
            pass
        position = 0
        while position < len(data):
            step = rng.randint(1, 4000)
            with open(path, "a") as handle:
                handle.write(data[position:position + step])
            position += step
            self.call(self.input(path))
        pieces = self.call(self.input(path))
        shutil.rmtree(state_dir)
        self.assertEqual(pieces, self.call(self.input(path)))

    def test_a_damaged_state_is_read_again_from_the_logs(self):
        os.environ["NO_COLOR"] = "1"
        want = self.call(self.input())
        state_dir = os.path.join(self.tmp, "cache", "catop", "statusline")
        name = [n for n in os.listdir(state_dir) if n.endswith(".json")][0]
        with open(os.path.join(state_dir, name)) as handle:
            good = json.load(handle)
        damages = [lambda d: d["effects"]["models"].clear(),
                   lambda d: d["pending"][0][2].__setitem__(0, "noon") if d["pending"] else
                   d["effects"]["tallies"].__setitem__(0, "x"),
                   lambda d: d["effects"]["tallies"].__setitem__(0, "x"),
                   lambda d: d.__setitem__("files", []),
                   lambda d: d["effects"].__setitem__("held", "!!")]
        for damage in damages:
            doc = json.loads(json.dumps(good))
            damage(doc)
            with open(os.path.join(state_dir, name), "w") as handle:
                json.dump(doc, handle)
            got = self.call(self.input())
            if got != want:
                with open(os.path.join(state_dir, "statusline.log")) as handle:
                    self.fail(handle.read())
            self.assertEqual(self.call(self.input()), want)     # and the state mended

    def test_the_command_runs_as_settings_json_runs_it(self):
        os.environ["NO_COLOR"] = "1"
        result = subprocess.run(catop.statusline_command(), shell=True,
                                input=json.dumps(self.input()).encode(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(os.environ, LC_ALL="C.UTF-8", PYTHONIOENCODING="utf-8"),
                                timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.decode().startswith("\u26a135% \u00b7 $3.09 saved"),
                        result.stdout)


PROMETHEUS_LINE = re.compile(
    r'^(# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+|'
    r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\\n])*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\\n])*")*\})? (-?[0-9.]+(e[-+]?[0-9]+)?|NaN))$')


class PrometheusTests(IsolatedEnv):

    def test_every_line_follows_the_grammar(self):
        code, out, _ = self.run_main("--file", example("hostile.jsonl"), "--file",
                                     example("litellm.jsonl"), "--offline", "--format",
                                     "prometheus", "--group-by", "model,project")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        for line in lines:
            self.assertRegex(line, PROMETHEUS_LINE)
        types = [l.split()[2:] for l in lines if l.startswith("# TYPE")]
        self.assertIn(["catop_requests_total", "counter"], types)
        self.assertIn(["catop_hit_rate", "gauge"], types)
        self.assertIn('catop_requests_total{model="gpt-4o-mini",project="ci-key"} 1', lines)
        self.assertIn('catop_tokens_total{model="gpt-4o-mini",project="ci-key",kind="cache_read"}'
                      ' 2048', lines)
        evil = [l for l in lines if l.startswith('catop_requests_total{model="evil')][0]
        self.assertEqual(evil, 'catop_requests_total{model="evil]0;pwned[2J",project=""} 1')

    def test_label_escaping(self):
        self.assertEqual(catop.prometheus_labels([("model", 'a"b\\c')]), '{model="a\\"b\\\\c"}')


class MetricsServerTests(IsolatedEnv):

    def test_serves_metrics_404_and_500(self):
        import urllib.error
        import urllib.request
        answers = ["catop_requests_total 3\n"]

        def render():
            if not answers:
                raise RuntimeError("broken")
            return answers[0]

        server = catop.serve_metrics(("127.0.0.1", 0), render)
        self.addCleanup(stop_server, server)
        base = "http://127.0.0.1:%d" % server.server_address[1]
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            self.assertEqual(response.read(), b"catop_requests_total 3\n")
            self.assertIn("text/plain", response.headers["Content-Type"])
        with self.assertRaises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/elsewhere", timeout=5)
        self.assertEqual(missing.exception.code, 404)
        answers.clear()
        with self.assertRaises(urllib.error.HTTPError) as broken:
            urllib.request.urlopen(base + "/metrics", timeout=5)
        self.assertEqual(broken.exception.code, 500)

    def test_listen_addresses(self):
        self.assertEqual(catop.parse_listen_address("9464"), ("127.0.0.1", 9464))
        self.assertEqual(catop.parse_listen_address(":9464"), ("127.0.0.1", 9464))
        self.assertEqual(catop.parse_listen_address("0.0.0.0:80"), ("0.0.0.0", 80))
        self.assertEqual(catop.parse_listen_address("[::1]:9464"), ("::1", 9464))
        with self.assertRaises(catop.UsageError):
            catop.parse_listen_address("host:http")

    def test_once_duration_says_a_named_agent_was_never_found_as_once_does(self):
        os.environ["CODEX_HOME"] = os.path.join(self.tmp, "no-codex")
        for extra in ((), ("--duration", "0.1", "--interval", "0.05")):
            code, out, err = self.run_main("--agent", "codex", "--once", "--offline", *extra)
            self.assertEqual((code, out), (catop.EXIT_ERROR, ""))
            self.assertIn("no codex logs found in %s" % os.environ["CODEX_HOME"], err)
        self.copy_agent_examples("codex", "CODEX_HOME")
        doc = self.run_json("--agent", "codex", "--once", "--duration", "0.1")
        self.assertEqual(doc["totals"]["requests"], self.run_json(
            "--agent", "codex", "--once")["totals"]["requests"])

    def test_once_duration_watches_a_growing_file(self):
        path = os.path.join(self.tmp, "grow.jsonl")
        line = json.dumps({"model": "gpt-4o", "usage": {"prompt_tokens": 100}}) + "\n"
        with open(path, "w") as handle:
            handle.write(line)
        import threading
        timer = threading.Timer(0.3, lambda: open(path, "a").write(line * 2))
        timer.start()
        self.addCleanup(timer.cancel)
        doc = self.run_json("--file", path, "--once", "--duration", "0.8", "--interval", "0.1")
        self.assertEqual(doc["totals"]["requests"], 3)
        self.assertEqual(doc["sources"][0]["records"], 3)


def serve_on_loopback(handler):
    """(server, base URL) of an HTTP server on a free loopback port, answering on a
    thread of its own; stop it with stop_server."""
    import http.server
    import threading
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, "http://127.0.0.1:%d" % server.server_address[1]


def stop_server(server):
    server.shutdown()
    server.server_close()  # and free the port


def quiet_handler():
    """A request handler base that writes no access log into the test output."""
    import http.server

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass
    return Quiet


class FakeProviders(object):
    """OpenAI- and Anthropic-compatible endpoints on 127.0.0.1 for the real LiteLLM SDK."""

    OPENAI = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1773129600,
              "model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": "hi"}}],
              "usage": {"prompt_tokens": 2000, "completion_tokens": 300, "total_tokens": 2300,
                        "prompt_tokens_details": {"cached_tokens": 1500},
                        "completion_tokens_details": {"reasoning_tokens": 120}},
              "prompt_cache_diagnostics": {"type": "cache_hit", "cache_missed_tokens": 0,
                                           "comparison_reusable_tokens": 1500}}
    ANTHROPIC = {"id": "msg_1", "type": "message", "role": "assistant",
                 "model": "claude-sonnet-4-5-20250929", "stop_reason": "end_turn",
                 "stop_sequence": None, "content": [{"type": "text", "text": "hi"}],
                 "usage": {"input_tokens": 50, "cache_read_input_tokens": 20000,
                           "cache_creation_input_tokens": 3000, "output_tokens": 400,
                           "cache_creation": {"ephemeral_5m_input_tokens": 1000,
                                              "ephemeral_1h_input_tokens": 2000}},
                 "diagnostics": {"cache_miss_reason": {"type": "tools_changed",
                                                       "cache_missed_input_tokens": 4200}}}

    def __init__(self):
        answers = self

        class Handler(quiet_handler()):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                anthropic = self.path.endswith("/v1/messages")
                body = json.dumps(answers.ANTHROPIC if anthropic else answers.OPENAI).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server, self.base = serve_on_loopback(Handler)


# ------------------------------------------------------------ LiteLLM as the oracle

# (model, provider, shapes, service tiers): every dimension the bundled map prices

ORACLE_MODELS = [  # (model, provider, shapes, tiers)
    ("gpt-5", "openai", "chat responses", (None, "flex", "priority", "batch")),
    ("gpt-5.4", "openai", "chat responses", (None, "flex", "priority", "batch")),
    ("gpt-5-mini", "openai", "chat", (None, "flex", "batch")),
    ("gpt-4o", "openai", "chat", (None, "priority", "batch")),
    ("gpt-5.6", "openai", "chat", (None, "priority")),
    ("claude-sonnet-4-5", "anthropic", "anthropic", (None, "batch")),
    ("claude-opus-4-6", "anthropic", "anthropic", (None, "batch")),
    ("claude-opus-4-8", "anthropic", "anthropic", (None, None, None, "batch")),
    ("claude-haiku-4-5", "anthropic", "anthropic", (None, "batch")),
    ("gemini-2.5-pro", "gemini", "gemini", (None, "flex", "priority", "batch")),
    ("gemini-2.5-flash", "gemini", "gemini", (None,)),
    ("xai/grok-4.20", "xai", "chat", (None,)),
    ("deepseek-chat", "deepseek", "deepseek", (None,)),
    ("dashscope/qwen-plus-2025-07-14", "dashscope", "chat", (None,)),
]
ORACLE_SIZES = [900, 40000, 127999, 128000, 128001, 199999, 200000, 200001, 250000, 272000, 272001,
         300000]


def oracle_cases(seed=7, count=360):
    """(record, model, provider, the LiteLLM usage it equals, service tier): usage
    records in five shapes across the models, tiers, sizes and writes of the map."""
    rng = random.Random(seed)
    cases = []
    for number in range(count):
        model, provider, shapes, tiers = ORACLE_MODELS[number % len(ORACLE_MODELS)]
        shape = rng.choice(shapes.split())
        tier = rng.choice(tiers)
        prompt = rng.choice(ORACLE_SIZES)
        read = rng.randint(0, prompt // 2) if rng.random() < 0.8 else 0
        out = rng.randint(1, 6000)
        rsn = rng.randint(0, out) if rng.random() < 0.6 else 0
        record, usage = {"model": model}, None
        if shape == "chat":
            write = rng.randint(0, (prompt - read) // 3) if model == "gpt-5.6" else 0
            details = {"cached_tokens": read}
            if write:
                details["cache_write_tokens"] = write
            record["usage"] = {"prompt_tokens": prompt, "completion_tokens": out,
                               "prompt_tokens_details": details,
                               "completion_tokens_details": {"reasoning_tokens": rsn},
                               "total_tokens": prompt + out}
            usage = dict(record["usage"])
        elif shape == "responses":
            record["usage"] = {"input_tokens": prompt, "output_tokens": out,
                               "input_tokens_details": {"cached_tokens": read},
                               "output_tokens_details": {"reasoning_tokens": rsn}}
            usage = {"prompt_tokens": prompt, "completion_tokens": out,
                     "prompt_tokens_details": {"cached_tokens": read},
                     "completion_tokens_details": {"reasoning_tokens": rsn}}
        elif shape == "anthropic":
            write = rng.randint(0, (prompt - read) // 2) if rng.random() < 0.7 else 0
            hour = rng.randint(0, write) if write and rng.random() < 0.5 else 0
            miss = prompt - read - write
            record["provider"] = "anthropic"
            record["usage"] = anthropic = {
                "input_tokens": miss, "cache_read_input_tokens": read,
                "cache_creation_input_tokens": write, "output_tokens": out,
                "cache_creation": {"ephemeral_5m_input_tokens": write - hour,
                                   "ephemeral_1h_input_tokens": hour}}
            usage = {"prompt_tokens": prompt, "completion_tokens": out,
                     "cache_read_input_tokens": read, "cache_creation_input_tokens": write,
                     "prompt_tokens_details": {
                         "cached_tokens": read, "cache_creation_tokens": write,
                         "cache_creation_token_details": {
                             "ephemeral_5m_input_tokens": write - hour,
                             "ephemeral_1h_input_tokens": hour}}}
            if model == "claude-opus-4-8" and tier is None:
                for key, values in (("speed", ("fast", "standard")),
                                    ("inference_geo", ("us", "global"))):
                    if rng.random() < 0.7:
                        anthropic[key] = usage[key] = rng.choice(values)
            if tier:
                anthropic["service_tier"] = tier
        elif shape == "gemini":
            record["usageMetadata"] = {"promptTokenCount": prompt,
                                       "cachedContentTokenCount": read,
                                       "candidatesTokenCount": out, "thoughtsTokenCount": rsn}
            usage = {"prompt_tokens": prompt, "completion_tokens": out + rsn,
                     "prompt_tokens_details": {"cached_tokens": read},
                     "completion_tokens_details": {"reasoning_tokens": rsn}}
        elif shape == "deepseek":
            record["usage"] = {"prompt_tokens": prompt, "completion_tokens": out,
                               "prompt_cache_hit_tokens": read,
                               "prompt_cache_miss_tokens": prompt - read}
            usage = {"prompt_tokens": prompt, "completion_tokens": out,
                     "prompt_tokens_details": {"cached_tokens": read}}
        if tier and shape != "anthropic":
            record["service_tier"] = tier
        residency = None
        if model in ("gpt-5.4", "gpt-5.6") and tier != "batch" and rng.random() < 0.5:
            residency = record["data_residency"] = rng.choice(["eu", "us"])
        cases.append((record, model, provider, usage, tier, residency))
    return cases


class CcusageCrossCheckTests(IsolatedEnv):
    """ccusage 20.0.24 (the tool catop's users compare it with) over every agent's
    fixture: equal input, cache read, cache write and output tokens, but where ccusage
    is wrong by the agent's own format, each case named with the tokens it gets wrong.
    Skipped where ccusage is not installed (.ci/run installs it from npm; set
    CATOP_CCUSAGE to its path, or put it on PATH)."""

    # ccusage's figures minus catop's: (input, cache read, cache write, output)
    WRONG = {
        # a response logged on two lines without requestId: ccusage keeps the partial
        # line too (formats.md section 3: the largest line of a response, once)
        "claude-code": (3, 15000, 0, 20),
        # the forked session's replay of its parent's last token_count, counted again
        "codex": (1000, 3000, 0, 300),
        # g1, copied from the legacy session-*.json into the resumed .jsonl, counted twice
        # (10,000 input, 180 output); and thoughts (700) left out of output
        "gemini": (10000, 0, 0, 180 - 700),
        # a thread with a usageLedger is read from the ledger only: the newer message
        # with usage and no ledger event is lost
        "amp": (-30, -10500, -520, -410),
        # the stale flat copy of a session beats its live copy on a tie of times, and
        # thinking (7,170) is left out of output
        "droid": (-2410, -531800, -21140, -12945),
        # OpenRouter-style prompt_tokens already include cached_tokens (counted twice:
        # +18,000 input); an empty cache figure of a step filled from the step before
        # it (+18,000 cache read)
        "codebuff": (18000, 18000, 0, 0),
        # the auxiliary calls of session_model_usage (titles, compression) and a named
        # profile's state.db are not read
        "hermes": (-45850, -12000, 0, -3012),
        # a fork's copied lines are dropped only where its parentSession path exists on
        # this disk (a moved or synced folder double-counts)
        "pi": (20, 9800, 11250, 730),
        # an imported session's copy of the counters counted again; Gemini thoughts
        # (3,200) left out of output
        "goose": (90500, 0, 0, 2300),
        # a fork's copies counted again (their ids are unique: Kilo keeps no id in the
        # JSON ccusage keys on); reasoning (700) left out of output
        "kilo": (1350, 8000, 8900, 20),
        # shutdowns taken as running totals and subtracted: a resumed run is lost
        "copilot": (-19000, -52000, 0, -2100),
        # thinking (680) left out of output (and, on the fixture as it is, a database
        # never initialized stops the whole report: it is run without it)
        "antigravity": (0, 0, 0, -680),
        # a /fork's copied records counted again, and a session-scope call dropped
        "kimi": (4287, 16258, 15500, 1438),
        # cachedContentTokenCount counted in input and cache read both, reasoning added
        # on top of output that holds it, /branch copies counted again
        "qwen": (92590, 14720, 0, -100),
    }
    NAMES = {"claude-code": "claude"}

    def setUp(self):
        super().setUp()
        self.ccusage = os.environ.get("CATOP_CCUSAGE") or shutil.which("ccusage")
        if not self.ccusage:
            self.skipTest("ccusage is not installed here (npm install ccusage@20.0.24)")

    def ccusage_totals(self, name, home):
        env = dict(os.environ, PI_AGENT_DIR=os.path.join(home, "pi", "sessions"))
        env.update(agent_variables(home))
        done = subprocess.run([self.ccusage, self.NAMES.get(name, name), "daily", "--json",
                               "--offline"], cwd=self.tmp, env=env, capture_output=True,
                              text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        t = json.loads(done.stdout)["totals"]
        return (t["inputTokens"], t["cacheReadTokens"], t["cacheCreationTokens"],
                t["outputTokens"])

    def test_every_agent_against_ccusage(self):
        home = os.path.join(self.tmp, "agents")
        shutil.copytree(AGENT_EXAMPLES, home)
        self.point_agents_at_examples(home)
        mine = {}
        for name in catop.AGENTS:
            t = self.run_json("--agent", name)["totals"]
            mine[name] = (t["miss_tokens"], t["cache_read_tokens"], t["cache_write_tokens"],
                          t["output_tokens"])
        empty = os.path.join(home, "antigravity", "conversations",
                             "e4d3c2b1-a0f9-4e8d-b7c6-5a4b3c2d1e0f.db")
        self.assertEqual(os.path.getsize(empty), 0)
        os.remove(empty)   # ccusage stops at it; catop counts it malformed, and goes on
        for name in catop.AGENTS:
            with self.subTest(agent=name):
                wrong = self.WRONG.get(name, (0, 0, 0, 0))
                self.assertEqual(self.ccusage_totals(name, home),
                                 tuple(a + b for a, b in zip(mine[name], wrong)))


class LiteLLMOracleTests(unittest.TestCase):
    """catop's cost of 360 generated usage records against LiteLLM's own calculator
    on the same map (formats.md section 4: the reference implementation), skipped
    where LiteLLM is not installed (.ci/run installs it into a virtual environment)."""

    def setUp(self):
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")   # no network
        try:
            import litellm
        except ImportError:
            self.skipTest("LiteLLM is not installed here (pip install litellm)")
        self.addCleanup(setattr, litellm, "model_cost", litellm.model_cost)
        with open(os.path.join(HERE, "prices.json")) as handle:
            litellm.model_cost = json.load(handle)

    @staticmethod
    def litellm_cost(model, provider, usage, tier, residency):
        import litellm
        from litellm.cost_calculator import batch_cost_calculator
        from litellm.types.utils import Usage
        usage = Usage(**json.loads(json.dumps(usage)))
        if tier == "batch":   # cost_per_token leaves batches to their own calculator
            return sum(batch_cost_calculator(usage, model, provider))
        return sum(litellm.cost_per_token(model=model, custom_llm_provider=provider,
                                          usage_object=usage, service_tier=tier,
                                          data_residency=residency))

    def test_every_dimension_and_shape_priced_as_litellm_prices_it(self):
        equal, explained = 0, collections.Counter()
        for record, model, provider, usage, tier, residency in oracle_cases():
            req = catop.normalize_record(record)
            rates = PRICES.rates(req.model, req.provider, req.tier)
            mine = catop.request_cost(req, rates)[0]
            theirs = self.litellm_cost(model, provider, usage, tier, residency)
            if abs(mine - theirs) <= 1e-9 * theirs:
                equal += 1
                continue
            # Where LiteLLM is wrong, its figure is catop's with its one wrong rate:
            p_read, p_w5, p_w1 = catop.tier_rates(rates, req.input)[1:4]
            if tier == "batch" and req.cache_write_1h:
                # 1. Anthropic batches are half price on every token kind, a 1 h write
                # included (2x input, halved); LiteLLM's batch calculator prices every
                # write at the 5-minute batch rate (litellm/cost_calculator.py,
                # batch_cost_calculator): the very 1 h-at-5 m error catop exists to avoid.
                theirs_ours = mine - req.cache_write_1h * (p_w1 - p_w5)
                reason = "1h writes in a batch"
            elif tier == "batch" and req.cache_read and "cache_read_input_token_cost_batches" \
                    not in PRICES.table[PRICES.resolve(req.model, req.provider)]:
                # 2. A batch of a model whose map entry has no batch cache-read rate: the
                # map's rule (formats.md section 4) is half the base rate, as for every
                # key without its _batches variant; LiteLLM bills the cached tokens of a
                # batch at the full standard cache-read rate (twice catop's).
                theirs_ours = mine + req.cache_read * p_read
                reason = "batch cache reads without a batch rate"
            else:
                self.fail("catop %.12f, LiteLLM %.12f: %r" % (mine, theirs, record))
            self.assertAlmostEqual(theirs_ours, theirs, delta=1e-9 * theirs, msg=record)
            explained[reason] += 1
        self.assertGreaterEqual(equal + sum(explained.values()), 360)
        self.assertGreaterEqual(equal, 320)
        self.assertEqual(sorted(explained), ["1h writes in a batch",
                                             "batch cache reads without a batch rate"])


class LiteLLMCallbackTests(IsolatedEnv):
    """The callback under the real LiteLLM SDK (skipped where LiteLLM is not installed;
    .ci/run installs it into a virtual environment and runs these there)."""

    def setUp(self):
        super().setUp()
        try:
            import litellm  # noqa: F401
        except ImportError:
            self.skipTest("LiteLLM is not installed here (pip install litellm)")
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        self.log = os.path.join(self.tmp, "state", "catop", "litellm.jsonl")
        self.providers = FakeProviders()
        self.addCleanup(stop_server, self.providers.server)

    def lines(self, count, timeout=15.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(self.log):
                with open(self.log) as handle:
                    found = [json.loads(line) for line in handle]
                if len(found) >= count:
                    return found
            time.sleep(0.1)
        self.fail("the callback wrote fewer than %d lines" % count)

    def test_sync_and_async_calls_logged_and_read_back(self):
        import asyncio
        import litellm
        litellm.callbacks = [catop.proxy_handler_instance]
        self.addCleanup(setattr, litellm, "callbacks", [])
        base = self.providers.base
        litellm.completion(model="openai/gpt-4o", api_base=base + "/v1", api_key="sk-test",
                           messages=[{"role": "user", "content": "secret prompt"}],
                           metadata={"session_id": "s-1"})
        first = self.lines(1)[0]
        litellm.completion(model="anthropic/claude-sonnet-4-5-20250929", api_base=base,
                           api_key="sk-test", messages=[{"role": "user", "content": "secret"}])
        second = self.lines(2)[1]

        async def call():
            await litellm.acompletion(model="openai/gpt-4o", api_base=base + "/v1",
                                      api_key="sk-test",
                                      messages=[{"role": "user", "content": "async"}])
            await asyncio.sleep(0.5)  # let LiteLLM's logging task run before the loop ends
        asyncio.run(call())
        third = self.lines(3)[2]
        self.assertEqual(first["usage"], {
            "input_tokens": 500, "cache_read_input_tokens": 1500,
            "cache_creation_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 120}})
        self.assertEqual((first["model"], first["provider"], first["session_id"]),
                         ("gpt-4o", "openai", "s-1"))
        self.assertEqual(second["usage"]["cache_creation"],
                         {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000})
        self.assertEqual((second["usage"]["input_tokens"],
                          second["usage"]["cache_read_input_tokens"]), (50, 20000))
        self.assertNotIn("session_id", second)  # LiteLLM's per-call trace id is not a session
        # the providers' cache-miss diagnoses, kept (and nothing else of the response)
        self.assertEqual(second["diagnostics"], {"cache_miss_reason": {
            "type": "tools_changed", "cache_missed_input_tokens": 4200}})
        self.assertEqual(first["prompt_cache_diagnostics"], {
            "type": "cache_hit", "cache_missed_tokens": 0, "comparison_reusable_tokens": 1500})
        self.assertEqual(third["usage"], first["usage"])
        with open(self.log) as handle:
            text = handle.read()
        for secret in ("secret", "sk-test", "api_key", "messages"):
            self.assertNotIn(secret, text)
        self.assertEqual(os.stat(self.log).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(os.path.dirname(self.log)).st_mode & 0o777, 0o700)
        doc = self.run_json("--litellm-proxy-log", "--group-by", "model")
        totals = doc["totals"]
        self.assertEqual((totals["requests"], totals["miss_tokens"], totals["cache_read_tokens"],
                          totals["cache_write_tokens"], totals["cache_write_1h_tokens"],
                          totals["output_tokens"], totals["reasoning_tokens"]),
                         (3, 1050, 23000, 3000, 2000, 1000, 240))
        # catop's estimate, and LiteLLM's own response_cost beside it, agree
        self.assertAlmostEqual(totals["cost_usd"], 2 * 0.006125 + 0.0279, places=9)
        self.assertAlmostEqual(totals["observed_cost_usd"], 2 * 0.006125 + 0.0279, places=9)


class LiteLLMProxyTests(IsolatedEnv):
    """The real LiteLLM proxy with catop's callback in its config.yaml, in front of the
    fake providers (skipped where litellm[proxy] is not installed)."""

    def test_proxy_calls_are_logged_and_read_back(self):
        proxy = os.path.join(os.path.dirname(sys.executable), "litellm")
        try:
            import litellm.proxy.proxy_server  # noqa: F401
        except ImportError:
            self.skipTest("litellm[proxy] is not installed here")
        if not os.path.exists(proxy):
            self.skipTest("no litellm command beside this Python")
        import socket
        import urllib.request
        providers = FakeProviders()
        self.addCleanup(stop_server, providers.server)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        config = os.path.join(self.tmp, "config.yaml")
        with open(config, "w") as handle:
            handle.write("model_list:\n"
                         "  - model_name: gpt-4o\n    litellm_params:\n"
                         "      model: openai/gpt-4o\n      api_base: %s/v1\n"
                         "      api_key: sk-fake\n"
                         "  - model_name: claude\n    litellm_params:\n"
                         "      model: anthropic/claude-sonnet-4-5-20250929\n"
                         "      api_base: %s\n      api_key: sk-fake\n"
                         "litellm_settings:\n  callbacks: catop.proxy_handler_instance\n"
                         % (providers.base, providers.base))
        log = os.path.join(self.tmp, "proxy.jsonl")
        env = dict(os.environ, LITELLM_MASTER_KEY="sk-master", LITELLM_LOCAL_MODEL_COST_MAP="True",
                   PYTHONPATH=HERE, CATOP_LITELLM_LOG=log)
        server = subprocess.Popen([proxy, "--config", config, "--host", "127.0.0.1", "--port",
                                   str(port)], env=env, cwd=self.tmp,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(server.wait, 30)
        self.addCleanup(server.terminate)
        base = "http://127.0.0.1:%d" % port
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(base + "/health/liveliness", timeout=2):
                    break
            except OSError:
                self.assertLess(time.time(), deadline, "the proxy did not start")
                self.assertIsNone(server.poll(), "the proxy exited")
                time.sleep(0.5)

        def call(model, **extra):
            body = json.dumps(dict({"model": model, "messages": [
                {"role": "user", "content": "private words"}]}, **extra)).encode()
            request = urllib.request.Request(base + "/v1/chat/completions", data=body, headers={
                "Authorization": "Bearer sk-master", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        call("gpt-4o", metadata={"session_id": "s-proxy"})
        call("claude")
        deadline = time.time() + 20
        while not (os.path.exists(log) and len(open(log).readlines()) >= 2):
            self.assertLess(time.time(), deadline, "the callback wrote nothing")
            time.sleep(0.2)
        with open(log) as handle:
            records = [json.loads(line) for line in handle]
        self.assertEqual([(r["model_group"], r.get("session_id")) for r in records],
                         [("gpt-4o", "s-proxy"), ("claude", None)])
        self.assertEqual(records[1]["usage"]["cache_creation"],
                         {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000})
        with open(log) as handle:
            text = handle.read()
        self.assertNotIn("private words", text)
        self.assertNotIn("sk-master", text)
        doc = self.run_json("--litellm-proxy-log", log)
        self.assertEqual((doc["totals"]["requests"], doc["totals"]["cache_read_tokens"],
                          doc["totals"]["cache_write_1h_tokens"]), (2, 21500, 2000))
        self.assertAlmostEqual(doc["totals"]["cost_usd"], 0.006125 + 0.0279, places=9)


class LogAppenderTests(IsolatedEnv):

    def test_eight_processes_append_intact_lines(self):
        path = os.path.join(self.tmp, "shared.jsonl")
        script = ("import sys; sys.path.insert(0, %r); import catop; a = catop._LogAppender()\n"
                  "for i in range(300): a.append({'worker': int(sys.argv[1]), 'i': i, "
                  "'pad': 'x' * 3000})") % HERE
        env = dict(os.environ, CATOP_LITELLM_LOG=path)
        workers = [subprocess.Popen([sys.executable, "-c", script, str(n)], env=env)
                   for n in range(8)]
        for worker in workers:
            self.assertEqual(worker.wait(timeout=60), 0)
        with open(path) as handle:
            records = [json.loads(line) for line in handle]
        self.assertEqual(len(records), 2400)
        self.assertEqual(sorted((r["worker"], r["i"]) for r in records),
                         [(w, i) for w in range(8) for i in range(300)])

    def test_a_failure_warns_once_and_never_raises(self):
        blocker = os.path.join(self.tmp, "file")
        open(blocker, "w").close()
        os.environ["CATOP_LITELLM_LOG"] = os.path.join(blocker, "cannot", "be.jsonl")
        appender = catop._LogAppender()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            appender.append({"a": 1})
            appender.append({"a": 2})
        self.assertEqual(err.getvalue().count("cannot write the LiteLLM log"), 1)

    def test_a_short_write_is_cut_back_and_warned_at_once(self):
        path = os.path.join(self.tmp, "log.jsonl")
        os.environ["CATOP_LITELLM_LOG"] = path
        appender = catop._LogAppender()
        appender.append({"n": 1})
        real_write = os.write
        err = io.StringIO()
        with mock.patch.object(catop.os, "write", lambda fd, data: real_write(fd, data[:7])), \
                contextlib.redirect_stderr(err):
            appender.append({"n": 2, "pad": "x" * 100})     # the disk fills after 7 bytes
        appender.append({"n": 3})
        with open(path) as handle:
            self.assertEqual([json.loads(line)["n"] for line in handle], [1, 3])
        self.assertIn("a short write", err.getvalue())

    def test_a_link_at_the_log_path_is_never_followed(self):
        victim = os.path.join(self.tmp, "victim.txt")
        with open(victim, "w") as handle:
            handle.write("keep me\n")
        link = os.path.join(self.tmp, "log.jsonl")
        os.symlink(victim, link)
        os.environ["CATOP_LITELLM_LOG"] = link
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            catop._LogAppender().append({"n": 1})
        with open(victim) as handle:
            self.assertEqual(handle.read(), "keep me\n")
        self.assertIn("cannot write the LiteLLM log", err.getvalue())

    def test_import_without_litellm_and_record_fields(self):
        record = catop.litellm_log_record(
            {"standard_logging_object": {
                "id": "call-1", "trace_id": "t", "model": "gpt-4o", "model_group": "gpt",
                "custom_llm_provider": "openai", "response_cost": 0.01, "startTime": NOW,
                "metadata": {"user_api_key_team_alias": "team", "user_api_key_alias": "key",
                             "user_api_key_hash": "SECRET", "headers": {"x": "SECRET"}}},
             "litellm_params": {"metadata": {"session_id": "s"}},
             "messages": [{"content": "SECRET"}], "api_key": "SECRET"},
            {"usage": {"prompt_tokens": 100, "completion_tokens": 5,
                       "prompt_tokens_details": {"cached_tokens": 60}}})
        self.assertNotIn("SECRET", json.dumps(record))
        self.assertEqual((record["project"], record["key_alias"], record["session_id"],
                          record["call_id"], record["model_group"]),
                         ("team", "key", "s", "call-1", "gpt"))
        self.assertEqual(record["usage"]["input_tokens"], 40)


def otlp_attributes(**values):
    kinds = {str: "stringValue", int: "intValue", float: "doubleValue"}
    return [{"key": key.replace("__", "."), "value": {kinds[type(v)]: str(v) if type(v) is int
                                                      else v}}
            for key, v in values.items()]


def claude_event(session, sequence, **tokens):
    return {"timeUnixNano": str(int(NOW * 1e9)), "body": {"stringValue": "claude_code.api_request"},
            "attributes": otlp_attributes(event__name="api_request", session__id=session,
                                          model="claude-sonnet-4-5",
                                          event__sequence=sequence, **tokens)}


def otlp_logs(*records):
    return {"resourceLogs": [{"resource": {"attributes": otlp_attributes(service__name="x")},
                              "scopeLogs": [{"logRecords": list(records)}]}]}


class OtlpTests(IsolatedEnv):

    def setUp(self):
        super().setUp()
        self.source = catop.LiveOtlpSource(("127.0.0.1", 0))
        self.addCleanup(self.source.close)
        self.url = "http://127.0.0.1:%d" % self.source.server.server_address[1]

    def post(self, path, payload, content_type="application/json", raw=None):
        import urllib.error
        import urllib.request
        data = raw if raw is not None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def test_events_metrics_and_retries(self):
        # Claude Code sends its counts as strings; input excludes the cache
        event = claude_event("s-events", 7, input_tokens="50", output_tokens="400",
                             cache_read_tokens="20000", cache_creation_tokens="3000",
                             cost_usd="0.0279")
        self.assertEqual(self.post("/v1/logs", otlp_logs(event)), 200)
        self.assertEqual(self.post("/v1/logs", otlp_logs(event)), 200)  # a retry
        codex = {"timeUnixNano": str(int(NOW * 1e9)),
                 "attributes": otlp_attributes(event__name="codex.sse_event",
                                               event__kind="response.completed",
                                               conversation__id="c-1", model="gpt-5",
                                               input_token_count=9050, cached_token_count=8320,
                                               output_token_count=210,
                                               reasoning_token_count=64)}
        self.assertEqual(self.post("/v1/logs", otlp_logs(codex)), 200)
        metrics = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{
            "name": "claude_code.token.usage", "sum": {"dataPoints": [
                {"asInt": "700", "timeUnixNano": str(int(NOW * 1e9)),
                 "attributes": otlp_attributes(type="input", session__id=session,
                                               model="claude-sonnet-4-5")}
                for session in ("s-events", "s-metrics")] + [
                {"asDouble": 5000.0, "timeUnixNano": str(int(NOW * 1e9)),
                 "attributes": otlp_attributes(type="cacheRead", session__id="s-metrics",
                                               model="claude-sonnet-4-5")}]}}]}]}]}
        self.assertEqual(self.post("/v1/metrics", metrics), 200)
        self.assertTrue(self.source.poll())
        got = sorted((r.session, usage_tuple(r), r.observed_cost) for r in self.source.requests)
        self.assertEqual(got, [("c-1", (730, 8320, 0, 0, 210, 64), None),
                               ("s-events", (50, 20000, 3000, 0, 400, 0), 0.0279),
                               ("s-metrics", (700, 5000, 0, 0, 0, 0), None)])
        self.assertEqual(self.source.stats.skipped["duplicate"], 1)
        self.assertFalse(self.source.poll())

    def test_bad_requests_are_refused_and_the_server_keeps_running(self):
        self.assertEqual(self.post("/v1/logs", None, raw=b"{not json"), 400)
        self.assertEqual(self.post("/v1/logs", None, raw=b"\x0a\x01", content_type=
                                   "application/x-protobuf"), 415)
        self.assertEqual(self.post("/v1/traces", {}), 404)
        import http.client
        connection = http.client.HTTPConnection("127.0.0.1", self.source.server.server_address[1],
                                                timeout=5)
        connection.putrequest("POST", "/v1/logs")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(20 * 1024 * 1024))
        connection.endheaders()
        self.assertEqual(connection.getresponse().status, 413)
        connection.close()
        event = claude_event("s", 1, input_tokens=1, output_tokens=1)
        self.assertEqual(self.post("/v1/logs", otlp_logs(event)), 200)
        self.assertTrue(self.source.poll())
        self.assertEqual(len(self.source.requests), 1)
        self.assertEqual(self.source.stats.skipped["malformed"], 1)

    def raw_exchange(self, data, wait=5.0):
        """Bytes sent on one connection, and the reply's status line (b"" if none)."""
        import socket
        connection = socket.create_connection(self.source.server.server_address, timeout=wait)
        try:
            connection.sendall(data)
            reply = b""
            while b"\r\n" not in reply:
                piece = connection.recv(4096)
                if not piece:
                    break
                reply += piece
            return reply.split(b"\r\n")[0]
        finally:
            connection.close()

    def test_hostile_bodies_each_get_a_reply_and_nothing_reaches_the_terminal(self):
        big = "9" * 400
        cases = [({"resourceLogs": 5}, 400), ({"resourceLogs": [{"scopeLogs": 5}]}, 400),
                 ({"resourceLogs": [{"scopeLogs": [5]}]}, 400),
                 ({"resourceMetrics": 5}, 400, "/v1/metrics"),
                 (otlp_logs(claude_event("s", 1, input_tokens=1, output_tokens=1,
                                         cost_usd=big)), 200),
                 (otlp_logs(dict(claude_event("s", 2, input_tokens=2, output_tokens=1),
                                 timeUnixNano=big)), 200)]
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            for payload, status, *path in cases:
                with self.subTest(payload=str(payload)[:60]):
                    self.assertEqual(self.post((path or ["/v1/logs"])[0], payload), status)
            chunked = (b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                       b"Content-Type: application/json\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
            self.assertIn(b" 411 ", self.raw_exchange(chunked))
            self.assertIn(b" 400 ", self.raw_exchange(
                b"POST /v1/logs HTTP/1.1\r\nContent-Length: 12x\r\n\r\n"))
            import socket
            gone = socket.create_connection(self.source.server.server_address)
            gone.sendall(b"POST /v1/logs HTTP/1.1\r\nContent-Length: 9\r\n\r\n{}")
            gone.close()                   # away before the body is whole
            time.sleep(0.2)
        self.assertEqual(stderr.getvalue(), "")
        self.assertTrue(self.source.poll())
        self.assertEqual(sorted(r.miss for r in self.source.requests), [1, 2])
        self.assertEqual([r.observed_cost for r in self.source.requests], [None, None])

    def test_connections_are_capped_and_idle_ones_time_out(self):
        import socket
        import threading
        before = threading.active_count()
        with mock.patch.object(catop, "HTTP_CONNECTION_TIMEOUT_S", 0.5), \
                mock.patch.object(catop, "HTTP_MAX_CONNECTIONS", 4):
            source = catop.LiveOtlpSource(("127.0.0.1", 0))
            self.addCleanup(source.close)
            address = source.server.server_address
            idle = [socket.create_connection(address) for _ in range(6)]   # half-open
            time.sleep(0.2)
            self.assertLessEqual(threading.active_count() - before, 1 + 4)
            for connection in idle[4:]:    # beyond the cap: answered at once, and closed
                connection.settimeout(2)
                self.assertIn(b" 503 ", connection.recv(200))
            time.sleep(0.8)                # the other four time out
            self.assertLessEqual(threading.active_count() - before, 1)
            for connection in idle:
                connection.close()
            self.assertEqual(self.post_to(address, otlp_logs(claude_event(
                "s", 3, input_tokens=3, output_tokens=1))), 200)

    def post_to(self, address, payload):
        self.url = "http://%s:%d" % address
        return self.post("/v1/logs", payload)

    def test_bodies_in_memory_at_once_are_capped(self):
        with mock.patch.object(catop, "OTLP_BODY_BYTES_IN_FLIGHT", 100):
            self.assertTrue(self.source.take_body_bytes(60))
            self.assertEqual(self.post("/v1/logs", {"resourceLogs": []}), 200)   # 22 bytes
            self.assertEqual(self.post("/v1/logs", None, raw=b" " * 50), 503)
            self.source.take_body_bytes(-60)
            self.assertEqual(self.post("/v1/logs", None, raw=b" " * 50 + b"{}"), 200)
        self.assertEqual(self.source.body_bytes, 0)

    def test_once_duration_listens_then_prints(self):
        import socket
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "catop.py"), "--otlp-listen",
             "127.0.0.1:%d" % port, "--once", "--duration", "2", "--format", "json",
             "--offline", "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(os.environ))
        self.url = "http://127.0.0.1:%d" % port
        deadline = time.time() + 10
        status = None
        while status != 200 and time.time() < deadline:
            try:
                status = self.post("/v1/logs", otlp_logs(claude_event(
                    "s-cli", 1, input_tokens=10, output_tokens=5, cache_read_tokens=990)))
            except OSError:
                time.sleep(0.1)
        out, err = process.communicate(timeout=20)
        self.assertEqual(process.returncode, 0, err)
        doc = json.loads(out)
        self.assertEqual((doc["totals"]["requests"], doc["totals"]["cache_read_tokens"]),
                         (1, 990))
        self.assertEqual(doc["sources"][0]["name"], "otlp:127.0.0.1:%d" % port)


class SpendServer(object):
    """A LiteLLM proxy's /spend/logs/v2 on 127.0.0.1, pages and failures set by the test."""

    def __init__(self):
        import urllib.parse
        owner = self
        self.pages = {}
        self.failure = None
        self.hits = 0
        self.keys = []

        class Handler(quiet_handler()):
            def do_GET(self):
                owner.hits += 1
                owner.keys.append(self.headers.get("Authorization"))
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                status, body = owner.failure or (200, json.dumps(
                    owner.pages.get(int(query["page"][0]), {"data": []})).encode())
                if status == "slow":
                    time.sleep(1.0)
                    status = 200
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (the timeout test)

        self.server, self.url = serve_on_loopback(Handler)


class SpendLogTests(IsolatedEnv):

    def setUp(self):
        super().setUp()
        self.proxy = SpendServer()
        self.addCleanup(stop_server, self.proxy.server)
        os.environ["LITELLM_API_KEY"] = "sk-team"
        claude = {"request_id": "r1", "model": "claude-sonnet-4-5", "spend": 0.0279,
                  "startTime": "2026-03-10T08:00:00Z", "user": "alice", "team_id": "t1",
                  "session_id": "s1", "cache_hit": "True", "api_key": "88dc28d0f030c55ed4ab77ed8",
                  "metadata": json.dumps({"user_api_key_team_alias": "search", "usage_object": {
                      "prompt_tokens": 23050, "completion_tokens": 400,
                      "cache_read_input_tokens": 20000, "cache_creation_input_tokens": 3000,
                      "prompt_tokens_details": {
                          "cached_tokens": 20000, "cache_write_tokens": 3000,
                          "cache_creation_token_details": {"ephemeral_5m_input_tokens": 1000,
                                                           "ephemeral_1h_input_tokens": 2000}}}})}
        gpt = {"request_id": "r2", "model": "gpt-4o", "spend": 0.006125, "user": "bob",
               "startTime": "2026-03-10T08:01:00Z", "metadata": {"usage_object": {
                   "prompt_tokens": 2000, "completion_tokens": 300,
                   "prompt_tokens_details": {"cached_tokens": 1500}}}}
        bare = {"request_id": "r3", "model": "gpt-4o", "spend": 0.00035, "prompt_tokens": 100,
                "completion_tokens": 10, "startTime": "2026-03-10T08:02:00Z", "metadata": "{}"}
        self.proxy.pages = {1: {"data": [claude, gpt], "total": 3, "page": 1, "page_size": 2,
                                "total_pages": 2},
                            2: {"data": [bare, gpt], "total": 3, "page": 2, "page_size": 2,
                                "total_pages": 2}}

    def test_pages_read_with_cache_tokens_from_the_usage_object(self):
        doc = self.run_json("--litellm-url", self.proxy.url, "--group-by", "agent")
        t = doc["totals"]
        self.assertEqual((t["requests"], t["miss_tokens"], t["cache_read_tokens"],
                          t["cache_write_tokens"], t["cache_write_1h_tokens"],
                          t["output_tokens"]), (3, 650, 21500, 3000, 2000, 710))
        # 0.0279 + 0.006125 + 100 x 2.5e-6 + 10 x 1e-5
        self.assertAlmostEqual(t["cost_usd"], 0.034375, places=9)
        self.assertAlmostEqual(t["observed_cost_usd"], 0.034375, places=9)
        self.assertEqual(doc["sources"][0]["skipped"]["duplicate"], 1)
        self.assertEqual({g["key"]["agent"] for g in doc["groups"]}, {"alice", "bob", "litellm"})
        self.assertEqual(self.proxy.keys, ["Bearer sk-team"] * 2)

    def test_failures_give_one_clear_line(self):
        cases = [((401, b"{}"), "refused the key (HTTP 401)"),
                 ((503, b"busy"), "answered HTTP 503"),
                 ((200, b"<html>"), "not JSON"),
                 ((200, b'{"total": 3}'), "without its data list"),
                 ((200, b'{"data": [{"request_id": "r1", "metad'), "not JSON")]
        for failure, message in cases:
            with self.subTest(failure=failure):
                self.proxy.failure = failure
                code, out, err = self.run_main("--litellm-url", self.proxy.url, "--offline")
                self.assertEqual(code, 1)
                self.assertIn(message, err)
                self.assertEqual(err.count("\n"), 1)
                self.assertNotIn("Traceback", err)
        self.proxy.failure = ("slow", b'{"data": []}')
        with mock.patch.object(catop, "LITELLM_TIMEOUT_S", 0.3):
            code, _, err = self.run_main("--litellm-url", self.proxy.url, "--offline")
        self.assertEqual(code, 1)
        self.assertIn("cannot read spend logs", err)

    def test_live_polling_backs_off_and_asks_only_for_newer_rows(self):
        clock = [1000.0]
        source = catop.LiteLLMSpendSource(self.proxy.url, clock=lambda: clock[0])
        self.proxy.failure = (500, b"down")
        self.assertTrue(source.poll())
        self.assertIn("retrying in 2s", source.stats.error)
        hits = self.proxy.hits
        self.assertFalse(source.poll())          # too early: no request sent
        self.assertEqual(self.proxy.hits, hits)
        clock[0] += 2
        self.proxy.failure = None
        self.assertTrue(source.poll())
        self.assertIsNone(source.stats.error)
        self.assertEqual(len(source.requests), 3)
        self.assertEqual(source.newest, catop.parse_timestamp("2026-03-10T08:02:00Z"))
        self.assertFalse(source.poll())          # nothing new: the same rows come back


class HostileSpendServerTests(IsolatedEnv):
    """--litellm-url against servers that redirect, loop, trickle or never end."""

    ROW = {"model": "gpt-4o", "startTime": "2026-03-10T08:00:00Z", "spend": 0.00035,
           "prompt_tokens": 100, "completion_tokens": 10, "metadata": "{}"}

    def serve(self, answer):
        """A loopback server whose every GET is answer(handler) -> None; the headers of
        each request are kept in the list returned beside its URL."""
        seen = []

        class Handler(quiet_handler()):
            def do_GET(self):
                seen.append(dict(self.headers))
                try:
                    answer(self)
                except OSError:
                    pass  # catop gave up on us: what the test wants
        server, url = serve_on_loopback(Handler)
        self.addCleanup(stop_server, server)
        return url, seen

    @staticmethod
    def send(handler, status, body, headers=()):
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def page(self, rows):
        return json.dumps({"data": rows, "total_pages": 1}).encode()

    def test_the_key_never_follows_a_redirect_to_another_host(self):
        os.environ["LITELLM_API_KEY"] = "sk-secret-team-key"
        other, other_seen = self.serve(lambda h: self.send(h, 200, self.page([self.ROW])))
        other = other.replace("127.0.0.1", "localhost")   # another origin, same machine
        first, first_seen = self.serve(
            lambda h: self.send(h, 302, b"", [("Location", other + h.path)]))
        code, out, err = self.run_main("--litellm-url", first, "--offline", "--no-history")
        self.assertEqual(code, 1)
        self.assertEqual(other_seen, [])                  # not even asked, let alone with the key
        self.assertEqual(first_seen[0].get("Authorization"), "Bearer sk-secret-team-key")
        self.assertIn("redirected to another host", err)
        self.assertNotIn("sk-secret", out + err)
        self.assertEqual(err.count("\n"), 1)

    def test_a_redirect_within_the_origin_keeps_the_key(self):
        os.environ["LITELLM_API_KEY"] = "sk-team"

        def answer(handler):
            if handler.path.startswith("/old/"):
                self.send(handler, 307, b"", [("Location", handler.path[4:])])
            else:
                self.send(handler, 200, self.page([self.ROW]))
        url, seen = self.serve(answer)
        doc = self.run_json("--litellm-url", url + "/old")
        self.assertEqual(doc["totals"]["requests"], 1)
        self.assertEqual([h.get("Authorization") for h in seen], ["Bearer sk-team"] * 2)

    def test_userinfo_is_sent_as_basic_auth_and_never_printed(self):
        url, seen = self.serve(lambda h: self.send(h, 401, b"{}"))
        url = url.replace("http://", "http://admin:hunter2@")
        code, out, err = self.run_main("--litellm-url", url, "--offline", "--no-history")
        self.assertEqual(code, 1)
        self.assertIn("refused the key (HTTP 401)", err)
        self.assertNotIn("hunter2", out + err)
        self.assertNotIn("admin", out + err)
        self.assertEqual(seen[0].get("Authorization"), "Basic YWRtaW46aHVudGVyMg==")
        source = catop.LiteLLMSpendSource(url)
        self.assertNotIn("hunter2", source.stats.name)
        self.assertNotIn("hunter2", catop.split_url_credentials(url + "/?key=x")[2])
        self.assertNotIn("key=x", catop.split_url_credentials(url + "/?key=x")[2])

    def test_a_server_that_repeats_its_page_ends_the_walk(self):
        rows = [dict(self.ROW, request_id="r%d" % i) for i in range(2)]
        url, seen = self.serve(lambda h: self.send(h, 200, json.dumps({"data": rows}).encode()))
        with mock.patch.object(catop, "LITELLM_PAGE_SIZE", 2):
            doc = self.run_json("--litellm-url", url)
        self.assertEqual(len(seen), 2)                    # page 2 was page 1 again: stop
        self.assertEqual(doc["totals"]["requests"], 2)

    def test_a_server_that_never_says_last_page_is_capped(self):
        counter = iter(range(10 ** 6))

        def answer(handler):
            rows = [dict(self.ROW, request_id="r%d" % next(counter)) for _ in range(2)]
            self.send(handler, 200, json.dumps({"data": rows}).encode())
        url, seen = self.serve(answer)
        with mock.patch.object(catop, "LITELLM_PAGE_SIZE", 2), \
                mock.patch.object(catop, "LITELLM_MAX_PAGES", 5):
            code, out, err = self.run_main("--litellm-url", url, "--offline", "--no-history")
        self.assertEqual(code, 1)
        self.assertEqual(len(seen), 5)
        self.assertIn("more than 5 pages", err)

    def test_a_trickling_body_meets_one_deadline(self):
        def answer(handler):
            handler.send_response(200)
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            for _ in range(100):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.1)                           # each read well inside its timeout
        url, _ = self.serve(answer)
        started = time.monotonic()
        with mock.patch.object(catop, "LITELLM_DEADLINE_S", 0.6):
            code, _, err = self.run_main("--litellm-url", url, "--offline", "--no-history")
        self.assertLess(time.monotonic() - started, 3.0)
        self.assertEqual(code, 1)
        self.assertIn("took longer than", err)

    def test_an_endless_body_is_cut_at_the_page_cap(self):
        def answer(handler):
            handler.send_response(200)
            handler.end_headers()                         # no length: the body never ends
            while True:
                handler.wfile.write(b"[" * 65536)
        url, _ = self.serve(answer)
        with mock.patch.object(catop, "LITELLM_MAX_PAGE_BYTES", 1 << 20):
            code, _, err = self.run_main("--litellm-url", url, "--offline", "--no-history")
        self.assertEqual(code, 1)
        self.assertIn("a page of more than 1 MB", err)

    def test_rows_without_a_request_id_are_all_counted_once(self):
        rows = [dict(self.ROW, prompt_tokens=100 + i) for i in range(3)]
        url, _ = self.serve(lambda h: self.send(h, 200, self.page(rows + rows[:1])))
        doc = self.run_json("--litellm-url", url)
        self.assertEqual(doc["totals"]["requests"], 3)
        self.assertEqual(doc["totals"]["input_tokens"], 303)
        self.assertEqual(doc["sources"][0]["skipped"]["duplicate"], 1)

    def test_a_hanging_server_holds_up_neither_the_live_poll_nor_duration(self):
        release = __import__("threading").Event()
        self.addCleanup(release.set)

        def answer(handler):
            release.wait(10)
            self.send(handler, 200, self.page([self.ROW]))
        url, _ = self.serve(answer)
        source = catop.LiteLLMSpendSource(url, background=True)
        started = time.monotonic()
        self.assertFalse(source.poll())                   # the walk started, on its thread
        self.assertFalse(source.poll())
        self.assertLess(time.monotonic() - started, 0.5)
        release.set()
        for _ in range(100):
            if source.poll():
                break
            time.sleep(0.02)
        self.assertEqual(len(source.requests), 1)
        release.clear()
        started = time.monotonic()
        code, out, err = self.run_main("--litellm-url", url, "--once", "--duration", "0.3",
                                       "--offline", "--no-history", "--format", "json")
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(code, 0, err)


def strict_json(text):
    """json.loads that refuses NaN and infinities (they are not JSON)."""
    def refuse(constant):
        raise ValueError("not JSON: " + constant)
    return json.loads(text, parse_constant=refuse)


class HostileNumberTests(IsolatedEnv):
    """A number from data out of every range is a field refused and counted: never an
    exception, never NaN or Infinity in the JSON, the good records' totals untouched."""

    BIG = int("9" * 400)

    def good_line(self, session="s1"):
        return json.dumps({"timestamp": "2026-03-10T08:00:00Z", "model": "gpt-4o",
                           "session_id": session, "usage": {"prompt_tokens": 100,
                                                            "completion_tokens": 10}}) + "\n"

    def test_timestamps_and_costs_of_a_request_log(self):
        path = os.path.join(self.tmp, "t.jsonl")
        hostile = [{"timestamp": 1e26}, {"timestamp": self.BIG}, {"timestamp": -self.BIG},
                   {"timestamp": "9999-12-31T23:59:59-14:00"},
                   {"timestamp": "0001-01-01T00:00:00+14:00"}, {"timestamp": "1" * 300},
                   {"cost": self.BIG, "timestamp": NOW}, {"cost": "1e999", "timestamp": NOW}]
        with open(path, "w") as handle:
            handle.write(self.good_line())
            for extra in hostile:
                handle.write(json.dumps(dict({"model": "gpt-4o", "session_id": "s1",
                                              "usage": {"prompt_tokens": 7}}, **extra)) + "\n")
        for argv in (("--group-by", "day"), ("--group-by", "week"), ("--group-by", "month"),
                     ("--group-by", "session"), ("--session", "s1"), ("--group-by", "model")):
            with self.subTest(argv=argv):
                code, out, err = self.run_main("--file", path, "--offline", "--no-history",
                                               "--format", "json", *argv)
                self.assertEqual(code, 0, err)
                doc = strict_json(out)
                self.assertEqual(doc["totals"]["requests"], 9)
                self.assertEqual(doc["totals"]["input_tokens"], 100 + 8 * 7)
                # 100 x 2.5e-6 + 10 x 1e-5 + 8 x 7 x 2.5e-6, no cost refused into it
                self.assertAlmostEqual(doc["totals"]["cost_usd"], 0.00049, places=12)
                self.assertEqual(doc["refused_values"], {"cost": 2, "timestamp": 6})
                code, out, err = self.run_main("--file", path, "--offline", "--no-history",
                                               *argv)
                self.assertEqual(code, 0, err)
                self.assertIn("refused: 2 costs, 6 timestamps", out)
        code, out, err = self.run_main("--file", path, "--offline")   # stored, then exported
        self.assertEqual(code, 0, err)
        code, out, err = self.run_main("--export-history", "csv")
        self.assertEqual((code, len(out.splitlines())), (0, 10), err)

    def test_a_history_an_older_catop_poisoned_reads_cleanly(self):
        store = os.path.join(self.tmp, "state", "catop", "history.sqlite3")
        history = catop.History(store)
        for n, ts in enumerate((1e17, NOW)):
            req = catop.Request(ts, "a", "openai", "gpt-4o", "", "s", 10 + n, 0, 0, 0, 1)
            history.save([catop.history_row("file:x", "f:x:1:0:%d" % n, req)])
        history.close()
        code, out, err = self.run_main("--export-history", "csv")
        self.assertEqual((code, len(out.splitlines())), (0, 3), err)
        self.assertEqual(sorted(line.split(",")[0] for line in out.splitlines()[1:]),
                         ["", catop.iso_utc(NOW)])
        code, out, err = self.run_main("--format", "json", "--offline", "--group-by", "day")
        self.assertEqual(code, 0, err)
        self.assertEqual([g["key"]["day"] for g in strict_json(out)["groups"]],
                         ["(no time)", catop.local_day(NOW)])

    def test_agent_logs_prices_and_spend_rows(self):
        big = self.BIG
        claude = os.path.join(self.tmp, "claude", "projects", "p")
        os.makedirs(claude)
        with open(os.path.join(claude, "s.jsonl"), "w") as handle:
            handle.write(json.dumps({"type": "system", "subtype": "compact_boundary",
                                     "sessionId": "s", "timestamp": big}) + "\n")
            handle.write(json.dumps({"type": "assistant", "sessionId": "s", "costUSD": big,
                                     "timestamp": "2026-03-01T00:00:00Z", "message": {
                                         "id": "m1", "model": "claude-sonnet-4-5",
                                         "usage": {"input_tokens": 10,
                                                   "output_tokens": 5}}}) + "\n")
        gemini = os.path.join(self.tmp, "gemini", "x", "chats")
        os.makedirs(gemini)
        with open(os.path.join(gemini, "session-1.json"), "w") as handle:
            json.dump({"sessionId": "g", "messages": [{"id": "g0", "type": "gemini",
                                                       "timestamp": big, "model": "gemini-2.5-flash",
                                                       "tokens": {"input": 10, "output": 5}}]},
                      handle)
        opencode = os.path.join(self.tmp, "opencode", "storage", "message", "s")
        os.makedirs(opencode)
        for name, created, cost in (("a", big, 0.1), ("b", 1773136799000, big)):
            with open(os.path.join(opencode, name + ".json"), "w") as handle:
                json.dump({"id": name, "sessionID": "s", "role": "assistant",
                           "modelID": "gpt-4o", "time": {"created": created}, "cost": cost,
                           "tokens": {"input": 10, "output": 5, "cache": {"read": 0,
                                                                         "write": 0}}}, handle)
        os.environ.update(CLAUDE_CONFIG_DIR=os.path.join(self.tmp, "claude"),
                          GEMINI_DATA_DIR=os.path.join(self.tmp, "gemini"),
                          OPENCODE_DATA_DIR=os.path.join(self.tmp, "opencode"))
        code, out, err = self.run_main("--agent", "claude-code", "--agent", "gemini", "--agent",
                                       "opencode", "--offline", "--no-history", "--format",
                                       "json", "--group-by", "day")
        self.assertEqual(code, 0, err)
        doc = strict_json(out)
        self.assertEqual((doc["totals"]["requests"], doc["totals"]["input_tokens"]), (4, 40))
        self.assertEqual(doc["refused_values"], {"cost": 2, "timestamp": 3})
        prices = os.path.join(self.tmp, "prices.json")
        log = os.path.join(self.tmp, "one.jsonl")
        with open(log, "w") as handle:
            handle.write(self.good_line())
        for rate in (big, 1e308, -1, "lots"):
            with self.subTest(rate=rate):
                with open(prices, "w") as handle:
                    json.dump({"gpt-4o": {"input_cost_per_token": rate,
                                          "output_cost_per_token": 1e-5}}, handle)
                code, out, err = self.run_main("--file", log, "--prices", prices, "--offline",
                                               "--no-history", "--format", "json")
                self.assertEqual(code, 0, err)
                doc = strict_json(out)
                self.assertAlmostEqual(doc["totals"]["cost_usd"], 10 * 1e-5, places=12)
                self.assertEqual(doc["refused_values"].get("rate"), 1)
        found = catop.spend_row_request({"request_id": "r", "model": "gpt-4o", "spend": big,
                                         "startTime": big, "prompt_tokens": 10,
                                         "completion_tokens": 5})
        self.assertEqual((found[1].ts, found[1].observed_cost, found[1].miss), (None, None, 10))


class HostileFileTests(IsolatedEnv):
    """FIFOs, devices and links where catop reads or writes; modes whatever the umask."""

    def run_bounded(self, *argv):
        """catop in a process of its own, given 20 s (a hang fails, it does not stall)."""
        process = subprocess.run([sys.executable, os.path.join(HERE, "catop.py")] + list(argv),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20,
                                 env=dict(os.environ), stdin=subprocess.DEVNULL)
        return process.returncode, process.stdout.decode(), process.stderr.decode()

    def log(self):
        path = os.path.join(self.tmp, "one.jsonl")
        with open(path, "w") as handle:
            handle.write(json.dumps({"timestamp": NOW, "model": "gpt-4o",
                                     "usage": {"prompt_tokens": 100}}) + "\n")
        return path

    def test_a_fifo_or_device_at_the_price_cache_is_a_miss_not_a_hang(self):
        cache = os.path.join(self.tmp, "cache", "catop")
        os.makedirs(cache)
        for make in (lambda p: os.mkfifo(p), lambda p: os.symlink("/dev/zero", p)):
            target = os.path.join(cache, "prices.json")
            make(target)
            code, out, err = self.run_bounded("--file", self.log(), "--offline",
                                              "--no-history", "--format", "json")
            self.assertEqual(code, 0, err)
            self.assertEqual(json.loads(out)["totals"]["input_tokens"], 100)
            os.remove(target)

    def test_a_fifo_or_device_named_as_a_log_is_refused_with_the_way_to_do_it(self):
        fifo = os.path.join(self.tmp, "pipe.jsonl")
        os.mkfifo(fifo)
        for path, kind in ((fifo, "a FIFO or pipe"), ("/dev/zero", "a character device")):
            code, out, err = self.run_bounded("--file", path, "--offline", "--no-history")
            self.assertEqual(code, 1)
            self.assertEqual(err, "catop: %s is %s, not a log file: pipe a stream in with "
                                  "--stdin\n" % (path, kind))
        folder = os.path.join(self.tmp, "logs")
        os.makedirs(folder)
        os.mkfifo(os.path.join(folder, "a.jsonl"))       # in a folder: passed over
        shutil.copy(self.log(), os.path.join(folder, "b.jsonl"))
        code, out, err = self.run_bounded("--file", folder, "--offline", "--no-history",
                                          "--format", "json")
        self.assertEqual((code, json.loads(out)["totals"]["requests"]), (0, 1), err)
        claude = os.path.join(self.tmp, "claude", "projects", "p")
        os.makedirs(claude)
        os.mkfifo(os.path.join(claude, "s.jsonl"))        # an agent's: passed over too
        os.environ["CLAUDE_CONFIG_DIR"] = os.path.join(self.tmp, "claude")
        code, out, err = self.run_bounded("--agent", "claude-code", "--offline",
                                          "--no-history", "--format", "json")
        self.assertEqual(code, 1)           # its only file a FIFO: no logs found there
        self.assertIn("no claude-code logs found in", err)

    def test_what_catop_creates_is_private_whatever_the_umask(self):
        old = os.umask(0)
        try:
            code, _, err = self.run_bounded("--file", self.log(), "--format", "json")
            self.assertEqual(code, 0, err)
            catop.write_atomic(os.path.join(self.tmp, "cache", "catop", "prices.json"), b"{}")
        finally:
            os.umask(old)
        mode = lambda path: stat.S_IMODE(os.stat(path).st_mode)   # noqa: E731
        state = os.path.join(self.tmp, "state", "catop")
        self.assertEqual(mode(state), 0o700)
        self.assertEqual(mode(os.path.join(state, "history.sqlite3")), 0o600)
        self.assertEqual(mode(os.path.join(state, "history.sqlite3.lock")), 0o600)
        self.assertEqual(mode(os.path.join(self.tmp, "cache", "catop")), 0o700)
        self.assertEqual(mode(os.path.join(self.tmp, "cache", "catop", "prices.json")), 0o600)


def mutate_value(value, rng, depth=0):
    """value with one random hostile change somewhere inside it."""
    hostile = [10 ** 400, -10 ** 400, 1e308, 1e26, "1e26", -1.0, -5, 0, float("inf"), "1e999",
               "", "\x1b[2J\u202e", True, None, [], {}, "9" * 300, 2 ** 63, [[[[1]]]],
               "9999-12-31T23:59:59-14:00"]
    if isinstance(value, dict) and value and depth < 6:
        leaves = sorted(k for k, v in value.items() if not isinstance(v, (dict, list)))
        key = rng.choice(leaves if leaves and rng.random() < 0.6 else sorted(value))
        copy = dict(value)
        copy[key] = mutate_value(value[key], rng, depth + 1)
        return copy
    if isinstance(value, list) and value and depth < 6:
        copy = list(value)
        index = rng.randrange(len(copy))
        copy[index] = mutate_value(copy[index], rng, depth + 1)
        return copy
    return rng.choice(hostile)


def mutate_line(line, rng):
    """One line of a log, damaged in one of the ways logs are: values, bytes, nesting,
    encodings, truncation."""
    kind = rng.randrange(7)
    if kind <= 2:
        try:
            return json.dumps(mutate_value(json.loads(line), rng)).encode()
        except ValueError:
            return line
    if kind == 3:
        data = bytearray(line)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 4:
        return line[:rng.randrange(len(line))]
    if kind == 5:
        return b"[" * 20000 + b"]" * 20000
    return rng.choice([line.decode("utf-8", "replace").encode("utf-16"),
                       line.replace(b'"', b"\x00", 1), b"\xff\xfe" + line])


class FuzzTests(IsolatedEnv):
    """Seeded, bounded: every example, damaged line by line, through every source."""

    def totals(self, *argv):
        code, out, err = self.run_main(*(argv + ("--format", "json", "--offline")))
        self.assertEqual(code, 0, err)
        self.assertNotIn("Traceback", err)
        self.assertNotIn("internal error", err)
        return strict_json(out)["totals"]

    def damaged_copy(self, source, target, rng, share=0.3):
        """target: source with about a share of its lines damaged; returns the lines
        left untouched."""
        with open(source, "rb") as handle:
            lines = handle.read().split(b"\n")
        kept, out = [], []
        for line in lines:
            if line and rng.random() < share:
                out.append(mutate_line(line, rng).replace(b"\n", b" "))
            else:
                out.append(line)
                kept.append(line)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as handle:
            handle.write(b"\n".join(out))
        return kept

    def test_request_logs_keep_every_untouched_record(self):
        fields = ("requests", "input_tokens", "cache_read_tokens", "cache_write_tokens",
                  "output_tokens")
        for seed in range(6):
            rng = random.Random(seed)
            for name in sorted(os.listdir(EXAMPLES)):
                if not name.endswith(".jsonl"):
                    continue
                with self.subTest(seed=seed, log=name):
                    damaged = os.path.join(self.tmp, "d%d" % seed, name)
                    kept = self.damaged_copy(example(name), damaged, rng)
                    untouched = damaged + ".kept"
                    with open(untouched, "wb") as handle:
                        handle.write(b"\n".join(kept))
                    floor = self.totals("--file", untouched, "--no-history")
                    for argv in (("--no-history", "--group-by", "day,session"),
                                 ("--history", os.path.join(self.tmp, "h.sqlite3"),
                                  "--group-by", "week,month")):
                        got = self.totals("--file", damaged, *argv)
                        for field in fields:   # a damaged record may count, never subtract
                            self.assertGreaterEqual(got[field], floor[field], field)
                    with open(damaged, "rb") as handle:
                        stdin = io.TextIOWrapper(io.BytesIO(handle.read()))
                    with mock.patch.object(sys, "stdin", stdin):
                        got = self.totals("--stdin", "--no-history", "--group-by", "session")
                    self.assertGreaterEqual(got["requests"], floor["requests"])

    def test_agent_homes_never_fail(self):
        for seed in range(8):
            rng = random.Random(100 + seed)
            home = os.path.join(self.tmp, "home%d" % seed)
            for folder, _, names in os.walk(AGENT_EXAMPLES):
                for name in names:
                    source = os.path.join(folder, name)
                    target = os.path.join(home, os.path.relpath(source, AGENT_EXAMPLES))
                    self.damaged_copy(source, target, rng, share=0.5)
            os.environ.update(agent_variables(home))
            with self.subTest(seed=seed):
                for argv in (("--no-history", "--group-by", "day,session"),
                             ("--history", os.path.join(home, "h.sqlite3"), "--group-by",
                              "week,month")):
                    self.totals("--scan-agents", *argv)


    def test_every_agent_reader_meets_hostile_values(self):
        """Each agent's own records, documents and database rows, changed one value at
        a time: a parser gives a request, nothing, or a ValueError its reader counts
        as malformed; never another exception, and never a count out of range."""
        def check(found):
            for req in found:
                for field in ("miss", "cache_read", "cache_write_5m", "cache_write_1h",
                              "output", "reasoning"):
                    value = getattr(req, field)
                    self.assertTrue(type(value) is int and
                                    0 <= value <= catop.MAX_TOKENS_PER_FIELD, (field, value))
                self.assertLessEqual(req.reasoning, req.output)

        def requests(results):
            for result in results if type(results) is list else [results]:
                if type(result) is tuple and isinstance(result[-1], catop.Request):
                    yield result[-1]
                elif isinstance(result, catop.Request):
                    yield result
        rng = random.Random(19)
        for name in catop.AGENTS:
            spec = catop.AGENT_TABLE[name]
            for path in self.example_paths(name):
                with self.subTest(agent=name, file=os.path.basename(path)):
                    if spec.whole:
                        self.fuzz_database(spec, path, rng, check, requests)
                    elif spec.reads_document(path):
                        self.fuzz_document(spec, path, rng, check, requests)
                    else:
                        self.fuzz_lines(spec, path, rng, check, requests)

    def example_paths(self, name):
        os.environ.update(agent_variables(AGENT_EXAMPLES))
        return catop.agent_files(name)

    def fuzz_lines(self, spec, path, rng, check, requests):
        with open(path, "rb") as handle:
            records = [json.loads(line) for line in handle if line.strip().startswith(b"{")
                       and self.decodes(line)]
        for _ in range(120):
            record = mutate_value(rng.choice(records), rng) if records else {}
            if type(record) is not dict:
                continue
            ctx = catop.FileContext(path)
            try:
                found = spec.parser(record, ctx)
            except (ValueError, TypeError, RecursionError, OverflowError):
                continue   # scan_agent_jsonl counts it malformed
            if found not in (None, "compact"):
                check(requests(found))

    def fuzz_document(self, spec, path, rng, check, requests):
        document = json.loads(catop.read_regular(path)) if self.decodes(
            catop.read_regular(path)) else None
        for number in range(60):
            damaged = os.path.join(self.tmp, "doc%d" % number, os.path.basename(path))
            os.makedirs(os.path.dirname(damaged), exist_ok=True)
            with open(damaged, "w") as handle:
                json.dump(mutate_value(document, rng), handle)
            results, malformed = spec.document(damaged, catop.FileContext(damaged))
            check(requests([result for _, result in results]))

    def fuzz_database(self, spec, path, rng, check, requests):
        if not path.endswith((".db", ".sqlite")) or not os.path.getsize(path):
            return
        source = sqlite3.connect(path)
        tables = source.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        source.close()
        for number in range(30):
            damaged = os.path.join(self.tmp, "db%d" % number, os.path.basename(path))
            os.makedirs(os.path.dirname(damaged), exist_ok=True)
            shutil.copyfile(path, damaged)
            database = sqlite3.connect(damaged)
            for (table,) in tables:
                columns = [row[1] for row in database.execute("PRAGMA table_info(%s)" % table)]
                for rowid, *values in database.execute(
                        "SELECT rowid, * FROM %s" % table).fetchall():
                    column = rng.randrange(len(columns))
                    value = values[column]
                    if type(value) is str and self.decodes(value):
                        value = json.dumps(mutate_value(json.loads(value), rng))
                    elif type(value) is bytes and value:
                        value = bytes(rng.randrange(256) if rng.random() < 0.2 else b
                                      for b in value)
                    else:
                        value = rng.choice([-5, 10 ** 18, 1e308, "x", "1e26", None, b"\xff"])
                    with contextlib.suppress(sqlite3.Error):   # a constraint refuses it
                        database.execute("UPDATE %s SET %s = ? WHERE rowid = ?" % (
                            table, columns[column]), (value, rowid))
            database.commit()
            database.close()
            try:
                results, malformed = spec.database(damaged)
            except OSError:
                continue   # a database it cannot read: said in the source's line
            check(requests([result for _, result in results]))

    @staticmethod
    def decodes(text):
        try:
            json.loads(text)
        except ValueError:
            return False
        return True


class ChangingLogsTests(IsolatedEnv):
    """Logs that change between readings give what one reading of their last state
    gives, by every path (the history, the live sources)."""

    def doc(self, *argv):
        """The JSON report of argv, with the history unless argv says otherwise."""
        code, out, err = self.run_main(*(argv + ("--format", "json", "--offline")))
        self.assertEqual(code, 0, err)
        return json.loads(out)

    def totals(self, *argv):
        doc = self.doc(*argv)
        t = doc["totals"]
        return (t["requests"], t["input_tokens"], t["output_tokens"]), doc

    def copy(self, agent):
        self.point_agents_at_examples(os.path.join(self.tmp, "agents"))
        shutil.copytree(os.path.join(AGENT_EXAMPLES, agent), os.path.join(self.tmp, "agents",
                                                                           agent))
        return os.path.join(self.tmp, "agents", agent)

    def test_a_file_read_in_two_parts_keeps_its_session(self):
        root = self.copy("pi")
        path = sorted(catop.agent_files("pi"))[0]
        with open(path) as handle:
            lines = handle.readlines()
        history = os.path.join(self.tmp, "h.sqlite3")
        with open(path, "w") as handle:
            handle.writelines(lines[:len(lines) // 2])
        self.doc("--agent", "pi", "--history", history)
        with open(path, "w") as handle:
            handle.writelines(lines)
        want, plain = self.totals("--agent", "pi", "--no-history", "--group-by", "session")
        got, stored = self.totals("--agent", "pi", "--history", history, "--group-by", "session")
        self.assertEqual(got, want)
        self.assertEqual(sorted((g["key"]["session"], g["requests"]) for g in stored["groups"]),
                         sorted((g["key"]["session"], g["requests"]) for g in plain["groups"]))
        self.assertNotIn("", [g["key"]["session"] for g in stored["groups"]])
        self.assertTrue(root)

    def test_a_message_updated_in_place_counts_once_in_the_history(self):
        root = self.copy("kilo")
        database = sqlite3.connect(os.path.join(root, "kilo.db"))
        # the newest reply (of the fork: its own, no copy of it anywhere)
        row_id, data = database.execute("SELECT id, data FROM message WHERE data LIKE "
                                        "'%\"completed\"%' ORDER BY id DESC LIMIT 1").fetchone()
        message = json.loads(data)
        streaming = dict(message, time={"created": message["time"]["created"]},
                         tokens=dict(message["tokens"], output=1))
        database.execute("UPDATE message SET data = ? WHERE id = ?",
                         (json.dumps(streaming), row_id))
        database.commit()
        history = os.path.join(self.tmp, "h.sqlite3")
        self.doc("--agent", "kilo", "--history", history)
        database.execute("UPDATE message SET data = ? WHERE id = ?", (data, row_id))
        database.commit()
        database.close()
        want, _ = self.totals("--agent", "kilo", "--no-history")
        self.assertEqual(want[:2], (7, 59388))
        self.assertEqual(self.totals("--agent", "kilo", "--history", history)[0], want)

    def test_a_fork_outliving_its_parent_counts_once(self):
        """A fork copies its parent's messages under new ids.  The parent's pruned from
        the database after a run with the history: the history holds its messages, the
        database their copies, and they count once by every path (they were counted
        twice: 9 requests, $0.152766)."""
        root = self.copy("kilo")
        history = os.path.join(self.tmp, "h.sqlite3")
        before, _ = self.totals("--agent", "kilo", "--history", history)
        self.assertEqual(before, (7, 59388, 3390))
        database = sqlite3.connect(os.path.join(root, "kilo.db"))
        copied = [row[0] for row in database.execute(
            "SELECT id FROM message WHERE id IN ('msg_c9a10a002ffe1A2b3C4d5E6f7G', "
            "'msg_c9a10a003ffe1A2b3C4d5E6f7G')")]
        self.assertEqual(len(copied), 2)    # the parent's replies its fork copied
        database.execute("DELETE FROM message WHERE id IN (?, ?)", copied)
        database.commit()
        database.close()
        fresh, _ = self.totals("--agent", "kilo", "--no-history")
        self.assertEqual(fresh, before)     # the copies count in their place
        for _ in range(2):
            stored, doc = self.totals("--agent", "kilo", "--history", history)
            self.assertEqual(stored, before)
            self.assertAlmostEqual(doc["totals"]["cost_usd"], 0.101241, places=6)
            self.assertEqual(doc["sources"][0]["skipped"]["duplicate"], 2)
        live, _ = self.totals("--agent", "kilo", "--history", history, "--once",
                              "--duration", "0.1")
        self.assertEqual(live, before)

    def test_a_fork_in_opencodes_message_files_counts_once(self):
        """OpenCode's legacy storage, a message a file: a fork's copy (new id, session
        and file; cost 0) is a duplicate of its parent's message in another file."""
        root = self.copy("opencode")
        self.fork_file(root, os.path.join(root, "storage", "message", "ses_oc", "msg_oc1.json"),
                       "msg_zfork1")
        for history in ("--no-history", "--history"):
            argv = ("--agent", "opencode", "--group-by", "session") + (
                (history,) if history == "--no-history" else
                (history, os.path.join(self.tmp, "h.sqlite3")))
            got, doc = self.totals(*argv)
            self.assertEqual(got, (1, 6 + 21840 + 1536, 388))
            self.assertEqual([g["key"]["session"] for g in doc["groups"]], ["ses_oc"])
            self.assertEqual(doc["totals"]["observed_cost_usd"], 0.01815)
            self.assertEqual(doc["sources"][0]["skipped"]["duplicate"], 1)

    def fork_file(self, root, original, fork_id, fork_session="ses_zfork", **changes):
        """A fork's copy of one of OpenCode's message files: new id, session and file."""
        with open(original) as handle:
            message = json.load(handle)
        folder = os.path.join(root, "storage", "message", fork_session)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, fork_id + ".json"), "w") as handle:
            json.dump(dict(message, id=fork_id, sessionID=fork_session, cost=0, **changes),
                      handle)

    def test_the_live_view_holds_only_the_stored_rows_of_the_folders_read_now(self):
        """KILO_DATA_DIR=A with the history, then =B (a copy with its messages deleted):
        a snapshot shows nothing stored from A, and so must the live view (it showed
        A's 7 requests).  A copy read before its messages went keeps them, as A does."""
        root = self.copy("kilo")
        history = os.path.join(self.tmp, "h.sqlite3")

        def requests(folder, *extra):   # a process of its own, as a user runs it
            result = subprocess.run(
                [sys.executable, os.path.join(HERE, "catop.py"), "--agent", "kilo", "--once",
                 "--format", "json", "--offline", "--history", history] + list(extra),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                env=dict(os.environ, KILO_DATA_DIR=folder))
            self.assertEqual(result.returncode, 0, result.stderr)
            return json.loads(result.stdout)["totals"]["requests"]
        self.assertEqual(requests(root), 7)
        emptied, copy = os.path.join(self.tmp, "emptied-kilo"), os.path.join(self.tmp, "copy")
        for folder in (emptied, copy):
            os.makedirs(folder)
            shutil.copy(os.path.join(root, "kilo.db"), folder)
        self.assertEqual(requests(copy), 7)
        for folder in (emptied, copy):
            database = sqlite3.connect(os.path.join(folder, "kilo.db"))
            database.execute("DELETE FROM message")
            database.commit()
            database.close()
        self.assertEqual((requests(emptied), requests(emptied, "--duration", "0.1")), (0, 0))
        self.assertEqual((requests(copy), requests(copy, "--duration", "0.1")), (7, 7))
        self.assertEqual((requests(root), requests(root, "--duration", "0.1")), (7, 7))

    def test_a_copied_summary_is_no_second_compaction(self):
        root = self.copy("opencode")
        original = os.path.join(root, "storage", "message", "ses_oc", "msg_oc1.json")
        with open(original) as handle:
            message = json.load(handle)
        with open(original, "w") as handle:
            json.dump(dict(message, summary=True), handle)
        self.fork_file(root, original, "msg_zfork1")
        for history in (("--no-history",), ("--history", os.path.join(self.tmp, "h.sqlite3"))):
            code, out, err = self.run_main("--agent", "opencode", "--offline", *history)
            self.assertEqual(code, 0, err)
            self.assertIn("agent:opencode: 1 record, 1 compaction (skipped 1 duplicate)", out)

    def test_copies_a_previous_version_stored_are_dropped_from_the_history(self):
        """A history where both a message and its fork's copy were stored (as the last
        version did, the parent pruned): the copy's row goes, the totals are one
        reading's; and a copy whose id sorts before its stored parent's (the ids wrap)
        is the one dropped."""
        root = self.copy("opencode")
        history = os.path.join(self.tmp, "h.sqlite3")
        original = os.path.join(root, "storage", "message", "ses_oc", "msg_oc1.json")
        self.fork_file(root, original, "msg_zfork1")
        with mock.patch.object(catop.AGENT_TABLE["opencode"], "copies_renamed", False):
            doubled, _ = self.totals("--agent", "opencode", "--history", history)
        self.assertEqual(doubled, (2, 2 * 23382, 2 * 388))
        want = (1, 23382, 388)
        for _ in range(2):
            got, doc = self.totals("--agent", "opencode", "--history", history)
            self.assertEqual(got, want)
            self.assertEqual(doc["totals"]["observed_cost_usd"], 0.01815)
        os.remove(original)            # the parent pruned: its stored row stays counted
        self.fork_file(root, os.path.join(root, "storage", "message", "ses_zfork",
                                          "msg_zfork1.json"), "msg_a0copy", "ses_a0")
        for _ in range(2):
            got, doc = self.totals("--agent", "opencode", "--history", history,
                                   "--group-by", "session")
            self.assertEqual(got, want)
            self.assertEqual([g["key"]["session"] for g in doc["groups"]], ["ses_oc"])

    def test_a_database_not_set_up_yet_leaves_opencodes_message_files_counted(self):
        """OpenCode makes opencode.db before its tables (and a user may empty it): its
        message files still count; the database was an error that hid them."""
        root = self.copy("opencode")
        open(os.path.join(root, "opencode.db"), "wb").close()
        got, doc = self.totals("--agent", "opencode", "--no-history")
        self.assertEqual(got, (1, 6 + 21840 + 1536, 388))
        self.assertNotIn("error", doc["sources"][0])

    def test_a_hermes_session_that_grows_counts_once(self):
        root = self.copy("hermes")
        history = os.path.join(self.tmp, "h.sqlite3")
        before, _ = self.totals("--agent", "hermes", "--history", history)
        database = sqlite3.connect(os.path.join(root, "state.db"))
        session = database.execute("SELECT id FROM sessions WHERE model IS NOT NULL "
                                   "ORDER BY id LIMIT 1").fetchone()[0]
        database.execute("UPDATE sessions SET input_tokens = input_tokens + 1000, "
                         "output_tokens = output_tokens + 500 WHERE id = ?", (session,))
        database.execute("INSERT INTO session_model_usage (session_id, model, billing_provider,"
                         " billing_base_url, billing_mode, task, input_tokens, output_tokens,"
                         " cache_read_tokens, cache_write_tokens, reasoning_tokens) VALUES"
                         " (?, 'gpt-5', 'openai', '', '', '', 1000, 500, 0, 0, 0)", (session,))
        database.commit()
        database.close()
        want, _ = self.totals("--agent", "hermes", "--no-history")
        self.assertEqual(want, (before[0], before[1] + 1000, before[2] + 500))
        self.assertEqual(self.totals("--agent", "hermes", "--history", history)[0], want)

    def test_a_response_split_into_iterations_later_counts_once(self):
        folder = os.path.join(self.tmp, "claude", "projects", "-p")
        os.makedirs(folder)
        os.environ["CLAUDE_CONFIG_DIR"] = os.path.join(self.tmp, "claude")
        path = os.path.join(folder, "s.jsonl")
        line = {"type": "assistant", "sessionId": "s", "requestId": "r1",
                "timestamp": "2026-03-10T08:00:00Z", "message": {
                    "id": "m1", "model": "claude-sonnet-4-5", "usage": {
                        "input_tokens": 1100, "output_tokens": 5}}}
        with open(path, "w") as handle:
            handle.write(json.dumps(line) + "\n")
        history = os.path.join(self.tmp, "h.sqlite3")
        self.doc("--agent", "claude-code", "--history", history)
        line["message"]["usage"] = {"input_tokens": 1100, "output_tokens": 300, "iterations": [
            {"type": "message", "input_tokens": 500, "output_tokens": 100},
            {"type": "message", "input_tokens": 600, "output_tokens": 200}]}
        with open(path, "a") as handle:
            handle.write(json.dumps(line) + "\n")
        for argv in (("--no-history",), ("--history", history),
                     ("--history", history)):      # and again, warm
            with self.subTest(argv=argv):
                self.assertEqual(self.totals("--agent", "claude-code", *argv)[0],
                                 (2, 1100, 300))
        # a response without message.id split alike: the status line reads it too
        ctx = catop.FileContext(path)
        del line["message"]["id"]
        found = catop.parse_claude_code(line, ctx)
        self.assertEqual([(key, req.input) for key, req in found], [(None, 500), (None, 600)])

    def test_compaction_iterations_are_priced_beside_the_response(self):
        usage = {"input_tokens": 23000, "output_tokens": 1000, "iterations": [
            {"type": "compaction", "input_tokens": 180000, "output_tokens": 3500},
            {"type": "message", "input_tokens": 23000, "output_tokens": 1000}]}
        path = os.path.join(self.tmp, "c.jsonl")
        with open(path, "w") as handle:
            handle.write(json.dumps({"model": "claude-sonnet-4-5", "provider": "anthropic",
                                     "usage": usage}) + "\n")
        (requests, input_tokens, output), doc = self.totals("--file", path)
        self.assertEqual((requests, input_tokens, output), (2, 203000, 4500))
        # claude-sonnet-4-5: 3e-6 in, 1.5e-5 out
        self.assertAlmostEqual(doc["totals"]["cost_usd"], 203000 * 3e-6 + 4500 * 1.5e-5,
                               places=12)

    def test_iterations_without_a_ttl_split_take_the_responses_own(self):
        # the response's writes all 1 h (its cache_creation split); its iterations give
        # flat figures only: theirs are 1 h writes too (claude-sonnet-4-5: 2x 3e-6)
        usage = {"input_tokens": 30, "cache_creation_input_tokens": 5000,
                 "cache_creation": {"ephemeral_5m_input_tokens": 0,
                                    "ephemeral_1h_input_tokens": 5000},
                 "output_tokens": 300, "iterations": [
                     {"type": "message", "input_tokens": 10,
                      "cache_creation_input_tokens": 2000, "output_tokens": 100},
                     {"type": "message", "input_tokens": 20,
                      "cache_creation_input_tokens": 3000, "output_tokens": 200}]}
        path = os.path.join(self.tmp, "i.jsonl")
        with open(path, "w") as handle:
            handle.write(json.dumps({"model": "claude-sonnet-4-5", "provider": "anthropic",
                                     "usage": usage}) + "\n")
        doc = self.doc("--file", path, "--no-history")
        t = doc["totals"]
        self.assertEqual((t["requests"], t["cache_write_tokens"], t["cache_write_1h_tokens"]),
                         (2, 5000, 5000))
        self.assertAlmostEqual(t["cost_usd"], 30 * 3e-6 + 5000 * 6e-6 + 300 * 1.5e-5,
                               places=12)

    def test_a_locked_database_keeps_its_last_reading(self):
        root = self.copy("zcode")
        live = catop.LiveAgentSource("zcode")
        live.poll()
        self.assertEqual(len(live.requests), 8)
        database = sqlite3.connect(os.path.join(root, "cli", "db", "db.sqlite"))
        database.execute("UPDATE model_usage SET output_tokens = output_tokens + 1")
        database.commit()
        database.execute("BEGIN EXCLUSIVE")
        live.poll()
        self.assertEqual(len(live.requests), 8)   # locked: the last reading stays
        self.assertIn("cannot read", live.stats.error)
        database.rollback()
        database.close()
        live.poll()
        self.assertEqual((len(live.requests), live.stats.error), (8, None))

    def test_the_live_view_keeps_what_only_the_history_holds(self):
        root = self.copy("zcode")
        history = os.path.join(self.tmp, "h.sqlite3")
        self.doc("--agent", "zcode", "--history", history)
        database = sqlite3.connect(os.path.join(root, "cli", "db", "db.sqlite"))
        database.execute("DELETE FROM model_usage WHERE id = (SELECT id FROM model_usage WHERE"
                         " status = 'completed' ORDER BY id LIMIT 1)")
        database.commit()
        database.close()
        once, _ = self.totals("--agent", "zcode", "--history", history)
        watched, _ = self.totals("--agent", "zcode", "--history", history, "--once",
                                 "--duration", "0.3", "--interval", "0.1")
        self.assertEqual(once[0], 8)
        self.assertEqual(watched, once)

    def test_a_codex_copy_that_overtakes_the_other_replaces_it(self):
        root = self.copy("codex")
        live = os.path.join(root, "sessions", "2026", "03", "10",
                            "rollout-2026-03-10T08-00-00-codex-s1.jsonl")
        archived = os.path.join(root, "archived_sessions",
                                "rollout-2026-03-10T08-00-00-codex-s1.jsonl")
        with open(live) as handle:
            lines = handle.readlines()
        with open(archived, "w") as handle:     # the archived copy behind, then ahead
            handle.writelines(lines[:3])
        source = catop.LiveAgentSource("codex")
        source.poll(True)
        with open(archived, "w") as handle:
            handle.writelines(lines + ['{"type": "event_msg"}\n'])
        source.poll(True)
        want, _ = self.totals("--agent", "codex", "--no-history")
        got = source.requests
        self.assertEqual((len(got), sum(r.input for r in got), sum(r.output for r in got)),
                         want)

    def test_a_time_out_of_range_is_no_time(self):
        seconds = bytes([0x08]) + bytes([0xff] * 8 + [0x3f])   # field 1, varint 2**62 - 1
        self.assertIsNone(catop._pb_time(seconds))
        self.assertEqual(catop._pb_time(bytes([0x08, 0x80, 0xa6, 0xc5, 0xcd, 0x06])),
                         1773228800.0)   # 2026-03-11T11:33:20Z


class LiveHistoryTests(IsolatedEnv):
    """The live view keeps its history as it runs."""

    def test_what_the_live_view_reads_is_stored_and_outlives_the_logs(self):
        root = self.copy_agent_examples("claude", "CLAUDE_CONFIG_DIR")
        log = os.path.join(self.tmp, "requests.jsonl")
        with open(log, "w") as handle:
            handle.write(json.dumps({"timestamp": NOW, "model": "gpt-4o", "session_id": "x",
                                     "usage": {"prompt_tokens": 500}}) + "\n")
        args = catop.build_parser().parse_args(["--file", log, "--agent", "claude-code",
                                                "--offline"])
        sources = catop.resume_from_history(args, catop.live_sources(args, NOW))
        writer = catop.HistoryWriter(args, sources, interval_s=0.05).start()
        model = catop.LiveModel(sources, PRICES)
        model.poll()
        with open(log, "a") as handle:           # arrives while the view is open
            handle.write(json.dumps({"timestamp": NOW + 1, "model": "gpt-4o",
                                     "session_id": "x", "usage": {"prompt_tokens": 7}}) + "\n")
        model.poll()
        deadline = time.time() + 5
        while writer.stores < 2 and time.time() < deadline:
            time.sleep(0.02)
        writer.stop()
        self.assertIsNone(writer.error)
        live = catop.aggregate_model(model, (), None, None, None, NOW).totals
        os.remove(log)                           # the agent and the log rotation prune
        shutil.rmtree(root)
        code, out, err = self.run_main("--format", "json", "--offline")   # no source: all
        self.assertEqual(code, 0, err)
        stored = json.loads(out)["totals"]
        self.assertEqual((stored["requests"], stored["input_tokens"]),
                         (live.requests, live.miss + live.cache_read + live.cache_write_5m +
                          live.cache_write_1h))
        self.assertEqual(stored["requests"], 6 + 2)


class FolderWatchTests(IsolatedEnv):
    """A folder named by --file is watched while its logs are tailed (live view and
    --once --duration): a log that appears in it later is read, a rotated copy once."""

    def line(self, tokens):
        return json.dumps({"model": "gpt-4o", "timestamp": NOW, "session_id": "s%d" % tokens,
                           "usage": {"prompt_tokens": tokens, "completion_tokens": 1}}) + "\n"

    def test_new_logs_and_a_rotated_copy_are_read_as_once_reads_the_folder(self):
        folder = os.path.join(self.tmp, "logs")
        os.makedirs(folder)
        app = os.path.join(folder, "app.jsonl")
        with open(app, "w") as handle:
            handle.write(self.line(100) + self.line(200))
        args = catop.build_parser().parse_args(["--file", folder, "--offline", "--no-history"])
        args.folders = [folder]
        args.file = catop.expand_file_args(args.file)
        clock = [1000.0]
        sources = catop.live_sources(args, NOW)
        model = catop.LiveModel(sources, PRICES, watch=catop.FolderWatch(
            args.folders, sources, clock=lambda: clock[0]))
        model.poll()
        os.rename(app, os.path.join(folder, "app-1.jsonl"))     # rotated: renamed away,
        with open(app, "w") as handle:                         # a new log in its place
            handle.write(self.line(5))
        with open(os.path.join(folder, "other.jsonl"), "w") as handle:   # a new log
            handle.write(self.line(1000))
        with open(os.path.join(folder, "notes.txt"), "w") as handle:     # not a log
            handle.write(self.line(7))

        def misses():
            return sorted(entry.req.miss for entry in model.timeline.timed)
        model.poll()                     # not looked at again yet: app's lines kept
        self.assertEqual(misses(), [5, 100, 200])
        clock[0] += catop.DISCOVERY_INTERVAL_S
        model.poll()
        self.assertEqual(misses(), [5, 100, 200, 1000])
        self.assertEqual(sorted(os.path.basename(source.path) for source in model.sources),
                         ["app-1.jsonl", "app.jsonl", "other.jsonl"])
        by_name = {os.path.basename(source.path): source for source in model.sources}
        self.assertEqual(sorted(r.miss for r in by_name["app-1.jsonl"].requests), [100, 200])
        with open(os.path.join(folder, "late.jsonl"), "w") as handle:
            handle.write(self.line(30000))
        model.poll(rediscover=True)      # the r key: looked at now
        self.assertEqual(misses(), [5, 100, 200, 1000, 30000])
        once = self.run_json("--file", folder, "--once")["totals"]
        live = catop.aggregate_model(model, (), None, None, None, NOW).totals
        self.assertEqual((once["requests"], once["input_tokens"]), (5, 31305))
        self.assertEqual((live.requests, live.input), (5, 31305))

    def write(self, path, *tokens, mode="w"):
        with open(path, mode) as handle:
            handle.write("".join(self.line(count) for count in tokens))

    def watched(self, folder, history=False):
        """(model, clock) of the live view of folder, as run_live makes it."""
        argv = ["--file", folder, "--offline"] + ([] if history else ["--no-history"])
        args = catop.build_parser().parse_args(argv)
        args.folders = [folder]
        args.file = catop.expand_file_args(args.file)
        sources = catop.live_sources(args, NOW)
        if history:
            sources = catop.resume_from_history(args, sources)
        clock = [1000.0]
        model = catop.LiveModel(sources, PRICES, watch=catop.FolderWatch(
            args.folders, sources, clock=lambda: clock[0]))
        model.poll()
        return model, clock

    def looked_at_again(self, model, clock):
        clock[0] += catop.DISCOVERY_INTERVAL_S
        model.poll()
        model.poll()

    def assert_as_once(self, model, folder, want, *once_argv):
        live = catop.aggregate_model(model, (), None, None, None, NOW).totals
        once = self.run_json("--file", folder, "--once", *once_argv)["totals"] if not \
            once_argv else self.report_with_history(folder)
        self.assertEqual(((live.requests, live.input),
                          (once["requests"], once["input_tokens"])), (want, want))

    def report_with_history(self, folder):
        code, out, err = self.run_main("--file", folder, "--once", "--format", "json",
                                       "--offline")
        self.assertEqual(code, 0, err)
        return json.loads(out)["totals"]

    def test_a_link_to_the_current_log_pointed_at_the_next_days_counts_each_once(self):
        """current.jsonl -> day1.jsonl, then -> day2.jsonl: day2 was tailed twice, under
        both its names (6 requests for 4); with the history on, the link's source kept
        reading day1 again (its state read the old target), more at every poll."""
        for history in (False, True):
            with self.subTest(history=history):
                folder = os.path.join(self.tmp, "logs-%s" % history)
                os.makedirs(folder)
                self.write(os.path.join(folder, "day1.jsonl"), 1, 2)
                os.symlink("day1.jsonl", os.path.join(folder, "current.jsonl"))
                if history:
                    self.report_with_history(folder)
                model, clock = self.watched(folder, history)
                self.write(os.path.join(folder, "day2.jsonl"), 4)
                os.remove(os.path.join(folder, "current.jsonl"))
                os.symlink("day2.jsonl", os.path.join(folder, "current.jsonl"))
                model.poll()
                self.write(os.path.join(folder, "day2.jsonl"), 16, mode="a")
                self.looked_at_again(model, clock)
                self.looked_at_again(model, clock)
                self.assert_as_once(model, folder, (4, 23), *(("history",) if history else ()))

    def test_a_link_pointed_at_a_log_tailed_under_its_own_name_counts_it_once(self):
        """cur.jsonl -> day1.jsonl (the link is the name tailed: it sorts first), then
        -> day2.jsonl, tailed already: the link read day2 from its start beside it (6
        requests for 4); now day2 is read under its own name, and day1 takes over what
        the link had read of it."""
        for history in (False, True):
            with self.subTest(history=history):
                folder = os.path.join(self.tmp, "logs-%s" % history)
                os.makedirs(folder)
                self.write(os.path.join(folder, "day1.jsonl"), 1, 2)
                self.write(os.path.join(folder, "day2.jsonl"), 4)
                os.symlink("day1.jsonl", os.path.join(folder, "cur.jsonl"))
                if history:
                    self.report_with_history(folder)
                model, clock = self.watched(folder, history)
                os.remove(os.path.join(folder, "cur.jsonl"))
                os.symlink("day2.jsonl", os.path.join(folder, "cur.jsonl"))
                model.poll()
                self.write(os.path.join(folder, "day2.jsonl"), 8, mode="a")
                self.looked_at_again(model, clock)
                self.write(os.path.join(folder, "day1.jsonl"), 16, mode="a")
                self.looked_at_again(model, clock)
                self.assert_as_once(model, folder, (5, 31), *(("history",) if history else ()))

    def test_a_link_named_itself_and_pointed_elsewhere_counts_its_new_file(self):
        """--file cur.jsonl, then cur.jsonl pointed at another log: the live view went on
        counting the old one's lines (5 requests where --once said 2, with the history
        or without; a live view resumed from the history said 2 too)."""
        for history in (False, True):
            with self.subTest(history=history):
                folder = os.path.join(self.tmp, "logs-%s" % history)
                os.makedirs(folder)
                link = os.path.join(folder, "cur.jsonl")
                self.write(os.path.join(folder, "a.jsonl"), 1, 2, 4)
                self.write(os.path.join(folder, "b.jsonl"), 8, 16)
                os.symlink("a.jsonl", link)
                argv = ["--file", link, "--offline"] + ([] if history else ["--no-history"])
                args = catop.build_parser().parse_args(argv)
                args.folders, args.file = [], catop.expand_file_args(args.file)
                sources = catop.live_sources(args, NOW)
                if history:
                    sources = catop.resume_from_history(args, sources)
                model = catop.LiveModel(sources, PRICES)
                model.poll()
                os.remove(link)
                os.symlink("b.jsonl", link)
                model.poll()
                live = catop.aggregate_model(model, (), None, None, None, NOW).totals
                once = self.run_json("--file", link, "--once")["totals"]
                code, out, err = self.run_main("--file", link, "--once", "--format", "json",
                                               "--offline")
                self.assertEqual(code, 0, err)
                stored = json.loads(out)["totals"]
                self.assertEqual([(t.requests, t.input) if hasattr(t, "input") else
                                  (t["requests"], t["input_tokens"]) for t in
                                  (live, once, stored)], [(2, 24)] * 3)

    def test_a_link_replaced_by_a_log_is_read(self):
        """A name skipped as a link to a tailed log was never looked at again."""
        folder = os.path.join(self.tmp, "logs")
        os.makedirs(folder)
        self.write(os.path.join(folder, "app.jsonl"), 1)
        os.symlink("app.jsonl", os.path.join(folder, "link.jsonl"))
        model, clock = self.watched(folder)
        self.looked_at_again(model, clock)
        os.remove(os.path.join(folder, "link.jsonl"))
        self.write(os.path.join(folder, "link.jsonl"), 64)
        self.looked_at_again(model, clock)
        self.assert_as_once(model, folder, (2, 65))

    def test_a_copy_read_to_its_end_after_its_log_was_truncated_counts_once(self):
        """copytruncate, the copy found half written (or empty) and the log truncated
        before the copy was read to its end: the log kept its lines and the copy read
        them again (6 requests for 3, with a copy there from the start 7 for 4)."""
        for early, name in ((False, "app-1.jsonl"), (True, "b-copy.jsonl")):
            with self.subTest(copy_there_at_the_start=early):
                folder = os.path.join(self.tmp, "logs-%s" % early)
                os.makedirs(folder)
                app, copy = os.path.join(folder, "a.jsonl"), os.path.join(folder, name)
                self.write(app, 1, 2, 8)
                if early:
                    self.write(copy, 1)
                model, clock = self.watched(folder)
                if not early:
                    self.write(copy, 1)
                    self.looked_at_again(model, clock)
                shutil.copyfile(app, copy)
                open(app, "w").close()
                model.poll()
                self.assert_as_once(model, folder, (3, 11))
                self.write(app, 16)
                model.poll()
                self.assert_as_once(model, folder, (4, 27))

    def test_a_log_started_over_resumed_from_the_history_keeps_its_earlier_lines(self):
        """The history holds two generations of app.jsonl; tailed, then copytruncated:
        the watch dropped both generations' lines for the copy's (2 where 4)."""
        folder = os.path.join(self.tmp, "logs")
        os.makedirs(folder)
        app = os.path.join(folder, "app.jsonl")
        self.write(app, 1, 2)
        self.report_with_history(folder)
        self.write(app, 4, 32)                 # truncated and refilled between two runs
        self.assertEqual(self.report_with_history(folder)["requests"], 4)
        model, clock = self.watched(folder, history=True)
        shutil.copyfile(app, os.path.join(folder, "app-1.jsonl"))
        self.looked_at_again(model, clock)
        open(app, "w").close()
        model.poll()
        live = catop.aggregate_model(model, (), None, None, None, NOW).totals
        self.assertEqual((live.requests, live.input), (4, 39))
        self.assertEqual(self.report_with_history(folder)["requests"], 4)

    def test_a_log_that_grows_to_hold_a_truncated_logs_lines_counts_them_once(self):
        """other.jsonl began as app.jsonl does, app was truncated, and other grew to hold
        all app held (a copy written slowly): the history kept app's lines beside the
        copy's (4 for 2); the live view, which lets go of them, said 2: now both do."""
        folder = os.path.join(self.tmp, "logs")
        os.makedirs(folder)
        app, other = os.path.join(folder, "app.jsonl"), os.path.join(folder, "other.jsonl")
        self.write(app, 1, 2)
        self.write(other, 1)
        self.assertEqual(self.report_with_history(folder)["requests"], 3)
        open(app, "w").close()
        stored = self.report_with_history(folder)   # app's lines happened: still counted
        self.assertEqual((stored["requests"], stored["input_tokens"]), (3, 4))
        model, clock = self.watched(folder, history=True)
        self.write(other, 2, mode="a")
        model.poll()
        self.write(other, 64, mode="a")
        model.poll()
        catop.HistoryWriter(catop.build_parser().parse_args(
            ["--file", folder, "--offline"]), model.sources).store_once()
        live = catop.aggregate_model(model, (), None, None, None, NOW).totals
        stored = self.report_with_history(folder)
        self.assertEqual(((live.requests, live.input),
                          (stored["requests"], stored["input_tokens"])), ((3, 67), (3, 67)))
        self.assertEqual(self.run_json("--file", folder, "--once")["totals"]["requests"], 3)

    def test_a_log_gone_does_not_keep_the_others_from_the_history(self):
        folder = os.path.join(self.tmp, "logs")
        os.makedirs(folder)
        self.write(os.path.join(folder, "a.jsonl"), 1)
        self.write(os.path.join(folder, "b.jsonl"), 2)
        args = catop.build_parser().parse_args(["--file", folder, "--offline"])
        args.file = catop.expand_file_args(args.file)
        sources = catop.resume_from_history(args, catop.live_sources(args, NOW))
        os.remove(os.path.join(folder, "a.jsonl"))
        self.write(os.path.join(folder, "b.jsonl"), 8, mode="a")
        writer = catop.HistoryWriter(args, sources)
        writer.store_once()
        self.assertIsNone(writer.error)
        code, out, err = self.run_main("--format", "json", "--offline")   # all it holds
        totals = json.loads(out)["totals"]
        self.assertEqual((totals["requests"], totals["input_tokens"]), (3, 11))

    def test_once_duration_looks_at_the_folder_once_more_at_its_end(self):
        folder = os.path.join(self.tmp, "logs")
        os.makedirs(folder)
        self.write(os.path.join(folder, "app.jsonl"), 1)
        import threading
        timer = threading.Timer(0.2, self.write, (os.path.join(folder, "late.jsonl"), 64))
        timer.start()
        self.addCleanup(timer.cancel)
        doc = self.run_json("--file", folder, "--once", "--duration", "1.2", "--interval", "0.1")
        self.assertEqual((doc["totals"]["requests"], doc["totals"]["input_tokens"]), (2, 65))

    def test_a_watched_folder_that_goes_away_keeps_what_was_read(self):
        folder = os.path.join(self.tmp, "logs")
        os.makedirs(folder)
        with open(os.path.join(folder, "app.jsonl"), "w") as handle:
            handle.write(self.line(100))
        args = catop.build_parser().parse_args(["--file", folder, "--offline"])
        sources = catop.live_sources(args, NOW) if False else [
            catop.LiveFileSource(os.path.join(folder, "app.jsonl"), [])]
        watch = catop.FolderWatch([folder], sources)
        model = catop.LiveModel(sources, PRICES, watch=watch)
        model.poll()
        shutil.rmtree(folder)
        model.poll(rediscover=True)
        self.assertEqual([entry.req.miss for entry in model.timeline.timed], [100])
        self.assertEqual(len(model.sources), 1)
        self.assertIn("unreadable", model.sources[0].stats.error)


class LayoutTests(unittest.TestCase):

    def test_each_section_uses_only_those_above_it(self):
        """style.md's order: model, parsers, pricing, aggregation, io, render, output,
        cli; no function of a section names a function or class of a later one."""
        import ast
        with open(os.path.join(HERE, "catop.py")) as handle:
            text = handle.read()
        banners = [(number + 1, match.group(1)) for number, line in
                   enumerate(text.split("\n"))
                   for match in [re.match(r"# -+ ([\w ]+)$", line)] if match]
        order = [name for _, name in banners]
        self.assertEqual(order, ["constants", "model", "small helpers", "parsers",
                                 "agent parsers", "pricing", "aggregation", "io", "render",
                                 "output", "cli"])

        def section(line):
            return max((start, name) for start, name in banners if start <= line)[1] \
                if line >= banners[0][0] else "top"
        tree = ast.parse(text)
        defined = {}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined[node.name] = section(node.lineno)
        upward = []
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                continue
            local = {arg.arg for sub in ast.walk(node)
                     if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                     for arg in sub.args.args + sub.args.kwonlyargs}
            local |= {sub.id for sub in ast.walk(node)
                      if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store)}
            local |= {sub.name for sub in ast.walk(node) if sub is not node and
                      isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
            mine = order.index(section(node.lineno))
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and sub.id in defined and sub.id not in local \
                        and order.index(defined[sub.id]) > mine:
                    upward.append("%s -> %s" % (node.name, sub.id))
        self.assertEqual(upward, [])


@unittest.skipUnless(hasattr(os, "fork"), "no fork on this system")
class ForkedJobsTests(unittest.TestCase):
    """The worker processes: forked copies whose results come back in job order."""

    def test_results_come_back_in_job_order_from_each_copy(self):
        with catop.ForkedJobs(lambda n: (n * n, os.getpid()), list(range(7)), 3) as forked:
            results = list(forked.results())
        self.assertEqual([square for square, _ in results], [0, 1, 4, 9, 16, 25, 36])
        pids = [pid for _, pid in results]
        self.assertEqual(len(set(pids)), 3)       # every third job in the same copy
        self.assertEqual(pids[0::3], [pids[0]] * 3)
        self.assertNotIn(os.getpid(), pids)

    def test_a_jobs_exception_is_raised_here_after_the_results_before_it(self):
        def job(n):
            if n == 2:
                raise ValueError("job 2 went wrong")
            return n
        got = []
        with catop.ForkedJobs(job, [0, 1, 2, 3], 2) as forked:
            with self.assertRaisesRegex(ValueError, "job 2 went wrong"):
                for result in forked.results():
                    got.append(result)
        self.assertEqual(got, [0, 1])

    def test_a_copy_that_dies_is_an_error_here_not_a_wait_for_ever(self):
        for job, how in ((lambda n: os._exit(3), "exit status 3"),
                         (lambda n: os.kill(os.getpid(), signal.SIGKILL), "killed by signal 9")):
            with catop.ForkedJobs(job, [0], 1) as forked:
                with self.assertRaisesRegex(catop.CatopError,
                                            r"ended before its work was done \(%s\)" % how):
                    list(forked.results())

    def test_a_jobs_error_carries_the_workers_traceback(self):
        def failing_job(n):
            raise KeyError(n)
        with catop.ForkedJobs(failing_job, [5], 1) as forked:
            with self.assertRaises(KeyError) as raised:
                list(forked.results())
        self.assertIsInstance(raised.exception.__cause__, catop.WorkerTraceback)
        self.assertIn("in failing_job", str(raised.exception.__cause__))

    def test_a_fork_refused_leaves_no_process_nor_descriptor(self):
        forks, real = [], catop._fork

        def second_refused():
            if forks:
                raise BlockingIOError(11, "Resource temporarily unavailable")
            forks.append(real())
            return forks[-1]
        before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
        with mock.patch.object(catop, "_fork", second_refused):
            self.assertIsNone(catop.fork_jobs(lambda n: n, [0, 1], 2))
        with self.assertRaises(ChildProcessError):   # the first copy: ended and reaped
            os.waitpid(forks[0], os.WNOHANG)
        if before is not None:
            self.assertEqual(len(os.listdir("/proc/self/fd")), before)

    def test_no_worker_is_forked_from_a_thread_other_than_the_main_one(self):
        import threading
        counts = []
        thread = threading.Thread(target=lambda: counts.append(catop.worker_count()))
        thread.start()
        thread.join()
        self.assertEqual(counts, [1])

    def test_a_result_that_cannot_be_pickled_is_an_error(self):
        with catop.ForkedJobs(lambda n: (lambda: n), [0], 1) as forked:
            with self.assertRaisesRegex(catop.CatopError, "cannot be sent"):
                list(forked.results())

    def test_a_copy_never_waits_for_this_process_to_read(self):
        """Big results, nothing read here yet: the copy still finishes (a thread here
        empties its pipe), and every byte arrives."""
        forked = catop.ForkedJobs(lambda n: bytes([n]) * (3 << 20), [1, 2, 3], 1)
        try:
            pid = forked.children[0]
            for _ in range(1000):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.01)
            self.assertEqual(done, pid)
            self.assertEqual([(len(r), r[:1]) for r in forked.results()],
                             [(3 << 20, b"\x01"), (3 << 20, b"\x02"), (3 << 20, b"\x03")])
        finally:
            forked.close()

    @unittest.skipUnless(os.path.isdir("/proc/self"), "reads /proc")
    def test_a_copy_never_outlives_this_process(self):
        """Killed while its copy works, this process leaves no copy behind, working on
        for nothing (then blocked for ever on a pipe no one reads)."""
        with tempfile.TemporaryDirectory() as folder:
            named = os.path.join(folder, "child")
            script = ("import os, signal, sys, time; sys.path.insert(0, %r); import catop\n"
                      "def job(n):\n    time.sleep(60)\n    return b'x' * (8 << 20)\n"
                      "forked = catop.ForkedJobs(job, [0], 1)\n"
                      "open(%r, 'w').write(str(forked.children[0]))\n"
                      "os.kill(os.getpid(), signal.SIGKILL)\n" % (HERE, named))
            subprocess.run([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
            with open(named) as handle:
                child = int(handle.read())
        try:
            for _ in range(500):
                try:
                    with open("/proc/%d/stat" % child) as handle:
                        alive = handle.read().rsplit(")", 1)[1].split()[0] != "Z"
                except OSError:
                    alive = False
                if not alive:
                    break
                time.sleep(0.02)
            self.assertFalse(alive)
        finally:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)

    def test_every_copy_is_reaped(self):
        with catop.ForkedJobs(lambda n: n, [0, 1], 2) as forked:
            pids = list(forked.children)
            self.assertEqual(list(forked.results()), [0, 1])
        for pid in pids:
            with self.assertRaises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


class ConsistencyMatrixTests(IsolatedEnv):
    """One question, one answer: the same logs through every path catop has give the
    same totals, groups, breaks, what-if and wasted writes."""

    COMPARED = ("totals", "groups", "breaks", "break_summary", "what_if", "wasted_writes")

    def test_the_breaks_panel_counts_the_window_as_a_snapshot_of_it_does(self):
        """The live view's b panel listed every break and gap whatever the window (21
        breaks in a 1h window where --once --window 1h found 17)."""
        now, m = time.time(), "claude-sonnet-4-5-20250929"
        path = os.path.join(self.tmp, "log.jsonl")
        with open(path, "w") as handle:   # (seconds ago, session, read, write)
            for ago, session, read, write in (
                    (7000, "s1", 0, 10000), (6900, "s1", 10000, 0), (6000, "s1", 0, 10000),
                    (3000, "s1", 10000, 0), (1800, "s1", 0, 10000), (1700, "s1", 10000, 0),
                    (3700, "s2", 0, 8000), (3500, "s2", 0, 8000), (100, "s2", 8000, 0)):
                handle.write(json.dumps({
                    "timestamp": now - ago, "model": m, "session_id": session,
                    "usage": {"input_tokens": 50, "cache_read_input_tokens": read,
                              "cache_creation_input_tokens": write,
                              "output_tokens": 10}}) + "\n")
        once = self.run_json("--file", path, "--once", "--window", "1h")
        args = catop.build_parser().parse_args(["--file", path, "--offline", "--no-history"])
        model = catop.LiveModel(catop.live_sources(args, now), PRICES, clock=lambda: now)
        model.poll()
        for window, breaks, gaps in (("1h", [3500, 1800], [0, 2, 3, 0]),
                                     ("all", [6000, 3500, 1800], [0, 3, 4, 0])):
            view = catop.View(("model",), window, "cost", True)
            view.breaks_panel = True
            frame = catop.build_frame(model, view, now)
            self.assertEqual([round(now - b.ts) for b in frame.breaks], breaks, window)
            self.assertEqual(catop.gap_total(frame.gaps)[:4], gaps, window)
        self.assertEqual(sorted(b["ts"] for b in once["breaks"]),
                         [catop.iso_utc(now - 3500), catop.iso_utc(now - 1800)])
        self.assertEqual([once["gaps"][name] for name in catop.GAP_BIN_NAMES], [0, 2, 3, 0])
        # requests appended are paired on (a new session, a break, one late in s1)
        view = catop.View(("model",), "1h", "cost", True)
        view.breaks_panel, cache = True, {}
        catop.build_frame(model, view, now, cache=cache)
        for lines in ([(60, "s2", 0, 8000), (50, "s3", 0, 9000), (40, "s3", 9000, 0)],
                      [(20, "s3", 0, 9000)], [(1750, "s1", 0, 12000)]):
            with open(path, "a") as handle:
                for ago, session, read, write in lines:
                    handle.write(json.dumps({
                        "timestamp": now - ago, "model": m, "session_id": session,
                        "usage": {"input_tokens": 50, "cache_read_input_tokens": read,
                                  "cache_creation_input_tokens": write,
                                  "output_tokens": 10}}) + "\n")
            model.poll()
            kept = catop.build_frame(model, view, now, cache=cache)
            fresh = catop.build_frame(model, view, now)
            once = self.run_json("--file", path, "--once", "--window", "1h")
            self.assertEqual(([round(now - b.ts) for b in kept.breaks], kept.gaps),
                             ([round(now - b.ts) for b in fresh.breaks], fresh.gaps))
            self.assertEqual((len(kept.breaks), catop.gap_total(kept.gaps)[:4]),
                             (len(once["breaks"]), [once["gaps"][name] for name in
                                                    catop.GAP_BIN_NAMES]))
        self.assertEqual([round(now - b.ts) for b in kept.breaks], [3500, 1800, 1750, 60, 20])

    def request_log(self):
        """Three sessions, one of them with a late request (its time between two that
        came before it) and one going back across the middle of the file, a line over
        the (lowered) limit, a BOM, CRLF line ends, a record without usage."""
        m = "claude-sonnet-4-5-20250929"

        def line(session, dt, read, write, miss=50, end="\n"):
            return json.dumps({"timestamp": NOW + dt, "model": m, "session_id": session,
                               "usage": {"input_tokens": miss, "cache_read_input_tokens": read,
                                         "cache_creation_input_tokens": write,
                                         "output_tokens": 100}}) + end
        lines = [line("s1", 0, 0, 10000), line("s1", 60, 10000, 500),
                 line("s2", 10, 0, 4000, end="\r\n"), line("s1", 400, 0, 10500),
                 line("s1", 30, 0, 10000),                              # late
                 json.dumps({"model": m, "pad": "x" * 3000}) + "\n",    # over the limit
                 json.dumps({"timestamp": NOW, "model": m}) + "\n"]    # no usage
        lines += [line("s3", 1000 + 20 * n, 2000 * n, 2000) for n in range(30)]
        lines += [line("s2", 5, 0, 4000), line("s2", 100, 4000, 100),  # back in time
                  line("s4", 7, 0, 3000, end="")]                       # no newline yet
        path = os.path.join(self.tmp, "logs", "requests.jsonl")
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as handle:
            handle.write(catop.UTF8_BOM + "".join(lines).encode())
        return path

    def compared(self, doc):
        return {name: doc[name] for name in self.COMPARED}

    def snapshot(self, *argv):
        code, out, err = self.run_main(*(argv + ("--format", "json", "--offline",
                                                 "--group-by", "session,model")))
        self.assertEqual(code, 0, err)
        return self.compared(json.loads(out))

    def live_model_in_chunks(self, path, chunk_bytes):
        """The live model tailing a copy of the log that grows chunk_bytes at a time."""
        with open(path, "rb") as handle:
            data = handle.read()
        grown = os.path.join(self.tmp, "grown.jsonl")
        open(grown, "wb").close()
        model = catop.LiveModel([catop.LiveFileSource(grown)], PRICES)
        for start in range(0, len(data), chunk_bytes):
            with open(grown, "ab") as handle:
                handle.write(data[start:start + chunk_bytes])
            model.poll()
        model.finish()
        now = time.time()
        aggregate = catop.aggregate_model(model, ("session", "model"), None, None, None, now)
        report = catop.Report(aggregate, model.stats(), PRICES, now)
        return self.compared(json.loads("".join(catop.iter_json(report))))

    def test_a_request_log_by_every_path(self):
        path = self.request_log()
        history = os.path.join(self.tmp, "h.sqlite3")
        with mock.patch.object(catop, "MAX_LINE_BYTES", 1000), \
                mock.patch.object(catop, "PARALLEL_MIN_BYTES", 1), \
                mock.patch.object(catop, "PROBE_MIN_RECORDS", 10 ** 9):
            reference = self.snapshot("--file", path, "--no-history", "--jobs", "1")
            paths = {
                "two processes": self.snapshot("--file", path, "--no-history", "--jobs", "2"),
                "three processes": self.snapshot("--file", path, "--no-history", "--jobs", "3"),
                "history cold": self.snapshot("--file", path, "--history", history),
                "history warm": self.snapshot("--file", path, "--history", history),
                "history, two processes": self.snapshot("--file", path, "--history",
                                                        history + "2", "--jobs", "2"),
                "--duration": self.snapshot("--file", path, "--no-history", "--once",
                                            "--duration", "0.2", "--interval", "0.1"),
                "stdin": None,
                "live, 7-byte chunks": self.live_model_in_chunks(path, 7),
                "live, 1,000-byte chunks": self.live_model_in_chunks(path, 1000),
            }
            with open(path, "rb") as handle:
                with mock.patch.object(sys, "stdin", io.TextIOWrapper(io.BytesIO(
                        handle.read()))):
                    paths["stdin"] = self.snapshot("--stdin", "--no-history")
            os.remove(path)
            paths["history, the log deleted"] = self.snapshot("--history", history)
        self.assertEqual(reference["totals"]["requests"], 38)
        # by hand: s2's second request (at +10 s, read 0 of the 4,000 written at +5 s),
        # s1's late one (+30 s, read 0 of 10,000 written at +0 s) and s1's +400 s one
        # (340 s after the last, past the 5-minute TTL)
        self.assertEqual([(b["session"], b["cause"]) for b in reference["breaks"]],
                         [("s2", "prefix_changed"), ("s1", "prefix_changed"),
                          ("s1", "ttl_expired")])
        for name, doc in paths.items():
            with self.subTest(path=name):
                for part in self.COMPARED:
                    self.assertEqual(doc[part], reference[part], part)

    def test_the_live_table_prices_as_the_snapshot_does(self):
        """The screen's table and its totals, grown by appends, to the last digit."""
        path = self.request_log()
        model = catop.LiveModel([catop.LiveFileSource(path)], PRICES)
        model.poll()
        snapshot = catop.aggregate_model(model, ("session", "model"), None, None, None, NOW)
        view = catop.View(("session", "model"))
        cache = {}
        frame = catop.build_frame(model, view, NOW, cache=cache)
        with open(path, "a") as handle:     # appended: the cached table takes it in
            handle.write("\n" + json.dumps({"timestamp": NOW + 5000, "model": "gpt-4o",
                                     "session_id": "s9", "usage": {"prompt_tokens": 1234,
                                                                   "completion_tokens": 5}})
                         + "\n")
        model.poll()
        frame = catop.build_frame(model, view, NOW, cache=cache)
        snapshot = catop.aggregate_model(model, ("session", "model"), None, None, None, NOW)
        self.assertEqual(frame.totals.as_dict(), snapshot.totals.as_dict())
        self.assertEqual({key: tally.as_dict() for key, tally in frame.rows},
                         {key: tally.as_dict() for key, tally in snapshot.tallies.items()})
        self.assertEqual(frame.totals.requests, 39)   # the last line, ended, and the new

    def test_agent_logs_by_every_path(self):
        """The agent examples (streaming duplicates, a subagent replay, a forked Codex
        session, Gemini's .json and .jsonl copies) plus a resumed Claude Code session
        whose file starts with a verbatim copy of its parent's lines."""
        home = os.path.join(self.tmp, "agents")
        shutil.copytree(AGENT_EXAMPLES, home)
        shop = os.path.join(home, "claude", "projects", "-home-dev-shop")
        with open(os.path.join(shop, "1111aaaa-2222-4bbb-8ccc-333333333333.jsonl")) as handle:
            parent = [line for line in handle if '"assistant"' in line][:2]
        with open(os.path.join(shop, "0000resumed.jsonl"), "w") as handle:
            handle.write("".join(line.replace("1111aaaa-2222-4bbb-8ccc-333333333333",
                                              "0000resumed") for line in parent))
            handle.write(AgentTests.claude_line("0000resumed", "m-new", "2026-03-10T09:00:00Z",
                                                700))
        os.environ.update(agent_variables(home))
        agents = tuple(part for name in catop.AGENTS for part in ("--agent", name))
        history = os.path.join(self.tmp, "h.sqlite3")
        with mock.patch.object(catop, "PARALLEL_MIN_BYTES", 1):
            reference = self.snapshot(*agents, "--no-history", "--jobs", "1")
            paths = {"two processes": self.snapshot(*agents, "--no-history", "--jobs", "2"),
                     "history cold": self.snapshot(*agents, "--history", history),
                     "history warm": self.snapshot(*agents, "--history", history),
                     "history, two processes": self.snapshot(*agents, "--history",
                                                             history + "2", "--jobs", "2"),
                     "--duration": self.snapshot(*agents, "--no-history", "--once",
                                                 "--duration", "0.2", "--interval", "0.1"),
                     "--duration, history": self.snapshot(*agents, "--history", history,
                                                          "--once", "--duration", "0.2",
                                                          "--interval", "0.1")}
            moved = os.path.join(self.tmp, "moved")  # each folder keeps its own rows (it
            # showed none where its path sorts after the first: the rows kept the first)
            os.rename(home, moved)
            os.environ.update(agent_variables(moved))
            paths["history, the folders moved"] = self.snapshot(*agents, "--history", history)
            paths["--duration, history, the folders moved"] = self.snapshot(
                *agents, "--history", history, "--once", "--duration", "0.2", "--interval",
                "0.1")
            shutil.rmtree(moved)   # then both folders' rows are stored: each counts once
            paths["history, the logs deleted"] = self.snapshot("--history", history)
        self.assertGreater(reference["totals"]["requests"], 10)
        sessions = {g["key"]["session"]: g["requests"] for g in reference["groups"]}
        self.assertEqual(sessions["0000resumed"], 1)    # its copies stay with the parent
        for name, doc in paths.items():
            with self.subTest(path=name):
                for part in self.COMPARED:
                    self.assertEqual(doc[part], reference[part], part)


class TrendTests(unittest.TestCase):

    def test_daily_sums_and_sparklines(self):
        now = time.mktime((2026, 3, 11, 15, 30, 0, 0, 0, -1))
        trend = catop.DailyTrend(now)
        trend.add(now - 3600, 2.0, 5.0, 80, 100)            # today
        trend.add(now - 86400, 1.0, 1.5, 10, 100)           # yesterday
        trend.add(now - 200 * 86400, 99.0, 99.0, 1, 1)      # beyond 90 days: left out
        trend.add(None, 50.0, 50.0, 1, 1)
        cost, saved, hit = trend.series(3)
        self.assertEqual((cost, saved, hit), ([None, 1.0, 2.0], [None, 0.5, 3.0],
                                              [None, 0.1, 0.8]))
        lines = catop.trend_lines(trend, 3)
        self.assertEqual(lines[0], "trend 3d  cost   \u2584\u2588  $3.00")
        # the window's hit rate: (80 + 10) of (100 + 100) read from the cache
        self.assertEqual(lines[2], "          hit    \u2581\u2587  45.0%")
        wide = catop.trend_lines(trend, 30)            # "trend 30d": the sparklines still
        self.assertEqual([line[:17] for line in wide],  # start in one column
                         ["trend 30d  cost  ", " " * 11 + "saved ", " " * 11 + "hit   "])


class BudgetTests(IsolatedEnv):

    NOW = time.mktime((2026, 3, 11, 15, 30, 0, 0, 0, -1))  # a Wednesday, local time

    def local(self, *parts):
        return time.mktime(parts + (0, 0, 0, 0, 0, -1)[len(parts) - 3:])

    def test_calendar_arithmetic_and_states(self):
        tracker = catop.BudgetTracker({"daily": 10, "weekly": 50, "monthly": 100}, self.NOW)
        tracker.add(self.local(2026, 3, 11, 9, 0), 6.0)     # today
        tracker.add(self.local(2026, 3, 9, 0, 0), 5.0)      # Monday, this week
        tracker.add(self.local(2026, 3, 2, 12, 0), 40.0)    # this month
        tracker.add(self.local(2026, 2, 27, 12, 0), 100.0)  # last month
        tracker.add(None, 1000.0)                           # no time: no period
        self.assertEqual(tracker.status(), [("daily", 10, 6.0, 0.6, "ok"),
                                            ("weekly", 50, 11.0, 0.22, "ok"),
                                            ("monthly", 100, 51.0, 0.51, "ok")])
        tracker.add(self.local(2026, 3, 11, 10, 0), 2.0)
        self.assertEqual(tracker.status()[0][3:], (0.8, "warning"))
        tracker.add(self.local(2026, 3, 11, 11, 0), 2.0)
        self.assertEqual(tracker.status()[0][3:], (1.0, "over"))

    def write_log(self):
        path = os.path.join(self.tmp, "spend.jsonl")
        with open(path, "w") as handle:
            for hours_ago in (1, 2):
                handle.write(json.dumps({"timestamp": time.time() - hours_ago * 3600 - 60,
                                         "model": "gpt-4o", "usage": {
                                             "prompt_tokens": 100000,
                                             "completion_tokens": 10000}}) + "\n")
        return path  # two requests of 100,000 x 2.5e-6 + 10,000 x 1e-5 = $0.35 each

    def test_flags_config_gate_and_outputs(self):
        path = self.write_log()
        config = os.path.join(self.tmp, "config", "catop", "config.json")
        os.makedirs(os.path.dirname(config))
        with open(config, "w") as handle:
            json.dump({"budgets": {"weekly": 0.5, "yearly": 9, "monthly": "lots"}}, handle)
        code, out, err = self.run_main("--file", path, "--offline", "--format", "json",
                                       "--budget-monthly", "10")
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["budgets"], [
            {"period": "weekly", "limit_usd": 0.5, "spent_usd": 0.7, "share": 1.4,
             "state": "over"},
            {"period": "monthly", "limit_usd": 10.0, "spent_usd": 0.7, "share": 0.07,
             "state": "ok"}])
        self.assertIn("ignoring budgets.yearly", err)
        self.assertIn("ignoring budgets.monthly", err)
        code, out, err = self.run_main("--file", path, "--offline", "--enforce-budgets",
                                       "--width", "120")
        self.assertEqual(code, 3)
        self.assertIn("catop: gate: weekly budget spent: $0.70 of $0.50", err)
        self.assertIn("budget  weekly: $0.70 of $0.50 (140%)  OVER BUDGET", out)
        os.unlink(config)
        code, out, _ = self.run_main("--file", path, "--offline", "--format", "json")
        self.assertNotIn("budgets", json.loads(out))

    def test_live_budget_line_and_alert(self):
        model = live_model(recent_requests())
        view = catop.View()
        spent = sum(cost_of(r)[0] for r in recent_requests())  # all within today
        limits = {"daily": round(spent / 2, 2), "monthly": round(spent / 0.9, 2)}
        frame = catop.build_frame(model, view, NOW, 5.0, {}, limits)
        self.assertAlmostEqual(frame.budgets[0][2], spent)
        self.assertEqual([row[4] for row in frame.budgets], ["over", "warning"])
        lines = catop.render_screen(frame, view, RenderScreenTests.META, 160, 30)
        budget = next(l for l in lines if l and l[0][0] == "budget")
        self.assertEqual([style for _, style in budget], ["dim", "bad", "warn"])
        self.assertEqual(frame.alerts[0], "daily budget spent: %s of %s" % (
            catop.fmt_usd(spent, 2), catop.fmt_usd(limits["daily"], 2)))

    def test_week_and_month_groups(self):
        ts = self.local(2026, 3, 11, 9, 0)
        key_of = catop.group_key_function(("month", "week", "day"))
        self.assertEqual(key_of(catop.Request(ts=ts)), ("2026-03", "2026-W11", "2026-03-11"))
        self.assertEqual(key_of(catop.Request()), ("(no time)",) * 3)


class HistoryTests(IsolatedEnv):

    def setUp(self):
        super().setUp()
        self.store = os.path.join(self.tmp, "state", "catop", "history.sqlite3")

    def report(self, *argv):
        code, out, err = self.run_main(*(argv + ("--format", "json", "--offline")))
        self.assertEqual(code, 0, err)
        return json.loads(out)

    def line(self, tokens, ts=None):
        return json.dumps({"model": "gpt-4o", "timestamp": ts or NOW,
                           "usage": {"prompt_tokens": tokens, "completion_tokens": 1}}) + "\n"

    def test_a_log_whose_name_is_not_utf8_is_read_beside_the_history(self):
        """A byte that is not UTF-8 in a log's name: the history cannot store the name
        (an internal error, the run lost); the log is read without it, said once."""
        try:
            folder = os.fsdecode(os.path.join(os.fsencode(self.tmp), b"logs-\xff"))
            os.makedirs(folder)
            odd = os.path.join(folder, os.fsdecode(b"a\xfe.jsonl"))
            with open(odd, "w") as handle:
                handle.write(self.line(100))
        except (OSError, UnicodeError):
            self.skipTest("this file system refuses names that are not UTF-8")
        plain = os.path.join(self.tmp, "plain.jsonl")
        with open(plain, "w") as handle:
            handle.write(self.line(7))
        for _ in range(2):
            code, out, err = self.run_main("--file", folder, "--file", plain, "--format",
                                           "json", "--offline")
            self.assertEqual(code, 0, err)
            self.assertEqual(err.count("is read without the history"), 1)
            self.assertIn("logs-\\xff", err)
            totals = json.loads(out)["totals"]
            self.assertEqual((totals["requests"], totals["input_tokens"]), (2, 107))
        args = catop.build_parser().parse_args(["--file", folder, "--offline"])
        args.file = catop.expand_file_args(args.file)
        sources = catop.resume_from_history(args, catop.live_sources(args, NOW))
        model = catop.LiveModel(sources, PRICES)
        model.poll()
        catop.HistoryWriter(args, sources).store_once()
        self.assertEqual([entry.req.miss for entry in model.timeline.timed], [100])

    def test_a_folder_of_over_a_thousand_logs_is_reported_from_the_history(self):
        """1,100 logs: the scope of the history's query was an OR a log (SQLite refuses
        an expression over 1,000 deep) with a value each, thrice (999 values at most
        before SQLite 3.32): the report fell back to the logs, with a warning."""
        folder = os.path.join(self.tmp, "logs")
        os.makedirs(folder)
        for number in range(1100):
            name = "it's-%04d.jsonl" % number if number == 7 else "%04d.jsonl" % number
            with open(os.path.join(folder, name), "w") as handle:
                handle.write(self.line(100 + number))
        for run in range(2):
            code, out, err = self.run_main("--file", folder, "--format", "json", "--offline")
            self.assertEqual((code, err), (0, ""))
            doc = json.loads(out)
            self.assertEqual((doc["totals"]["requests"], doc["totals"]["input_tokens"]),
                             (1100, 100 * 1100 + 1099 * 1100 // 2))
            self.assertEqual(sum(source["records"] for source in doc["sources"]
                                 if source["name"].startswith("file:")), 1100 if not run else 0)
        one = self.report("--file", os.path.join(folder, "it's-0007.jsonl"))["totals"]
        self.assertEqual((one["requests"], one["input_tokens"]), (1, 107))

    def test_reingestion_appends_truncation_and_rotation(self):
        path = os.path.join(self.tmp, "log.jsonl")
        with open(path, "w") as handle:
            handle.write(self.line(100) + self.line(200))
        first = self.report("--file", path)
        self.assertEqual(first["totals"]["input_tokens"], 300)
        self.assertEqual(first["sources"][-1]["name"], "history:" + self.store)
        again = self.report("--file", path)
        self.assertEqual(again["totals"]["input_tokens"], 300)       # never counted twice
        self.assertEqual(again["sources"][0]["records"], 0)          # nothing new was read
        with open(path, "a") as handle:
            handle.write(self.line(50) + '{"model": "gpt-4o", "usage": {"prompt_t')
        appended = self.report("--file", path)
        self.assertEqual(appended["totals"]["input_tokens"], 350)    # the partial line waits
        with open(path, "a") as handle:
            handle.write('okens": 7}}\n')
        self.assertEqual(self.report("--file", path)["totals"]["input_tokens"], 357)
        with open(path, "w") as handle:                              # truncated, rewritten
            handle.write(self.line(1000))
        self.assertEqual(self.report("--file", path)["totals"]["input_tokens"], 1357)
        os.rename(path, path + ".1")                                 # rotated
        with open(path, "w") as handle:
            handle.write(self.line(5))
        self.assertEqual(self.report("--file", path)["totals"]["input_tokens"], 1362)

    def test_a_log_rewritten_whole_with_more_lines_counts_each_once(self):
        """A log renamed over by a copy holding its lines and more (a tool writing it
        whole): its lines were stored twice (2 requests became 5)."""
        path = os.path.join(self.tmp, "log.jsonl")
        with open(path, "w") as handle:
            handle.write(self.line(100) + self.line(200))
        self.assertEqual(self.report("--file", path)["totals"]["input_tokens"], 300)
        with open(path + ".tmp", "w") as handle:
            handle.write(self.line(100) + self.line(200) + self.line(5))
        os.replace(path + ".tmp", path)
        for argv in (("--no-history",), (), ()):
            totals = self.report("--file", path, *argv)["totals"]
            self.assertEqual((totals["requests"], totals["input_tokens"]), (3, 305))
        with open(path + ".tmp", "w") as handle:    # a log of other lines: kept with them
            handle.write(self.line(7))
        os.replace(path + ".tmp", path)
        totals = self.report("--file", path)["totals"]
        self.assertEqual((totals["requests"], totals["input_tokens"]), (4, 312))

    def test_a_folder_of_rotated_logs_counts_each_line_once(self):
        """A log rotated (renamed, or copied and truncated) beside a new one: the history
        kept the old lines under the old name and read them again from the rotated
        file (2 requests counted 4 times over two rotations).  The rotated file now
        takes its lines over; a copy of a log still holding them counts on its own,
        as without the history."""
        logs = os.path.join(self.tmp, "logs")
        os.makedirs(logs)
        app, first, second = (os.path.join(logs, name) for name in
                              ("app.jsonl", "app-1.jsonl", "app-2.jsonl"))

        def write(path, *tokens):
            with open(path, "w") as handle:
                handle.write("".join(self.line(n) for n in tokens))

        def seen(*argv):
            totals = self.report(*(argv or ("--file", logs)))["totals"]
            return totals["requests"], totals["input_tokens"]
        write(app, 100, 200)
        self.assertEqual(seen(), (2, 300))
        os.rename(app, first)                          # rotated by renaming
        write(app, 5)
        self.assertEqual(seen("--file", logs, "--no-history"), (3, 305))
        self.assertEqual(seen(), (3, 305))
        self.assertEqual((seen("--file", app), seen("--file", first)), ((1, 5), (2, 300)))
        os.rename(first, second)                       # and again, the old name read first
        os.rename(app, first)
        write(app, 7)
        self.assertEqual(seen("--file", app, "--file", first, "--file", second), (4, 312))
        self.assertEqual((seen(), seen(), seen("--history", self.store)), ((4, 312),) * 3)
        os.remove(second)                              # pruned: the history keeps it
        self.assertEqual((seen("--file", logs, "--no-history"), seen()), ((2, 12), (2, 12)))
        self.assertEqual(self.report()["totals"]["input_tokens"], 312)
        with open(app) as handle:                      # copied away, truncated, refilled
            kept = handle.read()
        with open(os.path.join(logs, "app-3.jsonl"), "w") as handle:
            handle.write(kept)
        write(app, 9, 11)
        self.assertEqual((seen("--file", logs, "--no-history"), seen()), ((4, 32), (4, 32)))
        with open(os.path.join(logs, "backup.jsonl"), "w") as handle:
            handle.write(self.line(9) + self.line(11))  # a copy of a log that still holds
        self.assertEqual((seen("--file", logs, "--no-history"), seen()), ((6, 52), (6, 52)))

        def replaced():
            db = sqlite3.connect(self.store)
            try:
                return db.execute("SELECT count(*) FROM replaced").fetchone()[0]
            finally:
                db.close()
        self.assertEqual(replaced(), 0)            # each one taken over
        write(app + ".tmp", 13)                    # replaced by another log: its lines are
        os.replace(app + ".tmp", app)              # the backup's (counted there, once)
        self.assertEqual((seen("--file", app), seen("--file", app, "--no-history")),
                         ((1, 13), (1, 13)))
        self.assertEqual((seen(), seen("--file", logs, "--no-history")), ((5, 45), (5, 45)))
        write(app + ".tmp", 17)                    # and again: 13 is kept with it
        os.replace(app + ".tmp", app)
        self.assertEqual(seen("--file", app), (2, 30))
        self.assertEqual(replaced(), 1)
        self.assertEqual(self.run_main("--prune-history", "30")[0], 0)   # (all from March)
        self.assertEqual(replaced(), 0)

    def test_a_log_named_two_ways_is_one_log(self):
        """logs/app.jsonl from its folder's parent, then /abs/logs/app.jsonl (cron), then
        logs/app.jsonl again: the third showed 0 (the rows had gone to the other name)."""
        os.makedirs(os.path.join(self.tmp, "logs"))
        path = os.path.join(self.tmp, "logs", "app.jsonl")
        with open(path, "w") as handle:
            handle.write(self.line(100) + self.line(200))
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.tmp)
        for name in ("logs/app.jsonl", path, "logs/app.jsonl", "./logs/../logs/app.jsonl"):
            totals = self.report("--file", name)["totals"]
            self.assertEqual((totals["requests"], totals["input_tokens"]), (2, 300), name)
        self.assertEqual(self.report()["totals"]["input_tokens"], 300)

    def test_a_rewritten_log_and_a_linked_log_keep_their_lines(self):
        """Review cases: a log rewritten whole, then copied, handed its lines to the copy
        (4 requests for 6); a link pointed at a new file handed the old file's lines
        away (its folder showed 1 for 3)."""
        logs = os.path.join(self.tmp, "logs")
        os.makedirs(logs)
        app = os.path.join(logs, "app.jsonl")

        def seen(*names):
            totals = self.report(*[part for name in names for part in ("--file", name)])
            return totals["totals"]["requests"], totals["totals"]["input_tokens"]
        with open(app, "w") as handle:
            handle.write(self.line(1) + self.line(2))
        self.assertEqual(seen(app), (2, 3))
        with open(app + ".tmp", "w") as handle:
            handle.write(self.line(1) + self.line(2) + self.line(3))
        os.replace(app + ".tmp", app)
        self.assertEqual(seen(app), (3, 6))
        shutil.copy(app, os.path.join(logs, "app-copy.jsonl"))
        self.assertEqual((seen(logs), seen(app)), ((6, 12), (3, 6)))
        linked = os.path.join(self.tmp, "linked")
        os.makedirs(linked)
        old, new, current = (os.path.join(linked, name) for name in
                             ("app-1130.jsonl", "app-1201.jsonl", "current.jsonl"))
        with open(old, "w") as handle:
            handle.write(self.line(10) + self.line(20))
        with open(new, "w") as handle:
            handle.write(self.line(40))
        os.symlink(old, current)
        self.assertEqual(seen(current), (2, 30))
        os.remove(current)
        os.symlink(new, current)            # the link names the other file now
        self.assertEqual(seen(current), (1, 40))
        self.assertEqual((seen(old), seen(new), seen(old, current)), ((2, 30), (1, 40), (3, 70)))

    def test_a_copy_read_before_its_log_was_truncated_counts_once(self):
        """copytruncate read between the copy and the truncation: the copy counted on its
        own (both held the lines), then the log kept them too (5 requests for 3)."""
        logs = os.path.join(self.tmp, "logs")
        os.makedirs(logs)
        app, copy = os.path.join(logs, "app.jsonl"), os.path.join(logs, "app-1.jsonl")
        with open(app, "w") as handle:
            handle.write(self.line(1) + self.line(2))

        def seen(*extra):
            totals = self.report("--file", logs, *extra)["totals"]
            return totals["requests"], totals["input_tokens"]
        self.assertEqual(seen(), (2, 3))
        shutil.copy(app, copy)
        self.assertEqual((seen(), seen("--no-history")), ((4, 6), (4, 6)))
        with open(app, "w") as handle:
            handle.write(self.line(100))
        self.assertEqual((seen(), seen("--no-history"), seen()), ((3, 103),) * 3)

    def test_a_copy_of_an_agents_file_read_as_a_request_log_is_read_whole(self):
        """Its first and last bytes are those the agent's reading stored, and its file
        is gone: still it takes over nothing (no request log held it) and is read."""
        root = self.copy_agent_examples("claude", "CLAUDE_CONFIG_DIR")
        self.report("--agent", "claude-code")
        shop = os.path.join(root, "projects", "-home-dev-shop")
        original = os.path.join(shop, sorted(name for name in os.listdir(shop)
                                             if name.endswith(".jsonl"))[0])
        copy = os.path.join(self.tmp, "copy.jsonl")
        shutil.copy(original, copy)
        os.remove(original)
        fresh = self.report("--file", copy, "--no-history")["totals"]
        self.assertEqual(self.report("--file", copy)["totals"], fresh)
        self.assertEqual(fresh["requests"], 7)

    def test_copy_truncate_and_long_lines_give_what_no_history_gives(self):
        path = os.path.join(self.tmp, "log.jsonl")
        with open(path, "w") as handle:
            handle.write("".join(self.line(100 + n) for n in range(50)))
        self.report("--file", path)
        with open(path, "r+") as handle:        # copied away, truncated in place, refilled
            handle.truncate(0)
            handle.write("".join(self.line(1000 + n) for n in range(100)))
        doc = self.report("--file", path)
        self.assertEqual(doc["totals"]["requests"], 150)
        self.assertEqual(doc["totals"]["input_tokens"],
                         sum(range(100, 150)) + sum(range(1000, 1100)))
        long_log = os.path.join(self.tmp, "long.jsonl")
        padded = json.dumps({"model": "gpt-4o", "timestamp": NOW, "pad": "x" * 1500,
                             "usage": {"prompt_tokens": 9, "completion_tokens": 1}})
        with open(long_log, "w") as handle:
            handle.write(self.line(5) + padded + "\n" + self.line(6))
        with mock.patch.object(catop, "MAX_LINE_BYTES", 1000):
            plain = self.report("--file", long_log, "--no-history")
            stored = self.report("--file", long_log)
        for doc in (plain, stored):
            self.assertEqual(doc["totals"]["input_tokens"], 11)
            self.assertEqual(doc["sources"][0]["skipped"]["malformed"], 1)

    def test_a_big_request_log_is_stored_in_parallel_exactly_as_serially(self):
        path = os.path.join(self.tmp, "big.jsonl")
        lines = [self.line(100 + n, NOW + n) for n in range(300)] + ["{broken\n"]
        with open(path, "w") as handle:
            handle.write("".join(lines) + '{"model": "gpt-4o", "usage": {"prompt_t')
        stored = []
        for threshold, name in ((10 ** 12, "serial.sqlite3"), (1, "parallel.sqlite3")):
            store = os.path.join(self.tmp, name)
            history = catop.History(store)
            stats = catop.SourceStats("file")
            with mock.patch.object(catop, "PARALLEL_MIN_BYTES", threshold), \
                    mock.patch.object(catop, "worker_count", return_value=3), \
                    mock.patch.object(catop, "HISTORY_SAVE_ROWS", 40):
                catop.ingest_request_file(history, path, stats)
            rows = sorted(history.db.execute("SELECT * FROM requests"))
            offset = history.file_state(path).offset
            stored.append((rows, offset, stats.records, dict(stats.skipped)))
            history.close()
        self.assertEqual(stored[0], stored[1])
        rows, offset, records, skipped = stored[1]
        # the cut last line is malformed in this run, as --no-history says, and waits
        self.assertEqual((len(rows), records, skipped["malformed"]), (300, 300, 2))
        self.assertEqual(offset, len("".join(lines)))
        self.assertEqual(sum(row[8] for row in rows), sum(range(100, 400)))
        with open(path, "a") as handle:                   # completed, then more appended
            handle.write('okens": 7}}\n' + self.line(1000))
        history = catop.History(os.path.join(self.tmp, "parallel.sqlite3"))
        stats = catop.SourceStats("file")
        with mock.patch.object(catop, "PARALLEL_MIN_BYTES", 1), \
                mock.patch.object(catop, "worker_count", return_value=2):
            catop.ingest_request_file(history, path, stats)
        total = history.db.execute("SELECT count(*), sum(miss) FROM requests").fetchone()
        history.close()
        self.assertEqual((stats.records, total), (2, (302, sum(range(100, 400)) + 1007)))

    def test_agents_match_a_fresh_read_and_warm_runs_read_nothing(self):
        self.point_agents_at_examples()
        for name in catop.AGENTS:
            with self.subTest(agent=name):
                fresh = self.run_json("--agent", name)
                stored = self.report("--agent", name)
                self.assertEqual(stored["totals"], fresh["totals"])
                warm = self.report("--agent", name)
                self.assertEqual(warm["totals"], fresh["totals"])
                if not catop.AGENT_TABLE[name].whole:   # a database is read whole
                    self.assertEqual(warm["sources"][0]["records"], 0)

    def test_opencode_messages_keep_their_own_keys(self):
        folder = os.path.join(self.tmp, "opencode", "storage", "message", "ses_x")
        os.makedirs(folder)
        for n in range(3):  # ids alike but for their ends
            with open(os.path.join(folder, "msg_%d.json" % n), "w") as handle:
                json.dump({"id": "msg_same_prefix_%d" % n, "sessionID": "ses_x",
                           "role": "assistant", "modelID": "gpt-4o", "providerID": "openai",
                           "time": {"created": NOW * 1000}, "tokens": {
                               "input": 100 + n, "output": 1, "reasoning": 0,
                               "cache": {"read": 0, "write": 0}}}, handle)
        os.environ["OPENCODE_DATA_DIR"] = os.path.join(self.tmp, "opencode")
        for _ in range(2):
            totals = self.report("--agent", "opencode")["totals"]
            self.assertEqual((totals["requests"], totals["miss_tokens"]), (3, 303))

    def test_claude_code_response_streamed_across_runs(self):
        root = os.path.join(self.tmp, "claude")
        folder = os.path.join(root, "projects", "-p")
        os.makedirs(folder)
        path = os.path.join(folder, "s.jsonl")
        os.environ["CLAUDE_CONFIG_DIR"] = root

        def write(output, mode):
            with open(path, mode) as handle:
                handle.write(json.dumps({
                    "type": "assistant", "sessionId": "s", "requestId": "r1", "timestamp": NOW,
                    "message": {"id": "m1", "model": "claude-sonnet-4-5", "usage": {
                        "input_tokens": 5, "cache_read_input_tokens": 1000,
                        "output_tokens": output}}}) + "\n")
        write(10, "w")
        self.assertEqual(self.report("--agent", "claude-code")["totals"]["output_tokens"], 10)
        write(500, "a")
        totals = self.report("--agent", "claude-code")["totals"]
        self.assertEqual((totals["requests"], totals["output_tokens"]), (1, 500))

    def live_model(self, *argv):
        args = catop.build_parser().parse_args(list(argv) + ["--offline"])
        args.file = catop.expand_file_args(args.file)
        sources = catop.resume_from_history(args, catop.live_sources(args, NOW))
        model = catop.LiveModel(sources, PRICES)
        model.poll()
        return model, sources

    def live_totals(self, model):
        t = catop.Tally()
        for entry in model.timeline.since(None):
            t.add(entry.req, entry.cost, entry.no_cache_cost, entry.priced)
        return t.as_dict()

    def test_live_view_resumes_from_the_history(self):
        root = self.copy_agent_examples("claude", "CLAUDE_CONFIG_DIR")
        fresh = self.run_json("--agent", "claude-code")["totals"]
        self.report("--agent", "claude-code")              # fills the history
        model, sources = self.live_model("--agent", "claude-code")
        self.assertEqual(self.live_totals(model), fresh)
        self.assertEqual(len(sources), 1)
        # msg_D grows after the history was written; a new response arrives too
        path = os.path.join(root, "projects", "-home-dev-shop",
                            "1111aaaa-2222-4bbb-8ccc-333333333333.jsonl")
        with open(path, "a") as handle:
            handle.write("\n")  # ends the truncated line the example closes with
            for mid, rid, output in (("msg_D", "req_D", 900), ("msg_F", "req_F", 5)):
                handle.write(json.dumps({
                    "type": "assistant", "sessionId": "1111aaaa-2222-4bbb-8ccc-333333333333",
                    "requestId": rid, "timestamp": "2026-03-10T08:06:00.000Z",
                    "message": {"id": mid, "model": "claude-opus-4-5", "usage": {
                        "input_tokens": 8, "cache_creation_input_tokens": 9000,
                        "output_tokens": output}}}) + "\n")
        self.assertTrue(model.poll())
        totals = self.live_totals(model)
        self.assertEqual(totals["requests"], fresh["requests"] + 1)
        self.assertEqual(totals["output_tokens"], fresh["output_tokens"] - 150 + 900 + 5)

    def test_live_view_shows_deleted_logs_with_no_source_named(self):
        root = self.copy_agent_examples("codex", "CODEX_HOME")
        before = self.report("--agent", "codex")["totals"]
        shutil.rmtree(root)
        model, sources = self.live_model()
        self.assertEqual([s.stats.name for s in sources], ["history:" + self.store])
        self.assertEqual(self.live_totals(model)["requests"], before["requests"])

    def test_stored_source_holds_only_what_no_live_source_reads(self):
        codex = self.copy_agent_examples("codex", "CODEX_HOME")
        self.copy_agent_examples("claude", "CLAUDE_CONFIG_DIR")
        for agent in ("codex", "claude-code"):
            self.assertEqual(self.report("--agent", agent)["totals"]["requests"], 6)
        shutil.rmtree(codex)
        model, sources = self.live_model()
        names = [s.stats.name for s in sources]
        self.assertEqual(names, ["agent:claude-code", "history:" + self.store])
        self.assertEqual(sorted(r.agent for r in sources[1].requests), ["codex"] * 6)
        self.assertEqual(self.live_totals(model)["requests"], 12)

    def test_deleted_logs_are_still_reported(self):
        root = self.copy_agent_examples("codex", "CODEX_HOME")
        before = self.report("--agent", "codex")["totals"]
        shutil.rmtree(root)
        os.makedirs(root)
        later = self.report()  # no source named: everything the history holds
        self.assertEqual(later["totals"], before)

    def test_two_writers_at_once(self):
        logs = []
        for n in range(2):
            path = os.path.join(self.tmp, "w%d.jsonl" % n)
            with open(path, "w") as handle:
                handle.write("".join(self.line(1, NOW + i) for i in range(3000)))
            logs.append(path)
        env = dict(os.environ)
        workers = [subprocess.Popen([sys.executable, os.path.join(HERE, "catop.py"), "--file",
                                     path, "--once", "--offline", "--format", "csv"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                   for path in logs]
        for worker in workers:
            _, err = worker.communicate(timeout=60)
            self.assertEqual(worker.returncode, 0, err)
        totals = self.report()["totals"]
        self.assertEqual(totals["requests"], 6000)

    def stored_log(self, count=3000):
        path = os.path.join(self.tmp, "log.jsonl")
        with open(path, "w") as handle:
            handle.write("".join(self.line(100 + n % 7, NOW + n) for n in range(count)))
        want = self.report("--file", path)["totals"]
        self.assertEqual(want["requests"], count)
        return path, want

    def alter_store(self, statement):
        db = sqlite3.connect(self.store)
        db.execute(statement)
        db.commit()
        db.close()

    def moved_aside(self):
        return [name for name in os.listdir(os.path.dirname(self.store)) if ".corrupt-" in name
                and not name.endswith(("-wal", "-shm"))]

    def test_any_damage_found_while_reading_is_moved_aside_and_the_report_comes_from_logs(self):
        path, want = self.stored_log()
        rng = random.Random(7)
        size = os.path.getsize(self.store)
        pages = size // 4096
        for trial in range(12):
            with self.subTest(trial=trial):
                page = rng.randrange(1, pages)
                with open(self.store, "r+b") as handle:
                    handle.seek(page * 4096)
                    handle.write(bytes(rng.randrange(256) for _ in range(4096)))
                code, out, err = self.run_main("--file", path, "--format", "json", "--offline")
                self.assertEqual(code, 0, err)
                self.assertEqual(strict_json(out)["totals"], want)   # from the history or logs
                self.assertNotIn("Traceback", err)
                self.assertLessEqual(err.count("\n"), 1)
                again = self.report("--file", path)["totals"]       # and the next run too
                self.assertEqual(again, want)

    def test_undecodable_text_in_the_store_is_damage_not_a_crash(self):
        path, want = self.stored_log(200)
        self.alter_store("UPDATE requests SET model = CAST(X'FF1B5B324A' AS TEXT)"
                         " WHERE rowid % 20 = 0")
        code, out, err = self.run_main("--export-history", "csv")
        self.assertEqual(code, 1)
        self.assertIn("is damaged", err)
        self.assertNotIn("\x1b", err)                       # the file's bytes, cleaned
        self.assertEqual(len(self.moved_aside()), 1)
        self.assertEqual(self.report("--file", path)["totals"], want)   # rebuilt from the log

    def test_a_row_no_report_would_show_is_counted_and_said(self):
        path, want = self.stored_log(50)
        self.alter_store("UPDATE requests SET source = 'filf:' || substr(source, 6)"
                         " WHERE rowid = 7")
        code, out, err = self.run_main("--file", path, "--format", "json", "--offline")
        self.assertEqual(code, 0)
        doc = strict_json(out)
        self.assertEqual(doc["totals"]["requests"], 49)
        self.assertEqual(doc["sources"][-1]["skipped"]["malformed"], 1)
        self.assertIn("holds 1 damaged row", err)

    def test_a_full_disk_says_so_and_still_reports_from_the_logs(self):
        path = os.path.join(self.tmp, "log.jsonl")
        with open(path, "w") as handle:
            handle.write(self.line(100) + self.line(200))
        full = sqlite3.OperationalError("database or disk is full")
        with mock.patch.object(catop.History, "save", side_effect=full):
            code, out, err = self.run_main("--file", path, "--format", "json", "--offline")
        self.assertEqual(code, 0, err)
        self.assertEqual(strict_json(out)["totals"]["input_tokens"], 300)
        self.assertIn("the disk is full: the history", err)
        self.assertNotIn("rollback", err)
        self.assertEqual(self.moved_aside(), [])             # a full disk is not damage
        db = sqlite3.connect(self.store)
        db.execute("BEGIN")
        db.execute("INSERT INTO compactions VALUES ('x', 1)")
        history = catop.History.__new__(catop.History)
        history.sqlite3 = sqlite3
        history._roll_back(db)                               # once: it rolls back
        history._roll_back(db)                               # twice: nothing to undo, no error
        db.close()

    def test_corrupt_store_is_moved_aside_and_rebuilt(self):
        os.makedirs(os.path.dirname(self.store))
        with open(self.store, "wb") as handle:
            handle.write(b"this is not a database" * 100)
        path = os.path.join(self.tmp, "log.jsonl")
        with open(path, "w") as handle:
            handle.write(self.line(100))
        code, out, err = self.run_main("--file", path, "--offline", "--format", "json")
        self.assertEqual(code, 0)
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("could not be read", err)
        self.assertEqual(json.loads(out)["totals"]["input_tokens"], 100)
        self.assertEqual(len([n for n in os.listdir(os.path.dirname(self.store))
                              if ".corrupt-" in n]), 1)

    def totals_of(self, *argv):
        totals = self.report(*argv)["totals"]
        return totals["requests"], round(totals["cost_usd"], 6)

    def test_a_moved_folder_shows_what_it_holds(self):
        """CLAUDE_CONFIG_DIR=A read with the history, A moved to B: B showed 0 requests
        (each stored row kept A's file, out of B's scope), and A moved back showed 0
        again.  Each folder now keeps its own rows: every reading gives what the
        example holds, as without the history (6 requests, $0.126286)."""
        a = self.copy_agent_examples("claude", "CLAUDE_CONFIG_DIR")
        b = os.path.join(self.tmp, "moved")
        expected = (6, 0.126286)
        self.assertEqual(self.totals_of("--agent", "claude-code"), expected)
        for there, here in ((a, b), (b, a), (a, b)):
            os.rename(there, here)
            os.environ["CLAUDE_CONFIG_DIR"] = here
            self.assertEqual(self.totals_of("--agent", "claude-code", "--no-history"), expected)
            self.assertEqual(self.totals_of("--agent", "claude-code"), expected)
            self.assertEqual(self.totals_of("--agent", "claude-code", "--duration", "0.1"),
                             expected)
        db = sqlite3.connect(self.store)
        self.assertEqual(sorted(db.execute("SELECT root, count(*) FROM requests GROUP BY root")),
                         [(a, 7), (b, 7)])   # 6 requests and a subagent's replay, each
        db.close()
        self.assertEqual(self.totals_of(), expected)   # everything stored: each once

    def test_a_copied_folder_read_beside_its_original_counts_once(self):
        a = self.copy_agent_examples("claude")
        copy = os.path.join(self.tmp, "copy")
        shutil.copytree(a, copy)
        expected = (6, 0.126286)
        os.environ["CLAUDE_CONFIG_DIR"] = copy
        self.assertEqual(self.totals_of("--agent", "claude-code"), expected)
        os.environ["CLAUDE_CONFIG_DIR"] = "%s,%s" % (a, copy)
        self.assertEqual(self.totals_of("--agent", "claude-code", "--no-history"), expected)
        for _ in range(2):   # A read, then nothing new
            self.assertEqual(self.totals_of("--agent", "claude-code"), expected)
            self.assertEqual(self.totals_of("--agent", "claude-code", "--duration", "0.1"),
                             expected)
        self.assertEqual(self.totals_of(), expected)
        with open(os.path.join(copy, "projects", "extra.jsonl"), "w") as handle:
            handle.write(json.dumps({
                "type": "assistant", "timestamp": "2026-11-30T10:00:00Z", "sessionId": "s-x",
                "requestId": "req_x", "message": {
                    "id": "msg_x", "model": "claude-sonnet-4-5-20250929",
                    "usage": {"input_tokens": 1000000, "output_tokens": 0}}}) + "\n")
        plus = (7, round(0.126286 + 3.0, 6))   # Sonnet 4.5 input: $3 a million
        self.assertEqual(self.totals_of("--agent", "claude-code", "--no-history"), plus)
        self.assertEqual(self.totals_of("--agent", "claude-code"), plus)
        os.environ["CLAUDE_CONFIG_DIR"] = a
        self.assertEqual(self.totals_of("--agent", "claude-code"), expected)
        db = sqlite3.connect(self.store)      # the copies are found by key, a seek a row
        values = []
        condition = catop.History._one_copy_condition(
            mock.Mock(_roots=lambda: {"agent:claude-code": [a, copy]}),
            {"agent:claude-code": [a, copy]}, values)
        plan = " ".join(row[-1] for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT key FROM requests WHERE " + condition, values))
        db.close()
        self.assertIn("copy USING INDEX sqlite_autoindex_requests_1 (key=?)", plan)

    def test_folders_read_together_then_one_alone(self):
        """CLAUDE_CONFIG_DIR=A,B (B a copy) stored each response once, under A: B alone
        then showed 0 (its files were read).  Each folder's reading stores its own."""
        a = self.copy_agent_examples("claude")
        b = os.path.join(self.tmp, "copy")
        shutil.copytree(a, b)
        for folders in ("%s,%s" % (a, b), b, a, "%s,%s" % (b, a)):
            os.environ["CLAUDE_CONFIG_DIR"] = folders
            for extra in ((), ("--duration", "0.1")):
                self.assertEqual(self.totals_of("--agent", "claude-code", *extra),
                                 (6, 0.126286), (folders, extra))

    def test_a_kilo_folder_read_beside_its_copy_counts_its_forks_once(self):
        """KILO_DATA_DIR=A,B (B a copy): a fork's renamed copies, tied across the two
        databases, came back after they were dropped (9 requests, $0.152766, without
        the history, where A alone gives 7 and $0.101241)."""
        a = self.copy_agent_examples("kilo")
        b = os.path.join(self.tmp, "copy")
        shutil.copytree(a, b)
        os.environ["KILO_DATA_DIR"] = "%s,%s" % (a, b)
        for extra in (("--no-history",), ("--no-history", "--duration", "0.1"), (),
                      ("--duration", "0.1")):
            self.assertEqual(self.totals_of("--agent", "kilo", *extra), (7, 0.101241), extra)

    def test_migration_to_schema_six_gives_each_row_its_folder(self):
        """A schema 5 store (a key a request, whatever its folder) is made again with
        each row's folder of now; a folder moved since reads as itself."""
        a = self.copy_agent_examples("claude", "CLAUDE_CONFIG_DIR")
        expected = (6, 0.126286)
        self.assertEqual(self.totals_of("--agent", "claude-code"), expected)
        copy = os.path.join(self.tmp, "copy")   # read too: schema 5 kept A's rows alone,
        shutil.copytree(a, copy)                # and the copy's files as read (it showed 0)
        os.environ["CLAUDE_CONFIG_DIR"] = copy
        self.assertEqual(self.totals_of("--agent", "claude-code"), expected)
        os.environ["CLAUDE_CONFIG_DIR"] = a
        db = sqlite3.connect(self.store)
        columns = ", ".join(catop._HISTORY_COLUMNS[:-1])
        db.execute("CREATE TABLE r5 (key TEXT PRIMARY KEY, source TEXT NOT NULL, ts REAL,"
                   " agent TEXT, provider TEXT, model TEXT, project TEXT, session TEXT,"
                   " miss INTEGER, read INTEGER, w5 INTEGER, w1 INTEGER, output INTEGER,"
                   " reasoning INTEGER, observed REAL, sidechain INTEGER, size INTEGER,"
                   " msg TEXT, file TEXT, rank REAL, thread TEXT, diagnosis TEXT, tier TEXT,"
                   " searches INTEGER)")
        db.execute("INSERT OR IGNORE INTO r5 SELECT %s FROM requests ORDER BY root"
                   % columns)      # a key a row: the copy's (below) under the first folder
        db.execute("DROP TABLE requests")
        db.execute("ALTER TABLE r5 RENAME TO requests")
        db.execute("PRAGMA user_version = 5")
        db.commit()
        db.close()
        self.assertEqual(self.totals_of("--agent", "claude-code"), expected)
        db = sqlite3.connect(self.store)
        self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], catop.HISTORY_SCHEMA)
        self.assertEqual(list(db.execute("SELECT root, count(*) FROM requests GROUP BY root")),
                         [(a, 7)])
        db.close()
        os.environ["CLAUDE_CONFIG_DIR"] = copy   # every file read again once
        self.assertEqual(self.totals_of("--agent", "claude-code"), expected)
        b = os.path.join(self.tmp, "moved")
        os.rename(a, b)
        os.environ["CLAUDE_CONFIG_DIR"] = b
        self.assertEqual(self.totals_of("--agent", "claude-code"), expected)

    def test_migration_from_schema_one(self):
        import sqlite3
        os.makedirs(os.path.dirname(self.store))
        db = sqlite3.connect(self.store)
        db.execute("CREATE TABLE requests (key TEXT PRIMARY KEY, source TEXT NOT NULL, ts REAL,"
                   " agent TEXT, provider TEXT, model TEXT, project TEXT, session TEXT,"
                   " miss INTEGER, read INTEGER, w5 INTEGER, w1 INTEGER, output INTEGER,"
                   " reasoning INTEGER, observed REAL, sidechain INTEGER, size INTEGER)")
        db.execute("CREATE TABLE files (path TEXT PRIMARY KEY, device INTEGER, inode INTEGER,"
                   " size INTEGER, mtime REAL, offset INTEGER, generation INTEGER, context TEXT)")
        db.execute("INSERT INTO requests VALUES ('old', 'file:x', ?, '', 'openai', 'gpt-4o', '',"
                   " '', 40, 60, 0, 0, 5, 0, NULL, 0, 105)", (NOW,))
        db.execute("PRAGMA user_version = 1")
        db.commit()
        db.close()
        totals = self.report()["totals"]
        self.assertEqual((totals["requests"], totals["cache_read_tokens"]), (1, 60))
        db = sqlite3.connect(self.store)
        self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], catop.HISTORY_SCHEMA)
        db.close()

    def test_migration_from_schema_two_reads_every_file_again_once(self):
        """Schema 3 stores each request's file (the history's scope) and its rank: an
        agent's files are read again from the start to fill them in, under the same
        keys, so nothing is counted twice and nothing read before is lost."""
        self.copy_agent_examples("claude", "CLAUDE_CONFIG_DIR")
        first = self.report("--agent", "claude-code")
        fresh = first["totals"]
        db = sqlite3.connect(self.store)     # back to how schema 2 kept the same rows
        db.execute("CREATE TABLE r2 (key TEXT PRIMARY KEY, source TEXT NOT NULL, ts REAL,"
                   " agent TEXT, provider TEXT, model TEXT, project TEXT, session TEXT,"
                   " miss INTEGER, read INTEGER, w5 INTEGER, w1 INTEGER, output INTEGER,"
                   " reasoning INTEGER, observed REAL, sidechain INTEGER, size INTEGER,"
                   " msg TEXT)")
        db.execute("INSERT INTO r2 SELECT key, source, ts, agent, provider, model, project,"
                   " session, miss, read, w5, w1, output, reasoning, observed, sidechain,"
                   " size, msg FROM requests")
        db.execute("DROP TABLE requests")
        db.execute("ALTER TABLE r2 RENAME TO requests")
        db.execute("CREATE TABLE f2 (path TEXT PRIMARY KEY, device INTEGER, inode INTEGER,"
                   " size INTEGER, mtime REAL, offset INTEGER, generation INTEGER, context TEXT)")
        db.execute("INSERT INTO f2 SELECT path, device, inode, size, mtime, offset,"
                   " generation, context FROM files")
        db.execute("DROP TABLE files")
        db.execute("ALTER TABLE f2 RENAME TO files")
        db.execute("PRAGMA user_version = 2")
        db.commit()
        db.close()
        upgraded = self.report("--agent", "claude-code")
        self.assertEqual(upgraded["totals"], fresh)
        self.assertEqual(upgraded["sources"][0]["records"],          # read again, once
                         first["sources"][0]["records"])
        # schema 4's threads are filled in too: the subagent is not chained to its parent
        self.assertEqual(upgraded["breaks"], first["breaks"])
        db = sqlite3.connect(self.store)
        self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], catop.HISTORY_SCHEMA)
        # the subagent's two lines (its replay of msg_B is stored, and left out when read)
        self.assertEqual(db.execute("SELECT count(*) FROM requests WHERE thread = 'agent-a1'")
                         .fetchone()[0], 2)
        self.assertEqual(db.execute("SELECT count(*) FROM requests WHERE file IS NULL")
                         .fetchone()[0], 0)
        db.close()
        self.assertEqual(self.report("--agent", "claude-code")["totals"], fresh)

    def test_unwritable_history_place(self):
        blocker = os.path.join(self.tmp, "not-a-folder")
        open(blocker, "w").close()
        os.environ["XDG_STATE_HOME"] = blocker      # the default place cannot be made
        path = os.path.join(self.tmp, "log.jsonl")
        with open(path, "w") as handle:
            handle.write(self.line(100))
        code, out, err = self.run_main("--file", path, "--offline", "--format", "json")
        self.assertEqual(code, 0)
        self.assertIn("running without one", err)
        self.assertEqual(json.loads(out)["totals"]["input_tokens"], 100)
        code, _, err = self.run_main("--file", path, "--offline", "--history",
                                     os.path.join(blocker, "h.sqlite3"))
        self.assertEqual(code, 1)
        self.assertIn("cannot use the history", err)

    def test_a_demo_or_standard_input_leaves_the_history_alone(self):
        """--demo (--once, --once --duration) and --stdin without --history named read
        nothing the history keeps: they created it (and its lock) all the same."""
        state = os.path.join(self.tmp, "state")
        for argv, stdin in ((("--demo", "--once"), None),
                            (("--demo", "--once", "--duration", "0.2"), None),
                            (("--stdin", "--once"), self.line(5))):
            with self.subTest(argv=argv):
                with mock.patch.object(sys, "stdin", io.TextIOWrapper(io.BytesIO(
                        (stdin or "").encode()))):
                    code, out, err = self.run_main(*argv + ("--offline", "--format", "json"))
                self.assertEqual(code, 0, err)
                self.assertGreater(json.loads(out)["totals"]["requests"], 0)
                self.assertFalse(os.path.exists(state), os.listdir(state) if
                                 os.path.exists(state) else None)
        log = os.path.join(self.tmp, "log.jsonl")
        with open(log, "w") as handle:
            handle.write(self.line(5))
        self.assertEqual(self.run_main("--file", log, "--once", "--offline")[0], 0)
        self.assertTrue(os.path.exists(os.path.join(state, "catop", "history.sqlite3")))

    def test_a_pruned_log_still_on_disk_still_reports_what_it_holds(self):
        """--prune-history, then the same report: its file state said the log was read
        to its end, so its old lines were never read again (0 requests where --no-history
        said 2, and a --max-cost gate passed)."""
        path = os.path.join(self.tmp, "log.jsonl")
        with open(path, "w") as handle:
            handle.write(self.line(100, NOW - 40 * 86400) + self.line(7, NOW - 35 * 86400))
        gate = ("--file", path, "--once", "--offline", "--max-cost", "0")
        self.assertEqual(self.run_main(*gate)[0], catop.EXIT_GATE)
        self.assertEqual(self.run_main("--prune-history", "30")[0], 0)
        code, out, _ = self.run_main("--export-history", "jsonl")
        self.assertEqual(out, "")                                  # pruned, as asked
        self.assertEqual(self.run_main(*gate)[0], catop.EXIT_GATE)
        totals = self.report("--file", path)["totals"]
        self.assertEqual((totals["requests"], totals["input_tokens"]), (2, 107))
        code, out, _ = self.run_main("--export-history", "jsonl")
        self.assertEqual(sorted(json.loads(l)["miss_tokens"] for l in out.splitlines()),
                         [7, 100])                               # read again: no copy
        os.remove(path)
        self.assertEqual(self.run_main("--prune-history", "30")[0], 0)
        self.assertEqual(self.run_main("--export-history", "jsonl")[1], "")   # let go of

    def test_prune_export_stdin_and_no_sqlite(self):
        path = os.path.join(self.tmp, "log.jsonl")
        with open(path, "w") as handle:
            handle.write(self.line(100, NOW - 40 * 86400) + self.line(7, time.time() - 60))
        self.report("--file", path)
        code, out, _ = self.run_main("--export-history", "csv")
        rows = out.splitlines()
        self.assertEqual(rows[0].split(",")[:3], ["ts", "agent", "provider"])
        self.assertEqual(len(rows), 3)
        code, _, err = self.run_main("--prune-history", "30")
        self.assertEqual(code, 0)
        self.assertIn("deleted 1 stored request older than 30 days", err)
        code, out, _ = self.run_main("--export-history", "jsonl")
        self.assertEqual([json.loads(l)["miss_tokens"] for l in out.splitlines()], [7])
        script = os.path.join(HERE, "catop.py")
        for extra, kept in (([], 1), (["--history", self.store], 2)):
            subprocess.run([sys.executable, script, "--stdin", "--offline", "--format", "csv"] +
                           extra, input=self.line(3).encode(), stdout=subprocess.DEVNULL,
                           env=dict(os.environ), timeout=60, check=True)
            code, out, _ = self.run_main("--export-history", "jsonl")
            self.assertEqual(len(out.splitlines()), kept)  # stdin only with --history named
        with mock.patch.dict(sys.modules, {"sqlite3": None}):
            code, out, err = self.run_main("--file", path, "--offline", "--format", "json")
        self.assertEqual(code, 0)
        self.assertIn("no sqlite3 module", err)
        self.assertEqual(json.loads(out)["totals"]["requests"], 2)


class EndToEndTmuxTest(IsolatedEnv):
    """The real program in a real terminal: start, append and see, resize, keys,
    drill down and back, quit with status 0."""

    def tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.socket] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=20).stdout.decode("utf-8", "replace")

    def screen(self):
        return self.tmux("capture-pane", "-p", "-t", "catop")

    def wait_for(self, text, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.screen():
                return True
            time.sleep(0.1)
        self.fail("%r never appeared on screen:\n%s" % (text, self.screen()))

    def keys(self, *names):
        for name in names:
            self.tmux("send-keys", "-t", "catop", name)

    def test_live_view_in_tmux(self):
        if not shutil.which("tmux"):
            self.skipTest("tmux is not installed (.ci/run installs it)")
        self.socket = "catop-test-%d" % os.getpid()
        self.addCleanup(self.tmux, "kill-server")
        log = os.path.join(self.tmp, "live.jsonl")
        status = os.path.join(self.tmp, "status")
        now = time.time()

        def line(model, session, prompt, cached, offset=0):
            return json.dumps({"timestamp": now - 30 + offset, "model": model,
                               "session_id": session, "usage": {
                                   "prompt_tokens": prompt, "completion_tokens": 50,
                                   "prompt_tokens_details": {"cached_tokens": cached}}}) + "\n"

        with open(log, "w") as handle:
            handle.write(line("gpt-4o", "alpha-session", 10000, 8000))
        command = "%s %s --file %s --offline --interval 0.2; echo $? > %s" % (
            sys.executable, os.path.join(HERE, "catop.py"), log, status)
        env = ["env", "HOME=%s" % self.tmp, "TERM=xterm-256color", "LANG=C.UTF-8"]
        self.tmux("new-session", "-d", "-s", "catop", "-x", "100", "-y", "30",
                  " ".join(env) + " " + command)
        self.wait_for("gpt-4o")
        self.wait_for("req 1  hit 80.0%")
        with open(log, "a") as handle:
            handle.write(line("gpt-4o-mini", "beta-session", 4000, 1000, 5))
        self.wait_for("gpt-4o-mini")
        self.wait_for("req 2  ")
        self.tmux("resize-window", "-t", "catop", "-x", "40", "-y", "12")
        self.wait_for("MODEL")
        self.assertTrue(all(len(l) <= 40 for l in self.screen().splitlines()))
        self.tmux("resize-window", "-t", "catop", "-x", "120", "-y", "40")
        self.keys("Enter")
        self.wait_for("SESSION")
        self.wait_for("alpha-session")
        self.keys("Enter")
        self.wait_for("TIME")
        self.keys("Escape", "BSpace")
        self.wait_for("MODEL")
        self.keys("/", "m", "i", "n", "i", "Enter")      # a filter: the summary follows it
        self.wait_for("/mini: req 1  ")
        self.keys("Escape")  # and Esc clears it
        self.wait_for("req 2  ")
        self.keys("r")
        self.wait_for("rescanned: 2 records")
        self.keys("b")
        self.wait_for("no cache breaks found")
        self.keys("Escape", "?")
        self.wait_for("cycle group-by: model, project, agent, provider, session, day, week")
        self.keys("x")
        self.wait_for("\u25bcCOST")                     # the sort column, marked
        self.keys("q")
        deadline = time.time() + 10
        while not os.path.exists(status) and time.time() < deadline:
            time.sleep(0.1)
        with open(status) as handle:
            self.assertEqual(handle.read().strip(), "0")
