#!/usr/bin/env python3
"""catop: `top` for LLM prompt-cache economics.

Reads LLM request logs (LiteLLM, OpenAI, Anthropic, Gemini, Bedrock, DeepSeek,
OpenTelemetry shapes) and the local logs of coding agents (Claude Code, Codex,
Gemini CLI, OpenCode, OpenClaw) and shows how much input was served from the
provider's prompt cache, what it cost, and what the cache saved.

    python3 catop.py --demo                 # simulated traffic
    python3 catop.py                        # the agents found on this machine
    python3 catop.py --file requests.jsonl --group-by model,project
    python3 catop.py --agent claude-code --once --format json
    python3 catop.py --file logs/ --min-hit-rate 0.6     # CI gate, exit 3

One file, standard library only, Python 3.8+.  MIT licence.

How the file is laid out (each section uses only those above it):

  constants     version, exit codes, limits (MAX_LINE_BYTES, TS_MAX, ...)
  model         Request (one normalized request), Tally (summed tokens and dollars),
                SourceStats; small helpers: clean (text for a terminal),
                bounded_number (every number read from data), parse_timestamp
  parsers       normalize_record -> decode_usage: a request-log record; compile_shape:
                the straight-line readers of frequent shapes (pinned to the former)
  agent parsers parse_claude_code, parse_codex, parse_gemini, parse_opencode,
                parse_openclaw: one decoded line each
  pricing       PriceBook.rates (model-name resolution), request_cost, tokens_cost
  aggregation   Aggregate.add: one engine for every path; CacheEffects.add pairs each
                request with its session's previous (breaks, what-if, wasted writes);
                PriceClasses / priced_groups: costs, priced once per class
  io            LineReader (what a line is, for every reader), read_new_blocks and
                FileState (tailing, rotation), scan_request_file (byte ranges across
                processes), AGENT_TABLE and AgentSource (agents' logs, de-duplication),
                LiveSource and the live sources, LiveModel, History (SQLite),
                load_prices, the LiteLLM spend-log fetch, the HTTP servers
  render        render_report (the --once table), build_frame (the live view's frame)
  output        report_dict / iter_json, format_csv, format_prometheus; LiveApp and
                run_curses (the live view); the LiteLLM proxy callback
  cli           build_parser, main -> run -> snapshot / run_live; collect_sources

To add a coding agent: one AgentSpec in AGENT_TABLE and its parser (agent parsers).
To add a usage shape: its keys in the plan decode_usage follows (usage_plan), an example line
in examples/ (the compiled readers are checked against the interpreter on each).
To add an output format: FORMATS, a format_* function in output, print_report.
"""

import argparse
import base64
import bisect
import contextlib
import gc
import io
import json
import math
import operator
import os
import re
import stat
import struct
import sys
import time
import unicodedata
from datetime import datetime, timedelta, timezone

# ---------------------------------------------------------------- constants

__version__ = "0.5.0"

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_GATE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

PRICES_URL = ("https://raw.githubusercontent.com/BerriAI/litellm/main/"
              "model_prices_and_context_window.json")
PRICE_FETCH_TIMEOUT_S = 3.0
PRICE_CACHE_MAX_AGE_S = 24 * 3600
PRICE_FAILURE_MEMORY_S = 3600
USER_AGENT = "catop/%s (+https://github.com/catop/catop)" % __version__

# The prompt sizes past which a map prices a request at other rates (its
# *_above_<N>k_tokens keys, tiered_pricing ranges); a price map adds its own.
SIZE_THRESHOLDS = [32000, 100000, 128000, 200000, 256000, 272000, 512000]
MAX_TOKENS_PER_FIELD = 10 ** 9      # more than any context window: a corrupt count
MAX_LINE_BYTES = 64 * 1024 * 1024   # a longer line is skipped, not held in memory
READ_BLOCK_BYTES = 1 << 18
PARALLEL_MIN_BYTES = 24 * 1024 * 1024
PROBE_BYTES = 8 * 1024 * 1024        # of a split file, read before it stays split
PROBE_MIN_RECORDS = 10000            # ... if they hold that many requests

GROUP_FIELDS = ("agent", "provider", "model", "project", "session", "day", "week", "month")
_CALENDAR_GROUPS = ("day", "week", "month")
WINDOWS = ("all", "today", "week", "month", "1h", "24h", "7d", "30d", "90d")
FORMATS = ("table", "json", "csv", "prometheus")
SKIP_KINDS = ("malformed", "no_usage", "duplicate", "failed")


_JSON_DECODER = json.JSONDecoder()
_JSON_SCAN = _JSON_DECODER.scan_once


class CatopError(Exception):
    """A runtime failure shown to the user as one line, exit status 1."""


class SourceError(CatopError):
    """Raised when a named source cannot be opened (missing file, unreadable folder)."""


class PriceError(CatopError):
    """Raised when a price map given with --prices cannot be read."""


class UsageError(CatopError):
    """Raised for a bad combination of options found after parsing (exit 2)."""


# -------------------------------------------------------------------- model

class Request(object):
    """One normalized LLM request (formats.md section 1)."""

    __slots__ = ("ts", "agent", "provider", "model", "project", "session",
                 "miss", "cache_read", "cache_write_5m", "cache_write_1h",
                 "output", "reasoning", "observed_cost", "sidechain", "thread", "diagnosis",
                 "tier", "searches", "origin")

    def __init__(self, ts=None, agent="", provider="", model="", project="",
                 session="", miss=0, cache_read=0, cache_write_5m=0,
                 cache_write_1h=0, output=0, reasoning=0, observed_cost=None,
                 sidechain=False, thread="", diagnosis=None, tier="", searches=0,
                 origin=None):
        self.ts = ts
        self.agent = agent
        self.provider = provider
        self.model = model
        self.project = project
        self.session = session
        self.miss = miss
        self.cache_read = cache_read
        self.cache_write_5m = cache_write_5m
        self.cache_write_1h = cache_write_1h
        self.output = output
        self.reasoning = reasoning
        self.observed_cost = observed_cost
        self.sidechain = sidechain
        self.thread = thread     # the conversation thread in its session: "" the main one
        self.diagnosis = diagnosis   # the provider's cache-miss diagnosis (Diagnosis) or None
        self.tier = tier         # the price dimensions it was billed at (price_dimensions)
        self.searches = searches  # server-side web searches, priced per search
        self.origin = origin     # the log file it was read from (agents), else None

    @property
    def input(self):
        return self.miss + self.cache_read + self.cache_write_5m + self.cache_write_1h

    def __reduce__(self):
        # a plain tuple pickles several times faster than the slots protocol
        return (Request, _REQUEST_FIELDS(self))

    def __repr__(self):
        return "Request(%s)" % ", ".join(
            "%s=%r" % (k, getattr(self, k)) for k in self.__slots__)

    def __eq__(self, other):
        return isinstance(other, Request) and all(
            getattr(self, k) == getattr(other, k) for k in _REQUEST_VALUES)


_REQUEST_FIELDS = operator.attrgetter(*Request.__slots__)  # all of them, as a tuple
_REQUEST_VALUES = Request.__slots__[:-1]   # what the request is: not where it was read


def request_order(req):
    """The order requests are paired in: by time, those without one last."""
    return (req.ts is None, req.ts or 0.0)


class Tally(object):
    """Summed tokens and dollars of a set of requests; mergeable."""

    __slots__ = ("requests", "miss", "cache_read", "cache_write_5m", "cache_write_1h",
                 "output", "reasoning", "cost", "no_cache_cost", "observed_cost",
                 "observed_requests", "unpriced_requests", "first_ts", "last_ts", "searches",
                 "search_cost")

    def __init__(self):
        self.searches = 0
        self.search_cost = 0.0   # set when priced, as cost is; inside cost
        self.requests = self.miss = self.cache_read = 0
        self.cache_write_5m = self.cache_write_1h = self.output = self.reasoning = 0
        self.cost = self.no_cache_cost = self.observed_cost = 0.0
        self.observed_requests = self.unpriced_requests = 0
        self.first_ts = self.last_ts = None

    def add(self, req, cost, no_cache_cost, priced):
        self.count(req)
        self.cost += cost
        self.no_cache_cost += no_cache_cost
        if not priced:
            self.unpriced_requests += 1

    def count(self, req):
        """Sums req's tokens, not its cost (a price class sets that once: price_classes)."""
        self.requests += 1
        if req.searches:
            self.searches += req.searches
        self.miss += req.miss
        self.cache_read += req.cache_read
        self.cache_write_5m += req.cache_write_5m
        self.cache_write_1h += req.cache_write_1h
        self.output += req.output
        self.reasoning += req.reasoning
        if req.observed_cost is not None:
            self.observed_cost += req.observed_cost
            self.observed_requests += 1
        ts = req.ts
        if ts is not None:   # first_ts <= last_ts: a time after the last is not the first
            last = self.last_ts
            if last is None:
                self.first_ts = self.last_ts = ts
            elif ts > last:
                self.last_ts = ts
            elif ts < self.first_ts:
                self.first_ts = ts

    def __reduce__(self):
        return (_tally_from, (_TALLY_FIELDS(self),))

    def merge(self, other):
        self.requests += other.requests
        self.miss += other.miss
        self.cache_read += other.cache_read
        self.cache_write_5m += other.cache_write_5m
        self.cache_write_1h += other.cache_write_1h
        self.output += other.output
        self.reasoning += other.reasoning
        self.cost += other.cost
        self.no_cache_cost += other.no_cache_cost
        self.observed_cost += other.observed_cost
        self.observed_requests += other.observed_requests
        self.searches += other.searches
        self.search_cost += other.search_cost
        self.unpriced_requests += other.unpriced_requests
        for ts in (other.first_ts, other.last_ts):
            if ts is not None:
                self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
                self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)

    @property
    def cache_write(self):
        return self.cache_write_5m + self.cache_write_1h

    @property
    def input(self):
        return self.miss + self.cache_read + self.cache_write

    @property
    def hit_rate(self):
        total = self.input
        return self.cache_read / total if total else None

    @property
    def saved(self):
        return self.no_cache_cost - self.cost

    def as_dict(self):
        """The JSON fields of design.md, in its order."""
        return {
            "requests": self.requests,
            "input_tokens": self.input,
            "miss_tokens": self.miss,
            "cache_read_tokens": self.cache_read,
            "cache_write_tokens": self.cache_write,
            "cache_write_1h_tokens": self.cache_write_1h,
            "output_tokens": self.output,
            "reasoning_tokens": self.reasoning,
            "hit_rate": None if self.hit_rate is None else round(self.hit_rate, 6),
            "cost_usd": round(self.cost, 9),
            "no_cache_cost_usd": round(self.no_cache_cost, 9),
            "saved_usd": round(self.saved, 9),
            "observed_cost_usd": round(self.observed_cost, 9) if self.observed_requests else None,
            "unpriced_requests": self.unpriced_requests,
            "web_searches": self.searches,
            "web_search_cost_usd": round(self.search_cost, 9),
        }


_TALLY_FIELDS = operator.attrgetter(*Tally.__slots__)


def _tally_from(values):
    tally = Tally()
    for name, value in zip(Tally.__slots__, values):
        setattr(tally, name, value)
    return tally


class SourceStats(object):
    """What one source read and what it skipped, by reason."""

    __slots__ = ("name", "records", "skipped", "compactions", "error", "refused")

    def __init__(self, name):
        self.name = name
        self.records = 0
        self.skipped = dict.fromkeys(SKIP_KINDS, 0)
        self.compactions = 0
        self.error = None
        self.refused = None   # a worker's REFUSED_VALUES, carried home (see in_worker)

    def skip(self, kind, count=1):
        self.skipped[kind] += count

    def merge(self, other):
        self.records += other.records
        self.compactions += other.compactions
        for kind, count in other.skipped.items():
            self.skipped[kind] += count

    def as_dict(self):
        found = {"name": self.name, "records": self.records, "skipped": dict(self.skipped)}
        if self.error:
            found["error"] = self.error   # (JSON escapes its control characters)
        return found


# ------------------------------------------------------------ small helpers

# Controls, bidi marks, and letters that draw nothing (Hangul fillers, the braille
# blank, the combining grapheme joiner): two labels must never look alike.
_CONTROL_CHARS = dict.fromkeys(
    list(range(0, 32)) + list(range(127, 160))
    + [0x200E, 0x200F, 0x2028, 0x2029] + list(range(0x202A, 0x202F))
    + list(range(0x2066, 0x206A)) + [0xFEFF]
    + [0x034F, 0x115F, 0x1160, 0x2800, 0x3164, 0xFFA0]
    + list(range(0xFE00, 0xFE10)) + list(range(0xE0100, 0xE01F0)))  # variation selectors


def _visible_char(char):
    """A character that is not printable by str.isprintable: a space-like one becomes a
    space; the rest (format characters such as U+00AD, U+200B, U+2060, tags) go."""
    return " " if unicodedata.category(char) == "Zs" else ""


def clean(text):
    """Text from a log made safe for a terminal: controls, bidi marks, format characters
    (Unicode category Cf) and other invisibles removed."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    text = text.translate(_CONTROL_CHARS)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _visible_char(c) for c in text)


_CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A CSV cell that a spreadsheet shows as text, never runs as a formula: a string
    starting with = + - @ tab or CR gets a leading quote (OWASP's CSV injection advice)."""
    if value is None:
        return ""
    if type(value) is bool:
        return "true" if value else "false"   # as in JSON, not Python's True
    if not isinstance(value, str):
        return value
    text = clean(value)
    if value.startswith(_CSV_FORMULA_STARTS) or text.startswith(_CSV_FORMULA_STARTS):
        return "'" + text       # checked after cleaning too: "\x00=1" cleans to "=1"
    return text


_UTC_MINUTES = {}  # epoch minute -> its "YYYY-MM-DDTHH:MM:" (thousands of breaks a minute)


def iso_utc(ts):
    if ts is None:
        return None
    if ts >= 0:
        whole = int(ts)
        # datetime rounds to the microsecond, half to even: only then can it carry
        if (ts - whole) * 1e6 < 999999.5:
            minute, second = divmod(whole, 60)
            prefix = _UTC_MINUTES.get(minute)
            if prefix is None:
                prefix = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(whole))
                if len(_UTC_MINUTES) < 100000:
                    _UTC_MINUTES[minute] = prefix
            return "%s%02dZ" % (prefix, second)
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_count(value):
    """A token count from JSON: int, integral float or numeric string; else ValueError.

    Booleans, NaN, infinities, negatives and absurd sizes are refused: they mean
    the record is damaged, and guessing would put wrong numbers on screen.
    """
    if type(value) is int and 0 <= value <= MAX_TOKENS_PER_FIELD:
        return value
    kind = type(value)
    if kind is int:
        number = value
    elif kind is float:
        if value != value or value in (math.inf, -math.inf) or value != int(value):
            raise ValueError("bad count")
        number = int(value)
    elif kind is str:
        text = value.strip()
        number = int(text) if text.isdigit() else as_count(float(text))
    else:
        raise ValueError("bad count")
    if number < 0 or number > MAX_TOKENS_PER_FIELD:
        raise ValueError("count out of range")
    return number


MAX_COST_USD = 1e9                # more than any one request or budget: a damaged field
MAX_RATE_USD = 1e3                # a per-token or per-call rate in a price map
TS_MAX = 253402128000.0           # 9999-12-30 UTC: every local calendar still has it
# Numbers from data that were refused (not a number, or out of range), by kind: the
# field is taken as absent and counted here; a report says how many.
REFUSED_VALUES = {}


def bounded_number(value, low, high, kind):
    """value (an int, float or numeric string of JSON) as a float in [low, high]; None
    when it is absent, or refused (not a number, NaN, infinite, out of range; counted
    under kind).  Never raises: the one conversion for numbers read from data."""
    if value is None:
        return None
    kind_of = type(value)
    if kind_of is float:
        if low <= value <= high:    # NaN compares false
            return value
    elif kind_of is int:
        if low <= value <= high:    # compared as an int: a 400-digit one never overflows
            return float(value)
    elif kind_of is str and len(value) <= 64:
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and low <= number <= high:
            return number
    return refused(kind)


def refused(kind):
    """Counts one value of kind refused; None, what the refused value is taken as."""
    REFUSED_VALUES[kind] = REFUSED_VALUES.get(kind, 0) + 1
    return None


def as_money(value):
    """A reported cost in USD, or None when absent or unusable."""
    return bounded_number(value, -MAX_COST_USD, MAX_COST_USD, "cost")


_MINUTE_CACHE = {}
_ISO_RE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|[+-]\d\d:?\d\d|UTC)?$")


def parse_timestamp(value):
    """Epoch seconds (UTC) from ISO text, epoch s, ms or us; None when unusable."""
    kind = type(value)
    if kind is str:
        if len(value) > 19 and value[-1] == "Z" and value[16] == ":":
            # Logs repeat the same minute thousands of times: its epoch is cached
            base = _MINUTE_CACHE.get(value[:16])
            if base is not None:
                seconds = value[17:-1]   # SS or SS.F+ (other digits: _parse_iso decides)
                rest = seconds.strip("0123456789")
                if not rest and len(seconds) == 2 or rest == "." and len(seconds) > 3 \
                        and seconds[2] == ".":
                    return base + float(seconds)
        text = value.strip()
        if not text:
            return None
        if text[0].isdigit() and text.replace(".", "", 1).isdigit():
            return parse_timestamp(bounded_number(text, 0.0, 1e21, "timestamp"))
        return _parse_iso(text)
    if kind is int or kind is float:
        if not 0 < value < 1e21:    # NaN too; a 400-digit int is compared, not converted
            return refused("timestamp") if value != 0 else None
        if value > 1e17:
            value = value / 1e9
        elif value > 1e14:
            value = value / 1e6
        elif value > 1e11:
            value = value / 1e3
        if value > TS_MAX:
            return refused("timestamp")
        return float(value)
    return None


_EPOCH, _ONE_SECOND = datetime(1970, 1, 1), timedelta(seconds=1)


def utc_epoch_s(moment):
    """Whole epoch seconds of a naive UTC datetime."""
    return (moment - _EPOCH) // _ONE_SECOND


def _parse_iso(text):
    match = _ISO_RE.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second, frac, zone = match.groups()
    try:
        base = utc_epoch_s(datetime(int(year), int(month), int(day), int(hour or 0),
                                    int(minute or 0)))
    except (ValueError, OverflowError):
        return None
    if zone not in (None, "Z", "z", "UTC"):
        sign = -1 if zone[0] == "+" else 1
        digits = zone[1:].replace(":", "")
        base += sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
        if not 0 < base <= TS_MAX:  # 9999-12-31 in -14:00 is year 10000 in UTC
            return refused("timestamp")
    elif zone in ("Z", "z") and hour is not None and len(_MINUTE_CACHE) < 100000:
        _MINUTE_CACHE[text[:16]] = base
    # the same sum as the cached minute's path, so a time reads alike either way
    return base + float("%s.%s" % (second, frac) if frac else second or 0)


def infer_provider(model):
    """The provider a model name implies, for records that do not say."""
    known = _INFERRED_PROVIDERS.get(model)
    if known is None:
        known = _INFERRED_PROVIDERS[model] = _infer_provider(model) \
            if len(_INFERRED_PROVIDERS) < 10000 else _infer_provider(model)
    return known


_INFERRED_PROVIDERS = {}


def _infer_provider(model):
    name = model.lower()
    if "/" in name:
        head = name.split("/", 1)[0]
        if head in ("openai", "anthropic", "gemini", "vertex_ai", "deepseek", "xai",
                    "mistral", "openrouter", "bedrock", "azure", "groq", "moonshot"):
            return head
    for marker, provider in _PROVIDER_MARKERS:
        if marker in name:
            return provider
    return "unknown"


_PROVIDER_MARKERS = (
    ("claude", "anthropic"), ("gpt", "openai"), ("codex", "openai"), ("o1", "openai"),
    ("o3", "openai"), ("o4", "openai"), ("gemini", "google"), ("deepseek", "deepseek"),
    ("grok", "xai"), ("mistral", "mistral"), ("codestral", "mistral"),
    ("kimi", "moonshot"), ("llama", "meta"), ("qwen", "dashscope"), ("glm", "zai"),
)


# ------------------------------------------------------------------ parsers
# Usage shapes (formats.md section 2).  Each record is a dict; decode_usage
# answers the two questions separately: which input figure and whether it
# includes the cache, and which cache figures.

_INCLUSIVE_INPUT_KEYS = ("prompt_tokens", "promptTokenCount", "gen_ai.usage.input_tokens")
_CACHE_READ_PATHS = (
    ("prompt_tokens_details", "cached_tokens"), ("input_tokens_details", "cached_tokens"),
    ("cache_read_input_tokens",), ("cacheReadInputTokens",), ("cachedContentTokenCount",),
    ("prompt_cache_hit_tokens",), ("gen_ai.usage.cache_read.input_tokens",), ("cacheRead",),
    ("cached_input_tokens",), ("cache", "read"), ("cached_tokens",),   # the last: Moonshot's
)
_CACHE_WRITE_PATHS = (
    ("prompt_tokens_details", "cache_write_tokens"), ("cache_creation_input_tokens",),
    ("prompt_tokens_details", "cache_creation_input_tokens"),   # DashScope's
    ("cacheWriteInputTokens",), ("gen_ai.usage.cache_creation.input_tokens",),
    ("cacheWrite",), ("cache", "write"),
)
_REASONING_PATHS = (
    ("completion_tokens_details", "reasoning_tokens"), ("output_tokens_details", "reasoning_tokens"),
    ("gen_ai.usage.reasoning.output_tokens",), ("reasoning_output_tokens",), ("reasoning",),
)
_USAGE_KEYS = frozenset((
    "prompt_tokens", "promptTokenCount", "gen_ai.usage.input_tokens", "input_tokens",
    "inputTokens", "input", "prompt_cache_hit_tokens", "completion_tokens", "output_tokens",
    "candidatesTokenCount", "outputTokens", "output", "gen_ai.usage.output_tokens",
))


def _first_count(usage, paths):
    """The first present field of paths, as a count; None when none is present."""
    for path in paths:
        value = usage.get(path[0])
        if value is None:
            continue
        if len(path) == 2:
            if type(value) is not dict:
                continue
            value = value.get(path[1])
            if value is None:
                continue
        return as_count(value)
    return None


class UsagePlan(object):
    """The fields decode_usage reads for one set of usage keys, in order.

    Logs repeat a handful of shapes millions of times; deciding the shape once
    per key set, and reading only keys that exist, halves the cost of a record.
    Absent keys are dropped from each list, which changes nothing: a missing key
    and a null value are treated alike."""

    __slots__ = ("inclusive_keys", "input_tokens_inclusive", "exclusive_keys", "deepseek",
                 "gemini", "output_keys", "read_paths", "write_paths", "reasoning_paths",
                 "split", "nested_split", "bedrock_split", "total_arbiter", "tool_prompt")

    def __init__(self, keys):
        present = frozenset(keys)
        self.inclusive_keys = [k for k in _INCLUSIVE_INPUT_KEYS if k in present]
        if "input_tokens" in present:
            self.input_tokens_inclusive = ("input_tokens_details" in present
                                           or "cached_input_tokens" in present)
        else:
            self.input_tokens_inclusive = None
        self.exclusive_keys = [k for k in ("inputTokens", "input") if k in present]
        self.deepseek = bool(present & {"prompt_cache_hit_tokens", "prompt_cache_miss_tokens"})
        self.gemini = bool(present & {"candidatesTokenCount", "thoughtsTokenCount"})
        self.output_keys = [k for k in ("completion_tokens", "output_tokens", "outputTokens",
                                        "output", "gen_ai.usage.output_tokens") if k in present]
        self.read_paths = [p for p in _CACHE_READ_PATHS if p[0] in present]
        self.write_paths = [p for p in _CACHE_WRITE_PATHS if p[0] in present]
        self.reasoning_paths = [p for p in _REASONING_PATHS if p[0] in present]
        self.split = "cache_creation" in present
        # LiteLLM's and DashScope's TTL split, inside prompt_tokens_details
        self.nested_split = "prompt_tokens_details" in present
        self.bedrock_split = "cacheDetails" in present
        # xAI's reasoning outside completion_tokens, told by total_tokens
        self.total_arbiter = ("total_tokens" in present and "prompt_tokens" in present
                              and "completion_tokens" in present)
        self.tool_prompt = "toolUsePromptTokenCount" in present   # Gemini's, uncached input


_USAGE_PLANS = {}
_PLAN_CACHE_LIMIT = 4096


def usage_plan(usage):
    """The cached UsagePlan of a usage dict, or None when it has no token field."""
    keys = tuple(usage)
    try:
        return _USAGE_PLANS[keys]
    except KeyError:
        pass
    plan = UsagePlan(keys) if _USAGE_KEYS.intersection(keys) else None
    if len(_USAGE_PLANS) < _PLAN_CACHE_LIMIT:
        _USAGE_PLANS[keys] = plan
    return plan


def _input_figure(usage, plan):
    """(input tokens, inclusive of cache?) or (None, False)."""
    for key in plan.inclusive_keys:
        value = usage.get(key)
        if value is not None:
            return as_count(value), True
    if plan.input_tokens_inclusive is not None:
        value = usage.get("input_tokens")
        if value is not None:
            return as_count(value), plan.input_tokens_inclusive
    for key in plan.exclusive_keys:
        value = usage.get(key)
        if value is not None and type(value) is not dict:
            return as_count(value), False
    if plan.deepseek:
        hit, miss = usage.get("prompt_cache_hit_tokens"), usage.get("prompt_cache_miss_tokens")
        if hit is not None or miss is not None:
            return as_count(hit or 0) + as_count(miss or 0), True
    return None, False


def _output_figure(usage, plan):
    """(output tokens including reasoning, reasoning tokens)."""
    if plan.gemini:
        # Gemini counts thoughts outside candidates: both are billed as output.
        thoughts = as_count(usage.get("thoughtsTokenCount") or 0)
        return as_count(usage.get("candidatesTokenCount") or 0) + thoughts, thoughts
    output = 0
    for key in plan.output_keys:
        value = usage.get(key)
        if value is not None and type(value) is not dict:
            output = as_count(value)
            break
    reasoning = _first_count(usage, plan.reasoning_paths) or 0 if plan.reasoning_paths else 0
    if plan.total_arbiter and reasoning and _reasoning_outside(usage, output, reasoning):
        return output + reasoning, reasoning
    return output, min(reasoning, output)


def _reasoning_outside(usage, output, reasoning):
    """Whether total_tokens says reasoning is outside completion_tokens (xAI): the
    total is prompt + completion + reasoning, not prompt + completion."""
    total, prompt = usage.get("total_tokens"), usage.get("prompt_tokens")
    return (type(total) is int and type(prompt) is int and total != prompt + output
            and total == prompt + output + reasoning)


def _cache_writes(usage, plan):
    """(5-minute writes, 1-hour writes); the TTL split wins over the flat figure."""
    if plan.split:
        found = _ttl_split(usage.get("cache_creation"))
        if found is not None:
            return found
    if plan.nested_split:
        found = nested_ttl_split(usage)
        if found is not None:
            return found
    if plan.bedrock_split:
        found = bedrock_ttl_split(usage.get("cacheDetails"))
        if found is not None:
            return found
    return (_first_count(usage, plan.write_paths) or 0) if plan.write_paths else 0, 0


def nested_ttl_split(usage):
    """(5m, 1h) of the split LiteLLM (cache_creation_token_details) or DashScope
    (cache_creation) keeps in prompt_tokens_details, or None."""
    details = usage.get("prompt_tokens_details")
    if type(details) is not dict:
        return None
    found = _ttl_split(details.get("cache_creation_token_details"))
    return found if found is not None else _ttl_split(details.get("cache_creation"))


def _ttl_split(split):
    """(5m, 1h) of an Anthropic-style {ephemeral_5m_input_tokens, ...}, or None."""
    if type(split) is dict and ("ephemeral_5m_input_tokens" in split
                                or "ephemeral_1h_input_tokens" in split):
        return (as_count(split.get("ephemeral_5m_input_tokens") or 0),
                as_count(split.get("ephemeral_1h_input_tokens") or 0))
    return None


def bedrock_ttl_split(details):
    """(5m, 1h) of Bedrock's cacheDetails [{"ttl": "5m" | "1h", "inputTokens": N}], or
    None when it is not one."""
    if type(details) is not list or not details:
        return None
    five = hour = 0
    for item in details:
        ttl = item.get("ttl") if type(item) is dict else None
        if ttl not in ("5m", "1h"):
            return None
        count = as_count(item.get("inputTokens") or 0)
        if ttl == "5m":
            five += count
        else:
            hour += count
    return five, hour


def decode_usage(usage):
    """(miss, cache_read, write_5m, write_1h, output, reasoning) or None without tokens.

    Raises ValueError when a token field is present but unusable.
    """
    plan = usage_plan(usage)
    if plan is None:
        return None
    input_tokens, inclusive = _input_figure(usage, plan)
    output, reasoning = _output_figure(usage, plan)
    cache_read = (_first_count(usage, plan.read_paths) or 0) if plan.read_paths else 0
    write_5m, write_1h = _cache_writes(usage, plan)
    if input_tokens is None:
        miss = 0
    elif inclusive:
        miss = max(0, input_tokens - cache_read - write_5m - write_1h)
    else:
        miss = input_tokens
    if plan.tool_prompt:
        miss += as_count(usage.get("toolUsePromptTokenCount") or 0)
    return miss, cache_read, write_5m, write_1h, output, reasoning


def flatten_attributes(attributes):
    """OTel attributes as a flat dict, from a dict or an OTLP list of {key, value}."""
    if type(attributes) is dict:
        return attributes
    flat = {}
    if type(attributes) is list:
        for item in attributes:
            if type(item) is dict and isinstance(item.get("key"), str):
                flat[item["key"]] = otlp_value(item.get("value"))
    return flat


def otlp_value(value):
    """The Python value inside an OTLP AnyValue ({"intValue": "12"} -> "12")."""
    if type(value) is not dict:
        return value
    for kind in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if kind in value:
            return value[kind]
    return None


def _dig(record, *path):
    for key in path:
        if type(record) is not dict:
            return None
        record = record.get(key)
    return record


_USAGE_PATHS = (("usage",), ("response", "usage"), ("message", "usage"), ("usageMetadata",),
                ("response", "usageMetadata"), ("metadata", "usage_object"),
                ("standard_logging_object", "metadata", "usage_object"))
_USAGE_PATHS_BY_KEYS = {}


def find_usage(record, record_keys=None):
    """(usage dict, attributes dict or None) wherever the record keeps its usage."""
    keys = tuple(record) if record_keys is None else record_keys
    paths = _USAGE_PATHS_BY_KEYS.get(keys)
    if paths is None:  # only the paths that can exist in a record with these keys
        paths = [path for path in _USAGE_PATHS if path[0] in keys]
        if len(_USAGE_PATHS_BY_KEYS) < _PLAN_CACHE_LIMIT:
            _USAGE_PATHS_BY_KEYS[keys] = paths
    for path in paths:
        usage = _dig(record, *path)
        if type(usage) is dict and usage:
            return usage, None
    slo = record.get("standard_logging_object")
    if type(slo) is dict and "prompt_tokens" in slo:
        return slo, None
    attributes = record.get("attributes")
    if attributes:
        flat = flatten_attributes(attributes)
        if "gen_ai.usage.input_tokens" in flat or "gen_ai.usage.output_tokens" in flat:
            return flat, flat
    if "prompt_tokens" in record or "promptTokenCount" in record:
        return record, None
    return None, None


# The provider's cache-miss diagnosis (formats.md section 6), kept on a request as a
# (verdict, raw reason, missed-token estimate) tuple: the verdict is the break cause
# of a reported change, NO_CHANGE when the comparison found none, None when there
# was no verdict (unavailable, not found, pending).
NO_CHANGE = "no_change"
_ANTHROPIC_CHANGES = {"model_changed": "model_switch", "system_changed": "system_changed",
                      "tools_changed": "tools_changed", "messages_changed": "messages_changed"}
_ANTHROPIC_NO_VERDICT = ("previous_message_not_found", "unavailable")
_OPENAI_CHANGES = {"model_changed": "model_switch", "context_compacted": "compaction",
                   "input_changed": "prefix_changed", "tools_changed": "tools_changed",
                   "prompt_cache_key_changed": "settings_changed",
                   "text_format_changed": "settings_changed",
                   "reasoning_effort_changed": "settings_changed",
                   "verbosity_changed": "settings_changed",
                   "service_tier_changed": "settings_changed"}
_OPENAI_NO_VERDICT = ("comparison_response_not_found", "unavailable")
DIAGNOSIS_KEYS = ("diagnostics", "prompt_cache_diagnostics")   # Anthropic's, OpenAI's
_SHARED_DIAGNOSES = {}


def _diagnosis(verdict, raw, missed):
    """The shared tuple of one diagnosis (a log repeats a few thousand at most)."""
    key = (verdict, raw, missed)
    shared = _SHARED_DIAGNOSES.get(key)
    if shared is None:
        shared = key
        if len(_SHARED_DIAGNOSES) < 100000:
            _SHARED_DIAGNOSES[key] = key
    return shared


def _missed_estimate(value):
    """A missed-token estimate as an int; False when it is not a count (refused)."""
    if value is None:
        return None
    if type(value) is float and value.is_integer():   # never NaN nor infinite
        value = int(value)
    if type(value) is int and 0 <= value <= MAX_TOKENS_PER_FIELD:
        return value
    return False


def anthropic_diagnosis(value):
    """The diagnosis of Anthropic's `diagnostics` (present: null says the comparison
    found no divergence); None, and counted, when it is not one."""
    if value is None:
        return _diagnosis(NO_CHANGE, None, None)
    reason = value.get("cache_miss_reason", False) if type(value) is dict else False
    if reason is None:
        return _diagnosis(None, None, None)          # the comparison was still pending
    kind = reason.get("type") if type(reason) is dict else None
    if kind in _ANTHROPIC_NO_VERDICT:
        return _diagnosis(None, kind, None)
    cause = _ANTHROPIC_CHANGES.get(kind) if type(kind) is str else None
    missed = _missed_estimate(reason.get("cache_missed_input_tokens")) if cause else False
    if missed is False:
        return refused("cache-miss report")
    return _diagnosis(cause, kind, missed)


def openai_diagnosis(value):
    """The diagnosis of OpenAI's `prompt_cache_diagnostics`; None, and counted, when
    it is not one (null: none was asked for)."""
    if value is None:
        return None
    kind = value.get("type") if type(value) is dict else None
    if kind in _OPENAI_NO_VERDICT:
        return _diagnosis(None, kind, None)
    if kind == "cache_hit":
        cause, raw = NO_CHANGE, kind
    elif kind == "cache_miss":
        raw = value.get("reason")
        cause = _OPENAI_CHANGES.get(raw) if type(raw) is str else None
    else:
        cause = raw = None
    missed = _missed_estimate(value.get("cache_missed_tokens")) if cause else False
    if missed is False:
        return refused("cache-miss report")
    return _diagnosis(cause, raw, missed)


def diagnosis_of(holder):
    """The diagnosis a response object (a dict) carries, or None."""
    if "diagnostics" in holder:
        return anthropic_diagnosis(holder["diagnostics"])
    if "prompt_cache_diagnostics" in holder:
        return openai_diagnosis(holder["prompt_cache_diagnostics"])
    return None


# Where a record keeps the response its diagnosis is on: the record itself, its
# response or message, or LiteLLM's logged response.
_DIAGNOSIS_PLACES = ((), ("response",), ("message",), ("standard_logging_object", "response"))


def find_diagnosis(record):
    """The diagnosis wherever the record keeps its response (_DIAGNOSIS_PLACES), or
    None.  Most records have none of those places: three lookups tell."""
    get = record.get
    slo = get("standard_logging_object")
    for holder in (record, get("response"), get("message"),
                   slo.get("response") if type(slo) is dict else None):
        if type(holder) is dict and ("diagnostics" in holder
                                     or "prompt_cache_diagnostics" in holder):
            found = diagnosis_of(holder)
            if found is not None:
                return found
    return None


_MODEL_KEYS = ("model", "model_name", "modelId", "gen_ai.response.model",
               "gen_ai.request.model")
_PROVIDER_KEYS = ("provider", "litellm_provider", "custom_llm_provider",
                  "gen_ai.provider.name", "gen_ai.system")
_PROJECT_KEYS = ("project", "user_api_key_team_alias", "user_api_key_alias", "team_id")
_SESSION_KEYS = ("session_id", "trace_id", "thread_id", "conversation_id",
                 "gen_ai.conversation.id", "session.id")
_TIME_KEYS = ("timestamp", "startTime", "created_at", "created", "time", "timeUnixNano",
              "startTimeUnixNano")
_COST_KEYS = ("response_cost", "cost", "spend", "costUSD")


# Where each attribute may sit: numbered places of a record, then keys, in order.
(_RECORD, _ATTRIBUTES, _RESPONSE, _MESSAGE, _SLO, _METADATA, _SLO_METADATA,
 _USAGE_COST, _USAGE) = range(9)
_PLACE_KEYS = {_ATTRIBUTES: "attributes", _RESPONSE: "response", _MESSAGE: "message",
               _SLO: "standard_logging_object", _METADATA: "metadata",
               _SLO_METADATA: "standard_logging_object"}
_FIELD_SEARCH = (
    ("model", (_RECORD, _ATTRIBUTES, _RESPONSE, _MESSAGE, _SLO), _MODEL_KEYS),
    ("provider", (_RECORD, _ATTRIBUTES, _RESPONSE, _MESSAGE, _SLO), _PROVIDER_KEYS),
    ("project", (_RECORD, _METADATA, _SLO_METADATA), _PROJECT_KEYS),
    ("session", (_RECORD, _METADATA, _SLO_METADATA, _ATTRIBUTES, _SLO), _SESSION_KEYS),
    ("agent", (_RECORD, _METADATA), ("agent",)),
    ("time", (_RECORD, _SLO, _MESSAGE, _RESPONSE), _TIME_KEYS),
    ("cost", (_RECORD, _SLO, _USAGE_COST, _USAGE), _COST_KEYS + ("total",)),
    # the price dimensions (formats.md section 4): OpenAI's on the response, Anthropic's
    # in its usage
    ("tier", (_RECORD, _USAGE, _RESPONSE), ("service_tier",)),
    ("speed", (_USAGE, _RECORD), ("speed",)),
    ("geo", (_USAGE, _RECORD), ("inference_geo", "data_residency")),
    # OpenAI's extended prompt-cache retention, on the response (its writes' 12 h rate)
    ("retention", (_RECORD, _RESPONSE), ("prompt_cache_retention",)),
)
DIMENSIONS = ("tier", "speed", "geo", "retention")   # the price dimensions' attributes
_ATTRIBUTION_PLANS = {}


ALL_ATTRIBUTES = frozenset(name for name, _, _ in _FIELD_SEARCH)


def attribution_plan(record_keys, wanted=ALL_ATTRIBUTES, attribute_keys=None,
                     usage_keys=None):
    """For each attribute, the (place, key) pairs that can exist in a record with
    these top-level keys, in search order (a nested place may hold any key, but
    the OTel attributes only attribute_keys, when they are known); none for an
    attribute the view does not want."""
    present = frozenset(record_keys)
    plan = []
    for name, places, keys in _FIELD_SEARCH:
        pairs = []
        if name not in wanted and not (name == "project" and "advice_project" in wanted):
            plan.append(pairs)
            continue
        for place in places:
            if place == _RECORD:
                pairs.extend((place, key) for key in keys if key in present)
            elif place == _ATTRIBUTES and attribute_keys is not None:
                pairs.extend((place, key) for key in keys if key in attribute_keys)
            elif place == _USAGE:   # a number there: OpenRouter's usage.cost
                pairs.extend((place, key) for key in (("cost",) if name == "cost" else keys)
                             if usage_keys is None or key in usage_keys)
            elif place == _USAGE_COST:   # usage.cost, an object of costs
                if usage_keys is None or "cost" in usage_keys:
                    pairs.extend((place, key) for key in keys)
            elif _PLACE_KEYS[place] in present:
                pairs.extend((place, key) for key in keys)
        plan.append(pairs)
    return plan


def _planned_values(places, plan):
    """The first present scalar of each attribute, following its (place, key) pairs."""
    found = []
    for pairs in plan:
        value = None
        for index, key in pairs:
            place = places[index]
            if type(place) is dict:
                value = place.get(key)
                kind = type(value)
                if kind is str:
                    if value:
                        break
                elif value is not None and kind is not dict and kind is not list:
                    break
                value = None
        found.append(value)
    return found


_SHARED_TEXT = {}


def _text(value):
    """An attribute as text, shared with its earlier copies: logs repeat the same
    model, session and project names, and a kept request should not keep its own."""
    if value is None:
        return ""
    if type(value) is not str:
        value = str(value)
    shared = _SHARED_TEXT.get(value)
    if shared is None:
        # cleaned once, at its first sighting: "gpt-4o" and "gpt-4o" with a zero-width
        # space are one model, priced alike, never two rows that look the same
        shared = clean(value)
        if len(_SHARED_TEXT) < 100000:
            _SHARED_TEXT[value] = shared
    return shared


def server_searches(usage):
    """Anthropic's server-side web searches (usage.server_tool_use), billed per search;
    a count that is not one is refused, counted, and taken as none."""
    tools = usage.get("server_tool_use")
    if type(tools) is not dict:
        return 0
    count = bounded_number(tools.get("web_search_requests"), 0, MAX_TOKENS_PER_FIELD,
                           "web search count")
    return int(count) if count else 0


FAILED = object()   # what normalize_record gives for a failed call (failed_call)
_FAILURE_KEYS = frozenset(("standard_logging_object", "status", "error_str", "exception"))


def failed_call(record, tokens):
    """Whether a record is of a call that failed (formats.md section 2): LiteLLM's
    status "failure", or an error with no tokens (miss, read, writes, output).
    Not a request."""
    slo = record.get("standard_logging_object")
    slo = slo if type(slo) is dict else {}
    if record.get("status") == "failure" or slo.get("status") == "failure":
        return True
    if any(tokens[:5]):
        return False
    return any(place.get(key) for place in (record, slo) for key in ("error_str", "exception"))


def _failure_source(record_keys):
    """failed_call for records with these keys, inline, as lines returning FAILED
    (the request's figures are in miss, read, w5, w1 and out)."""
    if _FAILURE_KEYS.isdisjoint(record_keys):
        return []
    lines, places = [], ["record"]
    if "status" in record_keys:
        lines += ["if record.get('status') == 'failure':", "    return FAILED"]
    if "standard_logging_object" in record_keys:
        lines += ["s = record.get('standard_logging_object')", "if type(s) is not dict:",
                  "    s = EMPTY", "if s.get('status') == 'failure':", "    return FAILED"]
        places.append("s")
    errors = " or ".join("%s.get(%r)" % (place, key) for place in places
                         for key in ("error_str", "exception"))
    return lines + ["if not (miss or read or w5 or w1 or out) and (%s):" % errors,
                    "    return FAILED"]


_WRITE_REPORTING = ("anthropic", "bedrock", "vertex_ai-anthropic_models")
_TTL_CHOICE = {}   # provider -> reports_writes(provider)


def reports_writes(provider):
    """Whether a provider reports its cache writes (and so its TTL is a choice)."""
    return provider.lower().startswith(_WRITE_REPORTING)


def ttl_is_a_choice(provider):
    """reports_writes, remembered (a log names a handful of providers)."""
    found = _TTL_CHOICE.get(provider)
    if found is None:
        found = reports_writes(provider)
        if len(_TTL_CHOICE) < 10000:
            _TTL_CHOICE[provider] = found
    return found


def project_only_for_advice(wanted):
    """Whether the view wants a request's project only for its TTL advice, which a
    provider gets only where its TTL is a choice: the project of the others is not
    looked up at all (a request log of OpenAI's reads 5 % faster)."""
    return "project" not in wanted and "advice_project" in wanted


_STANDARD_TIERS = ("", "standard", "default", "auto", "on_demand", "standard_only")


def price_dimensions(service_tier=None, speed=None, geo=None, retention=None):
    """The price dimensions of a request as one short text ("" at the standard rate;
    "priority", "batch+fast", "geo:us", "retention:24h", ...); unknown names are kept,
    to be priced at base and listed."""
    parts = []
    tier = service_tier.strip().lower()[:24] if type(service_tier) is str else ""
    if tier == "scale":        # OpenAI's scale tier bills as priority
        tier = "priority"
    if tier not in _STANDARD_TIERS:
        parts.append(clean(tier))
    if type(speed) is str and speed.strip().lower() == "fast":
        parts.append("fast")
    region = geo.strip().lower()[:24] if type(geo) is str else ""
    if region and region not in ("global", "default", "standard"):
        parts.append("geo:" + clean(region))
    kept = retention.strip().lower()[:24] if type(retention) is str else ""
    if kept and kept not in ("in_memory", "in-memory", "default"):
        parts.append("retention:" + clean(kept))   # last: it renames the tier's keys
    return "+".join(parts)


_DIMENSIONS = {}


REGIONAL_HOSTS = ("https://eu.", "https://us.", "http://eu.", "http://us.")


def regional_host(url):
    """The region of OpenAI's regional processing a request's host names
    (eu.api.openai.com, us.api.openai.com), else None."""
    host = url.split("://", 1)[-1].split("/", 1)[0].lower()
    region = host[:-len(".api.openai.com")] if host.endswith(".api.openai.com") else ""
    return region if region in ("eu", "us") else None


def dimensions_of(tier, speed, geo, retention=None):
    """price_dimensions of scalars from a log, remembered (a log repeats one)."""
    key = (tier, speed, geo, retention)
    try:
        return _DIMENSIONS[key]
    except (KeyError, TypeError):   # new, or a list in a log (not hashable)
        key = tuple(value if type(value) is str else None for value in key)
        found = _DIMENSIONS.get(key)
    if found is None:
        found = price_dimensions(*key)
        if len(_DIMENSIONS) < 4096:
            _DIMENSIONS[key] = found
    return found


def iteration_requests(req, iterations):
    """The Requests of a response that ran server-side iterations (Anthropic's
    usage.iterations, formats.md section 2): each iteration priced on its own (its
    own size decides its long-context rate); an advisor_message at its own model, on
    a thread of its own; a compaction or other call at the response's model.  The
    message iterations are the response's own: whether its figures also include the
    others is told by arithmetic; None where they add up to neither (the response
    then counts as it is: never a token twice).  The first message iteration keeps
    what belongs to the call (its observed cost, diagnosis and searches)."""
    if type(iterations) is not list or not iterations:
        return None
    own, others = [], []
    for item in iterations:
        tokens = decode_usage(item) if type(item) is dict else None
        if tokens is None:
            return None
        kind, model = item.get("type"), item.get("model")
        if kind in (None, "message"):
            own.append(tokens[:5])
        elif kind == "advisor_message" and type(model) is str and model:
            others.append((tokens[:5], _text(model), _text(model)))
        else:
            others.append((tokens[:5], req.model, req.thread))
    top = (req.miss, req.cache_read, req.cache_write_5m, req.cache_write_1h, req.output)
    if req.cache_write_1h and not req.cache_write_5m and not any(
            t[3] for t in own + [t for t, _, _ in others]):
        # the response says all its writes were 1 h ones, its iterations only how many
        own = [(m, r, 0, w5, o) for m, r, w5, _, o in own]
        others = [((m, r, 0, w5, o), model, thread) for (m, r, w5, _, o), model, thread
                  in others]
    summed = tuple(sum(part) for part in zip(*own)) if own else (0,) * 5
    with_others = tuple(sum(part) for part in zip(summed, *[t for t, _, _ in others]))
    if not own or top not in (summed, with_others) or not any(map(any, own)):
        return None
    found = []
    for number, (miss, read, write_5m, write_1h, output) in enumerate(own):
        first = not number
        found.append(Request(req.ts, req.agent, req.provider, req.model, req.project,
                             req.session, miss, read, write_5m, write_1h, output,
                             min(req.reasoning, output) if first else 0,
                             req.observed_cost if first else None, req.sidechain, req.thread,
                             req.diagnosis if first else None, req.tier,
                             req.searches if first else 0, req.origin))
    for (miss, read, write_5m, write_1h, output), model, thread in others:
        if miss or read or write_5m or write_1h or output:
            found.append(Request(req.ts, req.agent, req.provider, model, req.project,
                                 req.session, miss, read, write_5m, write_1h, output, 0, None,
                                 req.sidechain, thread, None, req.tier, 0, req.origin))
    return found


def with_iterations(req, usage):
    """req, or the requests of its server-side iterations where its usage has them."""
    if isinstance(req, Request) and "iterations" in usage:
        return iteration_requests(req, usage["iterations"]) or req
    return req


def normalize_record(record, wanted=ALL_ATTRIBUTES):
    """A Request from one generic log record; None when it carries no token usage.
    Attributes not in wanted are left empty.

    Raises ValueError when a token field is damaged.
    """
    usage, attributes, keys = record.get("usage"), None, tuple(record)
    if type(usage) is not dict or not usage:
        usage, attributes = find_usage(record, keys)
        if usage is None:
            return None
    shape = (wanted, keys, tuple(usage), attributes is not None)
    compiled = _COMPILED_SHAPES.get(shape)
    if compiled is None:
        compiled = _compile_when_frequent(shape)
        if compiled is None:
            return interpret_record(record, usage, attributes, wanted)
    return compiled(record, usage, attributes)


def interpret_record(record, usage, attributes, wanted):
    """normalize_record once the usage is found, read by following the plans: the
    reference that every compiled shape must agree with."""
    tokens = decode_usage(usage)
    if tokens is None:
        return None
    keys = (wanted, tuple(record), tuple(usage) if attributes is None else None)
    if not _FAILURE_KEYS.isdisjoint(keys[1]) and failed_call(record, tokens):
        return FAILED
    plan = _ATTRIBUTION_PLANS.get(keys)
    if plan is None:
        plan = attribution_plan(keys[1], wanted, usage_keys=keys[2])
        if len(_ATTRIBUTION_PLANS) < _PLAN_CACHE_LIMIT:
            _ATTRIBUTION_PLANS[keys] = plan
    get = record.get
    slo = get("standard_logging_object")
    places = (record, attributes, get("response"), get("message"), slo, get("metadata"),
              slo.get("metadata") if type(slo) is dict else None, usage.get("cost"), usage)
    model, provider, project, session, agent, when, cost, tier, speed, geo, retention = \
        _planned_values(places, plan)
    model = _text(model)
    provider = _text(provider) or (infer_provider(model) if model else "")
    if project is not None and project_only_for_advice(wanted) and not ttl_is_a_choice(provider):
        project = None
    if geo is None and type(record.get("api_base")) is str and \
            record["api_base"].startswith(REGIONAL_HOSTS):
        geo = regional_host(record["api_base"])
    miss, read, write_5m, write_1h, output, reasoning = tokens
    req = Request(parse_timestamp(when), _text(agent), provider, model, _text(project),
                  _text(session), miss, read, write_5m, write_1h, output, reasoning,
                  as_money(cost), False, "", find_diagnosis(record),
                  "" if tier is None and speed is None and geo is None and retention is None
                  else dimensions_of(tier, speed, geo, retention),
                  server_searches(usage) if "server_tool_use" in usage else 0)
    return with_iterations(req, usage)


# Compiled shapes.  A log repeats a handful of record shapes (the same keys, the
# same usage keys) millions of times, and following the plans costs more than the
# JSON decoding.  A shape seen often is compiled once into one straight-line
# function that reads exactly what interpret_record would, in the same order.

_COMPILED_SHAPES = {}     # (wanted, record keys, usage keys, usage is attributes) -> function
_SHAPE_SIGHTINGS = {}
COMPILE_AFTER_SIGHTINGS = 8
COMPILED_SHAPES_LIMIT = 256  # a compile takes up to 2 ms: a log of a thousand shapes is odd


def _compile_when_frequent(shape):
    """The compiled function of a shape seen often enough; None before that, or when
    the log has more shapes than are worth compiling."""
    seen = _SHAPE_SIGHTINGS.get(shape, 0) + 1
    if seen < COMPILE_AFTER_SIGHTINGS or len(_COMPILED_SHAPES) >= COMPILED_SHAPES_LIMIT:
        if len(_SHAPE_SIGHTINGS) < _PLAN_CACHE_LIMIT:
            _SHAPE_SIGHTINGS[shape] = seen
        return None
    _SHAPE_SIGHTINGS.pop(shape, None)
    compiled = _COMPILED_SHAPES[shape] = compile_shape(*shape)
    return compiled


def compile_shape(wanted, record_keys, usage_keys, usage_is_attributes=False):
    """A function (record, usage, attributes) -> Request or None for records with
    these keys and usage keys, equal to interpret_record.  find_usage gives the
    OTel attributes, when it found the usage there, as the usage itself: then
    their keys are known, else there are none.

    The log's keys only decide which of catop's own key names go into the source:
    no text from the log is ever part of the code compiled."""
    plan = UsagePlan(usage_keys) if _USAGE_KEYS.intersection(usage_keys) else None
    if plan is None:
        body = ["return None"]
    else:
        body = (["get = usage.get"] + _usage_source(plan) + _failure_source(record_keys)
                + _diagnosis_source(record_keys)
                + _attribution_source(attribution_plan(
                    record_keys, wanted, usage_keys if usage_is_attributes else (),
                    usage_keys), project_only_for_advice(wanted),
                    "server_tool_use" in usage_keys, "api_base" in record_keys))
    source = "def shape(record, usage, attributes):\n    %s\n" % "\n    ".join(body)
    namespace = {"as_count": as_count, "MAX": MAX_TOKENS_PER_FIELD, "Request": Request,
                 "text": _text, "infer_provider": infer_provider, "as_money": as_money,
                 "parse_timestamp": parse_timestamp, "shared_get": _SHARED_TEXT.get,
                 "diagnosis_of": diagnosis_of, "ttl_get": _TTL_CHOICE.get,
                 "dimensions_of": dimensions_of, "FAILED": FAILED,
                 "regional_host": regional_host, "REGIONAL_HOSTS": REGIONAL_HOSTS,
                 "server_searches": server_searches,
                 "ttl_is_a_choice": ttl_is_a_choice, "nested_ttl_split": nested_ttl_split,
                 "bedrock_ttl_split": bedrock_ttl_split, "EMPTY": {},
                 "new_request": object.__new__}
    exec(compile(source, "<catop shape>", "exec"), namespace)
    if "iterations" not in usage_keys:
        return namespace["shape"]
    shape = namespace["shape"]

    def iterated(record, usage, attributes):   # (the rare shape: no inline code for it)
        return with_iterations(shape(record, usage, attributes), usage)
    return iterated


def _count_source(target, value="v"):
    """A line setting target to as_count(value), the common case inline."""
    return "%s = %s if type(%s) is int and 0 <= %s <= MAX else as_count(%s)" % (
        target, value, value, value, value)


def _first_count_source(target, paths, declare=True, nested=None):
    """Lines setting target to _first_count(usage, paths) (None when none is present);
    declare=False when target is None already; nested: {key: the local holding the
    object at that key, EMPTY when it is not one}, for the paths two keys deep."""
    lines = ["%s = None" % target] if declare else []
    for index, path in enumerate(paths):
        if len(path) == 2 and nested and path[0] in nested:
            step = ["v = %s.get(%r)" % (nested[path[0]], path[1])]
        else:
            step = ["v = get(%r)" % path[0]]
        if len(path) == 2 and not (nested and path[0] in nested):
            step.append("v = v.get(%r) if type(v) is dict else None" % path[1])
        step += ["if v is not None:", "    " + _count_source(target)]
        if index:
            step = ["if %s is None:" % target] + ["    " + line for line in step]
        lines += step
    return lines


def _usage_source(plan):
    """decode_usage for one UsagePlan, as lines setting miss, read, w5, w1, out, rsn."""
    lines = ["inp = None", "inclusive = False"]
    deep = sorted({path[0] for path in plan.read_paths + plan.write_paths +
                   plan.reasoning_paths if len(path) == 2})
    nested = {key: "n%d" % number for number, key in enumerate(deep)}
    for key, name in sorted(nested.items()):   # each object two-key paths read, read once
        lines += ["%s = get(%r)" % (name, key), "if type(%s) is not dict:" % name,
                  "    %s = EMPTY" % name]
    steps = [("v = get(%r)" % key, "v is not None", "True") for key in plan.inclusive_keys]
    if plan.input_tokens_inclusive is not None:
        steps.append(("v = get('input_tokens')", "v is not None",
                      repr(plan.input_tokens_inclusive)))
    steps += [("v = get(%r)" % key, "v is not None and type(v) is not dict", "False")
              for key in plan.exclusive_keys]
    for read, present, inclusive in steps:
        lines += ["if inp is None:", "    " + read, "    if %s:" % present,
                  "        " + _count_source("inp"), "        inclusive = %s" % inclusive]
    if plan.deepseek:
        lines += ["if inp is None:",
                  "    hit, v = get('prompt_cache_hit_tokens'), get('prompt_cache_miss_tokens')",
                  "    if hit is not None or v is not None:",
                  "        v, hit = v or 0, hit or 0",
                  "        " + _count_source("hit", "hit"), "        " + _count_source("v"),
                  "        inp, inclusive = hit + v, True"]
    if plan.gemini:
        lines += ["v = get('thoughtsTokenCount') or 0", _count_source("rsn"),
                  "v = get('candidatesTokenCount') or 0", _count_source("out"), "out += rsn"]
    else:
        lines.append("out = 0")
        for index, key in enumerate(plan.output_keys):
            step = ["v = get(%r)" % key, "if v is not None and type(v) is not dict:",
                    "    " + _count_source("out"), "    found = True"]
            if index:
                step = ["if not found:"] + ["    " + line for line in step]
            lines += (["found = False"] if not index else []) + step
        lines += _first_count_source("rsn", plan.reasoning_paths, nested=nested) + [
            "rsn = rsn or 0"]
        if plan.total_arbiter:   # _reasoning_outside, inline
            lines += ["if rsn:", "    t, p = get('total_tokens'), get('prompt_tokens')",
                      "    if type(t) is int and type(p) is int and t != p + out"
                      " and t == p + out + rsn:", "        out += rsn",
                      "    elif rsn > out:", "        rsn = out"]
        else:
            lines += ["if rsn > out:", "    rsn = out"]  # min(), without the call
    lines += _first_count_source("read", plan.read_paths, nested=nested) + ["read = read or 0"]
    lines.append("w5 = w1 = None")
    if plan.split:  # the TTL split wins, and then the flat figure is not read at all
        lines += ["split = get('cache_creation')",
                  "if type(split) is dict and ('ephemeral_5m_input_tokens' in split"
                  " or 'ephemeral_1h_input_tokens' in split):",
                  "    v = split.get('ephemeral_5m_input_tokens') or 0",
                  "    " + _count_source("w5"),
                  "    v = split.get('ephemeral_1h_input_tokens') or 0",
                  "    " + _count_source("w1")]
    if plan.nested_split:   # most details hold no split: one test skips the call
        holder = nested.get("prompt_tokens_details")
        lines += ["d = %s" % holder] if holder else [
            "d = get('prompt_tokens_details')", "if type(d) is not dict:", "    d = EMPTY"]
        lines += ["if w5 is None and ('cache_creation_token_details' in d"
                  " or 'cache_creation' in d):", "    split = nested_ttl_split(usage)",
                  "    if split is not None:", "        w5, w1 = split"]
    if plan.bedrock_split:
        lines += ["if w5 is None:", "    split = bedrock_ttl_split(get('cacheDetails'))",
                  "    if split is not None:", "        w5, w1 = split"]
    flat = _first_count_source("w5", plan.write_paths, declare=False, nested=nested) + [
        "w5, w1 = w5 or 0, 0"]
    lines += ["if w5 is None:"] + ["    " + line for line in flat]
    lines += ["if inp is None:", "    miss = 0",
              "elif inclusive:", "    miss = inp - read - w5 - w1",
              "    if miss < 0:", "        miss = 0",
              "else:", "    miss = inp"]
    if plan.tool_prompt:
        lines += ["v = get('toolUsePromptTokenCount') or 0", _count_source("v"), "miss += v"]
    return lines


def _diagnosis_source(record_keys):
    """find_diagnosis for records with these keys, as lines setting diag."""
    lines = ["diag = None"]
    for path in _DIAGNOSIS_PLACES:
        if path and path[0] not in record_keys or not path and not set(
                DIAGNOSIS_KEYS).intersection(record_keys):
            continue
        step = ["h = record"] if not path else ["h = record.get(%r)" % path[0]]
        if len(path) == 2:
            step.append("h = h.get(%r) if type(h) is dict else None" % path[1])
        step += ["if type(h) is dict and ('diagnostics' in h or "
                 "'prompt_cache_diagnostics' in h):", "    diag = diagnosis_of(h)"]
        lines += (["if diag is None:"] + ["    " + line for line in step]
                  if len(lines) > 1 else step)
    return lines


_PLACE_SOURCE = {
    _RECORD: "record", _ATTRIBUTES: "attributes", _RESPONSE: "record.get('response')",
    _MESSAGE: "record.get('message')", _SLO: "record.get('standard_logging_object')",
    _METADATA: "record.get('metadata')",
    _SLO_METADATA: "slo.get('metadata') if type(slo) is dict else None",
    _USAGE_COST: "usage.get('cost')", _USAGE: "usage"}


def _runs_by_place(pairs):
    """[(place, [key, ...]), ...]: the consecutive (place, key) pairs of one place."""
    runs = []
    for place, key in pairs:
        if runs and runs[-1][0] == place:
            runs[-1][1].append(key)
        else:
            runs.append((place, [key]))
    return runs


def _attribution_source(plan, advice_project=False, searches=False, api_base=False):
    """_planned_values and the Request of interpret_record, as lines returning it;
    advice_project: the project is looked up only where the TTL is a choice."""
    used = sorted({place for pairs in plan for place, _ in pairs} - {_RECORD})
    lines = []
    if _SLO_METADATA in used:
        lines.append("slo = record.get('standard_logging_object')")
    for place in used:  # a place that is not an object holds nothing: read it as {}
        # (one shared EMPTY dict: the code only ever reads it)
        lines += ["p%d = %s" % (place, _PLACE_SOURCE[place]),
                  "if type(p%d) is not dict:" % place, "    p%d = EMPTY" % place]
    names = ("model", "provider", "project", "session", "agent", "when", "cost") + DIMENSIONS
    project_lines = []
    for name, pairs in zip(names, plan):
        if name == "project" and advice_project:   # looked up after the provider, if at all
            lines, project_lines = project_lines, lines
        lines += ["%s = None" % name] if pairs else []
        for index, (place, keys) in enumerate(_runs_by_place(pairs)):
            holder = "record" if place == _RECORD else "p%d" % place
            run = []
            for key in keys:
                step = ["v = %s.get(%r)" % (holder, key), "t = type(v)",
                        "if t is str and v or v is not None and t is not str"
                        " and t is not dict and t is not list:",
                        "    %s = v" % name]
                run += (["if %s is None:" % name] + ["    " + line for line in step]
                        if run else step)
            guard = ["%s is None" % name] if index else []  # found in an earlier place?
            if place != _RECORD:  # most nested places are empty: one test skips them
                guard.append(holder)
            lines += (["if %s:" % " and ".join(guard)] + ["    " + line for line in run]
                      if guard else run)
        if name == "project" and advice_project:
            lines, project_lines = project_lines, lines
    searched = dict(zip(names, plan))
    if api_base:   # OpenAI's regional host, where the log names no region
        lines += ([] if searched["geo"] else ["geo = None"]) + [
            "if geo is None:", "    v = record.get('api_base')",
            "    if type(v) is str and v.startswith(REGIONAL_HOSTS):",
            "        geo = regional_host(v)"]
        searched["geo"] = True
    if advice_project and searched["project"]:
        project_lines = (["project = None", "c = ttl_get(provider)",
                          "if c or c is None and ttl_is_a_choice(provider):"]
                         + ["    " + line for line in project_lines[1:]])

    def text_of(name):  # _text, its common cases (none, a name seen before) inline
        return ("('' if %s is None else shared_get(%s) or text(%s))" % (name, name, name)
                if searched[name] else "''")

    return lines + [
        "model = %s" % text_of("model"),
        "provider = %s(infer_provider(model) if model else '')" % (
            text_of("provider") + " or " if searched["provider"] else "")] + project_lines + \
        _request_source({
            "ts": "parse_timestamp(when)" if searched["when"] else "None",
            "agent": text_of("agent"), "provider": "provider", "model": "model",
            "project": text_of("project"), "session": text_of("session"), "miss": "miss",
            "cache_read": "read", "cache_write_5m": "w5", "cache_write_1h": "w1",
            "output": "out", "reasoning": "rsn", "diagnosis": "diag",
            # as_money, its common case (a float in range) inline
            "observed_cost": "cost if type(cost) is float and -1e9 <= cost <= 1e9 else "
            "None if cost is None else as_money(cost)" if searched["cost"] else "None",
            "tier": "'' if %s else dimensions_of(%s)" % (
                " and ".join("%s is None" % n for n in DIMENSIONS if searched[n]),
                ", ".join(n if searched[n] else "None" for n in DIMENSIONS))
            if any(searched[n] for n in DIMENSIONS) else "''",
            "searches": "server_searches(usage)" if searches else "0"})


def _request_source(values):
    """Lines returning the Request of values ({field: source}; a field not in it takes
    Request's default), its slots set one by one: a call of Request(), which runs its
    __init__ from C, costs the compiled shape more than the rest of its return."""
    defaults = dict(zip(Request.__slots__, Request.__init__.__defaults__))
    return ["r = new_request(Request)"] + [
        "r.%s = %s" % (field, values[field] if field in values else repr(defaults[field]))
        for field in Request.__slots__] + ["return r"]


# ------------------------------------------------------------ agent parsers
# Coding-agent logs (formats.md section 3).  Each parser takes one decoded
# record plus the state of its file, and returns a Request or None; the
# de-duplication that needs more than one file lives in the agent sources.

def litellm_usage_tokens(usage):
    """(miss, read, 5m write, 1h write, output, reasoning) from LiteLLM's usage, whose
    prompt_tokens include cached tokens; its TTL split of writes is trusted."""
    tokens = decode_usage(usage)
    if tokens is None:
        return None
    miss, read, write_5m, write_1h, output, reasoning = tokens
    details = usage.get("prompt_tokens_details")
    split = details.get("cache_creation_token_details") if type(details) is dict else None
    if type(split) is dict and split.get("ephemeral_1h_input_tokens") is not None:
        write_5m = as_count(split.get("ephemeral_5m_input_tokens") or 0)
        write_1h = as_count(split.get("ephemeral_1h_input_tokens") or 0)
        total = as_count(usage.get("prompt_tokens") or 0)
        miss = max(0, total - read - write_5m - write_1h)
    return miss, read, write_5m, write_1h, output, reasoning


class Superseded(object):
    """A parser's word that the requests of a key are counted under other keys now
    (a response split into its iterations): an earlier line of it must not count."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key


class Compaction(object):
    """A point where an agent summarized its context: the prompt cache starts over."""

    __slots__ = ("ts",)

    def __init__(self, ts):
        self.ts = ts


class FileContext(object):
    """What a parser remembers between the lines of one file (kept for tailing)."""

    def __init__(self, path):
        self.path = path
        self.session = ""
        self.project = ""
        self.model = ""
        self.start_ts = None
        self.first_ts = None      # its first record's time (the file's rank)
        self.fork = False
        self.parent_session = ""
        self.previous_total = None
        self.sidechain = "%ssubagents%s" % (os.sep, os.sep) in path


def _count_or_zero(value):
    if type(value) is int and 0 <= value <= MAX_TOKENS_PER_FIELD:
        return value
    return 0 if value is None else as_count(value)


def decode_anthropic_usage(usage):
    """(miss, read, 5m write, 1h write, output) of an Anthropic usage object: the
    hot path of Claude Code logs, so it skips the shape detection of decode_usage."""
    count = _count_or_zero
    split = usage.get("cache_creation")
    if type(split) is dict and ("ephemeral_5m_input_tokens" in split
                                or "ephemeral_1h_input_tokens" in split):
        write_5m = count(split.get("ephemeral_5m_input_tokens"))
        write_1h = count(split.get("ephemeral_1h_input_tokens"))
    else:
        write_5m, write_1h = count(usage.get("cache_creation_input_tokens")), 0
    return (count(usage.get("input_tokens")), count(usage.get("cache_read_input_tokens")),
            write_5m, write_1h, count(usage.get("output_tokens")))


def parse_claude_code(record, ctx):
    """(dedup key, Request) of an assistant line; 'compact' for a compaction."""
    session = record.get("sessionId")
    if session:
        ctx.session = str(session)
    kind = record.get("type")
    if kind == "system" and record.get("subtype") == "compact_boundary":
        return "compact"
    if kind != "assistant":
        return None
    message = record.get("message")
    if type(message) is not dict or type(message.get("usage")) is not dict:
        return None
    model = message.get("model") or ""
    if model == "<synthetic>" or record.get("isApiErrorMessage"):
        return None
    usage = message["usage"]
    miss, read, write_5m, write_1h, output = decode_anthropic_usage(usage)
    if not (miss or read or write_5m or write_1h or output):
        return None
    tier, speed, geo = (usage.get("service_tier"), usage.get("speed"),
                        usage.get("inference_geo"))
    sidechain = bool(record.get("isSidechain")) or ctx.sidechain
    req = Request(parse_timestamp(record.get("timestamp")), "claude-code", "anthropic",
                  _text(model), _text(record.get("cwd") or ctx.project),
                  _text(record.get("sessionId")),
                  miss, read, write_5m, write_1h, output, 0,
                  as_money(record.get("costUSD")), sidechain,
                  claude_code_thread(record, ctx) if sidechain else "",
                  anthropic_diagnosis(message["diagnostics"]) if "diagnostics" in message
                  else None, "" if speed is None and geo is None and tier in (None, "standard")
                  else dimensions_of(tier, speed, geo),
                  server_searches(usage) if "server_tool_use" in usage else 0)
    message_id = message.get("id")
    key = dedup_key(message_id, record.get("requestId") or "") if message_id else None
    if "iterations" in usage:
        split = iteration_requests(req, usage["iterations"])
        if split:   # a key a part; the response's own key (a partial line's) gives way
            if key is None:
                return [(None, part) for part in split]
            return [Superseded(key)] + [(key ^ (number + 1), part)
                                        for number, part in enumerate(split)]
    return key, req


def claude_code_thread(record, ctx):
    """The thread of a subagent's line: its agentId, else its file's name.  A subagent
    has its own context and cache prefix, never chained with its parent's."""
    agent_id = record.get("agentId")
    if agent_id and type(agent_id) is str:
        return _text("agent-" + agent_id)
    name = os.path.basename(ctx.path)
    return _text(name[:-6] if name.endswith(".jsonl") else name or "subagent")


def dedup_key(message_id, request_id):
    """(message id, request id) as one int, its message part in the high 64 bits.

    Far smaller than the two strings, and the same in every process and run (the
    history keeps it); a 64-bit collision is about 1 in 10^7 for a million responses."""
    return (_stable_hash(message_id) << 64) | _stable_hash(request_id)


try:
    from _blake2 import blake2b as _blake2b  # built in; hashlib would load OpenSSL (MBs)
except ImportError:
    from hashlib import blake2b as _blake2b


def open_regular(path):
    """path opened to read bytes, if it is a regular file (a link to one is): a FIFO
    there would hang catop, a device such as /dev/zero never end.  Raises OSError."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)   # no wait for a FIFO's writer: the check below refuses it
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(22, "not a regular file (%s)" % file_kind(mode), path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode):
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO or pipe"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


READ_LIMIT_BYTES = 256 * 1024 * 1024   # a whole file read at once is at most this


def read_regular(path, limit_bytes=READ_LIMIT_BYTES):
    """The bytes of a regular file of at most limit_bytes; OSError otherwise."""
    with open_regular(path) as handle:
        data = handle.read(limit_bytes + 1)
    if len(data) > limit_bytes:
        raise OSError(27, "larger than %d MB" % (limit_bytes >> 20), path)
    return data


def make_private_folder(folder):
    """folder (and its parents) made if missing; one catop makes is 0700 whatever the
    umask (os.makedirs's mode is filtered by it, and given to the last folder only)."""
    if not folder or os.path.isdir(folder):
        return
    make_private_folder(os.path.dirname(os.path.abspath(folder)))
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
        os.chmod(folder, 0o700)


def create_private_file(path):
    """path created 0600 if missing, never through a symbolic link at its place."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode) and os.fstat(fd).st_size == 0:
            os.fchmod(fd, 0o600)     # new (or empty): 0600 whatever the umask
    finally:
        os.close(fd)


def _stable_hash(text):
    return int.from_bytes(_blake2b(str(text).encode("utf-8", "replace"),
                                   digest_size=8).digest(), "big")


def _line_size(key, req):
    """What decides between two lines of one response: for Claude Code (an int key)
    the larger line wins; Gemini CLI and OpenCode rewrite a message whole, so every
    line weighs 0 and the last write wins."""
    return req.input + req.output if type(key) is int else 0


def key_message_part(key):
    return key >> 64


_CODEX_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens",
                 "reasoning_output_tokens")
CODEX_REPLAY_WINDOW_S = 2.0


def _codex_counts(usage):
    return tuple(as_count(usage.get(k) or 0) for k in _CODEX_FIELDS)


def parse_codex(record, ctx):
    """A Request from a token_count event; session facts are kept in ctx.
    Returns 'compact' for a compaction and 'duplicate' for a re-emit or a replay."""
    kind = record.get("type")
    payload = record.get("payload")
    if type(payload) is not dict:
        return None
    if kind == "session_meta":
        ctx.session = str(payload.get("id") or ctx.session)
        ctx.project = str(payload.get("cwd") or ctx.project)
        ctx.start_ts = parse_timestamp(payload.get("timestamp") or record.get("timestamp"))
        source = payload.get("source")
        subagent = type(source) is dict and "subagent" in source
        ctx.parent_session = str(payload.get("forked_from_id") or "")
        ctx.fork = bool(ctx.parent_session) or subagent
        ctx.sidechain = ctx.sidechain or subagent
        if payload.get("model"):
            ctx.model = str(payload["model"])
        return None
    if kind == "turn_context":
        ctx.model = str(payload.get("model") or ctx.model)
        ctx.project = ctx.project or str(payload.get("cwd") or "")
        return None
    if kind == "compacted":
        return "compact"
    if kind != "event_msg" or payload.get("type") != "token_count":
        return None
    info = payload.get("info")
    if type(info) is not dict:
        return None
    return _codex_token_count(info, parse_timestamp(record.get("timestamp")), ctx)


def _codex_token_count(info, ts, ctx):
    total = info.get("total_token_usage")
    total = _codex_counts(total) if type(total) is dict else None
    last = info.get("last_token_usage")
    previous = ctx.previous_total
    if total is not None:
        if total == previous:
            return "duplicate"
        ctx.previous_total = total
    replay = ctx.fork and ts is not None and ctx.start_ts is not None \
        and ts - ctx.start_ts <= CODEX_REPLAY_WINDOW_S
    if replay:
        return "duplicate"  # a fork replays its parent's history: counted there
    if type(last) is dict:
        fresh, cached, output, reasoning = _codex_counts(last)
    elif total is not None:
        before = previous or (0, 0, 0, 0)
        fresh, cached, output, reasoning = (max(0, a - b) for a, b in zip(total, before))
    else:
        return None
    if not (fresh or cached or output):
        return None
    cached = min(cached, fresh)
    under_parent = ctx.sidechain and ctx.parent_session
    return Request(ts, "codex", "openai", ctx.model or "unknown", ctx.project,
                   ctx.parent_session if under_parent else ctx.session,
                   fresh - cached, cached, 0, 0, output, min(reasoning, output),
                   None, ctx.sidechain, ctx.session if under_parent else "")


def parse_gemini(record, ctx):
    """(message id, Request) of a Gemini CLI reply; the latest write of an id wins."""
    if "sessionId" in record and "type" not in record:
        ctx.session = str(record.get("sessionId") or ctx.session)
        ctx.project = str(record.get("projectHash") or ctx.project)
        return None
    if record.get("type") != "gemini" or type(record.get("tokens")) is not dict:
        return None
    tokens = record["tokens"]
    prompt = as_count(tokens.get("input") or 0)
    cached = min(as_count(tokens.get("cached") or 0), prompt)
    tool = as_count(tokens.get("tool") or 0)   # tool results' prompt, on top of input
    thoughts = as_count(tokens.get("thoughts") or 0)
    output = as_count(tokens.get("output") or 0) + thoughts
    if not (prompt or output):
        return None
    req = Request(parse_timestamp(record.get("timestamp")), "gemini", "google",
                  str(record.get("model") or "unknown"), ctx.project, ctx.session,
                  prompt - cached + tool, cached, 0, 0, output, thoughts)
    message_id = record.get("id")
    if not message_id:  # the same record read again (or by another process) keys alike
        message_id = "h%x" % _stable_hash(json.dumps(record, sort_keys=True, default=str))
    return str(message_id), req


def parse_openclaw(record, ctx):
    """A Request of an OpenClaw assistant message (OpenClaw writes pi's session
    format); session facts kept in ctx."""
    return pi_session_request(record, ctx, "openclaw")


def pi_session_request(record, ctx, agent):
    """The Request of an assistant message of pi's session format (pi and OpenClaw),
    'compact' for a compaction, else None; session facts kept in ctx.  Its usage
    is camelCase: input exclusive of cacheRead and cacheWrite, cost.total observed."""
    kind = record.get("type")
    if kind == "session":
        ctx.session = str(record.get("id") or ctx.session)
        ctx.project = str(record.get("cwd") or ctx.project)
        return None
    if kind == "compaction":
        return "compact"
    message = record.get("message")
    if kind != "message" or type(message) is not dict or message.get("role") != "assistant":
        return None
    usage = message.get("usage")
    if type(usage) is not dict:
        return None
    tokens = decode_usage(usage)
    if tokens is None or not any(tokens[:5]):
        return None
    miss, read, write_5m, write_1h, output, reasoning = tokens
    cost = usage.get("cost")
    model = str(message.get("model") or "unknown")
    return Request(parse_timestamp(record.get("timestamp") or message.get("timestamp")),
                   agent, str(message.get("provider") or infer_provider(model)), _text(model),
                   _text(ctx.project), _text(ctx.session), miss, read, write_5m, write_1h,
                   output, reasoning, as_money(cost.get("total")) if type(cost) is dict else None)


_DOTTED_CLAUDE = re.compile(r"(^|/)(claude-(?:opus|sonnet|haiku)-\d+)\.(\d+)")


def dashed_claude(model):
    """claude-sonnet-4.5 -> claude-sonnet-4-5: GitHub Copilot's and Kilo's gateway
    spelling of a Claude model, written as the price map names it."""
    return _DOTTED_CLAUDE.sub(r"\1\2-\3", model)


def renamed_copy_content(req):
    """What a copy of a request under another key keeps of it: its time, model and
    tokens (the key, session and cost differ: a fork's copy costs 0); None without a
    time (two such requests are not told copies by their tokens alone)."""
    if req.ts is None:
        return None
    return (req.ts, req.model, req.provider, req.miss, req.cache_read, req.cache_write_5m,
            req.cache_write_1h, req.output, req.reasoning)


def _content_key(*parts):
    """A key made of what every copy of a record keeps (forks copy records whole)."""
    return "h%x" % _stable_hash(json.dumps(parts, sort_keys=True, default=str))


def parse_opencode(message, agent="opencode", session="", directory="", row_id=""):
    """(message id, Request) of an assistant message of OpenCode or of Kilo (its
    fork).  A database row keeps the message's id and session in its own columns,
    not in its JSON (row_id, session)."""
    if type(message) is not dict or message.get("role") != "assistant":
        return None
    tokens = message.get("tokens")
    if type(tokens) is not dict:
        return None
    cache = tokens.get("cache") if type(tokens.get("cache")) is dict else {}
    reasoning = as_count(tokens.get("reasoning") or 0)
    output = as_count(tokens.get("output") or 0)
    miss = as_count(tokens.get("input") or 0)     # net of both cache figures
    read, write = as_count(cache.get("read") or 0), as_count(cache.get("write") or 0)
    # reasoning sits beside output (AI SDK 6 and later); builds before kept it inside,
    # and then the provider's total counts it once: the total tells them apart
    total = tokens.get("total")
    if not (reasoning and total is not None and
            as_count(total) == miss + read + write + output):
        output += reasoning
    if not (miss or read or write or output):
        return None
    times = message.get("time") if type(message.get("time")) is dict else {}
    path = message.get("path") if type(message.get("path")) is dict else {}
    model = str(message.get("modelID") or "unknown")
    provider = str(message.get("providerID") or "")
    if provider in ("", "kilo", "openrouter", "opencode"):  # a gateway: the model tells
        provider = infer_provider(model)
    req = Request(parse_timestamp(times.get("created")), agent, provider,
                  _text(dashed_claude(model)), _text(path.get("cwd") or directory),
                  _text(message.get("sessionID") or session), miss, read, write, 0, output,
                  min(reasoning, output), as_money(message.get("cost")))
    return str(message.get("id") or row_id), req


def models_apart(results):
    """[(key, Request)] of one record that totals several models (a run, a turn): the
    model with the most input stays on the session's main thread, each other one is a
    thread of its own, so that their being side by side is no model switch."""
    if len(results) > 1:
        main = max(results, key=lambda result: (result[1].input, result[1].model))[1]
        for _, req in results:
            if req is not main:
                req.thread = req.model
    return results


def parse_pi(record, ctx):
    """(entry key, Request) of a pi assistant message; 'compact' for a compaction.
    A fork or branch copies its parent's lines verbatim (entry id and time) into a
    new session file: the key is the same in every file."""
    req = pi_session_request(record, ctx, "pi")
    if not isinstance(req, Request):
        return req
    entry = record.get("id")
    return ("%s@%s" % (entry, record.get("timestamp")) if entry else _content_key(record)), req


_COPILOT_CONTEXT_SUFFIX = re.compile(r"-1m(?:-internal)?$")


def parse_copilot(record, ctx):
    """[(key, Request)] of a GitHub Copilot CLI session.shutdown, one per model: the
    usage of one run of the CLI (its counters start from zero in every process, so
    every shutdown counts); session facts from the folder and session.start."""
    if not ctx.session:
        ctx.session = os.path.basename(os.path.dirname(ctx.path))
    kind, data = record.get("type"), record.get("data")
    if type(data) is not dict:
        return None
    if kind in ("session.start", "session.resume"):
        context = data.get("context")
        if type(context) is dict and context.get("cwd"):
            ctx.project = str(context["cwd"])
        return None
    if kind == "session.compaction_complete":
        return "compact"
    metrics = data.get("modelMetrics")
    if kind != "session.shutdown" or type(metrics) is not dict:
        return None
    ts = parse_timestamp(record.get("timestamp"))
    event = str(record.get("id") or _content_key(record))
    results = []
    for name in sorted(metrics):
        metric = metrics[name]
        usage = metric.get("usage") if type(metric) is dict else None
        if type(usage) is not dict:
            continue
        prompt = as_count(usage.get("inputTokens") or 0)       # both caches inside
        read = min(as_count(usage.get("cacheReadTokens") or 0), prompt)
        write = min(as_count(usage.get("cacheWriteTokens") or 0), prompt - read)
        output = as_count(usage.get("outputTokens") or 0)      # reasoning inside
        if not (prompt or output):
            continue
        model = dashed_claude(_COPILOT_CONTEXT_SUFFIX.sub("", str(name))) or "unknown"
        results.append(("%s.%s" % (event, name), Request(
            ts, "copilot", infer_provider(model), _text(model), _text(ctx.project),
            _text(ctx.session), prompt - read - write, read, write, 0, output,
            min(as_count(usage.get("reasoningTokens") or 0), output))))
    return models_apart(results) or None


# Kimi: Kimi CLI (~/.kimi) writes sessions/<md5(work dir)>/<session>/wire.jsonl (its
# subagents subagents/<id>/wire.jsonl); Kimi Code (~/.kimi-code) writes
# sessions/<workspace>/<session>/agents/<agent>/wire.jsonl.  The model is not in a
# Kimi CLI wire: it is its config.toml's default_model.

KIMI_FOR_CODING_K2_6_FROM = 1776698890.072   # when the "kimi-for-coding" plan alias moved
_TOML_DEFAULT = re.compile(r'^\s*default_model\s*=\s*"([^"]*)"', re.M)
_TOML_SECTION = re.compile(r'^\s*\[models\.(?:"([^"]+)"|([^\]\s]+))\]\s*$', re.M)
_TOML_MODEL = re.compile(r'^\s*model\s*=\s*"([^"]*)"', re.M)
_KIMI_ROOT_FACTS = {}


def kimi_price_model(model, ts):
    """The price-map name of Kimi's plan alias (kimi-k2.5, then kimi-k2.6)."""
    if model == "kimi-for-coding":
        return "kimi-k2.6" if ts is not None and ts >= KIMI_FOR_CODING_K2_6_FROM else "kimi-k2.5"
    return model


def _read_text(path):
    try:
        return read_regular(path, 1 << 20).decode("utf-8", "replace")
    except OSError:
        return ""


def _toml_default_model(text):
    """The model config.toml's default_model names (its [models.<key>] model)."""
    default = _TOML_DEFAULT.search(text)
    if not default:
        return ""
    model = default.group(1)
    for section in _TOML_SECTION.finditer(text):
        if (section.group(1) or section.group(2)) == model:
            found = _TOML_MODEL.search(text, section.end())
            following = text.find("\n[", section.end())
            if found and (following < 0 or found.start() < following):
                return found.group(1)
            break
    return model


def _kimi_root_facts(root):
    """(model, {md5 of a work dir: work dir}, {session: work dir}) of a Kimi folder,
    from config.toml, kimi.json and session_index.jsonl; read once a run."""
    facts = _KIMI_ROOT_FACTS.get(root)
    if facts is not None:
        return facts
    model = _toml_default_model(_read_text(os.path.join(root, "config.toml")))
    by_hash, by_session = {}, {}
    try:
        meta = json.loads(_read_text(os.path.join(root, "kimi.json")) or "{}")
    except (ValueError, RecursionError):
        meta = {}
    import hashlib   # md5: the name Kimi CLI gives a work dir's folder
    for work in (meta.get("work_dirs") or []) if type(meta) is dict else []:
        if type(work) is dict and type(work.get("path")) is str:
            by_hash[hashlib.md5(work["path"].encode("utf-8")).hexdigest()] = work["path"]
    for line in _read_text(os.path.join(root, "session_index.jsonl")).splitlines():
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if type(entry) is dict and entry.get("sessionId") and entry.get("workDir"):
            by_session[str(entry["sessionId"])] = str(entry["workDir"])
    facts = (model or "kimi-for-coding", by_hash, by_session)
    if len(_KIMI_ROOT_FACTS) < 64:
        _KIMI_ROOT_FACTS[root] = facts
    return facts


def _kimi_context(ctx):
    """Session, thread, project and fork of a wire file, from its path (once)."""
    if getattr(ctx, "kimi_code", None) is not None:
        return
    parts = ctx.path.split(os.sep)
    group = ""
    if len(parts) >= 6 and parts[-3] == "agents":          # Kimi Code
        ctx.kimi_code = True
        ctx.session, agent, root = parts[-4], parts[-2], os.sep.join(parts[:-6])
        ctx.thread = "" if agent == "main" else agent
    elif len(parts) >= 6 and parts[-3] == "subagents":     # a Kimi CLI subagent
        ctx.kimi_code = False
        ctx.session, ctx.thread = parts[-4], parts[-2]
        root, group = os.sep.join(parts[:-6]), parts[-5]
    else:                                                  # a Kimi CLI session
        ctx.kimi_code = False
        ctx.session, ctx.thread = parts[-2], ""
        root, group = os.sep.join(parts[:-4]), parts[-3]
    ctx.sidechain = bool(ctx.thread)
    ctx.model, by_hash, by_session = _kimi_root_facts(root)
    if not ctx.kimi_code:
        ctx.project = by_hash.get(group, group)
        return
    ctx.project = by_session.get(ctx.session, "")
    try:
        state = json.loads(_read_text(os.path.join(os.sep.join(parts[:-3]), "state.json"))
                           or "{}")
    except (ValueError, RecursionError):
        state = {}
    if type(state) is dict:
        ctx.project = ctx.project or str(state.get("workDir") or "")
        if not ctx.parent_session:   # (kept from where a resumed reading stopped)
            ctx.parent_session = str(state.get("forkedFrom") or "")
            ctx.fork = bool(ctx.parent_session)   # lines above its "forked" mark: copies


def _kimi_request(ctx, ts, model, other, output, read, write):
    head, _, tail = model.partition("/")
    if tail:
        provider, model = ("moonshot" if head in ("kimi-code", "kimi", "moonshot",
                                                  "moonshotai") else head), tail
    else:
        provider = infer_provider(model)
        provider = "moonshot" if provider == "unknown" else provider
    return Request(ts, "kimi", provider, _text(kimi_price_model(model, ts)), _text(ctx.project),
                   _text(ctx.session), other, read, write, 0, output, 0, None, ctx.sidechain,
                   ctx.thread)


def parse_kimi(record, ctx):
    """(key, Request) of a Kimi CLI StatusUpdate or a Kimi Code usage.record.  Input
    is exclusive of both cache figures; output holds the thinking."""
    _kimi_context(ctx)
    kind = record.get("type")
    if kind == "forked":          # /fork copied its parent's records above this line
        ctx.fork = False
        return None
    if kind == "usage.record":                             # Kimi Code
        usage = record.get("usage")
        if type(usage) is not dict:
            return None
        other, output = as_count(usage.get("inputOther") or 0), as_count(usage.get("output") or 0)
        read = as_count(usage.get("inputCacheRead") or 0)
        write = as_count(usage.get("inputCacheCreation") or 0)
        if not (other or output or read or write):
            return None
        model = str(record.get("model") or ctx.model)
        # every scope is one model call ('session': a compaction, the title); a fork
        # copies its parent's records verbatim, so the key leaves the session out
        key = _content_key("kc", ctx.thread, record.get("time"), model,
                           record.get("usageScope"), other, output, read, write)
        req = _kimi_request(ctx, parse_timestamp(record.get("time")), model,
                            other, output, read, write)
        if ctx.fork:              # its parent's request, copied: the parent's session
            req.session = _text(ctx.parent_session)
        return key, req
    message = record.get("message")
    payload = message.get("payload") if type(message) is dict else None
    if type(payload) is not dict:
        return None
    thread = None
    if message.get("type") == "SubagentEvent":
        # relayed to the parent's wire; with an agent_id the subagent's own wire
        # file holds it, and it is counted there
        inner = payload.get("event")
        if payload.get("agent_id") or type(inner) is not dict:
            return None
        message, payload = inner, inner.get("payload")
        if type(payload) is not dict:
            return None
        thread = str(payload.get("task_tool_call_id") or payload.get("parent_tool_call_id")
                     or "subagent")
    usage = payload.get("token_usage")
    if message.get("type") != "StatusUpdate" or type(usage) is not dict:
        return None
    other, output = as_count(usage.get("input_other") or 0), as_count(usage.get("output") or 0)
    read = as_count(usage.get("input_cache_read") or 0)
    write = as_count(usage.get("input_cache_creation") or 0)
    if not (other or output or read or write):
        return None
    req = _kimi_request(ctx, parse_timestamp(record.get("timestamp")), ctx.model,
                        other, output, read, write)
    if thread is not None:
        req.sidechain, req.thread = True, _text(thread)
    message_id = payload.get("message_id")
    key = "m:%s" % message_id if message_id else _content_key(
        "kcli", ctx.session, record.get("timestamp"), other, output, read, write)
    return key, req


def parse_qwen(record, ctx):
    """(uuid, Request) of a Qwen Code assistant record.  Its usageMetadata is
    Gemini's (prompt inclusive of the cache); thoughts are inside the candidates but
    on Gemini's own API, where the total counts them beside.  /branch copies every
    record into the new session, uuid kept and forkedFrom set: the copy keeps the
    parent's session, and its uuid makes it one request with the parent's."""
    if record.get("type") != "assistant":
        return None
    usage = record.get("usageMetadata")
    if type(usage) is not dict:
        return None
    prompt = as_count(usage.get("promptTokenCount") or 0)
    cached = min(as_count(usage.get("cachedContentTokenCount") or 0), prompt)
    candidates = as_count(usage.get("candidatesTokenCount") or 0)
    thoughts = as_count(usage.get("thoughtsTokenCount") or 0)
    total = as_count(usage.get("totalTokenCount") or 0)
    output = candidates + thoughts if thoughts and total >= prompt + candidates + thoughts \
        else candidates
    if not (prompt or output):
        return None
    ctx.session = str(record.get("sessionId") or ctx.session)
    ctx.project = str(record.get("cwd") or ctx.project)
    forked = record.get("forkedFrom")
    session = str(forked["sessionId"]) if type(forked) is dict and forked.get("sessionId") \
        else ctx.session
    model = str(record.get("model") or "unknown")
    sidechain = bool(record.get("isSidechain"))
    req = Request(parse_timestamp(record.get("timestamp")), "qwen", infer_provider(model),
                  _text(model), _text(ctx.project), _text(session), prompt - cached, cached, 0,
                  0, output, min(thoughts, output), None, sidechain,
                  _text(record.get("agentId") or "") if sidechain else "")
    return str(record.get("uuid") or _content_key(session, record.get("timestamp"), usage)), req


def _grok_context(ctx):
    """Session, project and model of a Grok Build CLI session folder (once)."""
    if getattr(ctx, "grok_folder", None) is not None:
        return
    from urllib.parse import unquote
    folder = ctx.grok_folder = os.path.dirname(ctx.path)
    ctx.session = os.path.basename(folder)
    ctx.project = unquote(os.path.basename(os.path.dirname(folder)))
    try:
        summary = json.loads(_read_text(os.path.join(folder, "summary.json")) or "{}")
    except (ValueError, RecursionError):
        summary = {}
    if type(summary) is dict:
        info = summary.get("info") if type(summary.get("info")) is dict else {}
        ctx.session = str(info.get("id") or ctx.session)
        ctx.project = str(info.get("cwd") or summary.get("git_root_dir") or ctx.project)
        ctx.model = str(summary.get("current_model_id") or "")


def _grok_model(raw):
    name = (raw[7:] if raw.startswith("[grok] ") else raw).strip()
    return name[:-6] if name.endswith("-build") else name


def parse_grok(record, ctx):
    """[(key, Request)] of a Grok Build CLI turn_completed update, one per model of
    its modelUsage (a request here is a whole turn: the log keeps no call).  Input
    includes the cache; output includes the reasoning; the cost is in ticks of
    1e-10 USD."""
    _grok_context(ctx)
    params = record.get("params")
    update = params.get("update") if type(params) is dict else None
    if type(update) is not dict or update.get("sessionUpdate") != "turn_completed":
        return None
    usage = update.get("usage")
    if type(usage) is not dict:
        return None
    meta = params.get("_meta") if type(params.get("_meta")) is dict else {}
    ts = parse_timestamp(meta.get("agentTimestampMs"))
    ts = ts if ts is not None else parse_timestamp(record.get("timestamp"))
    session = str(params.get("sessionId") or ctx.session)
    rows = usage.get("modelUsage")
    if type(rows) is not dict or not rows:
        rows = {ctx.model or "unknown": usage}
    event, results = meta.get("eventId"), []
    for raw_model in sorted(rows):
        row = rows[raw_model]
        if type(row) is not dict:
            continue
        prompt = as_count(row.get("inputTokens") or 0)
        cached = min(as_count(row.get("cachedReadTokens") or 0), prompt)
        created = min(as_count(row.get("cacheCreationTokens") or 0), prompt - cached)
        output = as_count(row.get("outputTokens") or 0)
        if not (prompt or output):
            continue
        ticks = as_money(row.get("costUsdTicks"))
        model = _grok_model(str(raw_model))
        key = "%s|%s" % (event, raw_model) if event else _content_key(
            session, ts, raw_model, prompt, output, cached, created)
        results.append((key, Request(
            ts, "grok", "xai", _text(model), _text(ctx.project), _text(session),
            prompt - cached - created, cached, created, 0, output,
            min(as_count(row.get("reasoningTokens") or 0), output),
            ticks / 1e10 if ticks else None)))
    return models_apart(results) or None

# ------------------------------------------------------------------ pricing
# LiteLLM price-map format, USD per token (formats.md section 4).

# The most used models, so a lone `curl -O catop.py` still prices them.  A test
# checks every figure here against prices.json.
EMBEDDED_PRICES_DATE = "2026-11-01"
EMBEDDED_PRICES = {
    "claude-opus-4-5": (5e-06, 5e-07, 6.25e-06, 1e-05, 2.5e-05),
    "claude-sonnet-4-5": (3e-06, 3e-07, 3.75e-06, 6e-06, 1.5e-05),
    "claude-haiku-4-5": (1e-06, 1e-07, 1.25e-06, 2e-06, 5e-06),
    "claude-opus-4-6": (5e-06, 5e-07, 6.25e-06, 1e-05, 2.5e-05),
    "claude-sonnet-4-6": (3e-06, 3e-07, 3.75e-06, 6e-06, 1.5e-05),
    "gpt-5": (1.25e-06, 1.25e-07, None, None, 1e-05),
    "gpt-5-mini": (2.5e-07, 2.5e-08, None, None, 2e-06),
    "gpt-5-codex": (1.25e-06, 1.25e-07, None, None, 1e-05),
    "gpt-5.1": (1.25e-06, 1.25e-07, None, None, 1e-05),
    "gpt-4o": (2.5e-06, 1.25e-06, None, None, 1e-05),
    "gpt-4o-mini": (1.5e-07, 7.5e-08, None, None, 6e-07),
    "gpt-4.1": (2e-06, 5e-07, None, None, 8e-06),
    "gpt-4.1-mini": (4e-07, 1e-07, None, None, 1.6e-06),
    "o3": (2e-06, 5e-07, None, None, 8e-06),
    "o4-mini": (1.1e-06, 2.75e-07, None, None, 4.4e-06),
    "gemini-2.5-pro": (1.25e-06, 1.25e-07, None, None, 1e-05),
    "gemini-2.5-flash": (3e-07, 3e-08, None, None, 2.5e-06),
    "deepseek-chat": (2.8e-07, 2.8e-08, None, None, 4.2e-07),
    "deepseek-reasoner": (2.8e-07, 2.8e-08, None, None, 4.2e-07),
}
_EMBEDDED_TIERS = {  # above 200k input tokens: (input, cache read, cache write, output)
    "gemini-2.5-pro": (2.5e-06, 2.5e-07, 2.5e-07, 1.5e-05),
}


_EMBEDDED_SEARCH = {  # USD a server-side web search
    "claude-opus-4-5": 0.01, "claude-sonnet-4-5": 0.01, "claude-opus-4-6": 0.01,
    "claude-sonnet-4-6": 0.01, "gpt-5": 0.01, "gpt-5-mini": 0.01, "gpt-5.1": 0.01,
    "gpt-4o-mini": 0.025, "gpt-4.1": 0.025, "gpt-4.1-mini": 0.025, "o3": 0.01, "o4-mini": 0.01,
    "gemini-2.5-pro": 0.035, "gemini-2.5-flash": 0.035}


def embedded_price_map():
    """EMBEDDED_PRICES in LiteLLM's format."""
    table = {}
    for model, (p_in, p_read, p_w5, p_w1, p_out) in EMBEDDED_PRICES.items():
        entry = {"input_cost_per_token": p_in, "cache_read_input_token_cost": p_read,
                 "output_cost_per_token": p_out}
        if p_w5 is not None:
            entry["cache_creation_input_token_cost"] = p_w5
            entry["cache_creation_input_token_cost_above_1hr"] = p_w1
        if model in _EMBEDDED_SEARCH:
            entry["search_context_cost_per_query"] = {
                "search_context_size_medium": _EMBEDDED_SEARCH[model]}
        tier = _EMBEDDED_TIERS.get(model)
        if tier:
            entry["input_cost_per_token_above_200k_tokens"] = tier[0]
            entry["cache_read_input_token_cost_above_200k_tokens"] = tier[1]
            entry["cache_creation_input_token_cost_above_200k_tokens"] = tier[2]
            entry["output_cost_per_token_above_200k_tokens"] = tier[3]
        table[model] = entry
    return table


def _rate(entry, key, fallback):
    rate = bounded_number(entry.get(key), 0.0, MAX_RATE_USD, "rate")
    return fallback if rate is None else rate


# Anthropic's published cache rates, as multiples of the input rate: what a Claude
# entry without its own cache keys (Bedrock's, Vertex's) is priced at
CLAUDE_CACHE_MULTIPLIERS = (0.1, 1.25, 2.0)   # read, 5-minute write, 1-hour write


_ABOVE_KEY = re.compile(r"_above_(\d{1,5})k_tokens$")


def rates_from_entry(entry, name=""):
    """(base rates, ((threshold tokens, rates), ...) ascending, or None); each rate
    tuple is (input, cache read, 5m write, 1h write, output, reasoning).  A request
    whose input exceeds a threshold pays that level's rates, the highest it exceeds
    (formats.md section 4): *_above_<N>k_tokens keys, or tiered_pricing ranges."""
    ranges = tiered_ranges(entry.get("tiered_pricing"))
    if ranges:
        levels = [(low, rates_from_entry(dict(entry, tiered_pricing=None, **rates), name)[0])
                  for low, rates in ranges]
        return (levels[0][1] if ranges[0][0] == 0 else rates_from_entry(
            dict(entry, tiered_pricing=None), name)[0]), tuple(
                level for level in levels if level[0] > 0) or None
    p_in = _rate(entry, "input_cost_per_token", 0.0)
    p_out = _rate(entry, "output_cost_per_token", 0.0)
    read, five, hour = CLAUDE_CACHE_MULTIPLIERS if "claude" in name.lower() else (1, 1, None)
    p_read = _rate(entry, "cache_read_input_token_cost", p_in * read)
    p_w5 = _rate(entry, "cache_creation_input_token_cost", p_in * five)
    p_w1 = _rate(entry, "cache_creation_input_token_cost_above_1hr",
                 p_w5 if hour is None else p_in * hour)
    p_rsn = _rate(entry, "output_cost_per_reasoning_token", p_out)
    searches = entry.get("search_context_cost_per_query")
    p_search = _rate(searches, "search_context_size_medium", 0.0) \
        if type(searches) is dict else 0.0
    base = (p_in, p_read, p_w5, p_w1, p_out, p_rsn, p_search)
    sizes = sorted({int(found.group(1)) for found in map(_ABOVE_KEY.search, entry)
                    if found and int(found.group(1)) > 0})
    if not sizes:
        return base, None
    explicit_rsn = "output_cost_per_reasoning_token" in entry
    levels, reached = [], threshold_reached(entry, name)
    for size in sizes:
        above = "_above_%dk_tokens" % size
        t_out = _rate(entry, "output_cost_per_token" + above, p_out)
        levels.append((size * 1000 - reached, (
            _rate(entry, "input_cost_per_token" + above, p_in),
            _rate(entry, "cache_read_input_token_cost" + above, p_read),
            _rate(entry, "cache_creation_input_token_cost" + above, p_w5),
            _rate(entry, "cache_creation_input_token_cost_above_1hr" + above, p_w1),
            t_out,
            # without a reasoning rate of its own, reasoning is output at the level's rate
            _rate(entry, "output_cost_per_reasoning_token" + above,
                  p_rsn if explicit_rsn else t_out), p_search)))
    return base, tuple(levels)


def tiered_ranges(ranges, count=True):
    """[(low tokens, {rate key: rate})] of a tiered_pricing list, ascending; [] when it
    is not one (ranges that overlap, run backwards or are not numbers refuse it all,
    counted: the entry's flat rates are used)."""
    if type(ranges) is not list or not ranges:
        return []
    found = []
    for item in ranges:
        span = item.get("range") if type(item) is dict else None
        low, high = (bounded_number(v, 0.0, 1e9, "price range") if count else
                     v if type(v) in (int, float) and 0 <= v <= 1e9 else None
                     for v in span) if type(span) is list and len(span) == 2 else (None, None)
        if low is None or high is None or high <= low:
            return refused("price range") or [] if count else []
        found.append((low, high, {k: v for k, v in item.items() if k != "range"}))
    found.sort(key=lambda item: item[0])
    if any(a[1] > b[0] for a, b in zip(found, found[1:])):
        return refused("price range") or [] if count else []
    return [(int(low), rates) for low, _, rates in found]


# Providers whose higher rates start where the prompt reaches the threshold, not
# where it passes it: xAI ("Requests whose prompt reaches 200k tokens are billed at
# the higher rate", docs.x.ai; LiteLLM's cost calculator agrees).
_THRESHOLD_REACHED = ("xai",)


def threshold_reached(entry, name=""):
    """1 where a prompt of exactly a threshold's size pays its higher rates, else 0."""
    provider = entry.get("litellm_provider")
    return int(provider in _THRESHOLD_REACHED if type(provider) is str
               else name.lower().startswith(tuple(p + "/" for p in _THRESHOLD_REACHED)))


_ABOVE_KEYS = re.compile(r"_above_(\d{1,5})k_tokens$", re.M)


def note_size_thresholds(table):
    """Adds to SIZE_THRESHOLDS the ones a price map has that it lacks, so a price class
    tells them apart (done when a map is loaded, before any request is counted); a
    threshold a prompt need only reach is a token lower."""
    found = set()
    for name, entry in table.items():
        keys = "\n".join(entry)   # one search of an entry's keys: a map has a million
        if "k_tokens" in keys:
            lower = threshold_reached(entry, name)
            found.update(int(size) * 1000 - lower for size in _ABOVE_KEYS.findall(keys)
                         if int(size) > 0)
        if "tiered_pricing" in entry:
            found.update(low for low, _ in tiered_ranges(entry["tiered_pricing"], False)
                         if low > 0)
    SIZE_THRESHOLDS[:] = sorted(set(SIZE_THRESHOLDS) | found)


_bisect_left = bisect.bisect_left


def size_level(tokens):
    """How many of SIZE_THRESHOLDS a prompt of these tokens exceeds (a price class's)."""
    return _bisect_left(SIZE_THRESHOLDS, tokens)


def level_tokens(level):
    """A prompt size of that level: just over its threshold."""
    return SIZE_THRESHOLDS[level - 1] + 1 if level > 0 else 0


# Price dimensions a log can select (formats.md section 4): a service tier's variant
# keys, and multipliers of provider_specific_entry for speed and region.
SERVICE_TIER_SUFFIXES = {"batch": "_batches", "flex": "_flex", "priority": "_priority",
                         "ultrafast": "_ultrafast"}
_TIER_SUFFIXES = tuple(SERVICE_TIER_SUFFIXES.values())
MAX_MULTIPLIER = 100.0


def _is_rate_key(key, value):
    return (type(value) in (int, float) and ("cost_per" in key or "_token_cost" in key)
            and not key.endswith(_TIER_SUFFIXES))


def entry_for_dimensions(entry, dims):
    """(the entry with the rates of these dimensions, whether one had no rate in the
    map: the request is then priced at base for it, and counted as a fallback)."""
    out, fallback = dict(entry), False
    for part in dims.split("+"):
        suffix = SERVICE_TIER_SUFFIXES.get(part)
        if suffix is not None:
            found = False
            for key, value in entry.items():
                if not _is_rate_key(key, value):
                    continue
                variant = bounded_number(entry.get(key + suffix), 0.0, MAX_RATE_USD, "rate")
                if variant is not None:
                    out[key], found = variant, True
                elif part == "batch":   # no _batches key: half the base rate
                    out[key] = value * 0.5
            fallback = fallback or not (found or part == "batch")
            continue
        if part.startswith("retention:"):
            fallback = not retained_writes(out, part[10:]) or fallback
            continue
        name = "fast" if part == "fast" else part[4:] if part.startswith("geo:") else None
        special = entry.get("provider_specific_entry")
        special = special if type(special) is dict else {}
        if name and name not in special and part.startswith("geo:"):   # OpenAI's
            special = {name: entry.get("regional_processing_uplift_multiplier_" + name)}
        factor = bounded_number(special.get(name), 0.0, MAX_MULTIPLIER, "multiplier") \
            if name and special.get(name) is not None else None
        if not factor:      # unknown, absent, refused or 0: at base, and counted
            fallback = True
            continue
        for key, value in list(out.items()):
            if _is_rate_key(key, value):
                out[key] = value * factor
    return out, fallback


_LONG_WRITE = "cache_creation_input_token_cost_above_12hr"


def retained_writes(rates, retention):
    """Prices the (5-minute) cache writes of an extended retention at the map's 12 h
    write keys, in place; False for a retention under 12 h or unknown (then at base).
    A threshold without a 12 h key of its own takes the 12 h base rate (section 4:
    the threshold is dropped before the TTL)."""
    match = re.match(r"(\d{1,4})h$", retention)
    if not match or int(match.group(1)) < 12:
        return False
    long_base = rates.get(_LONG_WRITE)
    for key in list(rates):
        if key.startswith("cache_creation_input_token_cost_above_") and \
                _ABOVE_KEY.search(key) and not key.startswith(_LONG_WRITE) and \
                "_above_1hr" not in key:
            own = rates.get(_LONG_WRITE + key[len("cache_creation_input_token_cost"):])
            if own is not None or long_base is not None:
                rates[key] = own if own is not None else long_base
    for key, value in list(rates.items()):
        if key.startswith(_LONG_WRITE) and _is_rate_key(key, value):
            rates["cache_creation_input_token_cost" + key[len(_LONG_WRITE):]] = value
    return True


def is_price_entry(name, entry):
    return (name != "sample_spec" and type(entry) is dict
            and ("input_cost_per_token" in entry or "output_cost_per_token" in entry
                 or bool(tiered_ranges(entry.get("tiered_pricing"), False))))


_DATE_SUFFIX = re.compile(r"[-@](?:20\d{6}|20\d\d-\d\d-\d\d)(?=$|-v\d+(?::\d+)?$)")
_REGION_PREFIX = re.compile(r"^(?:us|eu|apac|global|us-gov|jp|au|ca)\.")


def candidate_model_names(model, provider=""):
    """The names to look a model up under, in the order of formats.md section 4."""
    lower = model.lower()
    names = [model, lower]
    parts = lower.split("/")
    for i in range(1, len(parts)):
        names.append("/".join(parts[i:]))
    if provider:
        names.append("%s/%s" % (provider.lower(), parts[-1]))
    for name in list(names):
        undated = _DATE_SUFFIX.sub("", name)
        names.append(undated)
        regionless = _REGION_PREFIX.sub("", name)
        names.append(regionless)
        names.append(_DATE_SUFFIX.sub("", regionless))
    seen = set()
    return [n for n in names if n and not (n in seen or seen.add(n))]


class PriceBook(object):
    """A price map with cached model-name resolution."""

    def __init__(self, table, origin, age_s=0.0):
        self.table = {k: v for k, v in table.items() if is_price_entry(k, v)}
        note_size_thresholds(self.table)
        self.lower = {}
        for name in self.table:
            self.lower.setdefault(name.lower(), name)
        self.origin = origin
        self.age_s = age_s
        self._resolved = {}
        self.priced_as = {}      # model -> the platform key it is priced under
        self.fallbacks = set()   # (model, provider, dims) priced at base for a dimension
        self.model_names = ModelNames(self)   # the name a model's group goes by

    def __len__(self):
        return len(self.table)

    def resolve(self, model, provider=""):
        """The price-map name a model is priced under, or None."""
        for name in candidate_model_names(model, provider):
            if name in self.table:
                return name
            if name in self.lower:
                return self.lower[name]
        return None

    def platform_name(self, model):
        """The key of a model the map has only under a cloud platform's name, at the
        provider's own list price (Bedrock's anthropic.<model>-v1:0, Vertex's
        vertex_ai/<model>, ...; formats.md section 4), or None."""
        for name in candidate_model_names(model):
            if "/" in name:
                continue
            dated = _DATE_SUFFIX.search(name)
            undated = _DATE_SUFFIX.sub("", name)
            for candidate in ("anthropic.%s-v1:0" % name, "anthropic.%s-v1" % name,
                              "anthropic.%s" % name, "vertex_ai/%s" % name,
                              "vertex_ai/%s@%s" % (undated, dated.group(0)[1:]) if dated
                              else None, "bedrock/claude_platform/%s" % undated,
                              "gemini/%s" % name):
                if candidate and candidate in self.table:
                    return candidate
            dated = sorted(key for key in self.table   # an undated name, a dated key
                           if key.startswith("anthropic.%s-20" % name))
            if dated:
                return dated[-1]
        return None

    def rates(self, model, provider="", dims=""):
        key = (model, provider, dims)
        try:
            return self._resolved[key]
        except KeyError:
            pass
        name = self.resolve(model, provider) if model else None
        if name is None and model:
            name = self.platform_name(model)
            if name is not None:
                self.priced_as[model] = name
        entry = self.table[name] if name else None
        if entry is not None and dims:
            entry, fallback = entry_for_dimensions(entry, dims)
            if fallback:
                self.fallbacks.add(key)
        rates = rates_from_entry(entry, name) if name else None
        self._resolved[key] = rates
        return rates


class ModelNames(object):
    """The name a model's group goes by: a dated name (claude-sonnet-4-5-20250929) by
    its undated one (claude-sonnet-4-5) when both are priced at the same rates, so
    one model is one row; otherwise the name as logged.  Worked out once a name."""

    def __init__(self, prices):
        self.prices = prices
        self.names = {}

    def __call__(self, model, provider=""):
        key = (model, provider)
        name = self.names.get(key)
        if name is None:
            name = self.names[key] = self._name(model, provider)
        return name

    def _name(self, model, provider):
        undated = _DATE_SUFFIX.sub("", model) if model else model
        if undated and undated != model:
            rates = self.prices.rates(model, provider)
            if rates is not None and rates == self.prices.rates(undated, provider):
                return undated
        return model


def request_cost(req, rates):
    """(cost, no-cache cost) of one request in USD; (0, 0) when unpriced."""
    if rates is None:
        return 0.0, 0.0
    base, levels = rates  # tier_rates, inline: the live view prices every request
    if levels is not None:
        tokens = req.miss + req.cache_read + req.cache_write_5m + req.cache_write_1h
        for threshold, level in levels:
            if tokens > threshold:
                base = level
    return tokens_cost(req, base)


def tier_rates(rates, tokens):
    """The six rates a request of a prompt of these tokens pays: of the highest
    threshold it exceeds, else the base ones."""
    base, levels = rates
    for threshold, level in levels or ():
        if tokens > threshold:
            base = level
    return base


def tokens_cost(counts, rates):
    """(cost, no-cache cost) in USD of the tokens of a Request, or of a Tally of
    requests of one tier: every term is linear in the tokens."""
    p_in, p_read, p_w5, p_w1, p_out, p_rsn, p_search = rates
    miss, read = counts.miss, counts.cache_read
    w5, w1 = counts.cache_write_5m, counts.cache_write_1h
    reasoning = counts.reasoning
    # web searches are billed alike with the cache or without: on both sides
    output_cost = (counts.output - reasoning) * p_out + reasoning * p_rsn + \
        counts.searches * p_search
    cost = miss * p_in + read * p_read + w5 * p_w5 + w1 * p_w1 + output_cost
    return cost, (miss + read + w5 + w1) * p_in + output_cost


# -------------------------------------------------------------- aggregation

def local_day(ts):
    return time.strftime("%Y-%m-%d", time.localtime(ts)) if ts is not None else "(no time)"


def local_week(ts):
    """The ISO week of a time, local: 2026-W11."""
    if ts is None:
        return "(no time)"
    year, week, _ = datetime.fromtimestamp(ts).isocalendar()
    return "%d-W%02d" % (year, week)


def local_month(ts):
    return time.strftime("%Y-%m", time.localtime(ts)) if ts is not None else "(no time)"


_CALENDAR_KEYS = {"day": local_day, "week": local_week, "month": local_month}


def group_key_function(group_by, prices=None):
    """req -> its group key, a tuple of the group_by fields (day: the local date; with
    prices, model: the name it is priced under alike, see ModelNames)."""
    if not group_by:
        return lambda req: ()
    if prices is not None and "model" in group_by:
        names = prices.model_names
        known = names.names

        def model_name(req):   # the hot path of a grouping by model: one look-up
            name = known.get((req.model, req.provider))
            return name if name is not None else names(req.model, req.provider)
        if len(group_by) == 1:   # the default grouping: each model's key made once
            keys = {}

            def model_key(req):
                key = keys.get((req.model, req.provider))
                if key is None:
                    key = keys[(req.model, req.provider)] = (model_name(req),)
                return key
            return model_key
        getters = [(lambda req, of=_CALENDAR_KEYS[field]: of(req.ts)) if field in _CALENDAR_KEYS
                   else model_name if field == "model"
                   else operator.attrgetter(field) for field in group_by]
        return lambda req: tuple([getter(req) for getter in getters])
    if not _CALENDAR_KEYS.keys() & set(group_by):  # plain attributes: read in C
        if len(group_by) > 1:
            return operator.attrgetter(*group_by)
        get = operator.attrgetter(group_by[0])
        return lambda req: (get(req),)
    getters = [(lambda req, of=_CALENDAR_KEYS[field]: of(req.ts)) if field in _CALENDAR_KEYS
               else (lambda req, field=field: getattr(req, field)) for field in group_by]
    if len(getters) == 1:
        only = getters[0]
        return lambda req: (only(req),)
    return lambda req: tuple(getter(req) for getter in getters)


# What a TTL advice is given for (advice_scope): Claude Code's main conversation
# and its subagents (each has a setting of its own), else a model in a project.
_CLAUDE_CODE_SCOPES = (("claude-code", "main"), ("claude-code", "subagents"))


class PriceClasses(object):
    """The token sums of the requests of each price class: one group, model and
    provider, above the long-context tier or not, paired in a session or not, and
    the scope its TTL advice is given for (a project; Claude Code's main thread or
    subagents).

    A request's cost is linear in its tokens at its class's rates, so requests are
    only counted as they come, and each class is priced once, when it is read."""

    def __init__(self):
        self.keys = []     # class id -> (group, model, provider, above tier, paired, scope,
        #                                  price dimensions)
        self.tallies = []  # class id -> Tally of its requests in the window, unpriced
        self.ids = {}      # key -> class id

    def __getstate__(self):
        return self.keys, self.tallies

    def __setstate__(self, state):
        self.keys, self.tallies = state
        self.ids = {key: number for number, key in enumerate(self.keys)}

    def count(self, req, group, in_window, paired):
        """Counts req in its class (when in the window); returns the class id."""
        tokens = req.miss + req.cache_read + req.cache_write_5m + req.cache_write_1h
        key = (group, req.model, req.provider,   # size_level, its common case inline
               0 if tokens <= SIZE_THRESHOLDS[0] else _bisect_left(SIZE_THRESHOLDS, tokens),
               paired, _CLAUDE_CODE_SCOPES[req.sidechain] if req.agent == "claude-code"
               else req.project, req.tier)
        class_id = self.ids.get(key)
        if class_id is None:
            class_id = self._new_class(key, Tally())
        if in_window:
            self.tallies[class_id].count(req)
        return class_id

    def id_of(self, req, group, paired):
        """The id of req's class, which it was counted in."""
        return self.ids[(group, req.model, req.provider, size_level(req.input),
                         paired, _CLAUDE_CODE_SCOPES[req.sidechain]
                         if req.agent == "claude-code" else req.project, req.tier)]

    def _new_class(self, key, tally):
        class_id = self.ids[key] = len(self.keys)
        self.keys.append(key)
        self.tallies.append(tally)
        return class_id

    def merge(self, other):
        """Takes in other's classes (their tallies as they are); returns the list of
        the ids here of its class ids."""
        ids = []
        for key, tally in zip(other.keys, other.tallies):
            class_id = self.ids.get(key)
            if class_id is None:
                class_id = self._new_class(key, tally)
            else:
                self.tallies[class_id].merge(tally)
            ids.append(class_id)
        return ids


def sum_tallies(keyed_tallies):
    """{key: Tally} summing (key, Tally) pairs; a key of one tally shares it (no copy:
    most groups have a single class), a key of several gets a tally of its own."""
    sums, own = {}, set()
    for key, tally in keyed_tallies:
        mine = sums.get(key)
        if mine is None:
            sums[key] = tally
            continue
        if key not in own:
            own.add(key)
            first, mine = mine, Tally()
            mine.merge(first)
            sums[key] = mine
        mine.merge(tally)
    return sums


def priced_groups(classes, prices):
    """(tallies by group, unpriced models, totals) of price classes."""
    tallies, unpriced = price_classes(classes, prices)
    total = Tally()
    for tally in tallies.values():
        total.merge(tally)
    return tallies, unpriced, total


def price_classes(classes, prices):
    """({group: Tally}, {unpriced model: requests}) of the classes with requests,
    each class priced at its rates (its tally's cost set, which pricing again
    sets to the same).  A group of one class shares that class's tally.  The paired
    and unpaired classes of one rate are summed before pricing, so that a table that
    pairs nothing (the live view's) prices to the same cent, to the last digit."""
    by_rate = sum_tallies((key[:4] + key[6:], tally)
                          for key, tally in zip(classes.keys, classes.tallies) if tally.requests)
    unpriced = {}
    for (group, model, provider, above_tier, dims), tally in by_rate.items():
        rates = prices.rates(model, provider, dims)
        if rates is None:
            tally.cost = tally.no_cache_cost = tally.search_cost = 0.0
            tally.unpriced_requests = tally.requests
            name = model or "(unknown model)"
            unpriced[name] = unpriced.get(name, 0) + tally.requests
        else:
            chosen = tier_rates(rates, level_tokens(above_tier))
            tally.cost, tally.no_cache_cost = tokens_cost(tally, chosen)
            tally.search_cost = tally.searches * chosen[6]
            tally.unpriced_requests = 0
    return sum_tallies((rate[0], tally) for rate, tally in by_rate.items()), unpriced


def tier_figures(classes, prices):
    """({group: {dims: [requests, cost]}}, {"model (dims)": requests priced at base for
    a dimension the map has no rate for}) of the requests not at the standard rate."""
    by_group, fallbacks = {}, {}
    for key, tally in zip(classes.keys, classes.tallies):
        group, model, provider, above_tier, dims = key[:4] + key[6:]
        if not dims or not tally.requests:
            continue
        rates = prices.rates(model, provider, dims)
        cost = tokens_cost(tally, tier_rates(rates, level_tokens(above_tier)))[0] \
            if rates else 0.0
        figures = by_group.setdefault(group, {}).setdefault(dims, [0, 0.0])
        figures[0] += tally.requests
        figures[1] += cost
        if (model, provider, dims) in prices.fallbacks:
            name = "%s (%s)" % (model or "(unknown model)", dims)
            fallbacks[name] = fallbacks.get(name, 0) + tally.requests
    return by_group, fallbacks


def tiers_dict(by_dims):
    return {dims: {"requests": n, "cost_usd": round(cost, 9)}
            for dims, (n, cost) in sorted(by_dims.items())}


def total_tiers(by_group):
    total = {}
    for figures in by_group.values():
        for dims, (n, cost) in figures.items():
            mine = total.setdefault(dims, [0, 0.0])
            mine[0] += n
            mine[1] += cost
    return total


class Aggregate(object):
    """Totals, groups and (optionally) one session's timeline of a stream of requests.

    Holds no request beyond what the view needs: a Tally per price class (of a
    group: the group () without --group-by), and the requests of the session asked
    for with --session.  Each request is tallied once, in its class; a group sums
    its classes, the totals sum the groups.
    """

    def __init__(self, prices, group_by=(), since=None, until=None, session=None, part=False,
                 session_exact=False):
        self.prices = prices
        self.group_by = tuple(group_by)
        self.since = since
        self.until = until
        self.session = session   # only this session's requests (a prefix, unless exact)
        self.session_exact = session_exact
        self.key_of = group_key_function(self.group_by, prices)
        # grouped by session: each group's (models, projects), for the session listing
        self.details = {} if "session" in self.group_by else None
        # pairs the requests, and counts each in its price class (effects.classes)
        self.effects = CacheEffects(prices, self.key_of, part=part)
        self.budgets = None      # a BudgetTracker when budgets are set
        self.trend = None        # a DailyTrend for the table's sparklines
        self.timeline = []
        self.outside_window = 0
        self._priced = None      # _priced_classes(), until the next request

    def __getstate__(self):
        state = dict(self.__dict__)
        state["prices"] = None  # workers send results back; the book stays home
        state["key_of"] = None  # a lambda does not pickle; rebuilt from group_by
        state["_priced"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.key_of = group_key_function(self.group_by, self.prices)
        self.effects.prices, self.effects.key_of = self.prices, self.key_of

    def finish(self, now):
        """Closes the stream: the last writes of each session that expired unread."""
        self.effects.finish(now)

    def start_over(self):
        """Forgets every request, keeping the view (grouping, window, budgets, trend)."""
        fresh = Aggregate(self.prices, self.group_by, self.since, self.until, self.session,
                          session_exact=self.session_exact)
        fresh.details = None if self.details is None else {}
        fresh.trend = None if self.trend is None else self.trend.empty_copy()
        fresh.budgets = None if self.budgets is None else self.budgets.empty_copy()
        self.__dict__.update(fresh.__dict__)

    def empty_part(self):
        """A fresh Aggregate viewing requests as this one does, for a part of the same
        stream read apart (a worker's byte range), to be merged back in order."""
        part = Aggregate(self.prices, self.group_by, self.since, self.until, self.session,
                         part=True, session_exact=self.session_exact)
        if self.details is None:
            part.details = None
        if self.trend is not None:
            part.trend = self.trend.empty_copy()
        if self.budgets is not None:  # the spend in the part counts too
            part.budgets = self.budgets.empty_copy()
        return part

    def wanted_attributes(self):
        """The attributes of a request this view needs (the rest need not be looked up)."""
        # sessions: breaks; projects, where the TTL is a choice: the advice of a log
        wanted = {"model", "provider", "time", "cost", "session", "advice_project"}
        wanted.update(DIMENSIONS)
        wanted.update(f for f in self.group_by if f not in _CALENDAR_GROUPS)
        if self.details is not None:
            wanted.add("project")
        if self.session is not None:
            wanted.add("session")
        return frozenset(wanted)

    def in_window(self, ts):
        if self.since is None and self.until is None:
            return True
        if ts is None:
            return False
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)

    def add(self, req):
        if self.session is not None and not (
                req.session == self.session if self.session_exact
                else req.session.startswith(self.session)):
            return   # a report of one session: the others are not read into it
        in_window = self.since is None and self.until is None or self.in_window(req.ts)
        key = self.key_of(req)
        # counted in its class (in the window), paired even outside: it may precede one
        found = self.effects.add(req, in_window, key)
        if self.budgets is not None or self.trend is not None:
            cost, no_cache_cost = self.cost_of(req)
            if self.budgets is not None:
                self.budgets.add(req.ts, cost)  # budgets follow the calendar, not the window
            if self.trend is not None:
                self.trend.add(req.ts, cost, no_cache_cost, req.cache_read, req.input)
        if not in_window:
            self.outside_window += 1
            return
        self._priced = None
        if self.details is not None:
            detail = self.details.get(key)
            if detail is None:
                detail = self.details[key] = (set(), set())
            detail[0].add(req.model)
            detail[1].add(req.project)
        if self.session is not None:
            self.timeline.append((req, self.cost_of(req)[0], found))

    def cost_of(self, req):
        """(cost, no-cache cost) of one request."""
        return request_cost(req, self.prices.rates(req.model, req.provider, req.tier))

    @property
    def tallies(self):
        """{group key: Tally} of every group (the group () without --group-by)."""
        return self._priced_classes()[0]

    @property
    def unpriced_models(self):
        """{model: requests} of the requests of models with no price."""
        return self._priced_classes()[1]

    @property
    def totals(self):
        return self._priced_classes()[2]

    def _priced_classes(self):
        """(tallies, unpriced models, totals), made once until the next request."""
        if self._priced is None:
            self._priced = priced_groups(self.effects.classes, self.prices)
        return self._priced

    @property
    def groups(self):
        """{group key: Tally}; empty without --group-by."""
        return self.tallies if self.group_by else {}

    def merge(self, other):
        self._priced = None
        for key, (models, projects) in (other.details or {}).items():
            mine = self.details.setdefault(key, (set(), set()))
            mine[0].update(models)
            mine[1].update(projects)
        self.outside_window += other.outside_window
        if self.budgets is not None and other.budgets is not None:
            self.budgets.merge(other.budgets)
        if self.trend is not None and other.trend is not None:
            self.trend.merge(other.trend)
        found = self.effects.merge(other.effects, self.in_window)
        # a break found only now, at the cut, marks its request in the timeline too
        self.timeline.extend((req, cost, found.get(id(req), item))
                             for req, cost, item in other.timeline)


# budgets: spend in the current local day, week and month against a limit

BUDGET_PERIODS = ("daily", "weekly", "monthly")
BUDGET_WARNING_SHARE = 0.8
_PERIOD_WINDOWS = {"daily": "today", "weekly": "week", "monthly": "month"}


def budget_starts(now):
    """{period: start of the current local calendar period}."""
    return {period: window_start(window, now) for period, window in _PERIOD_WINDOWS.items()}


class BudgetTracker(object):
    """Spend since the start of each budgeted period, whatever the view's window."""

    def __init__(self, limits, now):
        self.limits = dict(limits)
        starts = budget_starts(now)
        self.starts = {period: starts[period] for period in self.limits}
        self.spent = dict.fromkeys(self.limits, 0.0)

    def add(self, ts, cost):
        if ts is None or not cost:
            return
        for period, start in self.starts.items():
            if ts >= start:
                self.spent[period] += cost

    def empty_copy(self):
        """The same budgets and periods with nothing spent (for a worker's part)."""
        copy = BudgetTracker.__new__(BudgetTracker)
        copy.limits, copy.starts = dict(self.limits), dict(self.starts)
        copy.spent = dict.fromkeys(self.limits, 0.0)
        return copy

    def merge(self, other):
        for period, spent in other.spent.items():
            self.spent[period] += spent

    def status(self):
        """[(period, limit, spent, share, state)], state ok / warning / over."""
        rows = []
        for period in BUDGET_PERIODS:
            if period not in self.limits:
                continue
            limit, spent = self.limits[period], self.spent[period]
            share = spent / limit
            state = "over" if share >= 1 else ("warning" if share >= BUDGET_WARNING_SHARE
                                                else "ok")
            rows.append((period, limit, spent, share, state))
        return rows


def budget_dicts(tracker):
    return [{"period": period, "limit_usd": limit, "spent_usd": round(spent, 9),
             "share": round(share, 6), "state": state}
            for period, limit, spent, share, state in tracker.status()]


# trends: cost, saved and hit rate day by day

TREND_DAYS = 30


def local_day_number(ts, offset_s):
    """Days since the epoch in local time (offset_s: the local UTC offset, fixed for
    the run: a DST change can shift one edge request by a day)."""
    return int((ts + offset_s) // 86400)


def utc_offset_s(now):
    local = datetime.fromtimestamp(now)
    return (local - datetime.fromtimestamp(now, timezone.utc).replace(tzinfo=None)).total_seconds()


class DailyTrend(object):
    """Per-day sums (cost, no-cache cost, read, input) for sparklines."""

    def __init__(self, now, days=90):
        self.offset_s = utc_offset_s(now)
        self.today = local_day_number(now, self.offset_s)
        self.first = self.today - days + 1
        self.days = {}

    def add(self, ts, cost, no_cache_cost, cache_read, input_tokens):
        if ts is None:
            return
        day = int((ts + self.offset_s) // 86400)
        if day < self.first or day > self.today:
            return
        slot = self.days.get(day)
        if slot is None:
            slot = self.days[day] = [0.0, 0.0, 0, 0]
        slot[0] += cost
        slot[1] += no_cache_cost
        slot[2] += cache_read
        slot[3] += input_tokens

    def empty_copy(self):
        """The same days with nothing in them (for a worker's part)."""
        copy = DailyTrend.__new__(DailyTrend)
        copy.offset_s, copy.today, copy.first, copy.days = (
            self.offset_s, self.today, self.first, {})
        return copy

    def merge(self, other):
        for day, (cost, no_cache, read, total) in other.days.items():
            slot = self.days.setdefault(day, [0.0, 0.0, 0, 0])
            slot[0] += cost
            slot[1] += no_cache
            slot[2] += read
            slot[3] += total

    def hit_rate(self, days=TREND_DAYS):
        """The hit rate over the last days together (read / input), None without input."""
        read = total = 0
        for day in range(self.today - days + 1, self.today + 1):
            slot = self.days.get(day)
            if slot:
                read, total = read + slot[2], total + slot[3]
        return read / total if total else None

    def series(self, days=TREND_DAYS):
        """(cost, saved, hit rate) lists for the last days, oldest first (None: no data)."""
        cost, saved, hit = [], [], []
        for day in range(self.today - days + 1, self.today + 1):
            slot = self.days.get(day)
            cost.append(slot[0] if slot else None)
            saved.append(slot[1] - slot[0] if slot else None)
            hit.append(slot[2] / slot[3] if slot and slot[3] else None)
        return cost, saved, hit


def scaled_sparkline(values, unicode_ok=True):
    """A sparkline of values scaled between their smallest and largest."""
    present = [v for v in values if v is not None]
    if not present:
        return " " * len(values)
    low, high = min(present + [0.0]), max(present)
    span = (high - low) or 1.0
    return sparkline([None if v is None else (v - low) / span * 0.999 for v in values],
                     unicode_ok)


SORT_COLUMNS = {
    "requests": lambda t: t.requests, "input": lambda t: t.input,
    "read": lambda t: t.cache_read, "write": lambda t: t.cache_write,
    "miss": lambda t: t.miss, "output": lambda t: t.output,
    "hit": lambda t: -1.0 if t.hit_rate is None else t.hit_rate,
    "cost": lambda t: t.cost, "saved": lambda t: t.saved,
    "observed": lambda t: t.observed_cost, "last": lambda t: t.last_ts or 0.0,
}


def sorted_groups(groups, sort="cost", descending=True, top=None):
    """[(key, tally)] ordered by a column, largest first unless not descending (ties by
    key), cut to top N.  "name" orders by the group's key, A to Z, and "time" too:
    days, weeks and months oldest first, newest last (as ccusage lists them)."""
    if sort in ("name", "time"):
        rows = sorted(groups.items(), key=lambda item: item[0])
    else:
        column = SORT_COLUMNS[sort]
        rows = sorted(groups.items(), key=lambda item: item[0])
        rows.sort(key=lambda item: column(item[1]), reverse=descending)
    return rows[:top] if top else rows


_SPAN_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.I)
_SPAN_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time_bound(text, now):
    """Epoch seconds from an ISO date/time (naive = local time) or a span back from now."""
    match = _SPAN_RE.match(text)
    if match:
        span = float(match.group(1)) * _SPAN_SECONDS[match.group(2).lower()]
        if not span <= now:
            raise ValueError("a span back from now reaches before 1970: %r" % text)
        return now - span
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError("not an ISO date/time or a span like 90m, 2h, 7d: %r" % text)
    if moment.tzinfo is None:
        return time.mktime(moment.timetuple()) + moment.microsecond / 1e6
    return moment.timestamp()


def window_start(window, now):
    """The start of a named window in epoch seconds (calendar windows in local time)."""
    if window == "all":
        return None
    spans = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "90d": 90 * 86400}
    if window in spans:
        return now - spans[window]
    local = datetime.fromtimestamp(now)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "week":
        midnight -= timedelta(days=midnight.weekday())
    elif window == "month":
        midnight = midnight.replace(day=1)
    return time.mktime(midnight.timetuple())


def resolve_window(window, since_text, until_text, now):
    """(since, until) in epoch seconds, either None; raises ValueError on bad text."""
    since = window_start(window, now)
    if since_text:
        bound = parse_time_bound(since_text, now)
        since = bound if since is None else max(since, bound)
    until = parse_time_bound(until_text, now) if until_text else None
    if since is not None and until is not None and until <= since:
        raise ValueError("--until %s is not after the start of the window" % until_text)
    return since, until


# cache breaks: why the hit rate dropped

BREAK_MIN_EXPECTED_TOKENS = 1024
# The cache TTL in force when the data does not say otherwise, by provider.
CACHE_TTL_S = {"anthropic": 300, "openai": 300, "azure": 300, "xai": 300, "mistral": 300,
               "google": 3600, "gemini": 3600, "vertex_ai": 3600, "deepseek": 3600}
DEFAULT_TTL_S = 300
# The first four are inferred from the usage alone; the rest only a provider reports
# (formats.md section 6), as can the first four.
BREAK_CAUSES = ("model_switch", "compaction", "ttl_expired", "prefix_changed",
                "system_changed", "tools_changed", "messages_changed", "settings_changed",
                "evicted")
# What kind of cause each is, for measuring the inferred causes against reported ones:
# the heuristic sees a change to the request only as a changed prefix.
_CAUSE_KINDS = {"model_switch": "model", "compaction": "compaction", "ttl_expired": "expiry",
                "evicted": "eviction", "prefix_changed": "change", "system_changed": "change",
                "tools_changed": "change", "messages_changed": "change",
                "settings_changed": "change"}


class CacheBreak(object):
    """A request that found much less of its prefix in the cache than the one before left."""

    __slots__ = ("session", "ts", "model", "cause", "expected", "read", "rewritten", "gap_s",
                 "cost", "thread", "reported", "reported_reason", "reported_missed", "inferred")

    def __init__(self, session, ts, model, cause, expected, read, rewritten, gap_s, cost,
                 thread="", reported=False, reported_reason=None, reported_missed=None,
                 inferred=None):
        self.session, self.ts, self.model, self.cause = session, ts, model, cause
        self.expected, self.read, self.rewritten = expected, read, rewritten
        self.gap_s, self.cost = gap_s, cost
        self.thread = thread                    # "" for the session's main conversation
        self.reported = reported                # whether the cause is the provider's
        self.reported_reason = reported_reason  # the provider's raw type or reason
        self.reported_missed = reported_missed  # its missed-token estimate: never priced
        self.inferred = cause if inferred is None else inferred   # the heuristic's cause

    @property
    def cause_source(self):
        return "reported" if self.reported else "inferred"

    def __reduce__(self):
        # workers send thousands of breaks back: a tuple each, not a state dict each
        return (CacheBreak, _BREAK_FIELDS(self))

    def as_dict(self):
        return {"session": self.session, "ts": iso_utc(self.ts), "model": self.model,
                "cause": self.cause, "expected_read_tokens": self.expected,
                "read_tokens": self.read, "rewritten_tokens": self.rewritten,
                "gap_s": None if self.gap_s is None else round(self.gap_s, 3),
                "cost_usd": round(self.cost, 9), "thread": self.thread or None,
                "cause_source": self.cause_source, "reported_reason": self.reported_reason,
                "reported_missed_tokens": self.reported_missed}

    def as_json(self, quote=json.encoder.encode_basestring_ascii):
        """as_dict() as JSON text, exactly as the item encoder writes it, with no
        dict made and encoded (a report may list a break every few requests)."""
        return _BREAK_JSON % (
            quote(self.session), quote(iso_utc(self.ts)), quote(self.model), quote(self.cause),
            self.expected, self.read, self.rewritten,
            "null" if self.gap_s is None else json_float(round(self.gap_s, 3)),
            json_float(round(self.cost, 9)), quote(self.thread) if self.thread else "null",
            quote(self.cause_source),
            "null" if self.reported_reason is None else quote(self.reported_reason),
            "null" if self.reported_missed is None else "%d" % self.reported_missed)


_BREAK_JSON = ('{"session": %s, "ts": %s, "model": %s, "cause": %s, '
               '"expected_read_tokens": %d, "read_tokens": %d, "rewritten_tokens": %d, '
               '"gap_s": %s, "cost_usd": %s, "thread": %s, "cause_source": %s, '
               '"reported_reason": %s, "reported_missed_tokens": %s}')


def json_float(value):
    """A float as JSON text, as json.dumps writes it; NaN and infinities, which are
    not JSON, as null."""
    return repr(value) if -math.inf < value < math.inf else "null"


def finite_json(value):
    """value with every NaN or infinite float in it replaced by None (JSON's null)."""
    if type(value) is float:
        return value if -math.inf < value < math.inf else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


_BREAK_FIELDS = operator.attrgetter(*CacheBreak.__slots__)


def default_ttl(provider):
    """The TTL of a provider's cache writes, unless they were 1-hour writes."""
    return CACHE_TTL_S.get(provider.split("_")[0].lower(), DEFAULT_TTL_S)


def ttl_in_force(req):
    """The cache TTL the request's writes bought: 1 hour when they were mostly 1-hour
    writes, else the provider's default."""
    if req.cache_write_1h > req.cache_write_5m:
        return 3600
    return default_ttl(req.provider)


def expected_cached(req):
    """The prefix a request leaves in the cache for the next one: what it read plus
    what it wrote, or its whole input where the provider does not report writes."""
    writes = req.cache_write_5m + req.cache_write_1h
    if writes or reports_writes(req.provider):
        return req.cache_read + writes
    return req.input


def break_cause(before_ts, after_ts, switched, ttl, compaction_times, shrunk=False):
    """Why a request found its prefix gone: switched says the model changed since
    the request before (at before_ts), whose writes lived ttl seconds; shrunk, that
    its whole input is under half the prefix cached before it (the context was cut
    or summarized: a compaction, where the log has no mark of one)."""
    if switched:
        return "model_switch"
    if shrunk:
        return "compaction"
    if before_ts is not None and after_ts is not None:
        if compaction_times and any(before_ts < ts <= after_ts for ts in compaction_times):
            return "compaction"
        if after_ts - before_ts > ttl:
            return "ttl_expired"
    return "prefix_changed"


def break_cost(after, rewritten, prices):
    """What the rewritten tokens cost above the cache-read rate: written at the write
    rate the request paid (5 m / 1 h mix), the rest at the input rate."""
    rates = prices.rates(after.model, after.provider, after.tier)
    if rates is None or rewritten <= 0:
        return 0.0
    p_in, p_read, p_w5, p_w1 = tier_rates(rates, after.input)[:4]
    writes = after.cache_write_5m + after.cache_write_1h
    written = min(rewritten, writes)
    p_write = ((after.cache_write_5m * p_w5 + after.cache_write_1h * p_w1) / writes
               if writes else p_in)
    return written * (p_write - p_read) + (rewritten - written) * (p_in - p_read)


def reported_cause(diagnosis, gap, ttl):
    """The cause the provider's diagnosis gives a break whose request waited gap
    seconds on an entry of this TTL; None where it gives no verdict.  A comparison
    that found no change makes the cold read an expiry: by the TTL, or (inside it)
    an eviction on the provider's side."""
    if diagnosis is None or diagnosis[0] is None:
        return None
    if diagnosis[0] == NO_CHANGE:
        return "ttl_expired" if gap > ttl else "evicted"
    return diagnosis[0]


def make_break(after, before_ts, switched, ttl, expected, prices, compaction_times):
    """The CacheBreak of `after`, which read less than half the `expected` prefix:
    its cause the provider's where it reported one, else break_cause's."""
    rewritten = min(expected - after.cache_read,
                    after.cache_write_5m + after.cache_write_1h + after.miss)
    gap = after.ts - before_ts
    inferred = break_cause(before_ts, after.ts, switched, ttl, compaction_times,
                           after.input * 2 < expected)
    diagnosis = after.diagnosis
    reported = reported_cause(diagnosis, gap, ttl)
    return CacheBreak(after.session, after.ts, after.model, reported or inferred,
                      expected, after.cache_read, rewritten, gap,
                      break_cost(after, rewritten, prices), after.thread,
                      reported is not None, diagnosis and diagnosis[1],
                      diagnosis and diagnosis[2], inferred)


# what-if: the same sessions under the other cache TTL, and writes nobody read

TTL_POLICIES = (("ttl_1h", 3600), ("ttl_5m", 300))
_SHORTEST_TTL_POLICY_S = min(ttl for _, ttl in TTL_POLICIES)


def _write_rates(req, prices):
    """(input, cache read, 5m write, 1h write) rates for a request, tier included."""
    rates = prices.rates(req.model, req.provider, req.tier)
    if rates is None:
        return None
    return tier_rates(rates, req.input)[:4]


def pair_what_if(before_ts, after, found, rates, policy, ttl):
    """(cost change, avoided, added) of one step of a session under a TTL policy:
    a break caused by an expired cache that this TTL would have kept is avoided;
    a read that this TTL would have let expire becomes a break."""
    p_in, p_read, p_w5, p_w1 = rates
    p_policy = p_w1 if policy == "ttl_1h" else p_w5
    gap = after.ts - before_ts
    if found is not None and found.cause == "ttl_expired" and gap <= ttl:
        # the rewritten tokens are read instead; those that were written are not
        # written at all, so undo their re-pricing too
        writes = after.cache_write_5m + after.cache_write_1h
        written = min(found.rewritten, writes)
        p_write = ((after.cache_write_5m * p_w5 + after.cache_write_1h * p_w1) / writes
                   if writes else p_policy)
        return -found.cost - written * (p_policy - p_write), 1, 0
    if found is None and gap > ttl and after.cache_read:
        return after.cache_read * (p_policy - p_read), 0, 1
    return 0.0, 0, 0


# What a session's last request leaves for the next one to be paired with, kept
# unboxed, every session's side by side in one bytearray.  A held Request (with its
# numbers) would be freed thousands of requests later, its memory gone cold by
# then, and scattered states are each a cache miss: on a big log either costs more
# than all the pairing does.
_HELD = struct.Struct("dqqqqqiiIIIIId")  # ts, expected read, read, 5m writes, 1h writes,
#   TTL, model id, price class id; then the thread's gaps so far (under 1 min, 1-5 min,
#   5-60 min, over 1 h: GAP_BIN_NAMES), how
#   many outlived the TTL in force, and what the breaks after those cost
_NO_HELD = bytes(_HELD.size)
GAP_BIN_NAMES = ("under_1m", "1m_5m", "5m_1h", "over_1h")


def chain_of(req):
    """What a request's cache prefix is chained in: its session's thread (the main
    conversation, a subagent, a forked session), never two threads as one."""
    return (req.session, req.thread) if req.thread else req.session


def session_of(chain):
    return chain[0] if type(chain) is tuple else chain


def thread_of(chain):
    return chain[1] if type(chain) is tuple else ""


def number_of(value, values, numbers):
    """value's index in values, appended when new; numbers: value -> index."""
    found = numbers.get(value)
    if found is None:
        found = numbers[value] = len(values)
        values.append(value)
    return found


class CacheEffects(object):
    """Breaks, what-if and wasted writes of a stream of requests, pair by pair.

    Each session keeps only what its last request left (_HELD): what a request did
    to the cache is known from it and the next one.  Requests must come in time
    order within each session (a late one is not paired, and counted in
    `unordered`).  Each request is only counted in its price class (`classes`); the
    what-if prices the classes once, in finish(): the hot path does a few
    comparisons and dictionary updates a request."""

    def __init__(self, prices, key_of, compactions=None, part=False):
        self.prices = prices
        self.key_of = key_of
        self.compactions = compactions if compactions is not None else {}
        # a part of a stream read apart keeps each session's first request, for merging
        # it back; a whole stream need not (a log of a session per request doubles it)
        self.first = {} if part else None
        self.last = {}           # session -> where its last request's _HELD is in held
        self.held = bytearray()
        self.models = []         # model id -> model name
        self._model_ids = {}
        self.classes = PriceClasses()
        self.unread = {}         # class id -> [5m, 1h] writes never read back
        self.breaks = []
        self.pair_deltas = {}    # group -> {policy: [delta, avoided, added]}
        self.unordered = 0
        self.late = set()        # sessions with a request older than one before it
        self.what_if, self.policy_cost, self.wasted = {}, {}, {}   # set by finish()
        self.advice = {}
        self._facts = {}         # provider -> (does the TTL choice apply, default TTL)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["prices"] = state["key_of"] = None
        return state

    def last_time(self, chain):
        """The time of the last request of a chain (chain_of) here, or None."""
        offset = self.last.get(chain)
        return None if offset is None else _HELD.unpack_from(self.held, offset)[0]

    def _provider(self, provider):
        """(does the TTL choice apply, the default TTL) of a provider, remembered."""
        facts = self._facts.get(provider)
        if facts is None:
            facts = self._facts[provider] = (reports_writes(provider), default_ttl(provider))
        return facts

    def _model_id(self, model):
        return number_of(model, self.models, self._model_ids)

    def add(self, req, in_window=True, group=None):
        """Counts req in its price class and pairs it with its session's previous
        request; returns its break or None.  group: req's, when the caller has it."""
        if group is None:
            group = self.key_of(req)
        ts = req.ts
        before = None
        if not req.session or ts is None:
            offset = None
        else:
            chain = (req.session, req.thread) if req.thread else req.session
            offset = self.last.get(chain)
            if offset is None:
                if self.first is not None:
                    self.first[chain] = req
                offset = self.last[chain] = self._new_held()
            else:
                before = _HELD.unpack_from(self.held, offset)
                if ts < before[0]:
                    self.unordered += 1
                    self.late.add(req.session)
                    offset = None
        # a request not paired is not re-priced by the what-if either
        class_id = self.classes.count(req, group, in_window, offset is not None)
        if offset is None:
            return None
        return self._step(req, offset, before, in_window, class_id, group)

    def _new_held(self):
        offset = len(self.held)
        self.held += _NO_HELD
        return offset

    def _step(self, req, offset, before, in_window, class_id, group):
        """Pairs req with `before`, the _HELD values its session's last request left
        (None: it starts its session), then holds its own at offset instead.
        Returns its break or None.  One function: this runs for every request."""
        read, w5, w1 = req.cache_read, req.cache_write_5m, req.cache_write_1h
        applies, ttl = self._facts.get(req.provider) or self._provider(req.provider)
        found = None
        if before is None:
            g1 = g5 = g60 = gover = past = 0
            past_cost = 0.0
        else:
            before_ts, expected, before_read, before_w5, before_w1, before_ttl, model_id, \
                key_id, g1, g5, g60, gover, past, past_cost = before
            if in_window:
                if expected >= BREAK_MIN_EXPECTED_TOKENS and read * 2 < expected:
                    found = make_break(req, before_ts, self.models[model_id] != req.model,
                                       before_ttl, expected, self.prices,
                                       self.compactions.get(req.session, ()))
                    self.breaks.append(found)
                gap = req.ts - before_ts
                if gap < 300:
                    if gap < 60:
                        g1 += 1
                    else:
                        g5 += 1
                elif gap < 3600:
                    g60 += 1
                else:
                    gover += 1
                if gap > before_ttl:
                    past += 1
                    if found is not None:
                        past_cost += found.cost
                if (before_w5 or before_w1) and key_id >= 0:
                    # the writes before that req did not read back before they expired
                    writes = before_w5 + before_w1
                    if gap > before_ttl:
                        self._unread(key_id, before_w5, before_w1, 1.0)
                    elif read - before_read < writes:
                        unread = writes - max(0, read - before_read)
                        self._unread(key_id, before_w5, before_w1, unread / float(writes))
                if applies and (found is not None or gap > _SHORTEST_TTL_POLICY_S):
                    self._what_if_step(before_ts, req, found, class_id)
        if w5 or w1:
            expected = read + w5 + w1
            if w1 > w5:
                ttl = 3600  # ttl_in_force
        else:
            expected = read if applies else req.miss + read  # expected_cached
        model_id = self._model_ids.get(req.model)
        if model_id is None:
            model_id = self._model_id(req.model)
        _HELD.pack_into(self.held, offset, req.ts, expected, read, w5, w1, ttl, model_id,
                        class_id, g1, g5, g60, gover, past, past_cost)
        return found

    def _unread(self, class_id, w5, w1, share):
        """Counts a share of a request's writes (w5, w1) as never read back."""
        unread = self.unread.get(class_id)
        if unread is None:
            unread = self.unread[class_id] = [0, 0]
        unread[0] += w5 * share
        unread[1] += w1 * share

    def _what_if_step(self, before_ts, after, found, class_id):
        rates = _write_rates(after, self.prices)
        if rates is None:
            return
        figures = self.pair_deltas.get(class_id)
        if figures is None:
            figures = self.pair_deltas[class_id] = _empty_what_if()
        for policy, ttl in TTL_POLICIES:
            delta, avoided, added = pair_what_if(before_ts, after, found, rates, policy, ttl)
            figures[policy][0] += delta
            figures[policy][1] += avoided
            figures[policy][2] += added

    def finish(self, now):
        """Counts the writes of each session's last request that expired unread (not
        those that may still be read), then sums the what-if by group and by scope of
        advice (advice_scope) and prices every sum once."""
        for offset in self.last.values():
            ts, _, _, w5, w1, ttl, _, key_id = _HELD.unpack_from(self.held, offset)[:8]
            if (w5 or w1) and key_id >= 0 and (now is None or now - ts > ttl):
                self._unread(key_id, w5, w1, 1.0)
        self.breaks.sort(key=lambda b: (b.ts, b.session))
        keys = self.classes.keys
        what_if, advice = {}, {}
        for class_id, figures in self.pair_deltas.items():
            key = keys[class_id]
            for sums in (what_if.setdefault(key[0], _empty_what_if()),
                         advice.setdefault(advice_scope(key), _empty_advice())):
                for policy in figures:
                    sums[policy] = [a + b for a, b in zip(sums[policy], figures[policy])]
        policy_cost, wasted = {}, {}
        for class_id, key in enumerate(keys):
            group, model, provider, above_tier, paired = key[:5]
            dims = key[6]
            tally = self.classes.tallies[class_id]
            # the TTL policies re-price the writes of the requests paired in sessions
            repriced = paired and tally.requests and self._provider(provider)[0]
            unread = self.unread.get(class_id)
            if not repriced and unread is None:
                continue
            unread5, unread1 = unread or (0, 0)
            rates = self.prices.rates(model, provider, dims)
            if rates is None:
                continue
            rates = tier_rates(rates, level_tokens(above_tier))
            p_in, p_read, p_w5, p_w1 = rates[:4]
            group_figures = what_if.setdefault(group, _empty_what_if())
            if repriced:
                cost = tokens_cost(tally, rates)[0]
                w5, w1 = tally.cache_write_5m, tally.cache_write_1h
                policy_cost[group] = policy_cost.get(group, 0.0) + cost
                scoped = advice.setdefault(advice_scope(key), _empty_advice())
                scoped["requests"] += tally.requests
                scoped["cost"] += cost
                scoped["writes"] = [scoped["writes"][0] + w5, scoped["writes"][1] + w1]
                for figures in (group_figures, scoped):
                    figures["ttl_1h"][0] += w5 * (p_w1 - p_w5)
                    figures["ttl_5m"][0] += w1 * (p_w5 - p_w1)
            if unread5 or unread1:
                tokens, premium = wasted.get(group, (0, 0.0))
                wasted[group] = (tokens + int(round(unread5 + unread1)),
                                 premium + unread5 * (p_w5 - p_in) + unread1 * (p_w1 - p_in))
        self.what_if, self.policy_cost, self.wasted = what_if, policy_cost, wasted
        self.advice = advice

    def merge(self, other, in_window):
        """Takes in a later part of the same stream (a worker's byte range); returns
        {id(request): CacheBreak} of the breaks found where the parts meet."""
        causes = {}
        if not (self.last or self.classes.keys):
            self._adopt(other)
        else:
            causes = self._merge_states(other, in_window)
        self.breaks.extend(other.breaks)
        self.unordered += other.unordered
        self.late |= other.late
        return causes

    def _adopt(self, other):
        """Takes the sessions and sums of a part as they are, this stream having none
        yet (no copy: a log of a session a request holds a state a request)."""
        if self.first is not None:
            self.first.update(other.first)
        self.last, self.held = other.last, other.held
        self.models, self._model_ids = other.models, other._model_ids
        self.classes, self.unread = other.classes, other.unread
        self.pair_deltas = other.pair_deltas

    def _merge_states(self, other, in_window):
        causes = {}
        class_ids = self.classes.merge(other.classes)  # its ids -> the ids here
        for class_id, figures in other.pair_deltas.items():
            mine = self.pair_deltas.setdefault(class_ids[class_id], _empty_what_if())
            for policy in figures:
                mine[policy] = [a + b for a, b in zip(mine[policy], figures[policy])]
        for chain, first in other.first.items():
            offset = self.last.get(chain)
            if offset is None:
                if self.first is not None:
                    self.first[chain] = first
                continue
            before = _HELD.unpack_from(self.held, offset)
            if first.ts >= before[0]:
                # the worker took `first` for a thread's start, and counted it already
                # (paired: it began a thread); what this holds in its place is
                # overwritten below by the part's last, its gaps added to this one's
                group = self.key_of(first)
                found = self._step(first, offset, before, in_window(first.ts),
                                   self.classes.id_of(first, group, True), group)
                if found is not None:
                    causes[id(first)] = found
            else:
                self.unordered += 1
                self.late.add(first.session)
        for chain, theirs in other.last.items():  # its ids are the part's own
            held = list(_HELD.unpack_from(other.held, theirs))
            held[6] = self._model_id(other.models[held[6]])
            held[7] = class_ids[held[7]] if held[7] >= 0 else -1
            offset = self.last.get(chain)
            if offset is None:
                offset = self.last[chain] = self._new_held()
            else:   # the gaps before the part, and the one where it begins
                mine = _HELD.unpack_from(self.held, offset)
                held[8:] = [a + b for a, b in zip(held[8:], mine[8:])]
            _HELD.pack_into(self.held, offset, *held)
        for class_id, (unread5, unread1) in other.unread.items():
            self._unread(class_ids[class_id], unread5, unread1, 1.0)
        return causes


def gap_histograms(effects):
    """{session: [gaps under 1 min, 1-5 min, 5-60 min, over 1 h, gaps past the TTL in
    force, what the breaks after those cost]} of the sessions with a gap, each of
    its threads' gaps summed."""
    found = {}
    for chain, offset in effects.last.items():
        counts = _HELD.unpack_from(effects.held, offset)[8:]
        if not any(counts[:4]):
            continue
        session = session_of(chain)
        mine = found.get(session)
        found[session] = list(counts) if mine is None else [a + b for a, b in
                                                            zip(mine, counts)]
    return found


def gap_total(histograms):
    total = [0, 0, 0, 0, 0, 0.0]
    for counts in histograms.values():
        total = [a + b for a, b in zip(total, counts)]
    return total


def gaps_dict(counts, **key):
    doc = dict(key)
    doc.update(zip(GAP_BIN_NAMES, counts[:4]))
    doc["past_ttl"], doc["past_ttl_cost_usd"] = counts[4], round(counts[5], 9)
    return doc


def costliest_gaps(histograms):
    """(session, counts) of the sessions with a gap, costliest gaps past the TTL first."""
    # rounded: the last bits of a sum depend on the order parts were added in (--jobs)
    return sorted(histograms.items(),
                  key=lambda item: (-round(item[1][5], 9), -item[1][4], item[0]))


WARM_ACTIVE_S = 3600   # a session active this recently may still have its cache warm


def warm_sessions(effects, now):
    """The threads whose cache entry is still alive at now, expiring first first:
    dicts of session, thread, model, expires_at (a time), and rewrite_cost_usd, what
    writing their prefix again costs above reading it once the entry expired."""
    keys, found = effects.classes.keys, []
    for chain, offset in effects.last.items():
        ts, expected, _, _, _, ttl, model_id, class_id = _HELD.unpack_from(
            effects.held, offset)[:8]
        if not (now - WARM_ACTIVE_S <= ts and ts + ttl > now) or class_id < 0 \
                or expected < BREAK_MIN_EXPECTED_TOKENS:
            continue
        model, provider, above_tier, dims = effects.models[model_id], keys[class_id][2], \
            keys[class_id][3], keys[class_id][6]
        found.append({"session": session_of(chain), "thread": thread_of(chain) or None,
                      "model": model, "expires_at": ts + ttl,
                      "rewrite_cost_usd": rewrite_cost(expected, ttl, model, provider,
                                                       above_tier, effects.prices, dims),
                      "cached_tokens": expected})
    found.sort(key=lambda item: (item["expires_at"], item["session"]))
    return found


def rewrite_cost(tokens, ttl, model, provider, above_tier, prices, dims=""):
    """What writing tokens of prefix again costs above reading them: at the write
    rate of this TTL where the provider bills writes, else at the input rate; None
    when the model has no price."""
    rates = prices.rates(model, provider, dims)
    if rates is None:
        return None
    p_in, p_read, p_w5, p_w1 = tier_rates(rates, level_tokens(above_tier))[:4]
    p_write = (p_w1 if ttl >= 3600 else p_w5) if reports_writes(provider) else p_in
    return round(tokens * (p_write - p_read), 9)


ADVICE_MIN_REQUESTS = 20
ADVICE_MIN_USD = 0.01
_TTL_SETTINGS = {
    ("claude-code", "main"): {
        "ttl_1h": 'set "promptCacheTtl": "1h" in Claude Code\'s settings.json '
                  '(or ENABLE_PROMPT_CACHING_1H=1 in the environment)',
        "ttl_5m": 'set "promptCacheTtl": "5m" in Claude Code\'s settings.json '
                  '(or FORCE_PROMPT_CACHING_5M=1 in the environment)'},
    ("claude-code", "subagents"): {
        "ttl_1h": 'set "subagentPromptCacheTtl": "1h" in Claude Code\'s settings.json',
        "ttl_5m": 'set "subagentPromptCacheTtl": "5m" in Claude Code\'s settings.json '
                  '(FORCE_PROMPT_CACHING_5M=1 sets every request to 5 m)'}}
_CACHE_CONTROL_SETTINGS = {
    "ttl_1h": 'send cache_control {"type": "ephemeral", "ttl": "1h"}',
    "ttl_5m": 'send cache_control {"type": "ephemeral"} without "ttl": "1h" (5 m is the '
              'default)'}


def ttl_advice(effects):
    """For each scope (advice_scope) of at least ADVICE_MIN_REQUESTS paired requests
    whose cheaper cache TTL, over the window, would have cost at least ADVICE_MIN_USD
    less than what was paid: that TTL, both costs, and the setting to change."""
    items = []
    for scope, figures in sorted(effects.advice.items()):
        paid = figures["cost"]
        costs = {policy: paid + figures[policy][0] for policy, _ in TTL_POLICIES}
        cheaper = min(sorted(costs), key=costs.get)
        saving = paid - costs[cheaper]
        if figures["requests"] < ADVICE_MIN_REQUESTS or saving < ADVICE_MIN_USD:
            continue
        claude_code = scope in _TTL_SETTINGS
        items.append({
            "scope": ({"agent": scope[0], "thread": scope[1]} if claude_code else
                      {"model": scope[0], "project": scope[1]}),
            "requests": figures["requests"], "cost_usd": round(paid, 9),
            "ttl_5m_cost_usd": round(costs["ttl_5m"], 9),
            "ttl_1h_cost_usd": round(costs["ttl_1h"], 9),
            "cheaper": cheaper, "saving_usd": round(saving, 9),
            "breaks_avoided": figures[cheaper][1], "breaks_added": figures[cheaper][2],
            "setting": (_TTL_SETTINGS[scope] if claude_code else
                        _CACHE_CONTROL_SETTINGS)[cheaper]})
    items.sort(key=lambda item: -item["saving_usd"])
    return items


def sessions_go_back(effects, parts):
    """Whether, merging parts (CacheEffects, in stream order) after effects, some
    session's first request in a part is older than its last request before it."""
    before = [effects]
    for part in parts:
        for session, first in part.first.items():
            for earlier in reversed(before):  # the latest part that has the session
                ts = earlier.last_time(session)
                if ts is not None:
                    if first.ts < ts:
                        return True
                    break
        before.append(part)
    return False


def _empty_what_if():
    return {policy: [0.0, 0, 0] for policy, _ in TTL_POLICIES}


def _empty_advice():
    """The what-if of one scope of advice, with its requests, cost and writes."""
    figures = _empty_what_if()
    figures.update(requests=0, cost=0.0, writes=[0, 0])
    return figures


def advice_scope(class_key):
    """(agent, thread) of a Claude Code class, else (model, project)."""
    scope = class_key[5]
    return scope if type(scope) is tuple else (class_key[1], scope)


# the live view's model: every request, priced once, in time order

class Entry(object):
    """A request with its price, as the live view keeps it."""

    __slots__ = ("req", "cost", "no_cache_cost", "priced")

    def __init__(self, req, cost, no_cache_cost, priced):
        self.req, self.cost, self.no_cache_cost, self.priced = req, cost, no_cache_cost, priced


def price_entries(requests, prices):
    entries = []
    for req in requests:
        rates = prices.rates(req.model, req.provider, req.tier)
        cost, no_cache_cost = request_cost(req, rates)
        entries.append(Entry(req, cost, no_cache_cost, rates is not None))
    return entries


def merge_into_sorted(items, new, key, keys=None):
    """Merges new items into items (sorted by key) in place, re-sorting only from the
    first place a new item goes; keys, if given, is the list of items' keys.
    Returns that place."""
    if not new:
        return len(items)
    new = sorted(new, key=key)
    first = key(new[0])
    start = bisect.bisect_right(keys, first) if keys is not None else len(items)
    if keys is None:
        while start and key(items[start - 1]) > first:
            start -= 1
    tail = items[start:] + new
    if start < len(items):
        tail.sort(key=key)
    items[start:] = tail
    return start


class Timeline(object):
    """Entries split into timed (sorted, searchable by time) and untimed."""

    def __init__(self, entries):
        self.untimed = [e for e in entries if e.req.ts is None]
        self.timed = sorted((e for e in entries if e.req.ts is not None), key=lambda e: e.req.ts)
        self.times = [e.req.ts for e in self.timed]

    def extend(self, entries):
        """Adds entries; new arrivals are recent, so only the tail is re-sorted."""
        self.untimed.extend(e for e in entries if e.req.ts is None)
        start = merge_into_sorted(self.timed, [e for e in entries if e.req.ts is not None],
                                  lambda e: e.req.ts, self.times)
        self.times[start:] = [e.req.ts for e in self.timed[start:]]

    def since(self, start, end=None):
        """Timed entries with start <= ts (< end); every entry when start is None."""
        if start is None and end is None:
            return self.untimed + self.timed
        lo = 0 if start is None else bisect.bisect_left(self.times, start)
        hi = len(self.times) if end is None else bisect.bisect_left(self.times, end)
        return self.timed[lo:hi]


RATE_SPANS_S = (60, 300, 900)
HIT_SERIES_SPAN_S = 3600


class RateBuckets(object):
    """Per-second sums of the last hour's requests (count, input, read, output, cost),
    kept as requests arrive, so rolling figures cost the same at any volume."""

    def __init__(self):
        self.seconds = {}

    def add(self, entries):
        seconds = self.seconds
        for entry in entries:
            req = entry.req
            if req.ts is None:
                continue
            second = int(req.ts)
            bucket = seconds.get(second)
            if bucket is None:
                bucket = seconds[second] = [0, 0, 0, 0, 0.0]
            bucket[0] += 1
            bucket[1] += req.input
            bucket[2] += req.cache_read
            bucket[3] += req.output
            bucket[4] += entry.cost

    def prune(self, now):
        """Forgets what is older than an hour before now (they would only grow)."""
        oldest = int(now) - HIT_SERIES_SPAN_S - 1
        if len(self.seconds) > 2 * HIT_SERIES_SPAN_S:
            self.seconds = {k: v for k, v in self.seconds.items() if k >= oldest}

    def sums(self, start, end):
        """[requests, input, read, output, cost] over whole seconds start <= s < end."""
        total = [0, 0, 0, 0, 0.0]
        seconds = self.seconds
        for second in range(int(start), int(end)):
            bucket = seconds.get(second)
            if bucket is not None:
                for i in range(5):
                    total[i] += bucket[i]
        return total


def rolling_rates(buckets, now):
    """For 1, 5 and 15 minutes back from now: (req/min, tokens/min, $/h, hit rate)."""
    rates = []
    for span in RATE_SPANS_S:
        count, tokens_in, read, tokens_out, cost = buckets.sums(now - span + 1, now + 1)
        minutes = span / 60.0
        rates.append((count / minutes, (tokens_in + tokens_out) / minutes,
                      cost * 3600.0 / span, read / tokens_in if tokens_in else None))
    return rates


def hit_series(buckets, now, count=60, span_s=HIT_SERIES_SPAN_S):
    """Hit rate per slice over the last span (None where no input flowed)."""
    size = span_s / float(count)
    start = now - span_s
    series = []
    for index in range(count):
        _, tokens_in, read, _, _ = buckets.sums(start + index * size + 1,
                                                start + (index + 1) * size + 1)
        series.append(read / tokens_in if tokens_in else None)
    return series


SPARK_UNICODE = "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"
SPARK_ASCII = "_.-:=+*#"


def sparkline(series, unicode_ok=True):
    marks = SPARK_UNICODE if unicode_ok else SPARK_ASCII
    return "".join(" " if v is None else marks[min(len(marks) - 1, int(v * len(marks)))]
                   for v in series)


LOW_HIT_ALERT = 0.30


CAUSE_TEXT = {"model_switch": "a model switch (a cache is per model)",
              "compaction": "a compaction (the context was summarized)",
              "ttl_expired": "an idle gap beyond the cache TTL",
              "prefix_changed": "a changed prompt prefix (system prompt, tools or early "
                                "messages)",
              "system_changed": "a changed system prompt",
              "tools_changed": "a changed tool list (an MCP server reconnected?)",
              "messages_changed": "an edited earlier message",
              "settings_changed": "changed request settings (cache key, format, effort, "
                                  "verbosity or service tier)",
              "evicted": "an entry evicted early, inside its TTL"}


class View(object):
    """What the live view shows: grouping, window, sort, filter and drill-down path."""

    GROUPINGS = ("model", "project", "agent", "provider", "session", "day", "week", "month")
    WINDOWS = ("all", "today", "1h", "24h", "7d", "30d", "week", "month", "90d")
    # s cycles through the columns on screen; --sort may name any (observed, time)
    SORTS = ("cost", "saved", "hit", "requests", "input", "read", "write", "miss", "output",
             "last", "name")

    def __init__(self, group_by=("model",), window="all", sort="cost", descending=True):
        self.group_by = tuple(group_by) or ("model",)
        self.window = window
        self.sort = sort if sort in SORT_COLUMNS or sort in ("name", "time") else "cost"
        self.descending = descending
        self.filter = ""
        self.stack = []          # drill-down: [(group_by, key)], then a session id
        self.selected = 0
        self.paused = False
        self.help = False
        self.breaks_panel = False
        self.trends_panel = False
        self.typing = None       # the filter being typed after /, else None
        self.help_top = 0        # the first help line shown
        self.focus = None        # a time to select in the next timeline (a break's)
        self.note = None         # (text, until) said under the table for a while
        self.bounds = (None, None)  # --since / --until
        self.page = 10           # table rows on screen, for PgUp/PgDn

    def level(self):
        """'groups', 'sessions' (inside a group) or 'timeline' (one session)."""
        if self.stack and isinstance(self.stack[-1], str):
            return "timeline"
        return "sessions" if self.stack else "groups"

    def grouping(self):
        return ("session",) if self.level() == "sessions" else self.group_by


def break_summary(breaks):
    """Count and cost of the breaks, by cause and by where the cause came from, and
    how far the inferred causes agree with the provider's (cause_agreement)."""
    by_cause = {cause: [0, 0.0] for cause in BREAK_CAUSES}
    cost, reported = 0.0, []
    for found in breaks:   # one pass: a report may list a break every few requests
        cost += found.cost
        figures = by_cause.get(found.cause)
        if figures is not None:
            figures[0] += 1
            figures[1] += found.cost
        if found.reported:
            reported.append(found)
    summary = {"count": len(breaks), "cost_usd": round(cost, 9),
               "by_cause": {cause: {"count": count, "cost_usd": round(total, 9)}
                            for cause, (count, total) in by_cause.items()}}
    summary["by_source"] = {"reported": len(reported), "inferred": len(breaks) - len(reported)}
    summary["agreement"] = cause_agreement(reported)
    return summary


def agrees(found):
    """Whether the heuristic named the same kind of cause as the provider reported:
    a model switch, a compaction, an expiry, an eviction, or a change to the request
    (which the heuristic can only call a changed prefix)."""
    return _CAUSE_KINDS[found.inferred] == _CAUSE_KINDS[found.cause]


def cause_agreement(reported):
    """{compared, agree, disagreements: [{reported, inferred, count}]} of breaks whose
    cause the provider reported, each also inferred from the usage alone."""
    missed = {}
    for found in reported:
        if not agrees(found):
            pair = (found.cause, found.inferred)
            missed[pair] = missed.get(pair, 0) + 1
    return {"compared": len(reported), "agree": len(reported) - sum(missed.values()),
            "disagreements": [{"reported": cause, "inferred": inferred, "count": count}
                              for (cause, inferred), count in
                              sorted(missed.items(), key=lambda item: (-item[1], item[0]))]}


def what_if_dict(agg):
    """The TTL what-if of the JSON document: totals, then one entry a group."""
    effects = agg.effects

    def policies(base_cost, figures):
        out = {"applies_to_cost_usd": round(base_cost, 9)}
        for policy, _ in TTL_POLICIES:
            delta, avoided, added = figures[policy]
            out[policy] = {"cost_usd": round(base_cost + delta, 9), "delta_usd": round(delta, 9),
                           "breaks_avoided": avoided, "breaks_added": added}
        return out

    total = _empty_what_if()
    for figures in effects.what_if.values():
        for policy in total:
            total[policy] = [a + b for a, b in zip(total[policy], figures[policy])]
    doc = policies(sum(effects.policy_cost.values(), 0.0), total)
    doc["groups"] = [dict([("key", dict(zip(agg.group_by, key)))] +
                          list(policies(effects.policy_cost.get(key, 0.0), figures).items()))
                     for key, figures in sorted(effects.what_if.items())] if agg.group_by else []
    return doc


def wasted_dict(agg):
    wasted = agg.effects.wasted
    doc = {"tokens": sum(t for t, _ in wasted.values()),
           "cost_usd": round(sum(c for _, c in wasted.values()), 9)}
    doc["groups"] = [{"key": dict(zip(agg.group_by, key)), "tokens": tokens,
                      "cost_usd": round(cost, 9)}
                     for key, (tokens, cost) in sorted(wasted.items())] if agg.group_by else []
    return doc


# ----------------------------------------------------------------------- io

UTF8_BOM = b"\xef\xbb\xbf"


class LineReader(object):
    """The one place that decides what a line of a file or stream is, for every reader
    (snapshots, byte ranges, the history, live tails):

    - a partial last line waits for its newline (finish() hands it out at the end);
    - a line longer than MAX_LINE_BYTES is dropped and counted as it streams by: never
      held whole, never cut into a second record;
    - a UTF-8 byte-order mark at the start of the stream is dropped;
    - a CR before the newline stays: it is whitespace to the JSON decoder.

    offset is how far the stream is read; line_start, where its pending line starts
    (where a later read must resume).  The pending line is kept in pieces, joined
    once when its newline comes: a long line costs its length, not its square."""

    __slots__ = ("pieces", "pending", "limit", "skipping", "oversized", "at_start",
                 "offset", "line_start")

    def __init__(self, offset=0):
        self.pieces = []          # the pending line (no newline yet), in pieces
        self.pending = 0          # its length
        self.limit = MAX_LINE_BYTES
        self.skipping = False     # inside a line already dropped, until its newline
        self.oversized = 0
        self.at_start = offset == 0
        self.offset = self.line_start = offset

    def feed(self, block):
        """The whole lines block completes, without newlines (a dropped line is b"")."""
        lines = block.split(b"\n")
        self.offset += len(block)
        if len(lines) == 1:
            self._grow(block)
            return []
        if self.pieces:  # joined to its rest alone, not to the whole block, in one copy
            self.pieces.append(lines[0])
            lines[0] = b"".join(self.pieces)
            self.pieces = []
        partial = lines.pop()
        self.line_start = self.offset - len(partial)
        self._first_line(lines)
        if len(lines[0]) > self.limit or (len(lines) > 1 and max(map(len, lines)) > self.limit):
            lines = self._drop_long(lines)
        self._restart(partial)
        return lines

    def feed_located(self, block):
        """[(offset, line)] of the whole lines block completes (dropped lines left out)."""
        first, start, dropped = self.line_start, self.offset, self.oversized
        lines = self.feed(block)
        if not lines:
            return []
        located = [(first, lines[0])]
        start += block.find(b"\n") + 1
        # a line dropped inside the block is b"" now: its length comes from the block
        lengths = (map(len, lines[1:]) if self.oversized == dropped
                   else map(len, block.split(b"\n")[1:-1]))
        for line, length in zip(lines[1:], lengths):
            located.append((start, line))
            start += length + 1
        return [(start, line) for start, line in located if line]

    def feed_block(self, block):
        """The bytes of the whole lines block completes, newlines kept: one buffer, for
        the parsers that look for their needles in a whole block at once."""
        self.offset += len(block)
        cut = block.rfind(b"\n") + 1
        if not cut:
            self._grow(block)
            return b""
        partial = block[cut:]
        self.line_start = self.offset - len(partial)
        data = block[:cut]
        if self.pieces:
            self.pieces.append(data)
            data = b"".join(self.pieces)
            self.pieces = []
        if self.skipping or len(data) > self.limit:
            lines = data.split(b"\n")
            self._first_line(lines)
            data = b"\n".join(self._drop_long(lines))
        elif self.at_start:
            if data.startswith(UTF8_BOM):
                data = data[3:]
            self.at_start = False
        self._restart(partial)
        return data

    def finish(self):
        """The last line of a finished stream, which had no newline (b"": none)."""
        last = self.tail()
        self.pieces, self.pending, self.skipping = [], 0, False
        return last

    def tail(self):
        """The line not yet whole, as it is now, left pending: a snapshot reads it, and
        a later read that finds the rest reads the whole line again from line_start."""
        if self.skipping:
            return b""
        last = b"".join(self.pieces)
        if self.at_start and last.startswith(UTF8_BOM):
            return last[3:]
        return last

    def _first_line(self, lines):
        """The first whole line: the rest of a dropped line, or the stream's first."""
        if self.skipping:
            lines[0] = b""
            self.skipping = False
        elif self.at_start and lines[0].startswith(UTF8_BOM):
            lines[0] = lines[0][3:]
        self.at_start = False

    def _drop_long(self, lines):
        limit = self.limit
        kept = [line if len(line) <= limit else b"" for line in lines]
        self.oversized += sum(1 for line in lines if len(line) > limit)
        return kept

    def _restart(self, partial):
        """A new pending line after a newline: what the block left after its last."""
        self.pieces, self.pending = ([partial], len(partial)) if partial else ([], 0)
        if self.pending > self.limit:
            self._drop_pending()

    def _grow(self, piece):
        """More of the pending line (a block without a newline)."""
        if self.skipping:
            return
        self.pieces.append(piece)
        self.pending += len(piece)
        if self.pending > self.limit:
            self._drop_pending()

    def _drop_pending(self):
        self.oversized += 1
        self.pieces, self.pending, self.skipping = [], 0, True


def iter_blocks(handle, start=0, end=None, block_bytes=READ_BLOCK_BYTES):
    """Blocks of a binary file from start up to end (None: to EOF)."""
    if start:
        handle.seek(start)
    position = start
    while end is None or position < end:
        size = block_bytes if end is None else min(block_bytes, end - position)
        block = handle.read(size)
        if not block:
            return
        position += len(block)
        yield block


def decode_json_line(line):
    """The value of one line of UTF-8 JSON, exactly as json.loads would decode it.

    Calls the decoder's C scanner directly: around it json.loads spends a fifth of
    its time in Python, sniffing the encoding and matching whitespace twice."""
    text = line.decode("utf-8")
    try:
        value, end = _JSON_SCAN(text, 0)
    except StopIteration:  # leading whitespace, or no value: the full decoder decides
        return _JSON_DECODER.decode(text)
    if end != len(text) and text[end:].strip(" \t\n\r"):  # JSON's only whitespace
        raise ValueError("extra data after the JSON value")
    return value


def scan_request_lines(lines, stats, sink, wanted=ALL_ATTRIBUTES):
    """Parses generic request-log lines, counting what is skipped and why."""
    decode, normalize, records = decode_json_line, normalize_record, 0
    for line in lines:
        if not line:
            continue
        try:
            record = decode(line)
        except (ValueError, RecursionError):
            if not line.isspace():
                stats.skipped["malformed"] += 1
            continue
        if type(record) is not dict:
            stats.skipped["malformed"] += 1
            continue
        try:
            req = normalize(record, wanted)
        except (ValueError, TypeError, RecursionError, OverflowError):
            stats.skipped["malformed"] += 1
            continue
        if type(req) is Request:
            records += 1
            sink(req)
        elif req is None:
            stats.skipped["no_usage"] += 1
        elif req is FAILED:
            stats.skipped["failed"] += 1
        else:   # a list: a response's server-side iterations, each priced alone
            records += len(req)
            for part in req:
                sink(part)
    stats.records += records


def scan_request_stream(handle, stats, sink, start=0, end=None, wanted=ALL_ATTRIBUTES):
    """Reads a binary stream of JSON lines between two offsets into sink."""
    reader = LineReader(start)
    with gc_paused():
        for block in iter_blocks(handle, start, end):
            scan_request_lines(reader.feed(block), stats, sink, wanted)
        scan_request_lines([reader.finish()], stats, sink, wanted)
    stats.skipped["malformed"] += reader.oversized


@contextlib.contextmanager
def gc_paused():
    """Decoding JSON allocates millions of containers, each a nudge to the cyclic
    garbage collector, while parsing creates no cycles: pause it meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class StreamReader(object):
    """A binary stream read block by block until EOF, or until a deadline passes
    (--once --duration on a stream that never ends); with spool, a file that keeps
    a copy of what was read (a stream cannot be read twice)."""

    def __init__(self, stream, deadline=None, spool=None):
        self.stream = stream
        self.deadline = deadline
        self.spool = spool

    def read(self, size):
        data = self._read(size)
        if self.spool is not None:
            self.spool.write(data)
        return data

    def _read(self, size):
        if self.deadline is None:
            return self.stream.read(size)
        import select
        fd = self.stream.fileno()
        while True:
            left = self.deadline - time.time()
            if left <= 0:
                return b""
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                return os.read(fd, size)

    def seek(self, offset):
        raise OSError("a stream cannot seek")


def next_line_start(handle, offset):
    """The offset where the line after the one holding offset starts (or the end of
    the file): read by blocks, so a huge line is never held whole."""
    handle.seek(offset)
    while True:
        block = handle.read(READ_BLOCK_BYTES)
        cut = block.find(b"\n")
        if cut >= 0:
            return offset + cut + 1
        if not block:
            return offset
        offset += len(block)


def split_points(path, size, parts, start=0):
    """Offsets that cut a file from start into `parts` ranges, each at a line start."""
    points = [start]
    with open_regular(path) as handle:
        for i in range(1, parts):
            position = next_line_start(handle, start + (size - start) * i // parts)
            if points[-1] < position < size:
                points.append(position)
    points.append(size)
    return points


def worker_result(result):
    """A worker's result, carrying home on its SourceStats the numbers the worker
    refused (counted there by take_home; each task starts its count afresh)."""
    stats_of(result).refused = dict(REFUSED_VALUES)
    REFUSED_VALUES.clear()
    return result


def stats_of(result):
    """The SourceStats of a worker's result: (aggregate, stats), (stats, offset) or
    an AgentSource."""
    if isinstance(result, tuple):
        return result[1] if isinstance(result[1], SourceStats) else result[0]
    return result.stats


def take_home(result):
    """Counts here what a worker's result says it refused."""
    stats = stats_of(result)
    for kind, count in (stats.refused or {}).items():
        REFUSED_VALUES[kind] = REFUSED_VALUES.get(kind, 0) + count
    stats.refused = None
    return result


def _scan_range_worker(aggregate, job):
    REFUSED_VALUES.clear()    # what the parent counted before the fork is its own
    path, start, end = job
    return worker_result(scan_range(aggregate, path, start, end))


def scan_range(template, path, start, end):
    """(Aggregate, SourceStats) of one byte range of a request log, read into a fresh
    aggregate viewing it as template does."""
    aggregate = template.empty_part()
    stats = SourceStats("")
    with open_regular(path) as handle:
        scan_request_stream(handle, stats, aggregate.add, start, end,
                            template.wanted_attributes())
    return aggregate, stats


def scan_first_range(template, path, start, end):
    """[(Aggregate, SourceStats)] of the first range of a split file, read here; None
    when its first PROBE_BYTES start a session nearly every request (the caller then
    reads the file in one pass: split, each part would hold every request's session
    twice over, for the merge, and gain no time either)."""
    with open_regular(path) as handle:
        probe = min(end, next_line_start(handle, min(end, start + PROBE_BYTES)))
    part, stats = scan_range(template, path, start, probe)
    if stats.records >= PROBE_MIN_RECORDS and len(part.effects.last) >= 0.9 * stats.records:
        return None
    with open_regular(path) as handle:
        scan_request_stream(handle, stats, part.add, probe, end, template.wanted_attributes())
    return [(part, stats)]


def learn_shapes(path, wanted, start=0, head_bytes=1 << 16):
    """Compiles the record shapes of the file's first lines (from start) before the
    workers are forked: each inherits them instead of compiling its own."""
    with open_regular(path) as handle:
        handle.seek(start)
        lines = handle.read(head_bytes).split(b"\n")[:-1]
    scan_request_lines(lines, SourceStats(""), lambda req: None, wanted)


# --jobs: the processes a run may use, set once by run() (None: the cores available)
JOBS_LIMIT = [None]


def worker_count():
    """Processes to read with: --jobs, else the cores this process may run on; one on
    a thread other than the main one (the live view's history writer): a process
    forked there may inherit a lock another thread holds, and wait for it for ever."""
    threading = sys.modules.get("threading")
    if threading is not None and threading.current_thread() is not threading.main_thread():
        return 1
    if JOBS_LIMIT[0] is not None:
        return JOBS_LIMIT[0]
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fork_jobs(function, jobs, processes):
    """ForkedJobs doing function(job) for each job in up to `processes` copies of this
    process, or None where this system cannot fork (the caller then reads alone)."""
    if not jobs or not hasattr(os, "fork"):
        return None
    try:
        return ForkedJobs(function, jobs, processes)
    except OSError:    # no more processes allowed, or no pipe: read here instead
        return None


class WorkerTraceback(Exception):
    """Where a job failed in its worker process (the cause of the error raised here)."""


class ForkedJobs(object):
    """Jobs done by forked copies of this process; their results, back in job order.

    A copy inherits this process's memory (the aggregate it views, the compiled
    shapes), so a job is never pickled, only its result: down a pipe that a thread
    here empties as it fills, so no copy waits on this process while it reads its
    own share.  (multiprocessing's Pool did this for about 60 ms more a run: its
    import, its queues and its three threads.)  Each copy takes every n-th job, and
    ends when this process does (a lifeline pipe it alone writes to)."""

    def __init__(self, function, jobs, processes):
        import pickle
        self.count, self.loads = len(jobs), pickle.loads
        self.shares = max(1, min(processes, len(jobs)))
        self.children, self.inboxes, self.threads = [], [], []
        sys.stdout.flush()   # else a copy's buffers hold this process's pending output
        sys.stderr.flush()
        lifeline, self.lifeline = os.pipe()
        unowned = [lifeline]   # closed here if the start fails; a thread closes its pipe
        try:
            for index in range(self.shares):
                self.children.append(self._fork_copy(
                    function, jobs[index::self.shares], unowned, pickle))
            os.close(unowned.pop(0))
            while unowned:   # (only now: a copy forked beside a thread may deadlock)
                self._collect(unowned)
        except BaseException:
            self.close()
            for end in unowned:
                os.close(end)
            raise

    def _fork_copy(self, function, share, unowned, pickle):
        """Forks the copy that does share; returns its pid (the copy never returns).
        unowned: the lifeline's read end, then the pipes' read ends; this one's added."""
        import signal
        read_end, write_end = os.pipe()
        unowned.append(read_end)
        # no Ctrl-C may send a copy back into the caller's code before it serves
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            pid = _fork()
            if pid == 0:
                _serve_jobs(function, share, write_end, unowned[1:] + [self.lifeline],
                            unowned[0], mask, pickle)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(write_end)
        return pid

    def _collect(self, unowned):
        """A thread that empties the first of the unowned pipes, which it then owns."""
        import queue
        import threading
        inbox = queue.SimpleQueue()
        thread = threading.Thread(target=_collect_results, name="catop-results",
                                  daemon=True, args=(unowned[0], inbox))
        thread.start()
        unowned.pop(0)
        self.inboxes.append(inbox)
        self.threads.append(thread)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def results(self):
        """Each job's result in the order of the jobs, as it comes; a job's exception
        is raised here, from the worker's traceback."""
        for index in range(self.count):
            payload = self.inboxes[index % self.shares].get()
            if payload is None:
                raise CatopError("a worker process ended before its work was done (%s)"
                                 % self._ending(index % self.shares))
            done, value, trace = self.loads(payload)
            if not done:
                raise value from WorkerTraceback(trace)
            yield value

    def _ending(self, share):
        """How a copy ended: its exit status, or the signal that killed it."""
        pid, self.children[share] = self.children[share], None
        try:
            status = os.waitpid(pid, 0)[1]
        except (OSError, TypeError):
            return "its status unknown"
        if os.WIFSIGNALED(status):
            return "killed by signal %d" % os.WTERMSIG(status)   # 9: out of memory?
        return "exit status %d" % os.WEXITSTATUS(status)

    def close(self):
        """Ends the copies (whether or not they are done), waits for them and for the
        threads that read their pipes."""
        import signal
        if self.lifeline is not None:
            os.close(self.lifeline)
            self.lifeline = None
        children, self.children = [pid for pid in self.children if pid], []
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        for thread in self.threads:
            thread.join(5.0)
        self.threads = []


def _fork():
    """os.fork() without Python 3.12's warning of a fork beside another thread (a
    server's, with --metrics-listen): a copy runs none of that thread's code."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _serve_jobs(function, share, write_end, inherited, lifeline, mask, pickle):
    """A forked copy's whole life: each job's (done, result or exception, traceback),
    pickled, framed by its length, down the pipe; then out, never back to the
    caller's code (and out at once when the process that forked it ends)."""
    try:
        import signal
        import threading
        for end in inherited:   # the other pipes' read ends, the lifeline's write end
            os.close(end)
        threading.Thread(target=_exit_when_orphaned, args=(lifeline,), daemon=True).start()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        with os.fdopen(write_end, "wb") as pipe:
            for job in share:
                try:
                    reply = (True, function(job), None)
                except BaseException as error:   # raised again by results()
                    import traceback
                    reply = (False, error, traceback.format_exc())
                try:
                    data = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
                except Exception as error:
                    reply = (False, CatopError("a worker's result cannot be sent: %s" % error),
                             None)
                    data = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
                pipe.write(struct.pack("<Q", len(data)))
                pipe.write(data)
                pipe.flush()
                if not reply[0]:
                    break
        sys.stderr.flush()
    finally:
        os._exit(0)


def _exit_when_orphaned(lifeline):
    """A copy's watch on the process that forked it: the lifeline ends when it does."""
    os.read(lifeline, 1)
    os._exit(1)


def _collect_results(read_end, inbox):
    """Puts each framed result the pipe brings into inbox; None once the pipe ends."""
    with os.fdopen(read_end, "rb") as pipe:
        while True:
            header = pipe.read(8)
            if len(header) < 8:
                break
            size, = struct.unpack("<Q", header)
            payload = pipe.read(size)
            if len(payload) < size:
                break
            inbox.put(payload)
    inbox.put(None)


def scan_request_file(path, aggregate, stats):
    """One request-log file into aggregate; large files are split across the cores."""
    size = os.path.getsize(path)
    workers = worker_count()
    refused_before = dict(REFUSED_VALUES)
    if size >= PARALLEL_MIN_BYTES and workers > 1:
        points = split_points(path, size, workers)
        jobs = [(path, points[i], points[i + 1]) for i in range(len(points) - 1)]
        learn_shapes(path, aggregate.wanted_attributes())
        forked = fork_jobs(lambda job: _scan_range_worker(aggregate, job), jobs[1:],
                           len(jobs) - 1)
        if forked is not None:
            # this process reads the first range itself: one process fewer in memory
            with forked:
                parts = scan_first_range(aggregate, *jobs[0])
                if parts is not None:
                    parts += forked.results()
            if parts is not None and not sessions_go_back(
                    aggregate.effects, [part.effects for part, _ in parts]):
                while parts:  # each part let go once merged
                    part, part_stats = take_home(parts.pop(0))
                    aggregate.merge(part)
                    stats.merge(part_stats)
                return
            # A session goes back in time across a cut: its pairs, read apart, would
            # differ from those of one pass (which leaves the late requests unpaired).
            # Read the file in one pass, so the answer never depends on the cores.
            REFUSED_VALUES.clear()
            REFUSED_VALUES.update(refused_before)
    with open_regular(path) as handle:
        scan_request_stream(handle, stats, aggregate.add, wanted=aggregate.wanted_attributes())


def read_again_in_time_order(logs, aggregate):
    """Request logs read once more, when a session in them went back in time: what a
    request did to the cache is judged from the next one in time, so the requests of
    those sessions are held back and added in time order, the rest as they come.  The
    answer is then the one of every sorted path (the history, the live view, agents);
    only those sessions' requests are ever held in memory."""
    late = aggregate.effects.late
    refused = dict(REFUSED_VALUES)   # counted in the first reading: not again
    aggregate.start_over()
    held = []
    add = aggregate.add

    def sink(req):
        if req.session in late:
            held.append(req)
        else:
            add(req)
    for log in logs:
        if isinstance(log, str):
            handle = open_regular(log)
        else:  # standard input, spooled while it was read
            handle, _ = log, log.seek(0)
        with handle:
            scan_request_stream(handle, SourceStats(""), sink,
                                wanted=aggregate.wanted_attributes())
    held.sort(key=request_order)
    for req in held:
        add(req)
    REFUSED_VALUES.clear()
    REFUSED_VALUES.update(refused)


def expand_file_args(paths):
    """Files named on the command line; a folder means its *.jsonl (sorted)."""
    files, seen = [], set()
    for path in paths:
        if path == "-":
            candidates = ["-"]
        elif os.path.isdir(path):
            candidates = folder_logs(path)
            if not candidates:
                raise SourceError("no .jsonl log in the folder %s" % clean(path))
        elif os.path.isfile(path):
            candidates = [path]
        elif os.path.exists(path):
            raise SourceError("%s is %s, not a log file: pipe a stream in with --stdin"
                              % (clean(path), file_kind(os.stat(path).st_mode)))
        else:
            raise SourceError("no such file or folder: %s" % clean(path))
        for candidate in candidates:
            identity = candidate if candidate == "-" else os.path.realpath(candidate)
            if identity not in seen:
                seen.add(identity)
                files.append(candidate)
    return files


def folder_logs(folder):
    """The request logs of a folder named by --file: its *.jsonl files, sorted."""
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.endswith(".jsonl") and os.path.isfile(os.path.join(folder, name)))


# agent sources: where each agent keeps its logs, and how they are read

def _home(*parts):
    return os.path.join(os.path.expanduser("~"), *parts)


def _default_root(parts):
    """A default folder: under the home folder, or under XDG's data folder (where an
    agent follows XDG, as its own code does on Linux and macOS alike)."""
    if parts[0] == "XDG_DATA":
        base = os.environ.get("XDG_DATA_HOME") or _home(".local", "share")
        return os.path.join(base, *parts[1:])
    return _home(*parts)


def agent_roots(name):
    """The folders an agent's logs live in, from its environment variable or default,
    as absolute paths (the history stores the files under them)."""
    return AGENT_TABLE[name].roots()


def _walk_files(root, suffixes, depth=8):
    """Files under root ending in one of suffixes, sorted; links to folders not followed."""
    found = []
    if not os.path.isdir(root):
        return found
    base_depth = root.rstrip(os.sep).count(os.sep)
    for folder, dirs, files in os.walk(root):
        if folder.count(os.sep) - base_depth >= depth:
            dirs[:] = []
        found.extend(path for path in (os.path.join(folder, f) for f in files
                                       if f.endswith(suffixes))
                     if os.path.isfile(path))   # no FIFO or device: a read would hang
    return sorted(found)


def agent_files(name):
    """Every log file of an agent, in a stable order (OpenCode: its database first)."""
    spec = AGENT_TABLE[name]
    return [path for root in spec.roots() for path in spec.find(root)]


def _claude_files(root):
    return _walk_files(os.path.join(root, "projects"), (".jsonl",))


def _gemini_files(root):
    return sorted(p for p in _walk_files(root, (".json", ".jsonl"), 3)
                  if os.path.basename(os.path.dirname(p)) == "chats")


def _opencode_files(root):
    database = os.path.join(root, "opencode.db")
    return (([database] if os.path.isfile(database) else []) +
            _walk_files(os.path.join(root, "storage", "message"), (".json",), 2))


def _openclaw_files(root):
    return [p for p in _walk_files(os.path.join(root, "agents"), (".jsonl",), 3)
            if os.path.basename(os.path.dirname(p)) == "sessions"]


def _codex_files(root):
    """Rollout files; one name in both sessions/ and archived_sessions/ counts once."""
    by_name = {}
    for folder in ("sessions", "archived_sessions"):
        for path in _walk_files(os.path.join(root, folder), (".jsonl",), 4):
            name = os.path.basename(path)
            if not name.startswith("rollout-"):
                continue
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if name not in by_name or size > by_name[name][0]:
                by_name[name] = (size, path)
    return sorted(path for _, path in by_name.values())


def _named_files(root, names, depth):
    """Files called one of names under root, sorted."""
    return [p for p in _walk_files(root, names, depth) if os.path.basename(p) in names]


def _amp_files(root):
    return _walk_files(os.path.join(root, "threads"), (".json",), 2)


def _droid_files(root):
    """<root>/[<-cwd-slug>/]<session>.settings.json; a session found in several places
    (the older flat layout and its project folder, a backup) counts once: the copy
    with the largest counters (they only grow), then the newest."""
    best = {}
    for path in _walk_files(root, (".settings.json",), 3):
        try:
            counts = _droid_counts(json.loads(read_regular(path, 1 << 20)))
            rank = (sum(counts) if counts else -1, os.path.getmtime(path), path)
        except (OSError, ValueError, RecursionError):
            rank = (-2, 0.0, path)   # unreadable: kept only where it is the one copy
        name = os.path.basename(path)
        if name not in best or rank > best[name][0]:
            best[name] = (rank, path)
    return sorted(path for _, path in best.values())


def _codebuff_files(root):
    """<root>/projects/<project>/chats/<chat>/chat-messages.json; root is a channel
    folder (~/.config/manicode[-dev|-staging]) or its projects folder."""
    base = root if os.path.basename(root.rstrip(os.sep)) == "projects" \
        else os.path.join(root, "projects")
    return _named_files(base, ("chat-messages.json",), 4)


def _hermes_files(root):
    """state.db, then each named profile's (a profile is a Hermes home of its own;
    a name starting with '.' is a deleted one)."""
    found = [os.path.join(root, "state.db")]
    with contextlib.suppress(OSError):
        found += [os.path.join(root, "profiles", name, "state.db")
                  for name in sorted(os.listdir(os.path.join(root, "profiles")))
                  if not name.startswith(".")]
    return [path for path in found if os.path.isfile(path)]


def _pi_files(root):
    """<agent dir>/sessions/--<cwd>--/<time>_<uuid>.jsonl, or the same under a root
    that is the sessions folder itself (ccusage's PI_AGENT_DIR)."""
    sessions = os.path.join(root, "sessions")
    base = sessions if os.path.isdir(sessions) else root
    return [p for p in _walk_files(base, (".jsonl",), 2) if os.path.dirname(p) != base]


def _goose_files(root):
    """sessions.db under a GOOSE_PATH_ROOT (data/sessions/) or the data folder
    (sessions/); never its backups."""
    for parts in (("data", "sessions", "sessions.db"), ("sessions", "sessions.db")):
        if os.path.isfile(os.path.join(root, *parts)):
            return [os.path.join(root, *parts)]
    return []


def _kilo_files(root):
    """kilo.db (the latest, beta and prod channels), then the kilo-<channel>.db of
    preview builds."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    names = [n for n in names if n == "kilo.db"] + \
        [n for n in names if n.startswith("kilo-") and n.endswith(".db")]
    return [os.path.join(root, n) for n in names if os.path.isfile(os.path.join(root, n))]


def _copilot_files(root):
    return _named_files(os.path.join(root, "session-state"), ("events.jsonl",), 2)


def _antigravity_files(root):
    return _walk_files(os.path.join(root, "conversations"), (".db",), 4)


def _kimi_files(root):
    """wire.jsonl three or five folders below sessions/: a session's, its agents'
    or subagents'."""
    sessions = os.path.join(root, "sessions")
    depth = sessions.rstrip(os.sep).count(os.sep)
    return [p for p in _named_files(sessions, ("wire.jsonl",), 6)
            if p.count(os.sep) - depth in (3, 5)]


def _qwen_files(root):
    return [p for p in _walk_files(os.path.join(root, "projects"), (".jsonl",), 3)
            if os.path.basename(os.path.dirname(p)) == "chats"]


def _grok_files(root):
    return _named_files(os.path.join(root, "sessions"), ("updates.jsonl",), 4)


def _zcode_files(root):
    path = os.path.join(root, "cli", "db", "db.sqlite")
    return [path] if os.path.isfile(path) else []


def agent_present(name):
    return bool(agent_files(name))


def missing_agent_message(name):
    """Where an agent's logs were looked for, and how to say where they are."""
    spec = AGENT_TABLE[name]
    return ("no %s logs found in %s (set %s to the folder that holds them)"
            % (name, ", ".join(clean(root) for root in spec.roots()), spec.variable))


def no_data_message():
    places = []
    for name in AGENT_TABLE:
        places.append("%s: %s" % (name, ", ".join(agent_roots(name))))
    return ("no data found. Looked for agent logs in\n  " + "\n  ".join(places) +
            "\nTry: python3 catop.py --demo, or --file requests.jsonl, or --agent NAME "
            "with its folder set (%s)." % ", ".join(s.variable for s in AGENT_TABLE.values()))


class AgentSpec(object):
    """One entry of the agent table: everything catop knows of one coding agent.

    variable, defaults: where its logs live (the variable's value, comma-separated
    when listed, else the defaults under the home folder, or under the XDG data
    folder for a default that starts with XDG_DATA); variables: more names the same
    setting goes by (another tool's); find(root): its log files under one root;
    parser(record, FileContext): a JSONL line's Request, (key, Request), a list of
    them, "compact" or None, reading only lines holding one of needles;
    document(path, FileContext): ([(session, result)], malformed) of a
    whole-document file (by suffix), read again whole when it changes;
    database(path): the same of one file of an agent whose files are all read
    whole whenever one changes (SQLite databases, and their -wal); rank: which
    of several files holding equal copies of a response keeps it (formats.md
    section 3); subagent_replays: a subagent file may replay a response of its
    parent; expects: what the records that carry usage are (a folder that holds none
    is told so); copies_by_name: find() lists one of the files that share a name
    (copies of one log), and which one may change as they grow; copies_renamed: a
    fork copies records under new keys (renamed_copy_content).  history_key(key)
    / key_from_history(text) store a dedup key and read it back."""

    def __init__(self, name, variable, defaults, find, parser=None, needles=(),
                 document=None, document_suffix=None, database=None, listed=False,
                 rank="time", key_prefix=None, subagent_replays=False, sessions_keyed=True,
                 keyed=True, variables=(), expects="records with token usage",
                 copies_by_name=False, copies_renamed=False):
        self.name, self.variable, self.defaults, self.find = name, variable, defaults, find
        self.expects = expects   # what its usage records are, for a file that has none
        self.copies_by_name = copies_by_name   # find() lists one file of each name
        self.copies_renamed = copies_renamed   # equal requests under other keys: copies
        self.variables = (variable,) + tuple(variables)
        self.parser, self.needles, self.listed = parser, needles, listed
        self.database, self.whole = database, database is not None
        self.document, self.document_suffix = document, document_suffix
        self.rank = rank                      # "time" (earliest record) or "jsonl first"
        self.key_prefix = key_prefix or name  # of its history keys
        self.subagent_replays = subagent_replays
        self.sessions_keyed = sessions_keyed  # a key is (session, id), not the id alone
        self.keyed = keyed    # its parser gives (id, Request), not a Request alone

    def roots(self):
        value = next((os.environ[name] for name in self.variables if os.environ.get(name)), "")
        configured = ([p.strip() for p in value.split(",") if p.strip()] if self.listed
                      else [value] if value else [])
        return [os.path.abspath(root) for root in
                configured or [_default_root(parts) for parts in self.defaults]]

    def reads_document(self, path):
        return self.document is not None and path.endswith(self.document_suffix)

    def history_key(self, key):
        """The stored form of a dedup key (ints are Claude Code's message+request)."""
        if type(key) is int:
            return "cc:%032x" % key
        if type(key) is tuple:
            return "%s:%s:%s" % (self.key_prefix, key[0], key[1])
        return "%s:%s" % (self.key_prefix, key)

    def key_from_history(self, text):
        """A stored key read back, or None for a request stored without one."""
        if text.startswith("cc:"):
            return int(text[3:], 16)
        if not self.keyed:
            return None     # stored under its fields: no id to de-duplicate against
        if not self.sessions_keyed:
            return text.split(":", 1)[1]    # the key itself may hold a colon
        return tuple(text.split(":", 2)[1:])


# The agent table: adding an agent is one entry here and one parser.  Lines of a
# JSONL log that hold none of an agent's needles (prompts, tool output: most of the
# bytes) are never decoded.
AGENT_TABLE = dict((spec.name, spec) for spec in (
    AgentSpec("claude-code", "CLAUDE_CONFIG_DIR", ((".config", "claude"), (".claude",)),
              _claude_files, parse_claude_code, (b'"assistant"', b'compact_boundary'),
              listed=True, subagent_replays=True, sessions_keyed=False,
              expects="assistant lines with message.usage"),
    AgentSpec("codex", "CODEX_HOME", ((".codex",),), _codex_files, parse_codex,
              (b'"token_count"', b'"session_meta"', b'"turn_context"', b'"compacted"'),
              keyed=False, copies_by_name=True, expects="token_count events"),
    AgentSpec("gemini", "GEMINI_DATA_DIR", ((".gemini", "tmp"),), _gemini_files,
              parse_gemini, (b'"gemini"', b'"sessionId"'), document_suffix=".json",
              document=lambda path, ctx: read_gemini_document(path, ctx),
              rank="jsonl first", expects="gemini messages with tokens"),
    AgentSpec("opencode", "OPENCODE_DATA_DIR", (("XDG_DATA", "opencode"),),
              _opencode_files, database=lambda path: read_opencode_store(path),
              sessions_keyed=False, copies_renamed=True,
              expects="assistant messages with tokens"),
    AgentSpec("openclaw", "OPENCLAW_DIR", ((".openclaw",),), _openclaw_files, parse_openclaw,
              (b'"assistant"', b'"session"', b'"compaction"'), keyed=False,
              expects="assistant messages with usage"),
    AgentSpec("amp", "AMP_DATA_DIR", (("XDG_DATA", "amp"),), _amp_files,
              document=lambda path, ctx: read_amp_thread(path, ctx), document_suffix=".json",
              listed=True, expects="assistant messages with usage or usageLedger events"),
    AgentSpec("droid", "DROID_SESSIONS_DIR", ((".factory", "sessions"),), _droid_files,
              document=lambda path, ctx: read_droid_settings(path, ctx),
              document_suffix=".settings.json", listed=True, sessions_keyed=False,
              expects="settings with tokenUsage"),
    AgentSpec("codebuff", "CODEBUFF_DATA_DIR", ((".config", "manicode"),
                                                (".config", "manicode-dev"),
                                                (".config", "manicode-staging")),
              _codebuff_files, document=lambda path, ctx: read_codebuff_chat(path, ctx),
              document_suffix="chat-messages.json", listed=True,
              expects="assistant messages with usage"),
    AgentSpec("hermes", "HERMES_HOME", ((".hermes",),), _hermes_files,
              database=lambda path: read_hermes_state(path), listed=True,
              expects="sessions with token counts"),
    AgentSpec("pi", "PI_CODING_AGENT_DIR", ((".pi", "agent"),), _pi_files, parse_pi,
              (b'"assistant"', b'"session"', b'"compaction"'), sessions_keyed=False,
              variables=("PI_AGENT_DIR",), expects="assistant messages with usage"),
    AgentSpec("goose", "GOOSE_PATH_ROOT", (("XDG_DATA", "goose"),), _goose_files,
              database=lambda path: read_goose_sessions(path), sessions_keyed=False,
              expects="sessions with token counts"),
    AgentSpec("kilo", "KILO_DATA_DIR", (("XDG_DATA", "kilo"),), _kilo_files,
              database=lambda path: read_opencode_store(path, "kilo"), listed=True,
              sessions_keyed=False, copies_renamed=True,
              expects="assistant messages with tokens"),
    AgentSpec("copilot", "COPILOT_HOME", ((".copilot",),), _copilot_files, parse_copilot,
              (b'"session.shutdown"', b'"session.start"', b'"session.resume"',
               b'"session.compaction_complete"'),
              expects="session.shutdown events with modelMetrics"),
    AgentSpec("antigravity", "ANTIGRAVITY_DATA_DIR", (
        (".gemini", "antigravity-cli"), (".gemini", "antigravity"),
        (".gemini", "antigravity-ide"), (".gemini", "antigravity-backup"),
        (".config", "antigravity")), _antigravity_files,
        database=lambda path: read_antigravity_database(path), listed=True,
        sessions_keyed=False, expects="gen_metadata rows"),
    AgentSpec("kimi", "KIMI_DATA_DIR", ((".kimi",), (".kimi-code",)), _kimi_files,
              parse_kimi, (b'"StatusUpdate"', b'"usage.record"', b'"forked"'), listed=True,
              sessions_keyed=False, expects="StatusUpdate or usage.record lines"),
    AgentSpec("qwen", "QWEN_DATA_DIR", ((".qwen",),), _qwen_files, parse_qwen,
              (b'"usageMetadata"',), listed=True, sessions_keyed=False,
              expects="assistant records with usageMetadata"),
    AgentSpec("grok", "GROK_HOME", ((".grok",),), _grok_files, parse_grok,
              (b'"turn_completed"',), sessions_keyed=False,
              expects="turn_completed updates with usage"),
    AgentSpec("zcode", "ZCODE_HOME", ((".zcode",),), _zcode_files,
              database=lambda path: read_zcode_database(path), listed=True,
              sessions_keyed=False, expects="completed model_usage rows"),
))
AGENTS = tuple(AGENT_TABLE)   # as shipped; the table itself is what is read


def candidate_lines(block, needles):
    """The lines of block (whole lines only) that contain one of needles, in order."""
    starts = set()
    find, rfind = block.find, block.rfind
    for needle in needles:
        position = find(needle)
        while position >= 0:
            start = rfind(b"\n", 0, position) + 1
            starts.add(start)
            end = find(b"\n", position)
            if end < 0:
                break
            position = find(needle, end)
    lines = []
    for start in sorted(starts):
        end = find(b"\n", start)
        lines.append(block[start:] if end < 0 else block[start:end])
    return lines


FILE_HEAD_BYTES = 1024   # a file's first bytes, which tell one file from its refill


class FileState(object):
    """Where reading one file stopped, so a rescan reads only appended bytes.

    head is the (length, hash) of the file's first bytes: a file truncated in place
    and refilled past its old size (copy-truncate rotation) has the same inode and is
    not smaller, but it does not start the same.  tail is the (offset, hash) of the
    last bytes read: a file replaced by one holding what was read, and more (written
    whole to a temporary file and renamed over the log), starts and ends the same."""

    __slots__ = ("path", "device", "inode", "size", "mtime", "lines", "context", "restarts",
                 "head", "tail")

    def __init__(self, path, offset=0):
        self.path = path
        self.device = self.inode = None
        self.size = 0
        self.mtime = None
        self.lines = LineReader(offset)
        self.context = FileContext(path)
        self.restarts = 0   # times the file was replaced or truncated under us
        self.head = self.tail = None

    @property
    def offset(self):
        """Where a later read resumes: the start of the line not yet whole."""
        return self.lines.line_start

    def reset(self):
        if self.device is not None:
            self.restarts += 1
        self.lines = LineReader()
        self.context = FileContext(self.path)
        self.head = self.tail = None

    def note_tail(self):
        """Takes the fingerprint of the last bytes read, where reading moved on."""
        if self.offset and (self.tail is None or self.tail[0] != self.offset):
            try:
                self.tail = file_tail(self.path, self.offset)
            except OSError:
                self.tail = None


def file_tail(path, offset):
    """(offset, hash) of the FILE_HEAD_BYTES bytes of a file before offset."""
    start = max(0, offset - FILE_HEAD_BYTES)
    with open_regular(path) as handle:
        handle.seek(start)
        return offset, head_of(handle.read(offset - start))[1]


def holds_what_was_read(state, info):
    """Whether the file now at state's path begins with the bytes read so far: the
    same first and last bytes read (a log rewritten whole with more lines, not a new
    log: its lines were counted already)."""
    if state.head is None or state.tail is None or state.tail[0] != state.offset or \
            info.st_size < state.offset:
        return False
    try:
        return (file_head(state.path, state.head[0]) == state.head and
                file_tail(state.path, state.offset) == state.tail)
    except OSError:
        return False


def file_head(path, length):
    """(length, hash) of a file's first `length` bytes (fewer if it is shorter)."""
    with open_regular(path) as handle:
        return head_of(handle.read(length))


def head_of(data):
    return len(data), _stable_hash(data.hex())


def check_file_identity(state, info, from_start=False):
    """Starts state over when the file now at its path is not the one read so far:
    another inode, fewer bytes than were read, or other first bytes (checked only when
    its size or time changed, so an idle poll costs one stat).  from_start: the
    caller reads a file started over from its first byte, and takes its fingerprint."""
    moved = (info.st_dev, info.st_ino) != (state.device, state.inode)
    if not moved and state.head is not None and info.st_size >= state.lines.offset and \
            (info.st_size, info.st_mtime) != (state.size, state.mtime):
        moved = file_head(state.path, state.head[0]) != state.head
    if moved and state.device is not None and holds_what_was_read(state, info):
        moved = False   # grown, not started over: the identity its lines are keyed by stays
    if moved or info.st_size < state.lines.offset:
        state.reset()
        state.device, state.inode = info.st_dev, info.st_ino
    deferred = from_start and state.lines.offset == 0   # the caller takes it from block one
    if (state.head is None and not deferred) or (
            state.head is not None and state.head[0] < FILE_HEAD_BYTES and
            info.st_size > state.head[0]):
        state.head = file_head(state.path, FILE_HEAD_BYTES)
    state.size, state.mtime = info.st_size, info.st_mtime


def read_new_blocks(state, final=True, block_bytes=READ_BLOCK_BYTES):
    """Blocks of whole lines appended since the last call; a replaced or truncated
    file is read again from the start.  With final, an unterminated last line is
    returned too, and left pending: a later call reads it again, whole."""
    check_file_identity(state, os.stat(state.path), from_start=True)
    reader = state.lines
    if reader.offset < state.size:
        with open_regular(state.path) as handle:
            for data in iter_blocks(handle, reader.offset, None, block_bytes):
                if state.head is None:   # read from the start: its fingerprint, no second open
                    state.head = head_of(data[:FILE_HEAD_BYTES])
                    state.context.first_ts = first_record_time(data)
                data = reader.feed_block(data)
                if data:
                    yield data
    state.note_tail()
    if final:
        tail = reader.tail()
        if tail:
            yield tail


def scan_agent_jsonl(agent, state, final=True):
    """(results, stats) of the new lines of one JSONL agent file.  A result is a
    parser's answer: a Request, a keyed tuple, 'compact' or 'duplicate'."""
    spec = AGENT_TABLE[agent]
    parser, needles = spec.parser, spec.needles
    stats = SourceStats("")
    results = []
    decode = decode_json_line
    for block in read_new_blocks(state, final):
        ctx = state.context   # (a file read afresh has a context of its own by now)
        for line in candidate_lines(block, needles):
            try:
                record = decode(line)
                if type(record) is not dict:
                    raise ValueError("not an object")
                result = parser(record, ctx)
            except (ValueError, TypeError, RecursionError, OverflowError):
                stats.skip("malformed")
                continue
            if result == "compact":
                result = Compaction(parse_timestamp(record.get("timestamp")))
            if type(result) is list:   # one line, several requests (one per model)
                results.extend((ctx.session, one) for one in result)
            elif result is not None:
                results.append((ctx.session, result))
    stats.skip("malformed", state.lines.oversized)
    state.lines.oversized = 0
    return results, stats


def _scan_file_worker(job):
    """One file read in a worker process, de-duplicated within itself."""
    agent, path = job
    REFUSED_VALUES.clear()
    source = AgentSource(agent)
    source.scan(paths=[path], parallel=False, note=False)
    return worker_result(source)


def _total_size(paths):
    total = 0
    for path in paths:
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    return total


class AgentSource(object):
    """One agent's logs: per-file read state and the de-duplicated requests so far."""

    def __init__(self, agent):
        self.agent = agent
        self.spec = AGENT_TABLE[agent]
        self.stats = SourceStats("agent:%s" % agent)
        self.states = {}
        self.keyed = {}          # dedup key -> Request
        self.loose = {}          # path -> requests that need no cross-file de-duplication
        self.compactions = {}    # session -> count
        self.compaction_times = []  # (session, ts)
        self.version = 0         # grows whenever something new was read
        self.whole_signature = None   # what the files of a whole-read agent were
        self.first_ts = {}       # path -> its earliest record's time, when not in its state
        self.ties = {}           # key -> {path: Request}: equal copies in several files
        self.superseded = set()  # keys whose requests are counted under other keys
        self.seeded = {}         # key -> Request the history holds (whole-read agents)
        self.copies = set()      # keys of renamed copies dropped (copies_renamed)
        self.document_malformed = {}   # path -> malformed records of its latest reading

    def __getstate__(self):      # a worker sends it home: the table entry stays here
        state = dict(self.__dict__)
        del state["spec"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.spec = AGENT_TABLE[self.agent]

    def file_rank(self, path):
        """Which of several files holding equal copies of a response keeps it
        (formats.md section 3): for Claude Code the file whose earliest record is
        oldest, then the smaller path (a resumed session copies its parent's lines);
        for Gemini CLI a .jsonl before the legacy .json it was copied from."""
        if self.spec.rank == "jsonl first":
            return (0.0 if path.endswith(".jsonl") else 1.0), path
        if self.spec.whole:   # a database has no first record: its rows decide alone
            return 0.0, path or ""
        if path is None:            # stored by an older catop: the file is not known
            return math.inf, "\U0010ffff"
        state = self.states.get(path)
        first = state.context.first_ts if state is not None else None
        if first is None:
            first = self.first_ts.get(path)
        if first is None:
            first = self.first_ts[path] = earliest_record_time(path)
        return first, path

    def scan(self, final=True, parallel=True, paths=None, note=True):
        """Reads what is new in every file of the agent (or in paths); note: tell
        of files read from their start that hold no usage record at all."""
        paths = agent_files(self.agent) if paths is None else paths
        if self.spec.copies_by_name:
            self._drop_replaced_copies(paths)
        unread = [p for p in paths if p not in self.states or self.states[p].offset == 0]
        if self.spec.whole:
            self._scan_whole(paths)
        else:
            self._scan_files(paths, final, parallel)
        if note:
            self._note_foreign_format(unread)

    def _drop_replaced_copies(self, paths):
        """A file read before that is no longer listed because another copy of the
        same name now is: what it gave is given by that copy (never twice)."""
        names = set(os.path.basename(path) for path in paths)
        listed = set(paths)
        for path in [p for p in self.states if p not in listed]:
            if os.path.basename(path) in names:
                self.forget(path)
                del self.states[path]

    def _note_foreign_format(self, paths):
        """Files that hold something, none of it a usage record: most likely the
        format of another version of the agent, said in one line, naming a file."""
        if self.keyed or any(self.loose.values()) or self.stats.error:
            return
        held = []
        for path in paths:
            with contextlib.suppress(OSError):
                if os.path.getsize(path) > 0:
                    held.append(path)
        if held:
            self.stats.error = "no %s in %s (%s): written by another version of %s?" % (
                self.spec.expects, counted(len(held), "file"), held[0], self.agent)

    def _scan_files(self, paths, final, parallel):
        fresh = [p for p in paths if p not in self.states]
        workers = worker_count()
        if parallel and workers > 1 and len(fresh) > 1 and \
                _total_size(fresh) >= PARALLEL_MIN_BYTES:
            self._scan_in_workers(fresh, workers)
            paths = [p for p in paths if p not in self.states]
        for path in paths:
            state = self.states.get(path) or FileState(path)
            restarts = state.restarts
            try:
                results, stats = self._scan_one(state, final)
            except OSError as error:
                self.stats.error = "cannot read %s: %s" % (path, error.strerror or error)
                continue
            if state.restarts != restarts:
                self.loose.pop(path, None)  # rewritten from the start: read afresh
            self.states[path] = state
            self.stats.merge(stats)
            self._take(results, path)

    def _scan_in_workers(self, paths, workers):
        """New files read by worker processes one at a time, merged here as they come
        back (no worker holds more than a few files' requests), while this process
        reads every other file itself: one process fewer in memory."""
        mine, theirs = paths[::2], paths[1::2]
        forked = fork_jobs(_scan_file_worker, [(self.agent, path) for path in theirs],
                           workers - 1)
        if forked is None:
            return
        with forked:
            for path in mine:
                state = FileState(path)
                try:
                    results, stats = self._scan_one(state, True)
                except OSError as error:
                    self.stats.error = "cannot read %s: %s" % (path, error.strerror or error)
                    continue
                self.states[path] = state
                self.stats.merge(stats)
                self._take(results, path)
            for part in forked.results():
                self.merge(take_home(part))

    def merge(self, other):
        """Takes in what a worker read from other files of the same agent."""
        self.states.update(other.states)
        self.stats.merge(other.stats)
        self.stats.error = self.stats.error or other.stats.error
        for path, requests in other.loose.items():
            self.loose.setdefault(path, []).extend(requests)
        for session, count in other.compactions.items():
            self.compactions[session] = self.compactions.get(session, 0) + count
        self.compaction_times.extend(other.compaction_times)
        self.version += other.version + 1
        self.first_ts.update(other.first_ts)
        self.document_malformed.update(other.document_malformed)
        for key in other.superseded:
            self._supersede(key)
        for key, req in other.keyed.items():
            self._hold(key, req)
        for key, copies in other.ties.items():
            for req in copies.values():
                if req is not other.keyed[key]:
                    self._hold(key, req, counted=True)

    def _scan_one(self, state, final):
        if self.spec.reads_document(state.path):
            return self._scan_document(state)
        with gc_paused():
            return scan_agent_jsonl(self.agent, state, final)

    def _scan_document(self, state):
        """A whole-document log (read again whole when its size or time changed)."""
        stats = SourceStats("")
        info = os.stat(state.path)
        if (info.st_size, info.st_mtime) == (state.size, state.mtime):
            return [], stats
        if state.mtime is not None:
            self.forget(state.path)   # read before: its requests come again, not twice
        state.size, state.mtime = info.st_size, info.st_mtime
        results, malformed = self.spec.document(state.path, state.context)
        # a document read again counts its malformed records anew, not on top
        stats.skip("malformed", malformed - self.document_malformed.get(state.path, 0))
        self.document_malformed[state.path] = malformed
        return results, stats

    def _take(self, results, path):
        if results:
            self.version += 1
        for session, result in results:
            if type(result) is Compaction:
                self.compactions[session] = self.compactions.get(session, 0) + 1
                self.compaction_times.append((session, result.ts))
                self.stats.compactions += 1
            elif type(result) is Superseded:
                self._supersede((session, result.key) if self.spec.sessions_keyed
                                else result.key)
            elif result == "duplicate":
                self.stats.skip("duplicate")
            elif isinstance(result, Request):
                result.origin = path
                self.loose.setdefault(path, []).append(result)
            else:
                key, req = result
                req.origin = path
                if key is None:   # a Claude Code line without a message id
                    self.loose.setdefault(path, []).append(req)
                    continue
                self._hold((session, key) if self.spec.sessions_keyed else key, req)

    def _supersede(self, key):
        self.superseded.add(key)
        if self.keyed.pop(key, None) is not None:
            self.ties.pop(key, None)
            self.stats.skip("duplicate")

    def _hold(self, key, req, counted=False):
        """Keeps one request per key: the largest (Claude Code writes one response on
        several lines, the early ones partial); of equal ones, within a file the later
        (Gemini CLI rewrites a message, size 0), across files the one file_rank
        prefers, settled in deduplicated() once every file is read, so the answer
        never depends on the order files are read in or on the workers.  counted: the
        copy was counted as a duplicate already (by the part it comes from)."""
        if key in self.superseded:
            if not counted:
                self.stats.skip("duplicate")
            return
        held = self.keyed.get(key)
        if held is not None:
            if not counted:
                self.stats.skip("duplicate")
            size, held_size = _line_size(key, req), _line_size(key, held)
            if size < held_size:
                return
            if size == held_size and req.origin != held.origin:
                self.ties.setdefault(key, {held.origin: held})[req.origin] = req
                return
            if key in self.ties:
                if size > held_size:
                    del self.ties[key]
                else:
                    self.ties[key][req.origin] = req
        self.keyed[key] = req

    def settle_ties(self):
        for key, copies in self.ties.items():
            self.keyed[key] = copies[min(copies, key=self.file_rank)]

    def _scan_whole(self, paths):
        """Every file read again whole, when any of them (or a database's write-ahead
        log, where its newest rows may sit) changed since the last reading.  A file
        that cannot be read now (a database locked) leaves the last reading as it
        was, to be tried again at the next scan; what the history holds stays."""
        signature = []
        for path in paths + [p + "-wal" for p in paths if p.endswith((".db", ".sqlite"))]:
            try:
                info = os.stat(path)
                signature.append((path, info.st_mtime, info.st_size))
            except OSError:
                pass
        if signature == self.whole_signature:
            return
        readings = []
        for path in paths:
            try:
                readings.append((path,) + tuple(self.spec.database(path)))
            except (OSError, ValueError, RecursionError) as error:
                self.stats.error = "cannot read %s: %s" % (path, error)
                self.whole_signature = None
                return
        self.whole_signature = signature
        self.version += 1
        self.keyed, self.loose, self.ties, self.superseded = {}, {}, {}, set()
        self.compactions, self.compaction_times = {}, []
        self.stats = SourceStats(self.stats.name)
        for path, results, malformed in readings:
            self.stats.skip("malformed", malformed)
            self._take(results, path)
        for key, req in self.seeded.items():
            self.keyed.setdefault(key, req)
        if self.spec.copies_renamed:
            self._drop_renamed_copies()

    def _drop_renamed_copies(self):
        """Of requests equal in all but their keys, one counts, the rest are duplicates
        (and a copied summary no compaction of its own): a fork copies its parent's
        messages under new ids (OpenCode, Kilo), into the same database or into files
        of their own, and the parent's may since be gone from the files while the
        history still holds them.  The one stored already counts, else the smallest
        key (ids grow with time; the copy's may still be the smaller one, once the
        ids wrap)."""
        kept, self.copies = set(), set()
        for key in sorted(self.keyed, key=lambda key: (key not in self.seeded, str(key))):
            req = self.keyed[key]
            content = renamed_copy_content(req)
            if content is None:
                continue
            if content in kept:
                del self.keyed[key]
                self.ties.pop(key, None)   # (a copy in two databases: settle_ties keeps none)
                self.copies.add(key)
                self.stats.skip("duplicate")
                self._drop_compaction(req.session, req.ts)
            else:
                kept.add(content)

    def _drop_compaction(self, session, ts):
        if (session, ts) in self.compaction_times:
            self.compaction_times.remove((session, ts))
            self.stats.compactions -= 1
            if self.compactions.get(session, 0) > 1:
                self.compactions[session] -= 1
            else:
                self.compactions.pop(session, None)

    def forget(self, path):
        """Drops what one file gave (a document read again whole gives it anew); a
        copy another file holds stays."""
        self.loose.pop(path, None)
        for key, copies in list(self.ties.items()):
            if path in copies:
                del copies[path]
                if self.keyed[key].origin == path:
                    self.keyed[key] = next(iter(copies.values()))
                if len(copies) < 2:
                    del self.ties[key]
        for key in [key for key, req in self.keyed.items() if req.origin == path]:
            del self.keyed[key]

    def deduplicated(self):
        """(the de-duplicated requests read so far, how many subagent replays of a
        response the parent conversation counted were left out)."""
        self.settle_ties()
        held = [req for requests in self.loose.values() for req in requests]
        replayed = self._replayed_message_ids()
        replays = 0
        for key, req in self.keyed.items():
            if replayed and req.sidechain and key_message_part(key) in replayed:
                replays += 1
            else:
                held.append(req)
        return held, replays

    def _replayed_message_ids(self):
        """Claude Code responses that a subagent file replays and the parent
        conversation counted too.  Worked out when asked, from the few subagent
        responses, rather than kept as a set of every main-conversation id."""
        if not self.spec.subagent_replays:
            return frozenset()
        side = set(key_message_part(key) for key, req in self.keyed.items()
                   if req.sidechain)
        if not side:
            return side
        return set(part for part in (key_message_part(key) for key, req
                                     in self.keyed.items() if not req.sidechain)
                   if part in side)


_RECORD_TIME = re.compile(rb'"timestamp"\s*:\s*"([^"\\]{10,40})"')
EARLIEST_RECORD_BYTES = 1 << 16
NO_RECORD_TIME = 1e308      # a file with no timestamp ranks last (JSON has no inf)


def first_record_time(data):
    """The time of the first record of a file, from its first block (a log is written
    in time order: its first record is its earliest), NO_RECORD_TIME when none."""
    found = _RECORD_TIME.search(data)
    ts = parse_timestamp(found.group(1).decode("ascii", "replace")) if found else None
    return NO_RECORD_TIME if ts is None else ts


def earliest_record_time(path):
    """first_record_time of a file not read from its start in this run."""
    try:
        with open_regular(path) as handle:
            return first_record_time(handle.read(EARLIEST_RECORD_BYTES))
    except OSError:
        return NO_RECORD_TIME


def read_gemini_document(path, ctx):
    """([(session, result)], malformed) of a legacy Gemini CLI session: one JSON
    document with messages[]."""
    try:
        document = json.loads(read_regular(path))
    except (ValueError, RecursionError):
        return [], 1
    results, malformed = [], 0
    if type(document) is dict and type(document.get("messages")) is list:
        ctx.session = str(document.get("sessionId") or "")
        ctx.project = str(document.get("projectHash") or "")
        for message in document["messages"]:
            try:
                result = parse_gemini(message, ctx) if type(message) is dict else None
            except (ValueError, TypeError):
                malformed += 1
                continue
            if result is not None:
                results.append((ctx.session, result))
    return results, malformed


def read_json_file(path):
    return json.loads(read_regular(path))


def open_sqlite_readonly(path):
    """A read-only connection to an agent's SQLite database (a running agent is never
    blocked).  Raises OSError when it cannot be opened."""
    try:
        import sqlite3
    except ImportError:
        raise OSError("this Python has no sqlite3 module")
    from urllib.parse import quote
    try:
        return sqlite3.connect("file:%s?mode=ro" % quote(os.path.abspath(path)), uri=True,
                               timeout=2.0)
    except sqlite3.Error as error:
        raise OSError(str(error))


def sqlite_query(path, query):
    """query(connection) of a database opened read-only, its errors as OSError."""
    import sqlite3
    connection = open_sqlite_readonly(path)
    try:
        try:
            return query(connection)
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise OSError(str(error))


def sqlite_rows(connection, table, wanted):
    """The rows of table as dicts of the wanted columns, a column this version of the
    schema lacks read as None (agents add columns as they go); [] without the table."""
    names = set(row[1] for row in connection.execute("PRAGMA table_info(%s)" % table))
    if not names:
        return []
    select = ", ".join(name if name in names else "NULL" for name in wanted)
    return [dict(zip(wanted, row))
            for row in connection.execute("SELECT %s FROM %s" % (select, table))]


def _parsed_rows(rows, parse, session_of=lambda result: result[1].session):
    """([(session, result)], malformed) of parse(row) over rows (None: no usage)."""
    results, malformed = [], 0
    for row in rows:
        try:
            result = parse(row)
        except (ValueError, TypeError, RecursionError):
            malformed += 1
            continue
        if result is not None:
            results.append((session_of(result), result))
    return results, malformed


def read_opencode_store(path, agent="opencode"):
    """([(session, (message id, Request))], malformed) of an OpenCode (or Kilo)
    database, or of one of OpenCode's legacy message files; a summary reply is a
    compaction.  A forked session copies each message with a new id, the same times
    and tokens, and cost 0: its source counts the first of equal messages (the
    smallest id) and drops the copies, their summaries' compactions too
    (AgentSource._drop_renamed_copies)."""
    if not path.endswith(".db"):
        try:
            message = read_json_file(path)
        except (ValueError, RecursionError):
            return [], 1
        rows = [(None, None, message, None)]
    else:
        def query(connection):
            if not connection.execute("PRAGMA table_info(message)").fetchall():
                return []   # a database made but not yet set up (or emptied): no messages
            sessions = set(row[1] for row in connection.execute("PRAGMA table_info(session)"))
            return connection.execute(
                "SELECT m.id, m.session_id, m.data, %s FROM message m%s ORDER BY m.id" % (
                    ("s.directory", " LEFT JOIN session s ON s.id = m.session_id")
                    if "directory" in sessions else ("NULL", ""))).fetchall()
        rows = sqlite_query(path, query)
    results, malformed = [], 0
    for row_id, session, data, directory in rows:
        try:
            message = json.loads(data) if type(data) is str else data
            result = parse_opencode(message, agent, session or "", directory or "",
                                    row_id or "")
            if result is None:
                continue
        except (ValueError, TypeError, RecursionError):
            malformed += 1
            continue
        session = result[1].session
        results.append((session, result))
        if message.get("summary") is True:    # the reply that summarized the context
            results.append((session, Compaction(result[1].ts)))
    return results, malformed


def _read_json_document(path, limit=READ_LIMIT_BYTES):
    """A JSON document, or None when it is not one (counted malformed)."""
    try:
        return json.loads(read_regular(path, limit))
    except (ValueError, RecursionError):
        return None


def _amp_project(document):
    env = document.get("env")
    initial = env.get("initial") if type(env) is dict else None
    trees = initial.get("trees") if type(initial) is dict else None
    for tree in trees if type(trees) is list else ():
        uri = tree.get("uri") if type(tree) is dict else None
        if type(uri) is str and uri.startswith("file://"):
            return uri[len("file://"):]
    return ""


def read_amp_thread(path, ctx):
    """([(thread, (messageId, Request))], malformed) of one Amp thread document.  A
    request is an assistant message with usage (Anthropic-style: input exclusive of
    both cache figures), or an event of the older usageLedger; an event naming a
    message with usage is that same request, so each messageId counts once."""
    document = _read_json_document(path)
    if type(document) is not dict or type(document.get("id")) is not str:
        return [], 1
    thread = ctx.session = document["id"]
    project = ctx.project = _amp_project(document)
    messages = document.get("messages") if type(document.get("messages")) is list else []
    ledger = document.get("usageLedger")
    events = ledger.get("events") if type(ledger) is dict else None
    by_message, loose_events = {}, []
    for event in events if type(events) is list else ():
        if type(event) is dict:
            if type(event.get("toMessageId")) is int:
                by_message[event["toMessageId"]] = event
            else:
                loose_events.append(event)
    results, malformed, seen = [], 0, set()
    for message in messages:
        if type(message) is not dict or message.get("role") != "assistant" or \
                type(message.get("usage")) is not dict:
            continue
        usage = message["usage"]
        message_id = message.get("messageId")
        event = by_message.get(message_id) if type(message_id) is int else None
        event = event or {}
        try:
            miss, read = as_count(usage.get("inputTokens") or 0), \
                as_count(usage.get("cacheReadInputTokens") or 0)
            write = as_count(usage.get("cacheCreationInputTokens") or 0)
            output = as_count(usage.get("outputTokens") or 0)
        except ValueError:
            malformed += 1
            continue
        if not (miss or read or write or output):
            continue
        model = str(usage.get("model") or event.get("model") or "unknown")
        seen.add(message_id)
        results.append((thread, (str(message_id), Request(
            parse_timestamp(usage.get("timestamp") or message.get("timestamp")
                            or event.get("timestamp")), "amp", infer_provider(model),
            _text(model), _text(project), _text(thread), miss, read, write, 0, output))))
    for event in [e for k, e in by_message.items() if k not in seen] + loose_events:
        tokens = event.get("tokens")
        if type(tokens) is not dict:
            continue
        try:
            miss, output = as_count(tokens.get("input") or 0), as_count(tokens.get("output") or 0)
        except ValueError:
            malformed += 1
            continue
        if not (miss or output):
            continue
        model = str(event.get("model") or "unknown")
        key = str(event["toMessageId"]) if type(event.get("toMessageId")) is int \
            else "ledger:%s" % (event.get("id") or _content_key(event))
        results.append((thread, (key, Request(
            parse_timestamp(event.get("timestamp")), "amp", infer_provider(model),
            _text(model), _text(project), _text(thread), miss, 0, 0, 0, output))))
    return results, malformed


_DROID_FIELDS = ("inputTokens", "cacheReadTokens", "cacheCreationTokens", "outputTokens",
                 "thinkingTokens")


def _droid_counts(settings):
    usage = settings.get("tokenUsage") if type(settings) is dict else None
    if type(usage) is not dict:
        return None
    return tuple(as_count(usage.get(key) or 0) for key in _DROID_FIELDS)


def _droid_cwd(settings_path):
    """A session's cwd, from the first line (session_start) of its .jsonl beside it."""
    try:
        with open_regular(settings_path[:-len(".settings.json")] + ".jsonl") as handle:
            first = json.loads(handle.readline(1 << 16) or b"{}")
    except (OSError, ValueError, RecursionError):
        return ""
    return str(first.get("cwd") or "") if type(first) is dict and \
        first.get("type") == "session_start" else ""


def read_droid_settings(path, ctx):
    """([(session, (session, Request))], malformed) of a Droid <session>.settings.json:
    one running total of the session's own usage (tokenUsage; never
    inclusiveTokenUsage, which adds child sessions that have files of their own).
    Thinking tokens sit beside the output."""
    session = os.path.basename(path)[:-len(".settings.json")]
    settings = _read_json_document(path, 1 << 20)
    try:
        counts = _droid_counts(settings)
    except ValueError:
        counts = None
    if type(settings) is not dict or counts is None and "tokenUsage" in settings:
        return [], 1
    if counts is None or not any(counts):
        return [], 0
    miss, read, write, output, thinking = counts
    ts = parse_timestamp(settings.get("providerLockTimestamp"))
    if ts is None:
        with contextlib.suppress(OSError):
            ts = os.path.getmtime(path)
    model = str(settings.get("model") or "unknown")
    provider = str(settings.get("providerLock") or infer_provider(model)).lower()
    ctx.session, ctx.project = session, _droid_cwd(path)
    return [(session, (session, Request(
        ts, "droid", provider, _text(model), _text(ctx.project), _text(session), miss, read,
        write, 0, output + thinking, thinking)))], 0


def _codebuff_usage(usage):
    """(miss, read, write, output, reasoning, cost) of a Codebuff usage object, or
    None: camelCase inputTokens is Anthropic-style (the cache beside it); OpenRouter's
    prompt_tokens includes its cached_tokens, completion_tokens its reasoning."""
    if type(usage) is not dict:
        return None

    def count(key):
        return as_count(usage.get(key) or 0)
    if "prompt_tokens" in usage or "promptTokens" in usage:
        prompt = count("prompt_tokens") or count("promptTokens")
        details = usage.get("prompt_tokens_details") or usage.get("promptTokensDetails")
        cached = as_count(details.get("cached_tokens") or details.get("cachedTokens") or 0) \
            if type(details) is dict else 0
        out_details = usage.get("completion_tokens_details")
        reasoning = as_count(out_details.get("reasoning_tokens") or 0) \
            if type(out_details) is dict else 0
        output = count("completion_tokens") or count("completionTokens")
        cached = min(cached, prompt)
        tokens = (prompt - cached, cached, 0, output, min(reasoning, output))
    else:
        tokens = (count("inputTokens") or count("input_tokens"),
                  count("cacheReadInputTokens") or count("cache_read_input_tokens"),
                  count("cacheCreationInputTokens") or count("cache_creation_input_tokens"),
                  count("outputTokens") or count("output_tokens"), 0)
    return tokens + (as_money(usage.get("cost")),) if any(tokens[:4]) else None


def _codebuff_last_step(metadata):
    """(model, usage) of the newest assistant step of metadata.runState, whose
    history replays the whole chat: only its last assistant entry is this reply's."""
    state = metadata.get("runState")
    for key in ("sessionState", "mainAgentState", "messageHistory"):
        state = state.get(key) if type(state) is dict else None
    for entry in reversed(state if type(state) is list else []):
        if type(entry) is dict and entry.get("role") == "assistant":
            options = entry.get("providerOptions")
            codebuff = options.get("codebuff") if type(options) is dict else None
            if type(codebuff) is dict:
                return codebuff.get("model"), codebuff.get("usage")
            break
    return None, None


def _codebuff_chat_time(chat_id):
    """2026-03-11T14-30-00.000Z (a chat's start, ':' written as '-') as epoch s."""
    date, sep, clock = chat_id.partition("T")
    return parse_timestamp(date + sep + clock.replace("-", ":", 2)) if sep else None


def read_codebuff_chat(path, ctx):
    """([(session, (message id, Request))], malformed) of a Codebuff
    chat-messages.json; its session is project/chat."""
    chat_dir = os.path.dirname(path)
    chat_id = os.path.basename(chat_dir)
    project = ctx.project = os.path.basename(os.path.dirname(os.path.dirname(chat_dir)))
    session = ctx.session = "%s/%s" % (project, chat_id)
    messages = _read_json_document(path)
    if type(messages) is not list:
        return [], 1
    last_ts = _codebuff_chat_time(chat_id)   # a reply without a time: after its prompt
    results, malformed = [], 0
    for ordinal, message in enumerate(messages):
        if type(message) is not dict:
            continue
        ts = parse_timestamp(message.get("timestamp"))
        ts = last_ts = ts if ts is not None else last_ts
        if message.get("variant", message.get("role")) not in ("ai", "agent", "assistant"):
            continue
        metadata = message.get("metadata") if type(message.get("metadata")) is dict else {}
        model = metadata.get("model")
        try:
            tokens = _codebuff_usage(metadata.get("usage"))
            if tokens is None and type(metadata.get("codebuff")) is dict:
                tokens = _codebuff_usage(metadata["codebuff"].get("usage"))
            if tokens is None:
                step_model, step_usage = _codebuff_last_step(metadata)
                tokens, model = _codebuff_usage(step_usage), model or step_model
        except ValueError:
            malformed += 1
            continue
        if tokens is None:
            continue
        miss, read, write, output, reasoning, cost = tokens
        model = str(model or "unknown")
        provider, _, bare = model.rpartition("/")
        results.append((session, (str(message.get("id") or "#%d" % ordinal), Request(
            ts, "codebuff", provider or infer_provider(model), _text(bare or model),
            _text(project), _text(session), miss, read, write, 0, output, reasoning, cost))))
    return results, malformed


def _db_count(value):
    """A counter of an agent's database: NULL is 0; text or a negative raises ValueError."""
    if value is None:
        return 0
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int:
        raise ValueError("not a count: %r" % (value,))
    return as_count(value)


_HERMES_SESSION_COLUMNS = ("id", "model", "started_at", "input_tokens", "output_tokens",
                           "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
                           "cwd", "billing_provider", "estimated_cost_usd", "actual_cost_usd")
_HERMES_ROUTE_COLUMNS = ("session_id", "model", "billing_provider", "billing_base_url",
                         "billing_mode", "task", "input_tokens", "output_tokens",
                         "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
                         "estimated_cost_usd", "actual_cost_usd", "first_seen")
_HERMES_COUNTERS = ("input_tokens", "output_tokens", "cache_read_tokens",
                    "cache_write_tokens", "reasoning_tokens")


def _hermes_cost(row):
    """The cost a row records: the billed one, else Hermes' own estimate (as its
    usage_totals() does); 0 or NULL is none."""
    for column in ("actual_cost_usd", "estimated_cost_usd"):
        if row[column] is not None and as_money(row[column]):
            return as_money(row[column])
    return None


def _hermes_request(row, model, ts, project, session, thread=""):
    miss, output, read, write, reasoning = (_db_count(row[c]) for c in _HERMES_COUNTERS)
    provider = str(row["billing_provider"] or "").strip().lower() or infer_provider(model)
    return Request(ts, "hermes", provider, _text(model), _text(project), _text(session), miss,
                   read, write, 0, output, min(reasoning, output), _hermes_cost(row),
                   bool(thread), thread)


def _hermes_route_key(route):
    return ":".join(str(route[c] or "") for c in ("model", "billing_provider",
                                                   "billing_base_url", "billing_mode"))


def hermes_session_request(row):
    """("session", Request) of one Hermes sessions row: its lifetime
    counters (input exclusive of the cache, reasoning inside output), at the
    session's start and first model; None before it reached a model.  (Its per-model
    rows in session_model_usage repeat these counters: they are not added.)"""
    model = row["model"].strip() if type(row["model"]) is str else ""
    if not model:
        return None
    if type(row["started_at"]) not in (int, float):
        raise ValueError("started_at is not a number")
    req = _hermes_request(row, model, parse_timestamp(row["started_at"]), row["cwd"] or "",
                          row["id"])
    return ("session", req) if req.input or req.output else None


def read_hermes_state(path):
    """([(session, (key, Request))], malformed) of one Hermes state.db: every session,
    and the auxiliary calls (titles, compression, ...) session_model_usage alone
    records, each a thread of its own (not the session's cache).  One key a session
    whatever its rows say, so that a session growing is never counted twice."""
    def query(connection):
        return (sqlite_rows(connection, "sessions", _HERMES_SESSION_COLUMNS),
                sqlite_rows(connection, "session_model_usage", _HERMES_ROUTE_COLUMNS))
    sessions, routes = sqlite_query(path, query)
    results, malformed = _parsed_rows(sessions, hermes_session_request)
    starts = dict((req.session, req.ts) for _, (_, req) in results)

    def auxiliary(route):
        if not route["task"]:
            return None
        first = route["first_seen"]
        ts = parse_timestamp(first) if type(first) in (int, float) else \
            starts.get(_text(route["session_id"]))
        req = _hermes_request(route, route["model"] or "unknown", ts, "", route["session_id"],
                              _text(route["task"]))
        if not (req.input or req.output):
            return None
        return "aux:%s:%s" % (route["task"], _hermes_route_key(route)), req
    more, bad = _parsed_rows(routes, auxiliary)
    return results + more, malformed + bad


_GOOSE_COLUMNS = ("id", "name", "session_type", "working_dir", "created_at", "total_tokens",
                  "input_tokens", "output_tokens", "accumulated_total_tokens",
                  "accumulated_input_tokens", "accumulated_output_tokens", "provider_name",
                  "model_config_json", "accumulated_cost")


def _goose_counter(row, name):
    """The lifetime counter, else (a legacy imported row) the last turn's."""
    value = _db_count(row["accumulated_" + name])
    return value if value > 0 else _db_count(row[name])


def goose_session_request(row):
    """(session, Request) of one Goose sessions row: its lifetime totals.  Goose's
    input includes the cache reads and writes and stores no split, so all of it is
    miss; a Gemini model's thoughts are the total's rest, beside the output."""
    config = row["model_config_json"]
    config = json.loads(config) if config and str(config).strip() else {}
    model = str((config.get("model_name") if type(config) is dict else None) or "unknown")
    miss, output = _goose_counter(row, "input_tokens"), _goose_counter(row, "output_tokens")
    total = _goose_counter(row, "total_tokens") or miss + output
    if not (miss or output or total):
        return None
    thoughts = max(0, total - miss - output)
    cost = row["accumulated_cost"]
    sub = row["session_type"] == "sub_agent"
    session = _text(row["id"])
    return session, Request(
        parse_timestamp(str(row["created_at"] or "")), "goose",
        str(row["provider_name"] or "").strip().lower() or infer_provider(model), _text(model),
        _text(row["working_dir"] or ""), session, miss, 0, 0, 0, output + thoughts, thoughts,
        as_money(cost) if cost is not None and as_money(cost) > 0 else None, sub,
        session if sub else "")


def read_goose_sessions(path):
    """([(session, (session, Request)) or (session, "duplicate")], malformed) of
    Goose's sessions.db.  `goose session import` makes a new row (new id and time)
    with the counters it exported: the same usage again, so of equal rows (model,
    provider, folder, name and counters) the earliest counts."""
    rows = sqlite_query(path, lambda connection: sqlite_rows(connection, "sessions",
                                                             _GOOSE_COLUMNS))
    rows.sort(key=lambda row: (str(row["created_at"] or ""), str(row["id"])))
    results, malformed, seen = [], 0, set()
    for row in rows:
        try:
            result = goose_session_request(row)
        except (ValueError, TypeError, RecursionError):
            malformed += 1
            continue
        if result is None:
            continue
        req = result[1]
        content = (req.model, req.provider, req.project, str(row["name"] or ""), req.miss,
                   req.output, req.reasoning)
        results.append((req.session, "duplicate" if content in seen else result))
        seen.add(content)
    return results, malformed


_ZCODE_COLUMNS = ("id", "session_id", "started_at", "model_id", "provider_id", "input_tokens",
                  "output_tokens", "reasoning_tokens", "cache_creation_input_tokens",
                  "cache_read_input_tokens", "computed_total_tokens", "status")
_ZCODE_PLAN_PROVIDERS = ("builtin:zai-coding-plan", "builtin:bigmodel-coding-plan")


def zcode_request(row, directories):
    """(row id, Request) of one completed call of ZCode's model_usage ledger: its
    input holds both cache slices; reasoning is inside the output unless the row's
    own total counts it beside."""
    if row["status"] != "completed":
        return None
    prompt, output = _db_count(row["input_tokens"]), _db_count(row["output_tokens"])
    reasoning = _db_count(row["reasoning_tokens"])
    read = min(_db_count(row["cache_read_input_tokens"]), prompt)
    created = min(_db_count(row["cache_creation_input_tokens"]), prompt - read)
    if reasoning and _db_count(row["computed_total_tokens"]) >= prompt + output + reasoning:
        output += reasoning
    model = str(row["model_id"] or "").strip()
    if not (prompt or output) or not model:
        return None
    provider = str(row["provider_id"] or "")
    if provider in _ZCODE_PLAN_PROVIDERS or provider.startswith("builtin:z") or \
            infer_provider(model) == "unknown" and model.lower().startswith("glm"):
        provider = "zai"
    else:
        provider = infer_provider(model)
    session = _text(row["session_id"] or "")
    return str(row["id"]), Request(
        parse_timestamp(row["started_at"]), "zcode", provider, _text(model),
        _text(directories.get(row["session_id"]) or ""), session, prompt - read - created,
        read, created, 0, output, min(reasoning, output))


def read_zcode_database(path):
    """([(session, (row id, Request))], malformed) of ZCode's db.sqlite (its per-turn
    sums in turn_usage are the same tokens again: not read)."""
    def query(connection):
        if not {"id", "model_id", "status"} <= set(
                row[1] for row in connection.execute("PRAGMA table_info(model_usage)")):
            raise OSError("not a ZCode usage database (no model_usage table)")
        return (sqlite_rows(connection, "model_usage", _ZCODE_COLUMNS),
                dict((row["id"], row["directory"]) for row in
                     sqlite_rows(connection, "session", ("id", "directory"))))
    rows, directories = sqlite_query(path, query)
    return _parsed_rows(rows, lambda row: zcode_request(row, directories))


# Antigravity keeps a SQLite database a conversation, its model calls in protobuf
# blobs (field numbers as ccusage reads them: Antigravity's code is not public).

def protobuf_fields(blob):
    """[(field number, value)] of one protobuf message: an int for a varint, bytes
    for a length-delimited field, None for a fixed one; ValueError when malformed."""
    fields, i, end = [], 0, len(blob)

    def varint():
        nonlocal i
        value = shift = 0
        while True:
            if i >= end or shift > 63:
                raise ValueError("truncated varint")
            byte = blob[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value
    while i < end:
        tag = varint()
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field 0")
        if wire == 0:
            value = varint()
        elif wire == 2:
            length = varint()
            if i + length > end:
                raise ValueError("truncated bytes")
            value, i = bytes(blob[i:i + length]), i + length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            if i > end:
                raise ValueError("truncated fixed field")
            value = None
        else:
            raise ValueError("wire type %d" % wire)
        fields.append((number, value))
    return fields


def _pb_int(fields, number):
    found = [value for n, value in fields if n == number and type(value) is int]
    return found[-1] if found else 0


def _pb_bytes(fields, number):
    return [value for n, value in fields if n == number and type(value) is bytes]


def _pb_text(fields, number):
    for value in reversed(_pb_bytes(fields, number)):
        text = value.decode("utf-8", "replace").strip()
        if text:
            return text
    return ""


def _pb_time(blob):
    fields = protobuf_fields(blob)
    seconds = _pb_int(fields, 1)
    return seconds + min(_pb_int(fields, 2), 999999999) / 1e9 if 0 < seconds <= TS_MAX \
        else None


_ANTIGRAVITY_MODEL_IDS = {      # ModelUsageStats.model ids, as ccusage names them
    246: "gemini-2.5-pro", 312: "gemini-2.5-flash", 313: "gemini-2.5-flash",
    329: "gemini-2.5-flash", 330: "gemini-2.5-flash-lite", 281: "claude-sonnet-4",
    282: "claude-sonnet-4", 290: "claude-opus-4", 291: "claude-opus-4",
    333: "claude-sonnet-4-5", 334: "claude-sonnet-4-5", 340: "claude-haiku-4-5",
    341: "claude-haiku-4-5", 342: "gpt-oss-120b"}


def antigravity_model(name, model_id):
    """A price-map name from a display name ("Claude Sonnet 4.5 (Thinking)"), else
    from the numeric model id."""
    base = name.split("(", 1)[0].strip().lower()
    if base:
        return dashed_claude(re.sub(r"\s+thinking$", "", base).replace(" ", "-"))
    return _ANTIGRAVITY_MODEL_IDS.get(model_id, "antigravity-model-%d" % model_id
                                      if model_id else "unknown")


def _antigravity_usage(blob, ts, model, session):
    """(key, Request) of one ModelUsageStats (input exclusive of the cache; output,
    field 3, holds the thinking, field 9), or None without tokens.  One call sits in
    its step, its generation and its retries alike: keyed by its response id."""
    fields = protobuf_fields(blob)
    prompt, total_out, write, read = (_pb_int(fields, n) for n in (2, 3, 4, 5))
    thinking = _pb_int(fields, 9)
    output = max(total_out, _pb_int(fields, 10) + thinking)
    if not (prompt or output or write or read):
        return None
    identity = _pb_text(fields, 11) or _pb_text(fields, 12) or _pb_text(fields, 7) or \
        _content_key(session, ts, blob.hex())
    if model == "unknown":
        model = antigravity_model("", _pb_int(fields, 1))
    return "%x" % _stable_hash(identity), Request(
        ts, "antigravity", infer_provider(model), _text(model), "", _text(session),
        as_count(prompt), as_count(read), as_count(write), 0, as_count(output),
        as_count(min(thinking, output)))


def _antigravity_rows(connection):
    tables = set(row[0] for row in connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"))
    if "gen_metadata" not in tables:
        return None
    gens = connection.execute("SELECT data FROM gen_metadata ORDER BY idx").fetchall()
    steps = connection.execute("SELECT metadata FROM steps WHERE metadata IS NOT NULL "
                               "ORDER BY idx").fetchall() if "steps" in tables else []
    trajectory = connection.execute(
        "SELECT data FROM trajectory_metadata_blob ORDER BY rowid LIMIT 1").fetchall() \
        if "trajectory_metadata_blob" in tables else []
    return gens, steps, trajectory


def _antigravity_generation(blob, model):
    """(usage blobs, time blobs, model) of a gen_metadata row (1 -> 4, retries 17)."""
    chat = _pb_bytes(protobuf_fields(blob), 1)
    if not chat:
        raise ValueError("no ChatModelMetadata")
    chat = protobuf_fields(chat[0])
    info = _pb_bytes(chat, 9)
    name, model_id = _pb_text(chat, 19) or _pb_text(chat, 21), _pb_int(chat, 3)
    return (_pb_bytes(chat, 4), _pb_bytes(chat, 17),
            _pb_bytes(protobuf_fields(info[0]), 4) if info else [],
            antigravity_model(name, model_id) if name or model_id else model)


def _antigravity_step(blob, model):
    """(usage blobs, retry blobs, time blobs, model) of a steps row (9, retries 28)."""
    fields = protobuf_fields(blob)
    info = _pb_bytes(fields, 24)
    info = protobuf_fields(info[0]) if info else []
    return (_pb_bytes(fields, 9), _pb_bytes(fields, 28),
            _pb_bytes(fields, 8) or _pb_bytes(fields, 1),
            antigravity_model(_pb_text(info, 12) or _pb_text(info, 8), _pb_int(info, 1))
            if info else model)


def read_antigravity_database(path):
    """([(session, (key, Request))], malformed) of one Antigravity conversation."""
    session = os.path.splitext(os.path.basename(path))[0]
    found = sqlite_query(path, _antigravity_rows)
    if found is None:
        return [], 1     # not a conversation (a database never initialized)
    gens, steps, trajectory = found
    fallback_ts = None
    with contextlib.suppress(ValueError, IndexError, TypeError):
        fallback_ts = _pb_time(_pb_bytes(protobuf_fields(trajectory[0][0]), 2)[0])
    if fallback_ts is None:
        fallback_ts = os.path.getmtime(path)
    model = "unknown"   # the conversation's: its last generation that names one
    for (blob,) in gens:
        with contextlib.suppress(ValueError, TypeError):
            model = _antigravity_generation(blob, model)[3]
    results, malformed = [], 0
    for read, (blob,) in [(_antigravity_step, row) for row in steps] + \
            [(_antigravity_generation, row) for row in gens]:
        try:
            usages, retries, times, row_model = read(blob, model)
            ts = (_pb_time(times[0]) if times else None) or fallback_ts
            for usage in usages[:1] + [u for retry in retries
                                       for u in _pb_bytes(protobuf_fields(retry), 2)[:1]]:
                result = _antigravity_usage(usage, ts, row_model, session)
                if result is not None:
                    results.append((session, result))
        except (ValueError, TypeError):
            malformed += 1
    return results, malformed


def scan_agent(name, aggregate):
    """Reads one agent's logs into aggregate; returns its SourceStats."""
    source = AgentSource(name)
    source.scan()
    ordered, replays = source.deduplicated()
    source.stats.skip("duplicate", replays)
    for session, ts in source.compaction_times:
        if ts is not None:
            aggregate.effects.compactions.setdefault(session, []).append(ts)
    # in time order: what a request did to the cache is judged from the next one
    ordered.sort(key=request_order)
    source.keyed.clear()  # the sorted list holds them now: halve the peak memory
    source.loose.clear()
    for req in ordered:
        source.stats.records += 1
        aggregate.add(req)
    return source.stats


# live sources: each polls for what is new and says whether anything changed

class LiveSource(object):
    """What the live model asks of every source.

    poll(rediscover) reads what is new and says whether anything changed; requests is
    every request held so far; generation grows when they were thrown away and read
    anew (None: the list is worked out afresh at each change, so the model rebuilds);
    stats is a SourceStats; compaction_times() the (session, ts) seen; resume(history)
    brings the history up to date from this source and starts where it stopped
    (returns the history label it reads, or None); close() frees what it holds."""

    generation = 0

    def poll(self, rediscover=False):
        raise NotImplementedError

    def compaction_times(self):
        return ()

    def resume(self, history):
        return None

    def forget_history(self):
        """Drops what resume() took from a history that then failed."""

    def store(self, history):
        """Brings the history up to date with this source (nothing for sources the
        history does not keep)."""

    def read_head(self):
        """The (length, hash) of the first bytes this source has read of its file, for
        settle; None when it reads no file."""
        return None

    def settle(self, readers):
        """Called once every source has been polled, with {read_head(): [sources]}: True
        when, in the light of what the others read, this one let go of requests (its
        generation then grows)."""
        return False

    def finish(self):
        """Reads what is still pending (a last line without its newline), as a
        snapshot reads it: called once, when watching ends (--once --duration)."""

    def close(self):
        pass


class LiveFileSource(LiveSource):
    """A request-log file, tailed: only appended bytes are read; a partial last line
    waits for its newline; a truncated or replaced file is read again from the start.

    What a file held before it started over is kept (those requests happened), as a
    Held part: when another log tailed beside it (peers) turns out to be that file,
    renamed or copied away by a rotation, it takes those requests over and reads on
    from where they end, as the history does (History.adopt_rotated)."""

    def __init__(self, path, peers=None, found_later=False):
        self.path = path
        self.found_later = found_later   # by a FolderWatch: maybe a peer's rotated copy
        self.state = FileState(path)
        self.stats = SourceStats("file:%s" % path)
        self.requests = []
        self.generation = 0      # grows when the requests so far are thrown away
        self.held = []           # [Held] of what the file held before each start over
        self.peers = peers if peers is not None else []
        self.peers.append(self)

    def resume(self, history):
        if not history_can_name(self.path):
            return None   # tailed without the history (collect_sources says so)
        ingest_request_file(history, self.path, SourceStats(""))
        seed_file_source(self, history)
        return log_label(self.path)

    def forget_history(self):
        self.peers.remove(self)
        self.__init__(self.path, self.peers, self.found_later)

    def store(self, history):
        if history_can_name(self.path):
            ingest_request_file(history, self.path, SourceStats(""))

    def finish(self):
        scan_request_lines([self.state.lines.tail()], self.stats, self.requests.append)

    def poll(self, rediscover=False):
        fresh, stats, generation = [], SourceStats(self.stats.name), self.generation
        try:
            self._check_identity()
            for block in () if self._read_by_peer() else read_new_blocks(self.state, False):
                scan_request_lines(block.split(b"\n"), stats, fresh.append)
        except OSError as error:
            changed = self.stats.error is None
            self.stats.error = "unreadable: %s" % (error.strerror or error)
            return changed
        recovered = self.stats.error is not None
        self.stats.error = None
        stats.skip("malformed", self.state.lines.oversized)
        self.state.lines.oversized = 0
        # A file started over (rotated, truncated, refilled) keeps what it held before:
        # those requests happened, and the history keeps them too (its keys count restarts).
        self.stats.merge(stats)
        self.requests.extend(fresh)
        # (a part a peer counted, let go of when the file started over: a change too)
        return bool(fresh) or recovered or any(stats.skipped.values()) or \
            self.generation != generation

    def _check_identity(self):
        """check_file_identity, keeping what the file held as a Held part when it starts
        over, and taking over a peer's part that the file now read from its start is."""
        state = self.state
        read = self._read_so_far()   # (its Held made only when the file starts over)
        info = os.stat(self.path)
        check_file_identity(state, info, from_start=True)
        before = self._part(read) if state.restarts != read[-1] else None
        if before is not None and read[:2] != (state.device, state.inode) and \
                os.path.islink(self.path):
            self._let_go_of_current(before)   # a link pointed elsewhere names that file
            before = None                     # now, as --once and the history read it
        if before is not None:   # (settle lets go of it if a peer has read it too)
            self.held.append(before)
        # a log found in a watched folder later may be a peer's rotated copy: looked for
        # at its first reading (at the start, no peer can have started over yet)
        if (before is not None or self.found_later and read[0] is None) and \
                state.offset == 0 and info.st_size:
            self._adopt(info)

    def _read_by_peer(self):
        """Whether this name is a link to a file a peer tails, under its own name (or as
        an earlier link): read there, once.  (A link pointed at a log tailed already;
        what it read before stays held, for that file's own name to take over.)"""
        if not os.path.islink(self.path):
            return False
        identity, earlier = (self.state.device, self.state.inode), True
        for peer in self.peers:
            if peer is self:
                earlier = False
            elif (peer.state.device, peer.state.inode) == identity and \
                    peer.stats.error is None and (earlier or not os.path.islink(peer.path)):
                return True
        return False

    def _let_go_of_current(self, part):
        """Drops the requests of the part read last (a name that no longer names it)."""
        self._take_out(len(self.requests) - part.count, part.count)

    def _read_so_far(self):
        state = self.state   # (its context object itself: reset() makes a new one)
        return (state.device, state.inode, state.offset, state.head, state.tail,
                state.context, len(self.requests) - sum(part.count for part in self.held),
                state.restarts)

    def _current_part(self):
        return self._part(self._read_so_far())

    @staticmethod
    def _part(read):
        """The Held part of what _read_so_far saw; None when nothing was read."""
        device, inode, offset, head, tail, context, count, restarts = read
        if device is None or not offset:
            return None
        return Held((device, inode), offset, head, tail, context_json(context), count, restarts)

    def _adopt(self, info):
        heads = {}
        for peer in self.peers:
            if peer is self:
                continue
            state = peer.state
            current = (peer._current_part() if state.device is not None and state.offset and
                       holds_from_start(self.path, info, state.offset, state.head,
                                        state.tail, heads) else None)
            for part in peer.held + ([current] if current is not None else []):
                if not holds_from_start(self.path, info, part.offset, part.head, part.tail,
                                        heads) or (part is current and still_holds(
                                            peer.path, part.identity, part.head, part.tail)):
                    continue
                self.requests.extend(peer._give_away(part, part is current))
                self.stats.records += part.count
                state = self.state
                state.device, state.inode = info.st_dev, info.st_ino
                state.lines, state.head, state.tail = LineReader(part.offset), part.head, part.tail
                restore_context(state.context, part.context)
                return

    def _copied_by_peer(self, part, peers):
        """Whether one of peers has read a file that begins with part (a copy of this
        log, counted on its own while both held the lines).  A peer is read again only
        once it has read more, or another file, since it was last found not to."""
        if part.head is None or part.tail is None:
            return False
        for peer in peers:
            state = peer.state
            if peer is self or state.device is None or state.offset < part.offset or \
                    state.head != part.head:
                continue
            mark = (state.device, state.inode, state.offset, state.restarts)
            if part.checked.get(peer) == mark:
                continue
            try:
                if holds_from_start(peer.path, os.stat(peer.path), part.offset, part.head,
                                    part.tail, {}):
                    return True
            except OSError:
                continue
            part.checked[peer] = mark
        return False

    def read_head(self):
        return self.state.head if self.state.device is not None else None

    def settle(self, readers):
        """Lets go of what it held before it started over that a peer has read since (a
        copy read to its end only after this log was truncated, or polled after it):
        the peer counts those requests, once, as a reading of the files does now.
        readers: {first bytes read: [sources]}, so a part costs a look-up, not a walk."""
        copied = [part for part in self.held if part.head is not None and self._copied_by_peer(
            part, [peer for peer in readers.get(part.head, ()) if peer.peers is self.peers])]
        for part in copied:
            self._give_away(part, False)
        return bool(copied)

    def _give_away(self, part, current):
        """The requests of one of its parts, taken out (the peer's view is rebuilt); its
        file, when that was its current part, is read afresh from its start."""
        start = 0
        for held in self.held:
            if held is part:
                break
            start += held.count
        taken = self._take_out(start, part.count)
        if current:
            self.state = FileState(self.path)
        else:
            self.held.remove(part)
        return taken

    def _take_out(self, start, count):
        """The count requests from start, taken out of what it counts."""
        taken = self.requests[start:start + count]
        del self.requests[start:start + count]
        self.stats.records -= count
        self.generation += 1
        return taken

    def compaction_times(self):
        return ()


class Held(object):
    """What a tailed log held before it started over: its file's identity, how far it
    was read (offset, first and last bytes), its context, its requests' count."""

    __slots__ = ("identity", "offset", "head", "tail", "context", "count", "restarts",
                 "checked")

    def __init__(self, identity, offset, head, tail, context, count, restarts):
        self.identity, self.offset, self.head, self.tail = identity, offset, head, tail
        self.context, self.count, self.restarts = context, count, restarts
        self.checked = {}   # peer -> its read state when it was found not to hold this


class LiveStreamSource(LiveSource):
    """Standard input (or any descriptor), read without blocking as lines arrive."""

    def __init__(self, fd, name="stdin"):
        self.fd = fd
        self.reader = LineReader()
        self.stats = SourceStats(name)
        self.requests = []
        self.generation = 0
        self.closed = False

    def poll(self, rediscover=False):
        import select
        changed = False
        while not self.closed:
            ready, _, _ = select.select([self.fd], [], [], 0)
            if not ready:
                break
            data = os.read(self.fd, READ_BLOCK_BYTES)
            if not data:
                self.closed = True
                lines = [self.reader.finish()]
            else:
                lines = self.reader.feed(data)
            before = self.stats.records
            scan_request_lines(lines, self.stats, self.requests.append)
            self.stats.skipped["malformed"] += self.reader.oversized
            self.reader.oversized = 0
            changed = changed or self.stats.records != before or bool(lines)
        return changed

    def compaction_times(self):
        return ()

    def finish(self):
        if not self.closed:
            scan_request_lines([self.reader.tail()], self.stats, self.requests.append)


DISCOVERY_INTERVAL_S = 5.0   # how often a watched folder is looked at for new logs


class FolderWatch(object):
    """The folders --file names, looked at again while their logs are tailed: a log
    that appears in one later (the next day's file, a rotated copy) is tailed from its
    start beside the others, as a --once run over the folder reads it then.  A rotated
    copy is a peer of its log: it takes over what the log held (LiveFileSource._adopt),
    never counts it twice.  A name for a file a source tails now (a link to it) is
    not tailed again, as --once reads one file once, and is looked at again each time:
    the link may be pointed elsewhere."""

    def __init__(self, folders, sources, clock=time.time):
        self.folders = list(folders)
        self.clock = clock
        self.looked_at = clock()
        files = [source for source in sources if isinstance(source, LiveFileSource)]
        self.peers = files[0].peers if files else []   # every tailed log, found ones too
        self.tailed = {source.path for source in files}
        self.real_paths = {}   # path -> its real path, of a name that is not a link

    def _real_path(self, path):
        if os.path.islink(path):
            return os.path.realpath(path)
        real = self.real_paths.get(path)
        if real is None:
            real = self.real_paths[path] = os.path.realpath(path)
        return real

    def new_sources(self, rediscover=False):
        """LiveFileSources of the logs not tailed yet (looked for every few seconds)."""
        now = self.clock()
        if not self.folders or not rediscover and now - self.looked_at < DISCOVERY_INTERVAL_S:
            return []
        self.looked_at = now
        names = []
        for folder in self.folders:
            try:
                names += [path for path in folder_logs(folder) if path not in self.tailed]
            except OSError:
                continue   # gone for now: the sources of its logs say they are unreadable
        if not names:
            return []
        current = {self._real_path(peer.path) for peer in self.peers}   # links: where now
        found = []
        for path in names:
            real = os.path.realpath(path)
            if real not in current:
                current.add(real)
                self.tailed.add(path)
                found.append(LiveFileSource(path, self.peers, found_later=True))
        return found


class LiveAgentSource(LiveSource):
    """One agent's folders: known files polled every tick, new files looked for
    every few seconds."""

    def __init__(self, name, clock=time.time):
        self.source = AgentSource(name)
        self.clock = clock
        self.paths = None
        self.discovered_at = 0.0
        self.version = -1
        self.replays_counted = 0

    generation = None            # its requests are worked out afresh at each change

    def resume(self, history):
        ingest_agent(history, self.source.agent)
        seed_agent_source(self, history)
        return "agent:" + self.source.agent

    def forget_history(self):
        self.source = AgentSource(self.source.agent)

    def store(self, history):
        ingest_agent(history, self.source.agent)

    def finish(self):
        self.source.scan(final=True, parallel=False, paths=self.paths)

    @property
    def stats(self):
        return self.source.stats

    @property
    def requests(self):
        held, replays = self.source.deduplicated()
        stats = self.source.stats
        stats.records = len(held)  # counted as --once counts them
        stats.skip("duplicate", replays - self.replays_counted)
        self.replays_counted = replays
        return held

    def poll(self, rediscover=False):
        now = self.clock()
        if self.paths is None or rediscover or now - self.discovered_at >= \
                DISCOVERY_INTERVAL_S:
            self.paths = agent_files(self.source.agent)
            self.discovered_at = now
        self.source.scan(final=False, parallel=self.version < 0, paths=self.paths)
        changed = self.source.version != self.version
        self.version = self.source.version
        return changed

    def compaction_times(self):
        return self.source.compaction_times


class LiveDemoSource(LiveSource):
    """Simulated traffic that keeps arriving: the past two hours at once, then each
    request when the clock reaches it (sessions are still running when it starts)."""

    def __init__(self, seed, clock=time.time):
        self.clock = clock
        start = clock()
        self.pending, self.compactions = demo_traffic(seed, start + 3600, hours=3.0)
        self.stats = SourceStats("demo (seed %d)" % seed)
        self.requests = []
        self.generation = 0

    def poll(self, rediscover=False):
        now = self.clock()
        count = bisect.bisect_right([r.ts for r in self.pending], now)
        if not count:
            return False
        self.requests.extend(self.pending[:count])
        del self.pending[:count]
        self.stats.records = len(self.requests)
        return True

    def compaction_times(self):
        now = self.clock()
        return [(session, ts) for session, ts in self.compactions if ts <= now]


# OpenTelemetry over HTTP (JSON encoding): Claude Code and Codex telemetry

OTLP_MAX_BODY_BYTES = 10 * 1024 * 1024
OTLP_BODY_BYTES_IN_FLIGHT = 32 * 1024 * 1024


def _otlp_objects(container, key):
    """The objects of container[key], which OTLP makes a list of objects; ValueError
    (the payload is not OTLP) when it is anything else."""
    items = container.get(key)
    if items is None:
        return ()
    if type(items) is not list or any(type(item) is not dict for item in items):
        raise ValueError("%s is not a list of objects" % key)
    return items


def _attr_count(attributes, key):
    value = attributes.get(key)
    return 0 if value in (None, "") else as_count(value)


def otlp_log_requests(payload):
    """[(dedup key, Request)] of the api_request / response.completed events in an
    OTLP logs payload; numbers may come as strings of any value kind."""
    found = []
    for resource_logs in _otlp_objects(payload, "resourceLogs"):
        for scope_logs in _otlp_objects(resource_logs, "scopeLogs"):
            for record in _otlp_objects(scope_logs, "logRecords"):
                attributes = flatten_attributes(record.get("attributes"))
                name = attributes.get("event.name") or otlp_value(record.get("body")) or ""
                ts = parse_timestamp(attributes.get("event.timestamp") or
                                     record.get("timeUnixNano") or
                                     record.get("observedTimeUnixNano"))
                try:
                    item = _otlp_event(name, attributes, ts)
                except (ValueError, TypeError):
                    item = None
                if item is not None:
                    found.append(item)
    return found


def _otlp_event(name, attributes, ts):
    if name in ("api_request", "claude_code.api_request"):
        session = str(attributes.get("session.id") or "")
        model = str(attributes.get("model") or "unknown")
        # Anthropic semantics: input_tokens excludes the cache
        req = Request(ts, "claude-code", "anthropic", model, "", session,
                      _attr_count(attributes, "input_tokens"),
                      _attr_count(attributes, "cache_read_tokens"),
                      _attr_count(attributes, "cache_creation_tokens"), 0,
                      _attr_count(attributes, "output_tokens"), 0,
                      as_money(attributes.get("cost_usd")),
                      attributes.get("query_source") == "subagent")
        key = ("cc", session, str(attributes.get("event.sequence") or ts))
        return key, req
    if name == "codex.sse_event" and attributes.get("event.kind") == "response.completed":
        session = str(attributes.get("conversation.id") or "")
        prompt = _attr_count(attributes, "input_token_count")
        cached = min(prompt, _attr_count(attributes, "cached_token_count"))
        output = _attr_count(attributes, "output_token_count")
        reasoning = min(output, _attr_count(attributes, "reasoning_token_count"))
        req = Request(ts, "codex", "openai", str(attributes.get("model") or "unknown"), "",
                      session, prompt - cached, cached, 0, 0, output, reasoning)
        return ("cx", session, str(ts), prompt, output), req
    return None


_METRIC_KINDS = {"input": "miss", "output": "output", "cacheRead": "cache_read",
                 "cacheCreation": "cache_write_5m"}


def otlp_metric_points(payload):
    """{(session, model, ts): {field: tokens}} from claude_code.token.usage (deltas)."""
    points = {}
    for resource_metrics in _otlp_objects(payload, "resourceMetrics"):
        for scope_metrics in _otlp_objects(resource_metrics, "scopeMetrics"):
            for metric in _otlp_objects(scope_metrics, "metrics"):
                if metric.get("name") != "claude_code.token.usage":
                    continue
                data = metric.get("sum") or metric.get("gauge") or {}
                if type(data) is not dict:
                    raise ValueError("a metric's sum is not an object")
                for point in _otlp_objects(data, "dataPoints"):
                    attributes = flatten_attributes(point.get("attributes"))
                    field = _METRIC_KINDS.get(attributes.get("type"))
                    value = point.get("asInt", point.get("asDouble"))
                    if field is None or value is None:
                        continue
                    try:
                        tokens = as_count(value)
                    except (ValueError, TypeError):
                        continue
                    key = (str(attributes.get("session.id") or ""),
                           str(attributes.get("model") or "unknown"),
                           parse_timestamp(point.get("timeUnixNano")))
                    slot = points.setdefault(key, {})
                    slot[field] = slot.get(field, 0) + tokens
    return points


HTTP_CONNECTION_TIMEOUT_S = 10.0   # a connection that sends nothing for this long is closed


HTTP_MAX_CONNECTIONS = 32          # handled at once; more are answered 503 and closed


def start_http_server(address, name, respond):
    """A threaded HTTP server on a daemon thread.  respond(method, path, headers,
    body file) returns (status, content type, body bytes) for every request.

    Every request gets a reply, a failure of respond() a 500; nothing is ever
    written to the terminal (the screen belongs to the live view): errors are
    counted on the server (server.errors).  Idle connections time out, and at most
    HTTP_MAX_CONNECTIONS are handled at once."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = HTTP_CONNECTION_TIMEOUT_S

        def answer(self):
            try:
                status, kind, body = respond(self.command, self.path, self.headers, self.rfile)
            except Exception as error:   # a bug here must not cost the client its reply
                self.server.errors += 1
                status, kind = 500, "application/json"
                body = json.dumps({"error": "catop failed: %s" % type(error).__name__}).encode()
            self.reply(status, kind, body)

        def reply(self, status, kind, body):
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                if status >= 400:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                self.server.errors += 1   # the client went away

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer

        def log_message(self, *args):
            pass  # the screen belongs to the live view

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 64
        errors = 0
        slots = threading.BoundedSemaphore(HTTP_MAX_CONNECTIONS)

        def process_request(self, request, client_address):
            if not self.slots.acquire(blocking=False):
                with contextlib.suppress(OSError):
                    request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0"
                                    b"\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
                self.shutdown_request(request)
                return
            http.server.ThreadingHTTPServer.process_request(self, request, client_address)

        def process_request_thread(self, request, client_address):
            try:
                http.server.ThreadingHTTPServer.process_request_thread(
                    self, request, client_address)
            finally:
                self.slots.release()

        def handle_error(self, request, client_address):
            self.errors += 1      # never a traceback on the terminal

    try:
        server = Server(address, Handler)
    except OSError as error:
        raise CatopError("cannot listen on %s:%d: %s" % (address[0], address[1],
                                                         error.strerror or error))
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def serve_metrics(address, render):
    """GET /metrics answered with render() on a thread of its own."""
    def respond(method, path, headers, body):
        if method != "GET" or path.split("?")[0].rstrip("/") != "/metrics":
            return 404, "text/plain", b"only GET /metrics is here\n"
        try:
            text = render()
        except Exception as error:  # a scrape must never take catop down
            return 500, "text/plain", ("catop could not render metrics: %s\n" % error).encode()
        return 200, "text/plain; version=0.0.4; charset=utf-8", text.encode("utf-8")
    return start_http_server(address, "catop-metrics", respond)


class LiveOtlpSource(LiveSource):
    """An OTLP/HTTP JSON receiver: POST /v1/logs (events) and /v1/metrics.  Metrics
    count only for sessions that send no events (both describe the same requests)."""

    def __init__(self, address):
        import threading
        self.lock = threading.Lock()
        self.address = address
        self.stats = SourceStats("otlp:%s:%d" % address)
        self.events = {}         # dedup key -> Request (exporters retry)
        self.points = {}
        self.pending = False
        self.requests = []
        self.generation = 0
        self.body_bytes = 0      # of the bodies being read now
        self.server = self._serve(address)

    def _serve(self, address):
        def respond(method, path, headers, body):
            if method != "POST":
                return 405, "application/json", b'{"error": "POST OTLP JSON here"}'
            status, text = self.receive(path, headers, body)
            return status, "application/json", text.encode("utf-8")
        return start_http_server(address, "catop-otlp", respond)

    def receive(self, path, headers, body):
        """(HTTP status, JSON text) for one POST; bad input is refused, never fatal."""
        route = path.split("?")[0].rstrip("/")
        if route not in ("/v1/logs", "/v1/metrics"):
            return 404, '{"error": "only /v1/logs and /v1/metrics"}'
        if "protobuf" in (headers.get("Content-Type") or ""):
            return 415, '{"error": "send OTLP as JSON (OTEL_EXPORTER_OTLP_PROTOCOL=http/json)"}'
        if headers.get("Transfer-Encoding") or headers.get("Content-Length") is None:
            return 411, '{"error": "send the body with a Content-Length (no chunks)"}'
        length = headers.get("Content-Length").strip()
        if not (length.isdigit() and len(length) < 12):
            return 400, '{"error": "Content-Length is not a number"}'
        length = int(length)
        if length > OTLP_MAX_BODY_BYTES:
            return 413, '{"error": "body over %d MB"}' % (OTLP_MAX_BODY_BYTES >> 20)
        if not self.take_body_bytes(length):
            return 503, '{"error": "too many bodies at once: send again later"}'
        try:
            data = body.read(length)
        finally:
            self.take_body_bytes(-length)
        try:
            payload = json.loads(data or b"{}")
            if type(payload) is not dict:
                raise ValueError("the body is not a JSON object")
            if route == "/v1/logs":
                found, metrics = otlp_log_requests(payload), {}
            else:
                found, metrics = (), otlp_metric_points(payload)
        except (ValueError, TypeError, AttributeError, RecursionError) as error:
            with self.lock:
                self.stats.skip("malformed")
            return 400, json.dumps({"error": "not OTLP JSON: %s" % clean(str(error))[:200]})
        with self.lock:
            for key, req in found:
                if key in self.events:
                    self.stats.skip("duplicate")
                self.events[key] = req
            for key, fields in metrics.items():
                slot = self.points.setdefault(key, {})
                for field, tokens in fields.items():
                    slot[field] = slot.get(field, 0) + tokens
            self.pending = True
        return 200, "{}"

    def take_body_bytes(self, count):
        """Reserves (or, negative, frees) body bytes in memory at once: False when
        OTLP_BODY_BYTES_IN_FLIGHT would be passed."""
        with self.lock:
            if count > 0 and self.body_bytes + count > OTLP_BODY_BYTES_IN_FLIGHT:
                return False
            self.body_bytes += count
            return True

    def poll(self, rediscover=False):
        with self.lock:
            if not self.pending:
                return False
            self.pending = False
            events = list(self.events.values())
            points = dict(self.points)
        with_events = {req.session for req in events}
        from_metrics = [Request(ts, "claude-code", "anthropic", model, "", session,
                                fields.get("miss", 0), fields.get("cache_read", 0),
                                fields.get("cache_write_5m", 0), 0, fields.get("output", 0), 0)
                        for (session, model, ts), fields in points.items()
                        if session not in with_events]
        self.requests = events + from_metrics
        self.generation += 1      # rebuilt from scratch: metrics may give way to events
        self.stats.records = len(self.requests)
        return True

    def compaction_times(self):
        return ()

    def close(self):
        self.server.shutdown()
        self.server.server_close()  # and free the port


# a LiteLLM proxy's spend logs over HTTP: a whole team's traffic

LITELLM_TIMEOUT_S = 10.0            # to connect, and for each read
LITELLM_DEADLINE_S = 120.0          # for the whole walk of pages
LITELLM_PAGE_SIZE = 1000
LITELLM_MAX_PAGES = 10000           # ten million rows: a server that never says "last page"
LITELLM_MAX_PAGE_BYTES = 64 * 1024 * 1024


def _spend_date(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def split_url_credentials(url):
    """(url without user:pass@, the user:pass text or None, the url safe to print).

    The printable form keeps scheme, host, port and path: never the userinfo or a query,
    either of which may hold a secret."""
    import urllib.parse
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return url, None, "<an unreadable URL>"
    userinfo, at, host = netloc.rpartition("@")
    bare = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    shown = urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    return bare, (urllib.parse.unquote(userinfo) if at else None), clean(shown)


def url_origin(url):
    """(scheme, host, port) of a URL: where a credential may be sent."""
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def credential_opener(shown):
    """A urllib opener that follows a redirect only within the origin it started at.

    urllib copies every header, Authorization included, to wherever a redirect points:
    a proxy (or whoever answers for it) could send the key to any host."""
    import urllib.request

    class SameOriginRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if url_origin(newurl) != url_origin(req.full_url):
                fp.close()
                raise CatopError("the LiteLLM proxy at %s redirected to another host (%s); "
                                 "catop does not follow it with the key"
                                 % (shown, split_url_credentials(newurl)[2]))
            return urllib.request.HTTPRedirectHandler.redirect_request(
                self, req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(SameOriginRedirects)


def read_bounded(response, deadline, limit_bytes, shown):
    """The body of an HTTP response, read by pieces so that neither a slow trickle
    (the socket timeout is per read) nor an endless body outlives the deadline."""
    sock = getattr(getattr(response, "fp", None), "raw", None)
    sock = getattr(sock, "_sock", None)
    pieces, size = [], 0
    too_slow = CatopError("the LiteLLM proxy at %s took longer than %gs to send its spend "
                          "logs" % (shown, LITELLM_DEADLINE_S))
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise too_slow
        if response.isclosed():     # the whole body is in (3.13 closes its socket then)
            return b"".join(pieces)
        if sock is not None:
            try:
                sock.settimeout(min(LITELLM_TIMEOUT_S, left))
            except OSError:
                sock = None
        try:
            piece = response.read1(1 << 16)
        except OSError:
            if sock is not None and left < LITELLM_TIMEOUT_S:
                raise too_slow      # the read timed out at the deadline, not by itself
            raise
        if not piece:
            return b"".join(pieces)
        size += len(piece)
        if size > limit_bytes:
            raise CatopError("the LiteLLM proxy at %s sent a page of more than %d MB"
                             % (shown, limit_bytes >> 20))
        pieces.append(piece)


def fetch_spend_page(base_url, key, page, start=None, end=None, timeout_s=None,
                     deadline=None):
    """One page of GET /spend/logs/v2 as (dict, raw bytes); raises CatopError with a
    clear reason, which never holds the key or the URL's user:pass@."""
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request
    query = {"page": page, "page_size": LITELLM_PAGE_SIZE}
    if start is not None:
        query["start_date"] = _spend_date(start)
    if end is not None:
        query["end_date"] = _spend_date(end)
    bare, userinfo, where = split_url_credentials(base_url)
    url = bare.rstrip("/") + "/spend/logs/v2?" + urllib.parse.urlencode(query)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    elif userinfo:
        headers["Authorization"] = "Basic " + base64.b64encode(
            userinfo.encode("utf-8")).decode("ascii")
    if deadline is None:
        deadline = time.monotonic() + (timeout_s or LITELLM_TIMEOUT_S)
    left = deadline - time.monotonic()
    if left <= 0:
        raise CatopError("the LiteLLM proxy at %s took longer than %gs to send its spend logs"
                         % (where, LITELLM_DEADLINE_S))
    try:
        request = urllib.request.Request(url, headers=headers)
        with credential_opener(where).open(
                request, timeout=min(timeout_s or LITELLM_TIMEOUT_S, left)) as response:
            data = read_bounded(response, deadline, LITELLM_MAX_PAGE_BYTES, where)
    except urllib.error.HTTPError as error:
        with contextlib.suppress(Exception):
            error.close()
        if error.code in (401, 403):
            raise CatopError("the LiteLLM proxy at %s refused the key (HTTP %d): set "
                             "LITELLM_API_KEY to a key allowed to read spend logs"
                             % (where, error.code))
        raise CatopError("the LiteLLM proxy at %s answered HTTP %d" % (where, error.code))
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise CatopError("cannot read spend logs from %s: %s"
                         % (where, clean(str(reason)).replace(key or "\0", "<key>")))
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise CatopError("the LiteLLM proxy at %s sent something that is not JSON" % where)
    if type(document) is not dict or type(document.get("data")) is not list:
        raise CatopError("the LiteLLM proxy at %s sent a page without its data list "
                         "(truncated, or not /spend/logs/v2)" % where)
    return document, data


def spend_row_key(row):
    """A spend row's identity: its request_id, or (a row without one) its content, so
    that the same row read twice is counted once and two different rows never collide."""
    request_id = row.get("request_id")
    if request_id not in (None, ""):
        return "id:" + str(request_id)
    import hashlib
    text = json.dumps(row, sort_keys=True, default=str)
    return "row:" + hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()


def spend_row_request(row):
    """(row key, Request) of one spend-log row: cache tokens from its usage object."""
    metadata = row.get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            metadata = {}
    metadata = metadata if type(metadata) is dict else {}
    usage = metadata.get("usage_object")
    if type(usage) is not dict:
        usage = {"prompt_tokens": row.get("prompt_tokens") or 0,
                 "completion_tokens": row.get("completion_tokens") or 0}
    extra = metadata.get("additional_usage_values")
    if type(extra) is dict:
        usage = dict(extra, **usage)
    tokens = litellm_usage_tokens(usage)
    if tokens is None:
        return None
    miss, read, write_5m, write_1h, output, reasoning = tokens
    model = str(row.get("model") or row.get("model_group") or "unknown")
    provider = str(row.get("custom_llm_provider") or metadata.get("custom_llm_provider") or
                   infer_provider(model))
    project = (metadata.get("user_api_key_team_alias") or row.get("team_id") or
               metadata.get("user_api_key_alias") or "")
    session = row.get("session_id") or metadata.get("session_id") or ""
    req = Request(parse_timestamp(row.get("startTime")), str(row.get("user") or "litellm"),
                  provider, model, str(project), str(session), miss, read, write_5m, write_1h,
                  output, reasoning, as_money(row.get("spend")))
    return spend_row_key(row), req


class LiteLLMSpendSource(LiveSource):
    """A LiteLLM proxy's /spend/logs/v2, paged; live, it asks only for rows newer than
    the last seen, and after a failure retries later and later (up to a minute).

    With background=True (the live view) each walk of pages runs on a thread of its
    own, so a slow or hostile server never holds up the screen, `q` or --duration."""

    def __init__(self, base_url, since=None, until=None, clock=time.time, background=False):
        self.base_url = base_url
        self.key = os.environ.get("LITELLM_API_KEY", "")
        self.since, self.until = since, until
        self.clock = clock
        self.stats = SourceStats("litellm:%s" % split_url_credentials(base_url)[2])
        self.rows = {}
        self.requests = []
        self.generation = 0
        self.newest = None
        self.retry_at = 0.0
        self.backoff_s = 0.0
        self.background = background
        self.walk = None         # the thread of a background walk, and its outcome
        self.outcome = None

    def fetch(self, start):
        """Every page from start on, within one deadline; returns how many rows were new.
        A page seen before in this walk (a server that ignores `page`) ends it."""
        fresh, page, seen = 0, 1, set()
        deadline = time.monotonic() + LITELLM_DEADLINE_S
        while True:
            document, data = fetch_spend_page(self.base_url, self.key, page, start,
                                              self.until, deadline=deadline)
            digest = hash(data)
            if digest in seen:
                return fresh
            seen.add(digest)
            fresh += self.take_rows(document["data"])
            pages = document.get("total_pages")
            if not document["data"]:
                return fresh
            if isinstance(pages, int) and not isinstance(pages, bool):
                if page >= pages:
                    return fresh
            elif len(document["data"]) < LITELLM_PAGE_SIZE:
                return fresh
            if page >= LITELLM_MAX_PAGES:
                raise CatopError("the LiteLLM proxy at %s sent more than %d pages; the rest "
                                 "were not read" % (split_url_credentials(self.base_url)[2],
                                                    LITELLM_MAX_PAGES))
            page += 1

    def take_rows(self, rows):
        fresh = 0
        for row in rows:
            if type(row) is not dict:
                self.stats.skip("malformed")
                continue
            try:
                found = spend_row_request(row)
            except (ValueError, TypeError, OverflowError):
                self.stats.skip("malformed")
                continue
            if found is None:
                self.stats.skip("no_usage")
                continue
            request_id, req = found
            if request_id in self.rows:
                self.stats.skip("duplicate")
                continue
            self.rows[request_id] = req
            fresh += 1
            if req.ts is not None and (self.newest is None or req.ts > self.newest):
                self.newest = req.ts
        return fresh

    def fetch_outcome(self, start):
        """fetch(), with its CatopError as a value: what a background walk hands back."""
        try:
            return self.fetch(start)
        except CatopError as error:
            return error

    def next_outcome(self, start):
        """The outcome of a walk: at once in the foreground; in the background, None
        until the walk that poll() started has ended."""
        if not self.background:
            return self.fetch_outcome(start)
        if self.walk is None:
            import threading

            def run():
                self.outcome = self.fetch_outcome(start)
            self.walk = threading.Thread(target=run, name="catop-litellm", daemon=True)
            self.walk.start()
            return None
        if self.walk.is_alive():
            return None
        self.walk, outcome = None, self.outcome
        return outcome

    def poll(self, rediscover=False):
        now = self.clock()
        if now < self.retry_at:
            return False
        start = self.since if self.newest is None else max(self.newest - 1, self.since or 0)
        fresh = self.next_outcome(start)
        if fresh is None:
            return False
        if isinstance(fresh, CatopError):
            error = fresh
            self.backoff_s = min(60.0, max(2.0, self.backoff_s * 2))
            self.retry_at = now + self.backoff_s
            changed = self.stats.error != str(error)
            self.stats.error = "%s (retrying in %ds)" % (error, self.backoff_s)
            return changed
        recovered = self.stats.error is not None
        self.stats.error, self.backoff_s, self.retry_at = None, 0.0, 0.0
        if fresh:
            self.requests = sorted(self.rows.values(), key=request_order)
            self.generation += 1
            self.stats.records = len(self.requests)
        return bool(fresh) or recovered

    def compaction_times(self):
        return ()


class LiveModel(object):
    """Every request of every live source, priced, in time order, with its breaks.
    Sources that only ever append (files, streams, the demo) are taken in
    incrementally: only their new requests are priced and paired.  Anything else (an
    agent folder, a request older than its session's last) pairs everything again.
    Breaks come from the CacheEffects every snapshot uses: one engine."""

    def __init__(self, sources, prices, clock=time.time, watch=None):
        self.sources = sources   # grows when watch (a FolderWatch) finds a new log
        self.watch = watch
        self.prices = prices
        self.clock = clock       # the view's: rolling figures look back an hour from it
        self.timeline = Timeline([])
        self.effects = CacheEffects(prices, _NO_GROUP)
        self.breaks = []
        self.version = 0
        self.appended = None     # the entries the last change added, if it only added
        self.seen = {}           # source index -> (generation, requests taken)
        self.buckets = RateBuckets()

    def poll(self, rediscover=False):
        """Reads what is new everywhere; True when the model changed."""
        fresh, rebuild = [], False
        if self.watch is not None:   # (a source new here makes the model rebuild)
            self.sources.extend(self.watch.new_sources(rediscover))
        for index, source in enumerate(self.sources):
            if not source.poll(rediscover):
                continue
            generation, taken = self.seen.get(index, (None, 0))
            if source.generation is None or source.generation != generation:
                rebuild = True
            else:
                fresh.extend(source.requests[taken:])
                self.seen[index] = (generation, len(source.requests))
        readers = {}
        for source in self.sources:
            head = source.read_head()
            if head is not None:
                readers.setdefault(head, []).append(source)
        for source in self.sources:   # (not any(): each settles)
            if source.settle(readers):
                rebuild = True
        if rebuild or self.version == 0:  # the first poll builds what sources hold already
            self.rebuild()
            return True
        if fresh:
            self.append(fresh)
        return bool(fresh)

    def rebuild(self):
        with gc_paused():  # tens of thousands of new objects, none in a cycle
            self._rebuild()

    def _rebuild(self):
        requests = []
        for index, source in enumerate(self.sources):
            held = source.requests  # an agent source works its list out afresh each time
            requests.extend(held)
            self.seen[index] = (source.generation, len(held))
        entries = price_entries(requests, self.prices)
        self.timeline = Timeline(entries)
        self.buckets = RateBuckets()
        self.buckets.add(self.timeline.since(self.clock() - HIT_SERIES_SPAN_S - 1))
        self._pair_all()
        self.appended = None
        self.version += 1

    def append(self, requests):
        entries = price_entries(requests, self.prices)
        self.timeline.extend(entries)
        self.buckets.add(entries)
        self.buckets.prune(self.clock())
        self._pair(requests)
        self.appended = entries
        self.version += 1

    def _pair_all(self):
        """Every request paired afresh, in time order."""
        self.effects = CacheEffects(self.prices, _NO_GROUP, self.compactions())
        for entry in self.timeline.timed:
            self.effects.add(entry.req)
        self.breaks = sorted(self.effects.breaks, key=_break_order)

    def _pair(self, requests):
        """New requests paired after those before them; if one is older than its
        session's last (it came late), everything is paired again in time order."""
        effects = self.effects
        ordered = sorted((r for r in requests if r.session and r.ts is not None),
                         key=request_order)
        for req in ordered:
            last = effects.last_time(chain_of(req))
            if last is not None and req.ts < last:
                self._pair_all()
                return
        effects.compactions = self.compactions()
        found = len(effects.breaks)
        for req in ordered:
            effects.add(req)
        merge_into_sorted(self.breaks, effects.breaks[found:], _break_order)

    def compactions(self):
        """{session: [ts]} of the compactions every source has seen."""
        found = {}
        for source in self.sources:
            for session, ts in source.compaction_times():
                if ts is not None:
                    found.setdefault(session, []).append(ts)
        return found

    def stats(self):
        return [source.stats for source in self.sources]

    def finish(self):
        """Watching ends: what every source still holds pending is read, and taken in."""
        for source in self.sources:
            source.finish()
        self.rebuild()


_NO_GROUP = group_key_function(())


def _break_order(item):
    return (item.ts, item.session)


# history: every request kept in SQLite, so a report outlives the agents' log
# pruning and a warm start reads only what changed

HISTORY_SCHEMA = 7
_HISTORY_COLUMNS = ("key", "source", "ts", "agent", "provider", "model", "project", "session",
                    "miss", "read", "w5", "w1", "output", "reasoning", "observed", "sidechain",
                    "size", "msg", "file", "rank", "thread", "diagnosis", "tier", "searches",
                    "root")
# A request is kept once per folder of its agent it was read from (root; "" for a
# request log): a folder moved or copied keeps its own rows, so CLAUDE_CONFIG_DIR=B
# shows what B holds even where A held the same responses first.
_REQUESTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS requests (key TEXT NOT NULL, source TEXT NOT NULL, ts REAL,"
    " agent TEXT, provider TEXT, model TEXT, project TEXT, session TEXT, miss INTEGER,"
    " read INTEGER, w5 INTEGER, w1 INTEGER, output INTEGER, reasoning INTEGER, observed REAL,"
    " sidechain INTEGER, size INTEGER, msg TEXT, file TEXT, rank REAL, thread TEXT,"
    " diagnosis TEXT, tier TEXT, searches INTEGER, root TEXT NOT NULL DEFAULT '',"
    " PRIMARY KEY (key, root))")
_HISTORY_TABLES = (
    _REQUESTS_TABLE,
    "CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)",
    "CREATE INDEX IF NOT EXISTS requests_roots ON requests (source, root)",
    # a row schema 6 found in no folder of its agent's (or stored with no file) gives
    # way to the row of a folder read since from the same file (or any, for no file)
    "CREATE TRIGGER IF NOT EXISTS requests_read_again AFTER INSERT ON requests"
    " WHEN NEW.root != '' BEGIN DELETE FROM requests WHERE key = NEW.key AND root = ''"
    " AND source = NEW.source AND (file IS NULL OR file = NEW.file); END",
    "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, device INTEGER, inode INTEGER,"
    " size INTEGER, mtime REAL, offset INTEGER, generation INTEGER, context TEXT, head TEXT,"
    " tail TEXT)",
    "CREATE TABLE IF NOT EXISTS compactions (session TEXT, ts REAL, PRIMARY KEY (session, ts))",
    # what a request log held before it started over (its rows' key prefix), for the
    # file that may hold it now (renamed or copied away by a rotation)
    "CREATE TABLE IF NOT EXISTS replaced (prefix TEXT PRIMARY KEY, source TEXT, device INTEGER,"
    " inode INTEGER, offset INTEGER, head TEXT, tail TEXT, context TEXT)",
)
# Every file read again once from its start, under the same keys: its identity is
# forgotten, not its restarts (FileState.reset counts none for an unknown identity).
_READ_EVERY_FILE_AGAIN = "UPDATE files SET offset = 0, context = NULL, device = NULL"
# Of two rows of one key the larger is kept (a streamed response), of equal ones the
# one from the file of smaller rank, then path (a resumed session's copy): the same
# choice AgentSource makes, so the history never depends on the order of the runs.
_ROW_BEFORE = (
    "COALESCE({new}.size, 0) > COALESCE({old}.size, 0) OR ("
    "COALESCE({new}.size, 0) = COALESCE({old}.size, 0) AND ("
    "COALESCE({new}.rank, 1e308) < COALESCE({old}.rank, 1e308) OR ("
    "COALESCE({new}.rank, 1e308) = COALESCE({old}.rank, 1e308) AND ("
    "COALESCE({new}.file, '') < COALESCE({old}.file, '') OR ("
    "COALESCE({new}.file, '') = COALESCE({old}.file, '') AND {new}.root {tie} {old}.root)))))")
_HISTORY_KEEPS_NEW = _ROW_BEFORE.format(new="excluded", old="requests", tie="<=")
_CONTEXT_FIELDS = ("session", "project", "model", "start_ts", "first_ts", "fork",
                   "parent_session",
                   "previous_total", "sidechain")


@contextlib.contextmanager
def _held_lock(fd):
    """An exclusive flock on an open file while the block runs (none where there is
    no flock): appenders in several proxy workers take turns."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def _file_lock(path):
    """An exclusive advisory lock on path while the block runs (none where the OS has
    no flock: there, SQLite's own locking is all there is)."""
    create_private_file(path)
    handle = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        with _held_lock(handle):
            yield
    finally:
        os.close(handle)


def move_history_aside(path):
    """path (and its -wal and -shm) renamed to path.corrupt-<time>; the new name."""
    moved = "%s.corrupt-%d" % (path, int(time.time()))
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, moved + suffix)
    return moved


def history_trouble(error):
    """What a SQLite error of the history means: "full" (the disk), "busy" (another
    process holds it past the timeout), "damaged" (the file: moved aside), or
    "unusable" (read-only, gone, ...)."""
    text = str(error).lower()
    code = getattr(error, "sqlite_errorcode", None)
    if code == 13 or "disk is full" in text or "database or disk is full" in text:
        return "full"
    if "locked" in text or "busy" in text:
        return "busy"
    operational = type(error).__name__ == "OperationalError"
    if not operational or any(word in text for word in ("malformed", "decode", "not a "
                                                        "database", "disk image", "corrupt")):
        return "damaged"
    return "unusable"


def history_path():
    return os.path.join(xdg_dir("XDG_STATE_HOME", (".local", "state")), "history.sqlite3")


class History(object):
    """The SQLite store: requests under a unique key (no prompt or response text),
    per-file read state, and compactions.  WAL mode and a busy timeout let a live view
    and a --once in cron share it."""

    def __init__(self, path, report=None):
        import sqlite3
        self.sqlite3 = sqlite3
        self.path = path
        self._files = None       # path -> stored read state, loaded on first use
        self._held = None        # what request logs held before: see _predecessors
        report = report or warn
        make_private_folder(os.path.dirname(os.path.abspath(path)))
        with _file_lock(path + ".lock"):  # one process at a time creates or migrates
            create_private_file(path)     # SQLite gives its -wal and -shm the same mode
            try:
                self.db = self._open()
            except sqlite3.OperationalError:
                raise  # locked or unwritable: not corruption, never moved aside
            except sqlite3.DatabaseError as error:
                moved = move_history_aside(path)
                report("the history %s could not be read (%s): moved to %s; rebuilding it "
                       "from the logs still present" % (path, clean(error), moved))
                self.db = self._open()

    def _open(self):
        db = self.sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 30000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            self._migrate(db)
            db.execute("SELECT count(*) FROM requests").fetchone()
        except self.sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _migrate(self, db):
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > HISTORY_SCHEMA:
            raise CatopError("the history %s was written by a newer catop (schema %d)"
                             % (self.path, version))
        db.execute("BEGIN IMMEDIATE")
        try:
            if version == 1:  # schema 1 had no Claude Code message part, nor compactions
                db.execute("ALTER TABLE requests ADD COLUMN msg TEXT")
            if 0 < version < 6:
                self._add_columns(db)
                self._key_by_root(db)
                # each folder's files read again once from their start, to store what
                # they hold with them (a folder read after another stored nothing)
                db.execute(_READ_EVERY_FILE_AGAIN)
            if 0 < version < 7:
                self._name_logs_by_real_path(db)
            for statement in _HISTORY_TABLES:
                db.execute(statement)
            if 0 < version < 5:   # OpenCode's keys are its messages' contents since 5:
                # its database is read whole at every run, so its rows come back
                db.execute("DELETE FROM requests WHERE source = 'agent:opencode'")
            self._add_columns(db)
            if "tail" not in [row[1] for row in db.execute("PRAGMA table_info(files)")]:
                db.execute("ALTER TABLE files ADD COLUMN tail TEXT")   # (nothing read again)
            db.execute("PRAGMA user_version = %d" % HISTORY_SCHEMA)
            db.execute("COMMIT")
        except BaseException:
            self._roll_back(db)
            raise

    def _roll_back(self, db):
        """Undoes the open transaction, if SQLite has not already (it does on a full
        disk): a failed ROLLBACK must never hide the error that called for it."""
        if db.in_transaction:
            with contextlib.suppress(self.sqlite3.Error):
                db.execute("ROLLBACK")

    @staticmethod
    def _key_by_root(db):
        """Schema 6 keys a request by its agent's folder too: the table is made again,
        each agent's row given the folder of now that holds its file ("" for none)."""
        db.execute("ALTER TABLE requests RENAME TO requests_before_6")
        db.execute(_REQUESTS_TABLE)
        columns = ", ".join(_HISTORY_COLUMNS[:-1])
        db.execute("INSERT INTO requests (%s, root) SELECT %s, '' FROM requests_before_6"
                   % (columns, columns))
        db.execute("DROP TABLE requests_before_6")
        for name, spec in AGENT_TABLE.items():
            for root in spec.roots():
                prefix = os.path.join(root, "")
                db.execute("UPDATE requests SET root = ? WHERE source = ? AND root = '' AND"
                           " substr(file, 1, ?) = ?", (root, "agent:" + name, len(prefix),
                                                       prefix))

    @staticmethod
    def _name_logs_by_real_path(db):
        """Schema 7 names a request log by its real path (log_label): a stored row takes
        the real path its key holds."""
        def real(label, key):
            path = log_path_of_key(key) if label.startswith("file:") else None
            return label if path is None else "file:" + path
        db.create_function("catop_real_label", 2, real)
        db.execute("UPDATE requests SET source = catop_real_label(source, key)"
                   " WHERE source LIKE 'file:%'")

    @staticmethod
    def _add_columns(db):
        """Schema 3 keeps, per request, the file it came from and that file's rank
        (which of two copies of one response wins), and per file its first bytes;
        schema 4, per request, its thread, the provider's cache-miss diagnosis and the
        price dimensions it was billed at.
        Every file is read again once, from the start, to fill them in: the keys
        are the same, so nothing is counted twice."""
        added = False
        for table, column, kind in (("requests", "file", "TEXT"), ("requests", "rank", "REAL"),
                                    ("files", "head", "TEXT"), ("requests", "thread", "TEXT"),
                                    ("requests", "diagnosis", "TEXT"),
                                    ("requests", "tier", "TEXT"),
                                    ("requests", "searches", "INTEGER")):
            if column not in [row[1] for row in db.execute("PRAGMA table_info(%s)" % table)]:
                db.execute("ALTER TABLE %s ADD COLUMN %s %s" % (table, column, kind))
                added = True
        if added:
            db.execute(_READ_EVERY_FILE_AGAIN)

    def close(self):
        self.db.close()

    def file_state(self, path):
        """A FileState restored from the last run, or a fresh one."""
        if self._files is None:  # one query for all: a folder holds hundreds of files
            self._files = {row[0]: row[1:] for row in self.db.execute(
                "SELECT path, device, inode, size, offset, generation, context, mtime, head,"
                " tail FROM files")}
        row = self._files.get(path)
        if row is None:
            return FileState(path)
        device, inode, size, offset, restarts, context, mtime, head, tail = row
        state = FileState(path, offset if type(offset) is int and offset >= 0 else 0)
        state.device, state.inode, state.size, state.restarts = device, inode, size, restarts
        state.mtime = mtime
        state.head, state.tail = stored_pair(head), stored_pair(tail)
        restore_context(state.context, context)
        return state

    def save(self, rows, states=(), compactions=(), drop=()):
        """Stores rows (keeping the larger of two for one key: Claude Code's streamed
        lines), file states and compactions, and drops the rows of the (key, folder)
        pairs in drop (a response now counted under other keys), in one transaction."""
        db = self.db
        columns = ", ".join(_HISTORY_COLUMNS)
        updates = ", ".join("%s = excluded.%s" % (c, c) for c in _HISTORY_COLUMNS[1:])
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO requests (%s) VALUES (%s) ON CONFLICT (key, root) DO"
                           " UPDATE SET %s WHERE %s" % (
                               columns, ", ".join("?" * len(_HISTORY_COLUMNS)), updates,
                               _HISTORY_KEEPS_NEW), rows)
            for state in states:
                state.note_tail()
            files = [(s.path, s.device, s.inode, s.size, s.mtime, s.offset, s.restarts,
                      context_json(s.context), pair_text(s.head), pair_text(s.tail))
                     for s in states]
            db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           files)
            db.executemany("INSERT OR IGNORE INTO compactions VALUES (?, ?)",
                           [c for c in compactions if c[1] is not None])
            db.executemany("DELETE FROM requests WHERE key = ? AND root IN (?, '')", drop)
            db.execute("COMMIT")
        except BaseException:
            self._files = None
            self._roll_back(db)
            raise
        if self._files is not None:   # kept as file_state reads them: a folder of logs
            for path, device, inode, size, mtime, offset, restarts, context, head, tail \
                    in files:         # saved one by one is not read back whole each time
                self._files[path] = (device, inode, size, offset, restarts, context, mtime,
                                     head, tail)

    def note_replaced(self, label, prefix, device, inode, offset, head, tail, context):
        """Keeps what a request log held before it started over, for adopt_rotated; or
        forgets it, when another log read already holds it (a copy counted on its own
        while both held the lines: copy-truncate read between the copy and the
        truncation, or a backup), as a reading without the history counts it once."""
        if offset and head and tail and self._copied_elsewhere(label, offset, head, tail):
            self.db.execute("DELETE FROM requests WHERE key >= ? AND key < ?",
                            (prefix, _prefix_end(prefix)))
            return
        if offset and head and tail:
            self.db.execute("INSERT OR REPLACE INTO replaced VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (prefix, label, device, inode, offset, pair_text(head),
                             pair_text(tail), context_json(context)))
            self._held = None

    def adopt_rotated(self, state, label, info):
        """A request log read from its start that holds what another one held, and
        holds no longer (renamed away by a rotation, or copied away and truncated),
        takes over its stored lines and reads on from where they end: a folder of
        rotated logs counts each line once, where its copy under the old name and its
        reading from the new file counted it twice.  Of several, the longest."""
        best = None
        for held in self._starting_like(state.path):
            prefix, path, identity, offset, head, tail, context = held
            if (best is not None and offset <= best[3]) or (
                    path is not None and log_label(path) == label):
                continue
            try:
                if not holds_from_start(state.path, info, offset, head, tail, {}) or (
                        path is not None and still_holds(path, identity, head, tail)):
                    continue
            except OSError:
                continue
            if path is not None:   # its keys' prefix, as it was read
                prefix = log_key_prefix(path, identity[1], prefix)
            if self._holds_prefix(prefix):   # (not an agent's file, nor one of no request)
                best = (prefix, path, identity, offset, head, tail, context)
        if best is None:
            return
        prefix, path, _, offset, head, tail, context = best
        state.device, state.inode = info.st_dev, info.st_ino
        state.lines, state.head, state.tail = LineReader(offset), head, tail
        restore_context(state.context, context)
        self._take_over(prefix, log_key_prefix(state.path, state.inode, state.restarts),
                        label, path)

    def _starting_like(self, path):
        """The _predecessors entries whose first bytes the file at path begins with."""
        try:
            with open_regular(path) as handle:
                first = handle.read(FILE_HEAD_BYTES)
        except OSError:
            return
        for length, by_head in self._predecessors().items():
            if len(first) >= length:
                yield from by_head.get(head_of(first[:length]), ())

    def _predecessors(self):
        """{head length: {head: [(key prefix, None, (device, inode), offset, head, tail,
        context)]}} of the generations request logs replaced, and the same with
        (restarts, path, ...) of the files as last read (one still to be read again):
        worked out once a run (note_replaced and _take_over start it over)."""
        if self._held is None:
            found = [(prefix, None, (device, inode), offset, head, tail, context)
                     for prefix, device, inode, offset, head, tail, context in self.db.execute(
                         "SELECT prefix, device, inode, offset, head, tail, context FROM"
                         " replaced")]
            for path, row in (self._files or {}).items():
                device, inode, _, offset, restarts, context, _, head, tail = row
                if device is not None and offset:
                    found.append((restarts, path, (device, inode), offset, head, tail, context))
            self._held = {}
            for held in found:
                head, tail = stored_pair(held[4]), stored_pair(held[5])
                if head is not None and tail is not None and type(held[3]) is int:
                    self._held.setdefault(head[0], {}).setdefault(head, []).append(
                        held[:4] + (head, tail, held[6]))
        return self._held

    def _copied_elsewhere(self, label, offset, head, tail):
        """Whether another request log, read that far at least, begins with these bytes
        and has requests stored."""
        for held in self._predecessors().get(head[0], {}).get(head, ()):
            restarts, path, identity, read = held[:4]
            if path is None or read < offset or log_label(path) == label:
                continue
            try:
                if not holds_from_start(path, os.stat(path), offset, head, tail, {}):
                    continue
            except OSError:
                continue
            if self._holds_prefix(log_key_prefix(path, identity[1], restarts)):
                return True
        return False

    def replaced_part(self, prefix, count):
        """The Held part of a replaced generation (keys under prefix, count requests) as
        the replaced table keeps it; one no peer can match when it keeps none."""
        row = self.db.execute("SELECT device, inode, offset, head, tail, context FROM replaced"
                              " WHERE prefix = ?", (prefix,)).fetchone()
        head, tail = (stored_pair(row[3]), stored_pair(row[4])) if row else (None, None)
        if row is None or head is None or tail is None or type(row[2]) is not int:
            return Held(None, 0, None, None, None, count, None)
        restarts = prefix[:-1].rsplit(":", 1)[1]
        return Held((row[0], row[1]), row[2], head, tail, row[5], count,
                    int(restarts) if restarts.isdigit() else None)

    def forget_copied(self, path, state):
        """Forgets the stored lines of other logs' replaced generations that the log at
        path, as read now, holds from its start: a copy read to its end only after its
        log started over.  The copy's own lines count them, once, as the live view's
        LiveFileSource.settle lets go of them."""
        copied = []
        for prefix, log, _, offset, head, tail, _ in self._starting_like(path):
            if log is not None or offset > state.offset or log_path_of_key(prefix) == path:
                continue   # (a log as last read, not a generation it replaced)
            try:
                if holds_from_start(path, os.stat(path), offset, head, tail, {}):
                    copied.append(prefix)
            except OSError:
                continue
        if copied:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for prefix in copied:
                    self.db.execute("DELETE FROM requests WHERE key >= ? AND key < ?",
                                    (prefix, _prefix_end(prefix)))
                    self.db.execute("DELETE FROM replaced WHERE prefix = ?", (prefix,))
                self.db.execute("COMMIT")
            except BaseException:
                self._roll_back(self.db)
                raise
            self._held = None

    def _holds_prefix(self, prefix):
        return self.db.execute("SELECT 1 FROM requests WHERE key >= ? AND key < ? LIMIT 1",
                               (prefix, _prefix_end(prefix))).fetchone() is not None

    def _take_over(self, prefix, mine, label, path):
        """Gives the stored lines under key prefix to the log label (keys under mine); a
        log they were taken from as last read is read afresh when read again."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("UPDATE requests SET source = ?, key = ? || substr(key, ?)"
                            " WHERE key >= ? AND key < ?",
                            (label, mine, len(prefix) + 1, prefix, _prefix_end(prefix)))
            self.db.execute("DELETE FROM replaced WHERE prefix = ?", (prefix,))
            if path is not None:
                self.db.execute("UPDATE files SET device = NULL, offset = 0 WHERE path = ?",
                                (path,))
            self.db.execute("COMMIT")
        except BaseException:
            self._roll_back(self.db)
            raise
        self._files = self._held = None

    def requests(self, since=None, until=None, scope=None):
        """Stored requests in time order (without time first: only with no bounds);
        a subagent's replay of a response its parent counted is left out.  scope,
        {label: folders or None}, keeps the rows of those sources only, and of an
        agent only those read from a file under one of its folders now."""
        values = []
        in_scope = "1" if scope is None else _scope_condition(scope, values)
        where = [in_scope, "NOT (sidechain = 1 AND msg IS NOT NULL AND msg IN (SELECT msg FROM"
                 " requests WHERE sidechain = 0 AND msg IS NOT NULL AND %s))" % (
                     "1" if scope is None else _scope_condition(scope, values)),
                 self._one_copy_condition(scope, values)]
        if since is not None or until is not None:
            where.append("ts IS NOT NULL")
        if since is not None:
            where.append("ts >= ?")
            values.append(since)
        if until is not None:
            where.append("ts < ?")
            values.append(until)
        cursor = self.db.execute(
            "SELECT %s, agent, provider, model, project, session, miss, read, w5, w1, output,"
            " reasoning, observed, sidechain, thread, diagnosis, tier, searches, source"
            " FROM requests WHERE %s ORDER BY ts" % (_STORED_TIME, " AND ".join(where)), values)
        for row in cursor:
            yield row[18], Request(row[0], row[1] or "", row[2] or "", row[3] or "",
                                   row[4] or "", row[5] or "", row[6], row[7], row[8], row[9],
                                   row[10], row[11], row[12], bool(row[13]), row[14] or "",
                                   row[15] and stored_diagnosis(row[15]), str(row[16] or ""),
                                   row[17] if type(row[17]) is int and row[17] > 0 else 0)

    def rows(self, label=None, exclude=(), folders=None):
        """(key, Request) of the stored requests of one source (label), or of every
        source but those in exclude; folders: of an agent's, only those read from a
        file under one of them (see requests)."""
        # the columns in the order Request takes them: a row becomes one directly
        query = ("SELECT key, " + _STORED_TIME + ", agent, provider, model, project, session,"
                 " miss, read, w5, w1, output, reasoning, observed, sidechain, thread,"
                 " diagnosis, tier, searches, file FROM requests")
        values = []
        if label:
            scope = {label: folders}
            where = _scope_condition(scope, values)
        else:
            scope = None
            where = "source NOT IN (%s)" % _sql_texts(exclude)
        query += " WHERE %s AND %s" % (where, self._one_copy_condition(scope, values, exclude))
        for row in self.db.execute(query, values):
            yield row[0], Request(*row[1:15], thread=row[15] or "",
                                  diagnosis=row[16] and stored_diagnosis(row[16]),
                                  tier=str(row[17] or ""),
                                  searches=row[18] if type(row[18]) is int and row[18] > 0 else 0,
                                  origin=row[19])

    def _one_copy_condition(self, scope, values, exclude=()):
        """SQL keeping one of the copies of a request stored from several folders of
        its agent (a folder moved or copied, CLAUDE_CONFIG_DIR=A,B): the one a reading
        of them all would keep (_ROW_BEFORE), its values appended.  Only the sources
        with rows in more than one of the folders in scope pay for the look-up."""
        copied = []
        folders_of = {} if scope is None else scope
        for label, roots in self._roots().items():
            if label in exclude or (scope is not None and label not in scope):
                continue
            folders = folders_of.get(label)
            if folders is not None:
                roots = [root for root in roots if not root or any(
                    _path_within(root, folder) or _path_within(folder, root)
                    for folder in folders)]
            if len(roots) > 1:
                copied.append(label)
        if not copied:
            return "1"
        values.extend(copied)
        inner = "1" if scope is None else _scope_condition(scope, values)
        return ("(source NOT IN (%s) OR NOT EXISTS (SELECT 1 FROM requests AS copy"
                " INDEXED BY sqlite_autoindex_requests_1 WHERE"   # by key: a seek a row
                " copy.key = requests.key AND copy.root != requests.root AND"
                " copy.source = requests.source AND %s AND (%s)))" % (
                    ", ".join("?" * len(copied)), inner,
                    _ROW_BEFORE.format(new="copy", old="requests", tie="<")))

    def _roots(self):
        """{source: [folders its rows were read from]} of the agents' sources: a seek
        in the index a folder, not a scan of every row."""
        found = {}
        for name in AGENT_TABLE:
            label, roots = "agent:" + name, []
            root = self.db.execute("SELECT min(root) FROM requests WHERE source = ?",
                                   (label,)).fetchone()[0]
            while root is not None:
                roots.append(root)
                root = self.db.execute("SELECT min(root) FROM requests WHERE source = ? AND"
                                       " root > ?", (label, root)).fetchone()[0]
            if roots:
                found[label] = roots
        return found

    def holds(self, scope):
        """Whether any stored request is in scope (see requests)."""
        values = []
        condition = _scope_condition(scope, values)
        return self.db.execute("SELECT 1 FROM requests WHERE %s LIMIT 1" % condition,
                               values).fetchone() is not None

    def has_requests(self):
        return self.db.execute("SELECT 1 FROM requests LIMIT 1").fetchone() is not None

    def compactions(self):
        found = {}
        for session, ts in self.db.execute("SELECT session, ts FROM compactions"):
            found.setdefault(session, []).append(ts)
        return found

    def prune(self, days, now):
        """Deletes requests older than days; returns how many.  What the logs still on
        disk hold of them is read again at the next run, from their start, under the
        same keys: a report over a log says what it holds, history or not (its file
        state alone would keep those lines unread for ever); what is gone is let go."""
        cutoff = now - days * 86400
        self.db.execute("BEGIN IMMEDIATE")
        try:
            count = self.db.execute("DELETE FROM requests WHERE ts < ?", (cutoff,)).rowcount
            self.db.execute("DELETE FROM compactions WHERE ts < ?", (cutoff,))
            self.db.execute("DELETE FROM replaced WHERE NOT EXISTS (SELECT 1 FROM requests"
                            " WHERE substr(key, 1, length(prefix)) = prefix)")
            if count:
                self.db.execute(_READ_EVERY_FILE_AGAIN)
            self.db.execute("COMMIT")
        except BaseException:
            self._roll_back(self.db)
            raise
        return count

    def damaged_rows(self):
        """How many rows no run would ever show: their source does not match their
        key (SQLite has no checksums; a flipped byte in a label would drop a row
        from every report without a word)."""
        return self.db.execute(
            "SELECT count(*) FROM requests WHERE NOT ("
            "(source LIKE 'file:%' AND key LIKE 'f:%') OR (source = 'stdin' AND key LIKE 's:%')"
            " OR (source = 'agent:claude-code' AND key LIKE 'cc:%')"
            " OR source = 'agent:' || substr(key, 1, instr(key, ':') - 1))").fetchone()[0]

    def move_aside(self, error):
        """Moves the store (and its -wal and -shm) aside; returns the new path."""
        with contextlib.suppress(self.sqlite3.Error, AttributeError):
            self.db.close()
        return move_history_aside(self.path)


# a stored time an older catop let through (1e17 s): read as no time, never a crash
_STORED_TIME = "CASE WHEN ts > 0 AND ts <= %r THEN ts END" % TS_MAX


def _scope_condition(scope, values):
    """SQL for 'the row is in scope' (see History.requests), its values appended.  The
    labels read whole are one IN list of literals: a report of thousands of logs passes
    neither SQLite's expression depth (1,000) nor its count of values (999 before 3.32)."""
    whole = sorted(label for label, folders in scope.items() if folders is None)
    alternatives = ["source IN (%s)" % _sql_texts(whole)] if whole else []
    for label, folders in sorted(scope.items()):
        if folders is None:
            continue
        values.append(label)
        under = []
        for folder in folders:
            prefix = os.path.join(folder, "")
            values.extend((len(prefix), prefix))
            under.append("substr(file, 1, ?) = ?")
        alternatives.append("(source = ? AND (%s))" % (" OR ".join(under) or "0"))
    return "(%s)" % (" OR ".join(alternatives) or "0")


def _sql_texts(texts):
    """texts as a list of SQL string literals (a quote doubled)."""
    return ", ".join("'%s'" % text.replace("'", "''") for text in texts)


def pair_text(pair):
    """A fingerprint as the history stores it (stored_pair reads it back)."""
    return "%d:%d" % pair if pair else None


def stored_pair(text):
    """A fingerprint (two whole numbers) as the history stores it; None if damaged."""
    first, _, second = (text or "").partition(":")
    return (int(first), int(second)) if first.isdigit() and second.isdigit() else None


def _path_within(path, folder):
    return path == folder or path.startswith(os.path.join(folder, ""))


def root_of(path, roots):
    """The folder of roots (an agent's) that holds path; "" for none."""
    if path:
        for root in roots:
            if _path_within(path, root):
                return root
    return ""


def history_scope(labels):
    """{label: folders or None} of the stored sources a run reads: an agent's rows count
    only from files under the folders it reads now (CLAUDE_CONFIG_DIR=B shows nothing
    stored from A), a request log's and stdin's from that log."""
    return {label: agent_roots(label[6:]) if label.startswith("agent:") else None
            for label in labels}


def history_row(source, key, req, size=None, msg=None, rank=None, root=""):
    return (key, source, req.ts, req.agent, req.provider, req.model, req.project, req.session,
            req.miss, req.cache_read, req.cache_write_5m, req.cache_write_1h, req.output,
            req.reasoning, req.observed_cost, int(req.sidechain),
            req.input + req.output if size is None else size, msg, req.origin, rank,
            req.thread or None, None if req.diagnosis is None else json.dumps(req.diagnosis),
            req.tier or None, req.searches or None, root)


def stored_diagnosis(text):
    """A diagnosis as history_row stored it; None if the text is not one (a damaged
    row is read without it, never refused whole)."""
    try:
        verdict, raw, missed = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not (verdict is None or verdict == NO_CHANGE or type(verdict) is str and
            verdict in _CAUSE_KINDS) or not (
            raw is None or type(raw) is str) or _missed_estimate(missed) is False:
        return None
    return _diagnosis(verdict, raw, missed)


def _field_key(req):
    """A key for a request with no id of its own: its session, time and tokens."""
    return "%s|%s|%r|%d|%d|%d|%d|%d|%d" % (req.agent, req.session, req.ts, req.miss,
                                            req.cache_read, req.cache_write_5m,
                                            req.cache_write_1h, req.output, req.reasoning)


def ingest_agent(history, name):
    """Reads what is new in an agent's logs (from where the last run stopped) into the
    history, each of its folders apart: a folder keeps its own rows (_REQUESTS_TABLE),
    and a response two folders hold is stored with each; returns the SourceStats of
    this reading."""
    roots = agent_roots(name)
    folders = {}
    for path in agent_files(name):
        folders.setdefault(root_of(path, roots), []).append(path)
    stats = SourceStats("agent:" + name)
    for root in sorted(folders, key=lambda root: roots.index(root) if root in roots else -1):
        part = _ingest_agent_folder(history, name, root, folders[root])
        stats.merge(part)
        stats.error = stats.error or part.error
    return stats


def _ingest_agent_folder(history, name, root, paths):
    source = AgentSource(name)
    spec = source.spec
    before = {}
    if spec.copies_renamed:   # a fork's copy of what only the history holds now: a copy
        source.seeded = {key: req for key, req in stored_agent_rows(history, spec, root)
                         if key is not None}
    if not spec.whole:
        for path in paths:
            state = source.states[path] = history.file_state(path)
            before[path] = (state.device, state.inode, state.offset, state.restarts,
                            state.size, state.mtime)
    source.scan(final=True, paths=paths)   # as a snapshot does; the tail stays pending
    source.settle_ties()
    label = "agent:" + name
    counted = [0]

    def rows():  # streamed into executemany: the rows never all sit in memory at once
        for key, req in source.keyed.items():
            if source.seeded.get(key) is req:
                continue    # stored already, and gone from the files
            counted[0] += 1
            rank = source.file_rank(req.origin)[0] if req.origin is not None else None
            message = "%016x" % key_message_part(key) if type(key) is int else None
            yield history_row(label, spec.history_key(key), req, _line_size(key, req),
                              message, rank, root)
        for path_requests in source.loose.values():
            for req in path_requests:
                counted[0] += 1
                yield history_row(label, "%s:%s" % (name, _field_key(req)), req, root=root)
    changed = [state for state in source.states.values()
               if before.get(state.path) != (state.device, state.inode,
                                             state.offset, state.restarts,
                                             state.size, state.mtime)]
    for state in changed:
        try:
            state.mtime = os.path.getmtime(state.path)
        except OSError:
            state.mtime = None
    history.save(rows(), changed if not spec.whole else (), source.compaction_times,
                 [(spec.history_key(key), root) for key in source.superseded | source.copies])
    source.stats.records = counted[0]
    return source.stats


def stored_agent_rows(history, spec, root=None):
    """(dedup key or None, Request) of what the history holds of one agent, read
    from its folders of now (history_scope: CLAUDE_CONFIG_DIR=B shows nothing of A),
    or from the one folder root."""
    folders = [root] if root else agent_roots(spec.name)
    for text, req in history.rows("agent:" + spec.name, folders=folders):
        yield spec.key_from_history(text), req


def seed_agent_source(live, history):
    """A live agent source resumed from the history: its files' read state and the
    requests stored for it, keyed again so that later lines de-duplicate against them."""
    source = live.source
    name = source.agent
    if not source.spec.whole:
        for path in agent_files(name):
            source.states[path] = history.file_state(path)
    for key, req in stored_agent_rows(history, source.spec):
        if key is None:
            source.loose.setdefault("history", []).append(req)
        else:
            source.keyed[key] = req
            if source.spec.whole:   # kept when its databases are read again whole
                source.seeded[key] = req
    for session, times in history.compactions().items():
        source.compaction_times.extend((session, ts) for ts in times)


def seed_file_source(live, history):
    """A live request-log source resumed from the history: the stored requests of its
    file as last read (its current part), after those of the files it was before
    (its earlier generations: held, never a copy's or a rotated log's to take)."""
    real = os.path.realpath(live.path)
    state = live.state = history.file_state(real)
    state.path = live.path   # read by its name, as polled: a link may be re-pointed
    current = log_key_prefix(real, state.inode, state.restarts) \
        if state.device is not None else None
    now, before = [], {}
    for key, req in history.rows(log_label(live.path)):
        if current is not None and key.startswith(current):
            now.append(req)
        else:   # by generation: its key up to the line's offset
            before.setdefault(key[:key.rindex(":") + 1], []).append(req)
    live.requests, live.held = [], []
    for prefix, requests in before.items():
        live.requests += requests
        live.held.append(history.replaced_part(prefix, len(requests)))
    live.requests += now
    live.stats.records = len(live.requests)


class LiveStoredSource(LiveSource):
    """What the history holds of sources not read now (logs since deleted)."""

    def __init__(self, history, skip_labels):
        self.stats = SourceStats("history:%s" % history.path)
        self.requests = [req for _, req in history.rows(exclude=skip_labels)]
        self.stats.records = len(self.requests)
        self.generation, self.fresh = 0, True

    def poll(self, rediscover=False):
        fresh, self.fresh = self.fresh, False
        return fresh

    def compaction_times(self):
        return ()


HISTORY_SAVE_ROWS = 20000   # rows stored a transaction: memory stays flat on a big log


class LineKeeper(object):
    """Stores the requests of one line after another under the line's key (set
    .key before each line): the second and later requests of one line (a response's
    iterations) under the key and their number."""

    def __init__(self, rows, label):
        self.rows, self.label, self.key, self.count = rows, label, None, 0

    def line(self, key):
        self.key, self.count = key, 0

    def __call__(self, req):
        self.rows.append(history_row(self.label, "%s#%d" % (self.key, self.count)
                                     if self.count else self.key, req))
        self.count += 1


def ingest_stream(history, stream, stats):
    """Standard input into the history (only with --history): a key a line's content."""
    rows = []
    keep = LineKeeper(rows, "stdin")
    reader = LineReader()

    def store(lines):
        for line in lines:
            if line:
                keep.line("s:%032x" % _stable_hash(line))
                scan_request_lines((line,), stats, keep)
    for block in iter_blocks(stream):
        store(reader.feed(block))
        if len(rows) >= HISTORY_SAVE_ROWS:
            history.save(rows)
            del rows[:]
    store([reader.finish()])
    stats.skipped["malformed"] += reader.oversized
    history.save(rows)


def log_label(path):
    """The history's name for a request log: its real path, however it was named
    (logs/app.jsonl from one folder, /srv/logs/app.jsonl in cron, current.jsonl a link
    to it: one log; a link pointed at another file names that one)."""
    return "file:" + os.path.realpath(path)


def ingest_request_file(history, path, stats):
    """Reads what is new in a request log into the history: a key a line (the file, its
    identity and the line's offset), so the same log read twice counts once.  A big
    file is read by byte ranges across the cores, each process storing its own."""
    path, label = os.path.realpath(path), log_label(path)
    state = history.file_state(path)
    info = os.stat(path)
    before = (log_key_prefix(path, state.inode, state.restarts), state.device, state.inode,
              state.offset, state.head, state.tail, state.context,
              state.restarts) if state.device is not None else None
    check_file_identity(state, info)
    if before is not None and state.restarts != before[-1]:   # started over
        history.note_replaced(label, *before[:-1])
    if state.offset == 0 and info.st_size:   # read from its start: perhaps a rotated log
        history.adopt_rotated(state, label, info)
    job = (log_key_prefix(path, state.inode, state.restarts), label, path)
    workers = worker_count()
    if info.st_size - state.offset >= PARALLEL_MIN_BYTES and workers > 1:
        points = split_points(path, info.st_size, workers, start=state.offset)
        ranges = list(zip(points, points[1:]))
        learn_shapes(path, ALL_ATTRIBUTES, state.offset)
        forked = fork_jobs(lambda part: _ingest_range_worker(history.path, job, part),
                           ranges[1:], len(ranges) - 1)
        if forked is not None:
            with forked:
                ingest_range(history, job, ranges[0], stats)
                results = list(forked.results())
            for part_stats, _ in map(take_home, results):
                stats.merge(part_stats)
            state.lines = LineReader(results[-1][1])  # the last range's end
            history.save([], [state])
            history.forget_copied(path, state)
            return
    start = state.offset
    ingest_range(history, job, (start, None), stats, state)
    if state.offset > start:   # (holding more, it may hold a replaced generation now)
        history.forget_copied(path, state)


def _prefix_end(prefix):
    """The least text after every text starting with prefix (which ends with ":")."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def holds_from_start(path, info, offset, head, tail, heads):
    """Whether the file at path (info: its stat) begins with the bytes a log was read
    with up to offset: its first bytes (head) and its last ones (tail).  heads caches
    this file's first bytes by length.  Raises OSError."""
    if head is None or tail is None or tail[0] != offset or info.st_size < offset:
        return False
    if head[0] not in heads:
        heads[head[0]] = file_head(path, head[0])
    return heads[head[0]] == head and file_tail(path, offset) == tail


def still_holds(path, identity, head, tail):
    """Whether a log's path still holds the bytes it was read with (its file, or a
    copy with them and more): then a file holding them too is a copy, and counts on
    its own, as without the history."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    held = FileState(path, tail[0])
    held.head, held.tail = head, tail
    if (info.st_dev, info.st_ino) == identity and info.st_size >= tail[0]:
        try:
            return file_head(path, head[0]) == head
        except OSError:
            return False
    return holds_what_was_read(held, info)


def context_dict(context):
    """A FileContext's fields as JSON values (the history and the status line keep them)."""
    return {name: getattr(context, name) for name in _CONTEXT_FIELDS}


def context_json(context):
    return json.dumps(context_dict(context))


def restore_context(context, saved):
    """A FileContext's fields from context_dict's values, or its JSON text."""
    if not isinstance(saved, dict):
        try:
            saved = json.loads(saved or "{}")
        except ValueError:
            saved = {}
    for name in _CONTEXT_FIELDS:
        if name in saved:
            value = saved[name]
            setattr(context, name, tuple(value) if name == "previous_total" and value
                    else value)


def log_key_prefix(path, inode, restarts):
    """The start of the history keys of a request log's lines: the file (its real path,
    inode and restarts); each key ends with the line's offset."""
    return "f:%s:%s:%d:" % (os.path.realpath(path), inode, restarts)


def log_path_of_key(key):
    """The real path a request log's history key holds (log_key_prefix), or None."""
    return key[2:].rsplit(":", 3)[0] if key.startswith("f:") and key.count(":") >= 4 \
        else None


def _ingest_range_worker(history_path, job, byte_range):
    REFUSED_VALUES.clear()
    history = History(history_path)
    try:
        stats = SourceStats("")
        reached = ingest_range(history, job, byte_range, stats)
        return worker_result((stats, reached))
    finally:
        history.close()


def ingest_range(history, job, byte_range, stats, state=None):
    """Stores the requests of a request log's lines from start up to end (None: to
    its last complete line), a slice a transaction so memory stays flat; with state,
    each slice also stores how far the file is read, so an interrupted run resumes
    from the last slice stored.  Returns the offset reached."""
    (prefix, label, path), (start, end) = job, byte_range
    rows = []
    keep = LineKeeper(rows, label)
    reader = LineReader(start)
    saved = [state] if state is not None else ()
    with open_regular(path) as handle:
        for block in iter_blocks(handle, start, end):
            for offset, line in reader.feed_located(block):
                keep.line(prefix + str(offset))
                scan_request_lines((line,), stats, keep)
            if len(rows) >= HISTORY_SAVE_ROWS:
                if state is not None:
                    state.lines = LineReader(reader.line_start)
                history.save(rows, saved)
                del rows[:]
    tail_start, tail = reader.line_start, reader.finish()
    if tail:  # a line still being written: stored as it is now, read again next time
        keep.line(prefix + str(tail_start))
        scan_request_lines((tail,), stats, keep)
    stats.skipped["malformed"] += reader.oversized
    if state is not None:
        state.lines = LineReader(tail_start)
    history.save(rows, saved)
    return tail_start


# prices: the only code that touches the network

def history_can_name(path):
    """Whether the history can store a log of this name: SQLite's text is UTF-8, and
    a name that is not (a byte Python carries as a lone surrogate) cannot be."""
    try:
        os.path.realpath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def warn(message):
    sys.stderr.write("catop: warning: %s\n" % clean(message))


def xdg_dir(variable, default_parts):
    base = os.environ.get(variable) or os.path.join(os.path.expanduser("~"), *default_parts)
    return os.path.join(base, "catop")


def load_budget_config(path=None, warn=None):
    """{period: USD} from config.json ({"budgets": {"daily": 20, ...}}); bad input warns."""
    path = path or os.path.join(xdg_dir("XDG_CONFIG_HOME", (".config",)), "config.json")
    try:
        with open_regular(path) as handle:
            document = json.loads(handle.read())
    except OSError:
        return {}
    except (ValueError, RecursionError) as error:
        if warn:
            warn("ignoring %s: not valid JSON (%s)" % (path, error))
        return {}
    budgets = document.get("budgets") if type(document) is dict else None
    found = {}
    for period, value in (budgets or {}).items() if type(budgets) is dict else ():
        amount = as_money(value)
        if period in BUDGET_PERIODS and amount is not None and amount > 0:
            found[period] = amount
        elif warn:
            warn("ignoring budgets.%s in %s: a period of %s with a positive amount" % (
                clean(period), path, "/".join(BUDGET_PERIODS)))
    return found


def price_cache_path():
    return os.path.join(xdg_dir("XDG_CACHE_HOME", (".cache",)), "prices.json")


def write_atomic(path, data):
    """Writes bytes to path through a temporary file and os.replace."""
    folder = os.path.dirname(path)
    make_private_folder(folder)
    import tempfile   # the modules few runs need are imported where they are needed
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")   # 0600
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def parse_price_map(data, origin):
    """A LiteLLM price map from bytes; raises PriceError when it is not one."""
    try:
        table = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise PriceError("%s is not valid JSON (%s)" % (origin, error))
    if type(table) is not dict or not any(is_price_entry(k, v) for k, v in table.items()):
        raise PriceError("%s is not a LiteLLM price map (an object of models)" % origin)
    return table


def fetch_prices(url=PRICES_URL, timeout_s=PRICE_FETCH_TIMEOUT_S):
    """Downloads LiteLLM's public price map; raises CatopError on any failure."""
    import urllib.error    # imported here: 7 MB that a run without a fetch never needs
    import urllib.request
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data = response.read(64 * 1024 * 1024)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise CatopError("could not fetch prices from %s: %s" % (url, error))
    return data


def _read_cached_prices(path, warn):
    """(table, mtime) from the user's price cache, or None (a bad cache is a miss)."""
    try:
        with open_regular(path) as handle:
            data = handle.read()
        mtime = os.path.getmtime(path)
    except OSError:
        return None
    try:
        return parse_price_map(data, "price cache %s" % path), mtime
    except PriceError as error:
        warn("ignoring the price cache: %s" % error)
        return None


def _fetch_and_cache(cache, now, fetch, warn):
    """A fresh price table, written to the cache; None after a failure (remembered)."""
    marker = cache + ".failed"
    try:
        data = fetch()
        table = parse_price_map(data, "the fetched price map")
    except CatopError as error:
        warn("%s; using the next price source" % error)
        try:
            write_atomic(marker, str(now).encode())
        except OSError:
            pass
        return None
    try:
        write_atomic(cache, data)
        if os.path.exists(marker):
            os.unlink(marker)
    except OSError as error:
        warn("could not write the price cache %s: %s" % (cache, error))
    return table


def _recent_failure(cache, now):
    try:
        return now - os.path.getmtime(cache + ".failed") < PRICE_FAILURE_MEMORY_S
    except OSError:
        return False


def bundled_prices_path():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "prices.json")


def load_prices(prices_path=None, offline=False, refresh=False, now=None,
                fetch=None, warn=None, cache=None):
    """The price book, from the first origin that answers (see --prices help)."""
    now = time.time() if now is None else now
    fetch = fetch or fetch_prices
    warn = warn or (lambda message: None)
    if prices_path:
        try:
            with open_regular(prices_path) as handle:
                data = handle.read()
            mtime = os.path.getmtime(prices_path)
        except OSError as error:
            raise PriceError("cannot read --prices %s: %s" % (prices_path, error.strerror))
        return PriceBook(parse_price_map(data, prices_path), "file:%s" % prices_path,
                         max(0.0, now - mtime))
    cache = cache or price_cache_path()
    cached = _read_cached_prices(cache, warn)
    if cached and not refresh and now - cached[1] < PRICE_CACHE_MAX_AGE_S:
        return PriceBook(cached[0], "cache:%s" % cache, max(0.0, now - cached[1]))
    if not offline and (refresh or not _recent_failure(cache, now)):
        table = _fetch_and_cache(cache, now, fetch, warn)
        if table is not None:
            return PriceBook(table, "url:%s" % PRICES_URL, 0.0)
    if cached:
        return PriceBook(cached[0], "cache:%s (stale)" % cache, max(0.0, now - cached[1]))
    bundled = bundled_prices_path()
    try:
        with open_regular(bundled) as handle:
            table = parse_price_map(handle.read(), bundled)
        return PriceBook(table, "file:prices.json", max(0.0, now - os.path.getmtime(bundled)))
    except (OSError, PriceError):
        pass
    built = utc_epoch_s(datetime.strptime(EMBEDDED_PRICES_DATE, "%Y-%m-%d"))
    return PriceBook(embedded_price_map(), "embedded", max(0.0, now - built))


# demo: simulated traffic, deterministic for a seed

_DEMO_PROFILES = (
    # agent, provider, models, project, sessions, system-prompt tokens, gap seconds
    ("claude-code", "anthropic", ("claude-sonnet-4-5", "claude-opus-4-5"),
     "/home/dev/acme-api", 4, 18000, 40),
    ("claude-code", "anthropic", ("claude-haiku-4-5",), "/home/dev/infra", 2, 9000, 25),
    ("codex", "openai", ("gpt-5-codex", "gpt-5"), "/home/dev/acme-api", 3, 12000, 35),
    ("rag-api", "openai", ("gpt-4o-mini",), "rag-api", 3, 3000, 8),
    ("eval-runner", "google", ("gemini-2.5-pro",), "eval-runner", 2, 40000, 20),
    ("support-bot", "deepseek", ("deepseek-chat",), "support-bot", 2, 2500, 15),
)


# What a provider reports when the demo's prompt changes (OpenAI, Anthropic); the
# last of Anthropic's is a clean comparison: the entry was evicted early.
_DEMO_CHANGES = (
    (("prefix_changed", "input_changed", 2600), ("settings_changed", "reasoning_effort_changed",
                                                 None),
     ("tools_changed", "tools_changed", 7400), ("prefix_changed", "input_changed", None)),
    (("tools_changed", "tools_changed", 5200), ("system_changed", "system_changed", 9100),
     ("messages_changed", "messages_changed", 3300), (NO_CHANGE, None, None)))


def demo_requests(seed=1, now=None, hours=6.0):
    """Realistic mixed traffic: growing conversations whose cache sometimes breaks
    (idle gaps past the TTL, model switches, compactions, prompt changes)."""
    return demo_traffic(seed, now, hours)[0]


def demo_traffic(seed=1, now=None, hours=6.0):
    """(requests in time order, compactions as (session, ts)) of the demo."""
    now = time.time() if now is None else now
    import random
    rng = random.Random(seed)
    requests, compactions = [], []
    for agent, provider, models, project, sessions, system, gap in _DEMO_PROFILES:
        for number in range(sessions):
            session = "%s-%04x" % (agent, rng.randrange(0x10000))
            ts = now - hours * 3600 * rng.uniform(0.3, 1.0)
            requests.extend(_demo_session(rng, ts, now, agent, provider, models, project,
                                          session, system, gap, compactions))
    requests.sort(key=lambda r: r.ts)
    return requests, compactions


def _demo_session(rng, ts, now, agent, provider, models, project, session, system, gap,
                  compactions):
    anthropic = provider == "anthropic"
    coding = agent in ("claude-code", "codex")   # these report why the cache missed
    model, cached, context, ttl = models[0], 0, system, 300
    out, diagnosis, changes = [], None, int(session[-1], 16)   # which change comes first
    while ts < now and len(out) < 90:
        event = rng.random()
        if event < 0.04:
            idle = rng.uniform(400, 4000)        # away from the keyboard
            ts += idle
            if idle > ttl:
                cached = 0
                diagnosis = (NO_CHANGE, None, None) if anthropic else None
        elif event < 0.07:
            if len(models) > 1:
                model = rng.choice([m for m in models if m != model])  # a new cache
                cached = 0
                diagnosis = ("model_switch", "model_changed", None)
        elif event < 0.09:
            if coding:
                context = system + rng.randint(2000, 6000)  # compaction
                cached = 0
                compactions.append((session, ts - 1))
                diagnosis = None if anthropic else ("compaction", "context_compacted", None)
        elif event < 0.10:
            cached = min(cached, rng.randint(0, system // 2))  # the prompt changed
            diagnosis = _DEMO_CHANGES[anthropic][changes % 4]
            changes += 1
        if ts >= now:
            break
        context += rng.randint(300, 4000)
        read = min(cached, context)
        fresh = context - read
        write = fresh if anthropic else 0
        miss = rng.randint(1, 12) if anthropic else fresh
        one_hour = anthropic and agent == "claude-code" and rng.random() < 0.3
        ttl = 3600 if one_hour else CACHE_TTL_S.get(provider, DEFAULT_TTL_S)
        output = rng.randint(80, 2500)
        reasoning = rng.randint(0, output // 2) if "gpt-5" in model or "gemini" in model else 0
        out.append(Request(ts, agent, provider, model, project, session, miss, read,
                           0 if one_hour else write, write if one_hour else 0,
                           output, reasoning,
                           diagnosis=_diagnosis(*diagnosis) if diagnosis and coding else None))
        diagnosis = None
        cached = context if (anthropic or context >= 1024) else 0
        ts += rng.expovariate(1.0 / gap)
    return out


# the status line's state: one Claude Code session, read as it grows

def statusline_dir():
    return os.path.join(xdg_dir("XDG_CACHE_HOME", (".cache",)), "statusline")


def session_files(transcript):
    """A Claude Code transcript and its subagents' files (<session>/subagents/*.jsonl)."""
    folder = os.path.join(transcript[:-6] if transcript.endswith(".jsonl") else transcript,
                          "subagents")
    try:
        names = sorted(name for name in os.listdir(folder) if name.endswith(".jsonl"))
    except OSError:
        names = []
    return [transcript] + [os.path.join(folder, name) for name in names]


def effects_state(effects):
    """A CacheEffects as JSON values: its sessions' held states, price classes and
    breaks (not its what-if, which a status line never shows)."""
    def listed(value):
        return list(value) if type(value) is tuple else value
    return {"last": [[listed(chain), offset] for chain, offset in effects.last.items()],
            "held": base64.b64encode(bytes(effects.held)).decode("ascii"),
            "models": effects.models,
            "classes": [[list(key[0])] + list(key[1:5]) + [listed(key[5]), key[6]]
                        for key in effects.classes.keys],
            "tallies": [list(_TALLY_FIELDS(tally)) for tally in effects.classes.tallies],
            "unread": [[class_id, list(pair)] for class_id, pair in effects.unread.items()],
            "breaks": [list(_BREAK_FIELDS(found)) for found in effects.breaks],
            "compactions": effects.compactions, "unordered": effects.unordered}


def effects_from_state(doc, prices):
    """The CacheEffects effects_state gave; raises (ValueError, TypeError, ...) on
    anything else."""
    def chain(value):
        return tuple(value) if type(value) is list else value
    effects = CacheEffects(prices, _NO_GROUP, {str(k): [float(t) for t in v]
                                               for k, v in doc["compactions"].items()})
    effects.held = bytearray(base64.b64decode(doc["held"]))
    effects.last = {chain(c): int(offset) for c, offset in doc["last"]}
    if any(not 0 <= offset <= len(effects.held) - _HELD.size for offset in effects.last.values()):
        raise ValueError("a held state outside the held bytes")
    for model in doc["models"]:
        effects._model_id(str(model))
    keys = [(tuple(k[0]), str(k[1]), str(k[2]), int(k[3]), bool(k[4]), chain(k[5]),
             str(k[6])) for k in doc["classes"]]
    effects.classes.__setstate__((keys, [_tally_from(values) for values in doc["tallies"]]))
    effects.unread = {int(class_id): list(pair) for class_id, pair in doc["unread"]}
    effects.breaks = [CacheBreak(*values) for values in doc["breaks"]]
    effects.unordered = int(doc["unordered"])
    return effects


class SessionTail(object):
    """A Claude Code session (its transcript and subagent files) read as it grows:
    each call reads what the files gained, de-duplicated as AgentSource does, and
    pairs it in the one break engine (CacheEffects); the JSON state keeps the files'
    offsets and the running sums, so a call costs what is new, not the session.

    The last response of each file stays pending (its streamed lines may still grow),
    counted in what is shown but not yet folded into the running sums."""

    def __init__(self, prices):
        self.prices = prices
        self.states = {}         # path -> FileState
        self.effects = CacheEffects(prices, _NO_GROUP)
        self.folded = set()      # the short_key of each response in the running sums
        self.main_messages = set()   # their message parts, of the main thread's
        self.pending = {}        # key -> Request, the latest response of each file
        self.last_keys = {}      # path -> the key of its latest response (still pending)
        self.spend = {}          # local day -> USD of the folded responses

    def read(self, paths):
        """Takes in what the files gained; False when one was replaced or cut short
        (what was folded from it is then no longer true: start a fresh tail)."""
        for path in paths:
            state = self.states.get(path)
            if state is None:
                state = self.states[path] = FileState(path)
            restarts = state.restarts
            try:
                results, _ = scan_agent_jsonl("claude-code", state, final=True)
            except OSError:
                continue     # gone since it was listed: what it gave stays counted
            if state.restarts != restarts:
                return False
            last = None
            for session, result in results:
                if isinstance(result, Compaction):
                    times = self.effects.compactions.setdefault(session, [])
                    if result.ts is not None and result.ts not in times:
                        times.append(result.ts)
                    continue
                if type(result) is Superseded:   # counted as its iterations now
                    self.pending.pop(result.key, None)
                    self.folded.add(short_key(result.key))
                    continue
                key, req = result
                key = _field_key(req) if key is None else key
                if short_key(key) in self.folded:
                    continue
                held = self.pending.get(key)
                if held is None or _line_size(key, req) > _line_size(key, held):
                    self.pending[key] = req
                last = key
            if last is not None:
                self.last_keys[path] = last
        latest = set(self.last_keys.values())   # a file with nothing new keeps its own
        self._fold([key for key in self.pending if key not in latest])
        return True

    def _fold(self, keys):
        """Moves these pending responses into the running sums, in time order."""
        chosen = [(key, self.pending.pop(key)) for key in keys]
        for key, req in sorted(chosen, key=lambda item: request_order(item[1])):
            self.folded.add(short_key(key))
            if self._replayed(key, req):
                continue
            if type(key) is int and not req.sidechain:
                self.main_messages.add(key_message_part(key))
            self.effects.add(req)
            if req.ts is not None:
                day = local_day(req.ts)
                cost = request_cost(req, self.prices.rates(req.model, req.provider,
                                                          req.tier))[0]
                self.spend[day] = self.spend.get(day, 0.0) + cost

    def _replayed(self, key, req):
        """A subagent's copy of a response its parent counted (formats.md section 3)."""
        if not (req.sidechain and type(key) is int):
            return False
        message = key_message_part(key)
        return message in self.main_messages or any(
            type(k) is int and not r.sidechain and key_message_part(k) == message
            for k, r in self.pending.items())

    def shown(self):
        """(CacheEffects, spend by day) with the pending responses counted too."""
        copy = SessionTail(self.prices)
        copy.effects = effects_from_state(effects_state(self.effects), self.prices)
        copy.folded, copy.main_messages = set(self.folded), set(self.main_messages)
        copy.pending, copy.spend = dict(self.pending), dict(self.spend)
        copy.last_keys = dict(self.last_keys)
        copy._fold(list(copy.pending))
        return copy.effects, copy.spend

    def as_state(self):
        return {"version": STATUSLINE_STATE_VERSION, "effects": effects_state(self.effects),
                "files": {path: file_state_dict(state) for path, state in self.states.items()},
                "folded": sorted(self.folded),
                "main_messages": sorted(self.main_messages),
                "pending": [[k if type(k) is int else None, None if type(k) is int else k,
                             list(_REQUEST_FIELDS(r))[:-1]] for k, r in self.pending.items()],
                "last_keys": [[path, k if type(k) is int else None, None if type(k) is int
                               else k] for path, k in self.last_keys.items()],
                "spend": self.spend}

    @classmethod
    def from_state(cls, doc, prices):
        if doc.get("version") != STATUSLINE_STATE_VERSION:
            raise ValueError("another version's state")
        tail = cls(prices)
        tail.effects = effects_from_state(doc["effects"], prices)
        tail.states = {path: file_state_from(path, row) for path, row in doc["files"].items()}
        tail.folded = set(int(k) for k in doc["folded"])
        tail.main_messages = set(int(m) for m in doc["main_messages"])
        for number, text, values in doc["pending"]:
            values[15] = values[15] and tuple(values[15])   # the diagnosis
            tail.pending[number if number is not None else str(text)] = Request(*values)
        tail.last_keys = {str(path): number if number is not None else str(text)
                          for path, number, text in doc["last_keys"]}
        tail.spend = {str(day): float(cost) for day, cost in doc["spend"].items()}
        return tail


STATUSLINE_STATE_VERSION = "2:" + _HELD.format   # a state of another layout is not read


def short_key(key):
    """A response's key in 64 bits, as the state keeps the keys it counted (a 50 MB
    transcript's 5,000 in 100 KB, not 400 KB): a collision is about 1 in 10^12."""
    if type(key) is int:
        return (key >> 64) ^ (key & 0xFFFFFFFFFFFFFFFF)
    return _stable_hash(key)


def file_state_dict(state):
    """A FileState as JSON values, as the history keeps one."""
    return {"device": state.device, "inode": state.inode, "size": state.size,
            "mtime": state.mtime, "offset": state.offset, "restarts": state.restarts,
            "head": list(state.head) if state.head else None,
            "tail": list(state.tail) if state.tail else None,
            "context": context_dict(state.context)}


def file_state_from(path, row):
    state = FileState(path, int(row["offset"]))
    state.device, state.inode, state.size = row["device"], row["inode"], int(row["size"])
    state.mtime, state.restarts = row["mtime"], int(row["restarts"])
    state.head = tuple(row["head"]) if row["head"] else None
    state.tail = tuple(row["tail"]) if row.get("tail") else None
    restore_context(state.context, row["context"])
    return state


# ------------------------------------------------------------------- render
# model -> lines of text, already cut to width; nothing here prints.

def budget_lines(tracker):
    return ["budget  %s: %s of %s (%.0f%%)%s" % (
        period, fmt_usd(spent, 2), fmt_usd(limit, 2), share * 100,
        {"ok": "", "warning": "  warning: past 80%", "over": "  OVER BUDGET"}[state])
        for period, limit, spent, share, state in tracker.status()]


def trend_lines(trend, days=TREND_DAYS, unicode_ok=True):
    """Three sparklines over the last days, starting in one column, each with the
    window's figure: the cost and the saving summed, the hit rate of all its input."""
    if not trend.days:
        return []
    cost, saved, hit = trend.series(days)
    total_cost = sum(v for v in cost if v is not None)
    total_saved = sum(v for v in saved if v is not None)
    head = "trend %dd" % days
    return ["%s  cost  %s  %s" % (head, scaled_sparkline(cost, unicode_ok),
                                  fmt_usd(total_cost, 2)),
            "%s  saved %s  %s" % (" " * len(head), scaled_sparkline(saved, unicode_ok),
                                  fmt_usd(total_saved, 2)),
            "%s  hit   %s  %s" % (" " * len(head), sparkline(hit, unicode_ok),
                                  fmt_pct(trend.hit_rate(days)))]


def live_alerts(buckets, now, breaks, unpriced, sources, alert_burn):
    """Alert texts, newest first."""
    alerts = []
    count, tokens_in, read, _, cost = buckets.sums(now - 299, now + 1)
    hit = read / tokens_in if tokens_in else None
    if hit is not None and hit < LOW_HIT_ALERT:
        causes = {}
        for item in reversed(breaks):  # in time order: the recent ones are at the end
            if item.ts < now - 300:
                break
            if item.ts <= now:
                key = (item.cause, item.reported)
                causes[key] = causes.get(key, 0) + 1
        cause = max(sorted(causes), key=causes.get) if causes else None
        text = "hit rate %s over the last 5 min" % fmt_pct(hit)
        if cause:
            text += ": %s %s" % ("reported:" if cause[1] else "likely", CAUSE_TEXT[cause[0]])
        alerts.append((now - 2, text))
    burn = cost * 12.0
    if alert_burn is not None and burn > alert_burn:
        alerts.append((now - 3, "burn rate %s/h above --alert-burn %s/h" % (
            fmt_usd(burn, 2), fmt_usd(alert_burn, 2))))
    count, _, _, tokens_out, cost = buckets.sums(now - 59, now + 1)
    if cost > 0 and tokens_out == 0:
        alerts.append((now - 1, "%s spent in the last minute with no output tokens: "
                       "a tool loop?" % fmt_usd(cost)))
    if breaks and breaks[-1].ts is not None and now - 900 <= breaks[-1].ts <= now + 1:
        latest = breaks[-1]
        alerts.append((latest.ts, "cache break %s ago in %s (%s): %s, %s paid again" % (
            fmt_gap(max(0.0, now - latest.ts)), clean(latest.session), clean(latest.model),
            latest.cause.replace("_", " ") + (" (reported)" if latest.reported else ""),
            fmt_usd(latest.cost))))
    if unpriced:
        alerts.append((0.0, "unpriced models (cost shown as $0): %s" % ", ".join(
            clean(m) for m in sorted(unpriced)[:5])))
    for stats in sources:
        if stats.error:
            alerts.append((now, "%s: %s" % (clean(stats.name), clean(stats.error))))
    alerts.sort(key=lambda a: a[0], reverse=True)
    return [text for _, text in alerts]


class Frame(object):
    """Everything one screen shows, computed from the model; rendering is separate."""

    def __init__(self):
        self.totals = Tally()
        self.rows = []           # [(key, tally)] or, in a timeline, [(req, cost)]
        self.details = {}
        self.rates = []
        self.spark = []
        self.alerts = []
        self.breaks = []
        self.budgets = []        # [(period, limit, spent, share, state)]
        self.trend = None        # a DailyTrend, for the trends panel
        self.warm = []           # warm_sessions(), as of the model's last change
        self.gaps = {}           # gap_histograms(), for the breaks panel
        self.now = 0.0
        self.prices = None       # the model's, for the names groups go by


def live_budgets(model, limits, now, cache):
    """The budget status rows for a live model, recomputed only when data or day change."""
    if not limits:
        return []
    starts = budget_starts(now)
    key = (model.version, tuple(sorted(limits.items())), starts["daily"])
    if cache.get("budget_key") != key:
        tracker = BudgetTracker(limits, now)
        for entry in model.timeline.since(min(starts[p] for p in limits)):
            tracker.add(entry.req.ts, entry.cost)
        cache["budget_key"], cache["budgets"] = key, tracker.status()
    return cache["budgets"]


def live_trend(model, now, cache):
    """The daily trend of the last 90 days, recomputed when data or day change."""
    key = (model.version, int(now // 86400))
    if cache.get("trend_key") != key:
        trend = DailyTrend(now)
        for entry in model.timeline.since(now - 91 * 86400):
            trend.add(entry.req.ts, entry.cost, entry.no_cache_cost, entry.req.cache_read,
                      entry.req.input)
        cache["trend_key"], cache["trend"] = key, trend
    return cache["trend"]


def live_cache_state(model, now, cache, panel=False, start=None, until=None):
    """(warm sessions, breaks, gap histograms or {}) of a live model: the entries warm
    at its last change (those expired since are dropped when drawn); for the breaks
    panel, the breaks and gaps of the window alone, as a snapshot of it counts them;
    each worked out again only when the model (or the window's first request) changes,
    requests appended after the window's own only paired on."""
    if cache.get("warm_key") != model.version:
        cache["warm_key"], cache["warm"] = model.version, warm_sessions(model.effects, now)
    if not panel:
        return cache["warm"], model.breaks, {}
    if start is None and until is None:
        effects = model.effects
    else:
        key = (bisect.bisect_left(model.timeline.times, start) if start is not None else 0,
               until)
        effects = cache.get("window_effects")
        if cache.get("window_key") == (model.version - 1,) + key and \
                _pairs_on(effects, model.appended, until):
            for entry in model.appended:
                effects.add(entry.req)
        elif cache.get("window_key") != (model.version,) + key:
            effects = windowed_effects(model, start, until)
        cache["window_key"], cache["window_effects"] = (model.version,) + key, effects
    if cache.get("panel_of") is not effects or cache.get("panel_version") != model.version:
        cache["panel_of"], cache["panel_version"] = effects, model.version
        cache["breaks"] = sorted(effects.breaks, key=_break_order)
        cache["gaps"] = gap_histograms(effects)
    return cache["warm"], cache["breaks"], cache["gaps"]


def _pairs_on(effects, appended, until):
    """Whether requests appended to a live model can be paired on after a window's
    effects: none of them before its chain's last there (a late one: pair afresh)."""
    if appended is None or effects is None or until is not None:
        return False
    for entry in appended:
        req = entry.req
        if req.session and req.ts is not None:
            last = effects.last_time(chain_of(req))
            if last is not None and req.ts < last:
                return False
    return True


def windowed_effects(model, start, until):
    """The cache effects of a live model's requests in [start, until), as a snapshot
    of that window has them: what a request leaves its chain depends on that request
    alone, so each chain's last request before the window is paired first (counting
    nothing), then the window's requests, counted."""
    timeline = model.timeline
    first = 0 if start is None else bisect.bisect_left(timeline.times, start)
    end = len(timeline.times) if until is None else bisect.bisect_left(timeline.times, until)
    before = {}
    for entry in timeline.timed[:first]:   # (every chain's: requests appended later pair on)
        if entry.req.session:
            before[chain_of(entry.req)] = entry.req
    effects = CacheEffects(model.prices, _NO_GROUP, model.compactions())
    for req in sorted(before.values(), key=lambda req: req.ts):
        effects.add(req, False)
    for entry in timeline.timed[first:end]:
        effects.add(entry.req)
    return effects


def build_frame(model, view, now, alert_burn=5.0, cache=None, budget_limits=None):
    """The frame for a view of the model at time now (pure: no I/O).  The grouped
    table, the costly part, is kept in cache (a dict) while nothing it depends on
    has changed, so an idle tick costs only the rolling figures."""
    frame = Frame()
    frame.now = now
    frame.prices = model.prices
    timeline = model.timeline
    start, until = _view_bounds(view, now)
    shape = (start if start is None else bisect.bisect_left(timeline.times, start), until,
             view.group_by, tuple(view.stack), view.sort, view.descending, view.filter)
    cache = {} if cache is None else cache
    if cache.get("shape") == shape and cache.get("version") == model.version:
        table = cache["table"]
    elif cache.get("shape") == shape and cache.get("version") == model.version - 1 and \
            model.appended is not None and until is None and view.level() != "timeline":
        table = cache["table"]
        _add_to_table(table, _in_view(model.appended, view, start, model.prices), view,
                      model.prices)
    else:
        table = _build_table(timeline.since(start, until), view, model.prices)
    cache["shape"], cache["version"], cache["table"] = shape, model.version, table
    if view.level() == "timeline":
        frame.rows = table["rows"]
    else:
        frame.rows = _filtered_rows(table["groups"], view)
    frame.details, frame.totals = table["details"], table["totals"]
    if view.filter and view.level() != "timeline":   # the summary is of the rows shown
        frame.totals = Tally()
        for _, tally in frame.rows:
            frame.totals.merge(tally)
    frame.rates = rolling_rates(model.buckets, now)
    frame.spark = hit_series(model.buckets, now)
    frame.alerts = live_alerts(model.buckets, now, model.breaks, table["unpriced"],
                               model.stats(), alert_burn)
    frame.budgets = live_budgets(model, budget_limits, now, cache)
    frame.warm, frame.breaks, frame.gaps = live_cache_state(
        model, now, cache, view.breaks_panel, start, until)
    if view.trends_panel:
        frame.trend = live_trend(model, now, cache)
    frame.alerts[:0] = ["%s budget spent: %s of %s" % (period, fmt_usd(spent, 2),
                                                       fmt_usd(limit, 2))
                        for period, limit, spent, share, state in frame.budgets
                        if state == "over"]
    return frame


def _view_bounds(view, now):
    start = window_start(view.window, now)
    since, until = view.bounds
    if since is not None:
        start = since if start is None else max(start, since)
    return start, until


def _in_view(entries, view, start=None, prices=None):
    """The entries inside the view's drill-down path (and after start, if given)."""
    if start is not None:
        entries = [e for e in entries if e.req.ts is not None and e.req.ts >= start]
    if view.level() == "timeline":   # the whole session, whatever group led to it
        session = view.stack[-1]
        return [e for e in entries if e.req.session == session]
    for group_by, key in [level for level in view.stack if not isinstance(level, str)]:
        key_of = group_key_function(group_by, prices)
        entries = [e for e in entries if key_of(e.req) == key]
    return entries


def in_drill_path(view, prices):
    """req -> whether it belongs to every group the view drilled through (a session's
    timeline highlights the requests of the model it was reached from)."""
    levels = [(group_key_function(group_by, prices), key) for group_by, key in
              [level for level in view.stack if not isinstance(level, str)]]
    return lambda req: all(key_of(req) == key for key_of, key in levels)


def _build_table(entries, view, prices):
    """The view's table of entries: {groups, details, rows (a timeline), totals,
    unpriced}; grouped tables are sorted and filtered when shown.  Its requests are
    counted in price classes and priced as a snapshot prices them (one engine)."""
    table = {"classes": PriceClasses(), "details": {}, "rows": []}
    _add_to_table(table, _in_view(entries, view, None, prices), view, prices)
    return table


def _add_to_table(table, entries, view, prices):
    classes, details = table["classes"], table["details"]
    if view.level() == "timeline":
        for entry in entries:
            classes.count(entry.req, (), True, False)
        rows = table["rows"] + [(e.req, e.cost) for e in entries]
        table["rows"] = sorted(rows, key=lambda row: request_order(row[0]))
    else:
        key_of = group_key_function(view.grouping(), prices)
        for entry in entries:
            req = entry.req
            key = key_of(req)
            classes.count(req, key, True, False)
            detail = details.get(key)
            if detail is None:
                detail = details[key] = (set(), set())
            detail[0].add(req.model)
            detail[1].add(req.project)
    table["groups"], table["unpriced"], table["totals"] = priced_groups(classes, prices)


def _filtered_rows(groups, view):
    if view.filter:
        needle = view.filter.lower()
        grouping = view.grouping()
        groups = {k: t for k, t in groups.items()
                  if needle in " ".join(display_key(f, v) for f, v in
                                        zip(grouping, k)).lower()}
    return sorted_groups(groups, view.sort, view.descending)


def fmt_int(number):
    return "{:,}".format(number)


def fmt_tokens(number, compact=False):
    if not compact or number < 10000:
        return fmt_int(number)
    for limit, suffix in ((1e6, "k"), (1e9, "M"), (1e12, "G")):
        if number < limit:
            value = number / (limit / 1000)
            return ("%.1f%s" if value < 100 else "%.0f%s") % (value, suffix)
    return "%.0fT" % (number / 1e12)


def fmt_usd(amount, decimals=None):
    """Dollars: whole above $100; else 2 decimals, or 4 below $1 (decimals forces it)."""
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if decimals is None:
        if amount >= 100:
            return "%s$%s" % (sign, "{:,.0f}".format(amount))
        decimals = 2 if amount >= 1 or amount == 0 else 4
    return "%s$%s" % (sign, "{:,.{}f}".format(amount, decimals))


def money_formatter(values):
    """One precision for a column of dollars: that of its largest value."""
    largest = max([abs(v) for v in values] or [0.0])
    decimals = 2 if largest >= 1 else 4
    return lambda amount: fmt_usd(amount, decimals)


def fmt_pct(ratio):
    return "-" if ratio is None else "%.1f%%" % (ratio * 100)


def fmt_time(ts, with_date=True):
    if ts is None:
        return "(no time)"
    return time.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S", time.localtime(ts))


def fmt_age(seconds):
    if seconds < 90:
        return "fresh"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return "%d%s old" % (seconds // size, unit)
    return "fresh"


def char_width(char):
    """Terminal columns of one character: East Asian wide and fullwidth take two,
    combining marks and format characters none."""
    if unicodedata.east_asian_width(char) in ("W", "F"):
        return 2
    return 0 if unicodedata.category(char) in ("Mn", "Me", "Cf") else 1


def display_width(text):
    """Terminal columns a text takes (a model or project name may be Chinese)."""
    if text.isascii():
        return len(text)
    return sum(char_width(char) for char in text)


def fit(text, width, ellipsis="~"):
    """Text cut to width terminal columns (no wrapping, ever), never inside a number."""
    if width <= 0:
        return ""
    if width <= len(ellipsis):
        ellipsis = ""  # no room for a mark: the text alone, cut
    if text.isascii():
        if len(text) <= width:
            return text
        return text[:whole_number_cut(text, width - len(ellipsis))] + ellipsis
    if display_width(text) <= width:
        return text
    room, kept, used = width - len(ellipsis), 0, 0
    for char in text:
        used += char_width(char)
        if used > room:
            break
        kept += 1
    return text[:whole_number_cut(text, kept)] + ellipsis


_NUMBER_CHARS = frozenset("0123456789,.:$%+-()kMGTxhms")   # 1.2M, 01:53, 5m, 2.0x


def whole_number_cut(text, cut):
    """cut, or the start of the number it would split: a number cut short reads as
    another number (read 124,115,42 for 124,115,427)."""
    start, end = cut, cut
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    word = text[start:end]
    if start < cut < end and all(char in _NUMBER_CHARS for char in word) and \
            any(char.isdigit() for char in word):
        return start
    return cut


def pad(text, width):
    """Text padded with spaces to width terminal columns: str.ljust counting
    columns, not characters."""
    return text + " " * max(0, width - display_width(text))


def short_project(path):
    """A project shown by its last two path parts; the key keeps the full path."""
    if "/" not in path and "\\" not in path:
        return path
    parts = [p for p in re.split(r"[\\/]+", path) if p]
    return "/".join(parts[-2:]) if parts else path


def display_key(field, value):
    value = clean(value)
    if field == "project":
        return short_project(value) or "(none)"
    return value or "(none)"


# A column: (header, getter, compact formatter, full formatter, drop priority)
_TABLE_COLUMNS = (
    ("REQ", lambda t: t.requests, fmt_int, fmt_int, 9),
    ("INPUT", lambda t: t.input, lambda n: fmt_tokens(n, True), fmt_tokens, 1),
    ("READ", lambda t: t.cache_read, lambda n: fmt_tokens(n, True), fmt_tokens, 6),
    ("WRITE", lambda t: t.cache_write, lambda n: fmt_tokens(n, True), fmt_tokens, 4),
    ("MISS", lambda t: t.miss, lambda n: fmt_tokens(n, True), fmt_tokens, 5),
    ("OUT", lambda t: t.output, lambda n: fmt_tokens(n, True), fmt_tokens, 2),
    ("HIT%", lambda t: t.hit_rate, fmt_pct, fmt_pct, 8),
    ("COST", lambda t: t.cost, fmt_usd, fmt_usd, 10),
    ("SAVED", lambda t: t.saved, fmt_usd, fmt_usd, 7),
)


def table_columns(cells, headers, rows, width, optional=()):
    """Fits the group table to width, giving up the least first: full numbers, then
    compact ones, then INPUT (it is read + write + miss), then the optional label
    columns (by index, first given up first), then label width down to 16, then
    numeric columns by priority, then labels down to 6.
    Returns (label widths, of which 0 means dropped; numeric columns; compact?)."""
    label_widths = [max([len(h)] + [display_width(row[i]) for row in cells])
                    for i, h in enumerate(headers)]
    columns = _table_columns_for(rows)

    def overflow(compact):
        widths = _number_widths(rows, columns, compact)
        shown = [w for w in label_widths if w]
        return sum(shown) + 2 * max(0, len(shown) - 1) + \
            sum(w + 2 for w in widths) - (0 if shown else 2) - width

    if overflow(False) <= 0:
        return label_widths, columns, False
    for step in ("drop-input", "drop-labels", "labels-16", "drop", "labels-6"):
        if overflow(True) <= 0:
            break
        if step == "drop-input":
            columns = [c for c in columns if c[0] != "INPUT"]
        elif step == "drop-labels":
            for index in optional:
                if overflow(True) <= 0:
                    break
                label_widths[index] = 0
        elif step == "drop":
            while overflow(True) > 0 and len(columns) > 1:
                columns.remove(min(columns, key=lambda c: c[4]))
        else:
            floor = 16 if step == "labels-16" else 6
            for i in reversed(range(len(label_widths))):
                if label_widths[i]:
                    cut = min(max(0, overflow(True)), max(0, label_widths[i] - floor))
                    label_widths[i] -= cut
    return label_widths, columns, True


def _table_columns_for(rows):
    """_TABLE_COLUMNS with each money column formatted at one precision for these rows."""
    columns = []
    for header, getter, short, full, priority in _TABLE_COLUMNS:
        if short is fmt_usd:
            short = full = money_formatter([getter(t) for _, t in rows])
        columns.append((header, getter, short, full, priority))
    return columns


def _number_widths(rows, columns, compact):
    widths = []
    for header, getter, short, full, _ in columns:
        formatter = short if compact else full
        widths.append(max([len(header)] + [len(formatter(getter(t))) for _, t in rows]))
    return widths


def group_labels(group_by, details=None, compactions=None):
    """The text columns of the group table: [(header, cell(key, tally) -> text, rank)],
    rank None for a group key, else the order in which a narrow table gives it up.
    Grouped by session, each session also shows its span, models, project and
    compactions (a compaction resets the cache)."""
    labels = [(field.upper(), lambda key, tally, i=i, field=field: display_key(field, key[i]),
               None) for i, field in enumerate(group_by)]
    if "session" not in group_by or details is None:
        return labels
    session_at = group_by.index("session")
    labels += [("FIRST", lambda key, tally: fmt_stamp(tally.first_ts), 4),
               ("LAST", lambda key, tally: fmt_stamp(tally.last_ts), 2),
               ("MODELS", lambda key, tally: clean(", ".join(sorted(details[key][0]))), 1)]
    if "project" not in group_by:
        labels.append(("PROJECT", lambda key, tally: ", ".join(
            sorted(display_key("project", p) for p in details[key][1])), 3))
    if compactions:
        labels.append(("COMPACT", lambda key, tally: fmt_int(
            compactions.get(key[session_at], 0)), 0))
    return labels


def fmt_stamp(ts):
    return "-" if ts is None else time.strftime("%m-%d %H:%M", time.localtime(ts))


def group_table(rows, labels, width, totals=None, ellipsis="~"):
    """The grouped table fitted to width, as [(tally or None, [(text, column)])]:
    the header first, one row a group, then the totals row.  Cells carry their
    column name so a renderer can style them (the live view colours HIT%)."""
    headers = [label[0] for label in labels]
    cells = [[label[1](key, tally) for label in labels] for key, tally in rows]
    tallies = list(rows)
    if totals is not None and labels:
        cells.append(["TOTAL"] + [""] * (len(labels) - 1))
        tallies.append(((), totals))
    optional = sorted((i for i, label in enumerate(labels) if label[2] is not None),
                      key=lambda i: labels[i][2])
    label_widths, columns, compact = table_columns(cells, headers, tallies, width, optional)
    widths = _number_widths(tallies, columns, compact)
    shown = [i for i, w in enumerate(label_widths) if w]
    table = [(None, [(headers[i].ljust(label_widths[i]), "") for i in shown] +
              [(h.rjust(w), h) for (h, _, _, _, _), w in zip(columns, widths)])]
    for row, (_, tally) in zip(cells, tallies):
        table.append((tally, [(pad(fit(row[i], label_widths[i], ellipsis), label_widths[i]),
                               "") for i in shown] +
                      [((short if compact else full)(getter(tally)).rjust(w), h)
                       for (h, getter, short, full, _), w in zip(columns, widths)]))
    return table


def render_group_table(rows, labels, width, totals=None, ellipsis="~"):
    """The grouped table as lines of text."""
    return [fit("  ".join(text for text, _ in cells).rstrip(), width, ellipsis)
            for _, cells in group_table(rows, labels, width, totals, ellipsis)]


def render_summary(totals, width, ellipsis="~"):
    """The summary block: requests, hit rate, token split, cost and savings."""
    t = totals
    saved_share = (" (%.0f%%)" % (100 * t.saved / t.no_cache_cost)
                   if t.no_cache_cost > 0 else "")
    lines = [
        "requests  %s    hit rate %s (cache read / input)" % (fmt_int(t.requests),
                                                               fmt_pct(t.hit_rate)),
        "input     %s = read %s + write %s (1h %s) + miss %s" % (
            fmt_int(t.input), fmt_int(t.cache_read), fmt_int(t.cache_write),
            fmt_int(t.cache_write_1h), fmt_int(t.miss)),
        "output    %s (reasoning %s)" % (fmt_int(t.output), fmt_int(t.reasoning)),
        "cost      %s    without cache %s    saved %s%s" % (
            fmt_usd(t.cost), fmt_usd(t.no_cache_cost), fmt_usd(t.saved), saved_share),
    ]
    if t.searches:
        lines.append("searches  %s server-side web searches: %s, inside the cost" % (
            fmt_int(t.searches), fmt_usd(t.search_cost)))
    if t.observed_requests:
        lines.append("observed  %s reported by the logs for %s requests (not mixed in)" % (
            fmt_usd(t.observed_cost), fmt_int(t.observed_requests)))
    return [fit(line, width, ellipsis) for line in lines]


def describe_window(since, until):
    if since is None and until is None:
        return "all"
    return "%s .. %s" % (fmt_time(since) if since is not None else "start",
                         fmt_time(until) if until is not None else "now")


def describe_source(stats):
    skipped = ", ".join("%s %s" % (fmt_int(n), k.replace("_", " "))
                        for k, n in stats.skipped.items() if n)
    text = "%s: %s" % (clean(stats.name), counted(stats.records, "record"))
    if stats.compactions:
        text += ", %s compaction%s" % (fmt_int(stats.compactions),
                                       "" if stats.compactions == 1 else "s")
    if skipped:
        text += " (skipped %s)" % skipped
    if stats.error:
        text += " [%s]" % clean(stats.error)
    return text


def render_breaks_section(agg, width, ellipsis="~"):
    """The table output's cache-break lines: causes, costliest sessions, what-if, waste."""
    effects = agg.effects
    breaks = effects.breaks
    lines = []
    if breaks:
        summary = break_summary(breaks)
        lines.append("cache breaks  %s, costing %s above the cache-read rate" % (
            fmt_int(summary["count"]), fmt_usd(summary["cost_usd"])))
        causes = sorted(((c, f) for c, f in summary["by_cause"].items() if f["count"]),
                        key=lambda item: -item[1]["cost_usd"])
        lines.append("  by cause: " + " | ".join(
            "%s %s %s" % (cause, fmt_int(figures["count"]), fmt_usd(figures["cost_usd"]))
            for cause, figures in causes))
        if summary["by_source"]["reported"]:
            agreement = summary["agreement"]
            lines.append("  causes: %s reported by the provider, %s inferred; inferred causes "
                         "agree with the provider on %s of %s" % (
                             fmt_int(summary["by_source"]["reported"]),
                             fmt_int(summary["by_source"]["inferred"]),
                             fmt_int(agreement["agree"]),
                             counted(agreement["compared"], "break")))
            if agreement["disagreements"]:
                lines.append("  where they differ (reported, inferred): " + " | ".join(
                    "%s/%s %s" % (item["reported"], item["inferred"], fmt_int(item["count"]))
                    for item in agreement["disagreements"][:4]))
        by_session = {}
        for item in breaks:
            slot = by_session.setdefault(item.session, [0, 0.0])
            slot[0] += 1
            slot[1] += item.cost
        top = sorted(by_session.items(), key=lambda kv: -kv[1][1])[:3]
        lines.append("  costliest sessions: " + " | ".join(
            "%s %s (%d)" % (clean(session), fmt_usd(cost), count)
            for session, (count, cost) in top))
    lines.extend(gap_lines(gap_histograms(effects)))
    doc = what_if_dict(agg)
    if doc["applies_to_cost_usd"]:
        for policy, label in (("ttl_1h", "all cache writes 1 h"), ("ttl_5m", "all cache writes 5 m")):
            figures = doc[policy]
            change = figures["delta_usd"]
            verdict = ("would have saved %s" % fmt_usd(-change) if change < 0 else
                       "would have cost %s more" % fmt_usd(change) if change > 0 else
                       "would have cost the same")
            avoided = figures["breaks_avoided"]
            lines.append("what-if  %s: %s (%s avoided, %d added)" % (
                label, verdict, counted(avoided, "break"), figures["breaks_added"]))
    wasted = wasted_dict(agg)
    if wasted["tokens"]:
        lines.append("wasted writes  %s tokens written and never read before their TTL ran "
                     "out: %s of write premium" % (fmt_int(wasted["tokens"]),
                                                   fmt_usd(wasted["cost_usd"])))
    lines.extend(advice_line(item) for item in ttl_advice(effects))
    return [fit(line, width, ellipsis) for line in lines]


def gap_lines(histograms, top=3):
    """The gaps between requests, summed, and the sessions whose gaps past the TTL
    cost most."""
    if not histograms:
        return []
    total = gap_total(histograms)
    lines = ["gaps between requests  under 1 min %s | 1-5 min %s | 5-60 min %s | over 1 h %s;"
             " %s past the TTL in force, their breaks costing %s" % (
                 tuple(fmt_int(n) for n in total[:4]) + (fmt_int(total[4]), fmt_usd(total[5])))]
    costly = [(session, counts) for session, counts in costliest_gaps(histograms)
              if counts[5] > 0][:top]
    if costly and len(histograms) > 1:
        lines.append("  sessions losing most to gaps past the TTL: " + " | ".join(
            "%s %s (%d)" % (clean(session), fmt_usd(counts[5]), counts[4])
            for session, counts in costly))
    return lines


_SCOPE_TEXT = {("claude-code", "main"): "claude-code main conversation",
               ("claude-code", "subagents"): "claude-code subagents"}


def advice_line(item):
    scope = item["scope"]
    where = _SCOPE_TEXT.get((scope.get("agent"), scope.get("thread"))) or "%s in %s" % (
        clean(scope["model"]), clean(short_project(scope["project"])) or "(no project)")
    return "advice  %s: %s cache writes would have cost %s less over the window (%s, not %s)" \
        ": %s" % (where, "1 h" if item["cheaper"] == "ttl_1h" else "5 m",
                  fmt_usd(item["saving_usd"]), fmt_usd(item["%s_cost_usd" % item["cheaper"]]),
                  fmt_usd(item["cost_usd"]), item["setting"])


def priced_as(agg, prices):
    """{model as logged: the platform key it was priced under}, of this report's."""
    logged = {key[1] for key in agg.effects.classes.keys}
    return {model: key for model, key in sorted(prices.priced_as.items()) if model in logged}


def tier_lines(tiers, group_by, most=8):
    """The requests and cost at each tier, speed or region not standard: in the
    totals, then per group when more than one group has any (the costliest first)."""

    def figures(by_dims):
        return " | ".join("%s %s %s" % (dims, counted(n, "request"), fmt_usd(cost))
                          for dims, (n, cost) in sorted(by_dims.items(),
                                                        key=lambda item: (-item[1][1], item[0])))

    lines = ["tiers  %s (the rest at the standard rate)" % figures(total_tiers(tiers))]
    if len(tiers) < 2 or not group_by:
        return lines
    ranked = sorted(tiers.items(), key=lambda item: (
        -sum(cost for _, cost in item[1].values()), repr(item[0])))
    for key, by_dims in ranked[:most]:
        label = " / ".join(display_key(field, value) for field, value in zip(group_by, key))
        lines.append("  %s: %s" % (label, figures(by_dims)))
    if len(ranked) > most:
        lines.append("  (%s more groups with tiers: --format json lists them)"
                     % fmt_int(len(ranked) - most))
    return lines


def render_report(report, width=80, ellipsis="~"):
    """The --once table output as lines."""
    agg = report.aggregate
    prices = report.prices
    lines = ["catop %s  %s  window %s" % (__version__, fmt_time(report.now),
                                         describe_window(agg.since, agg.until)),
             "prices  %s, %s models, %s" % (clean(prices.origin), fmt_int(len(prices)),
                                            fmt_age(prices.age_s))]
    for stats in report.sources:
        lines.append("source  " + describe_source(stats))
    lines = [fit(line, width, ellipsis) for line in lines]
    lines.append("")
    lines.extend(render_summary(agg.totals, width, ellipsis))
    if agg.group_by and report.rows:
        lines.append("")
        labels = group_labels(agg.group_by, agg.details, report.compactions)
        lines.extend(render_group_table(report.rows, labels, width,
                                        agg.totals if len(agg.groups) > 1 else None, ellipsis))
        if report.hidden_groups:
            lines.append("(%s more groups; --top to show more)" % fmt_int(report.hidden_groups))
    if agg.budgets is not None:
        lines.append("")
        lines.extend(fit(line, width, ellipsis) for line in budget_lines(agg.budgets))
    if agg.trend is not None and len(agg.trend.days) > 1:
        lines.append("")
        lines.extend(fit(line, width, ellipsis) for line in
                     trend_lines(agg.trend, TREND_DAYS, ellipsis != "~"))
    breaks = render_breaks_section(agg, width, ellipsis)
    if breaks:
        lines.append("")
        lines.extend(breaks)
    tiers, fallbacks = tier_figures(agg.effects.classes, prices)
    if tiers:
        lines.append("")
        lines.extend(fit(line, width, ellipsis) for line in tier_lines(tiers, agg.group_by))
    if fallbacks:
        lines.append(fit("tier fallback: %s - the map has no rate for that tier, speed or "
                         "region: priced at base" % ", ".join(
                             "%s %s" % (clean(name), fmt_int(n))
                             for name, n in sorted(fallbacks.items())), width, ellipsis))
    platform = priced_as(agg, prices)
    if platform:
        lines.append("")
        lines.append(fit("priced as: %s - a cloud platform's entry, at the provider's list "
                         "price" % ", ".join("%s as %s" % (clean(m), clean(k)) for m, k in
                                             platform.items()), width, ellipsis))
    if agg.unpriced_models:
        names = ", ".join("%s (%s)" % (clean(m), fmt_int(n))
                          for m, n in sorted(agg.unpriced_models.items()))
        lines.append("")
        nameless = set(agg.unpriced_models) <= {"unknown", "(unknown model)"}
        hint = ("the logs name no model, so no price can be found" if nameless else
                "give --prices or drop --offline")
        lines.append(fit("unpriced: %s - tokens counted, cost shown as $0; %s"
                         % (names, hint), width, ellipsis))
    if report.refused:
        lines.append("")
        lines.append(fit("refused: %s - out of range or not a number, each taken as absent"
                         % ", ".join("%s %s" % (fmt_int(n), plural(n, kind)) for kind, n
                                     in sorted(report.refused.items())), width, ellipsis))
    if agg.totals.requests == 0:
        lines.append("")
        lines.append("no requests in this window")
    return lines


def plural(count, word):
    """word for one, word + "s" for any other count."""
    return word if count == 1 else word + "s"


def counted(count, word):
    """"1 request", "0 requests", "1,204 requests"."""
    return "%s %s" % (fmt_int(count), plural(count, word))


def render_timeline(report, width=80, ellipsis="~"):
    """--session: one session's requests in time order, columns fitted to width."""
    entries = sorted(report.aggregate.timeline, key=lambda e: request_order(e[0]))
    sessions = sorted({e[0].session for e in entries})
    header = ["TIME", "MODEL", "MISS", "READ", "WRITE", "OUT", "HIT%", "COST"]
    rows, widths, shown = _fitted_timeline(header, entries, width)
    lines = [fit("session %s  (%s)" % (clean(", ".join(sessions)),
                                       counted(len(entries), "request")), width, ellipsis),
             fit(session_facts(entries), width, ellipsis)]
    for cells, (req, _, found) in zip([header] + rows, [(None, None, None)] + entries):
        text = "  ".join(
            pad(fit(cells[i], widths[i], ellipsis), widths[i]) if i < 2
            else cells[i].rjust(widths[i]) for i in shown).rstrip()
        notes = ("  break: " + break_label(found) if found else "") + (
            "  " + thread_label(req) if req is not None and (req.sidechain or req.thread)
            else "")
        if notes and display_width(text) + 4 < width:   # the notes are cut, never the row
            text += fit(notes, width - display_width(text), ellipsis)
        lines.append(fit(text, width, ellipsis))
    return lines


# What a timeline gives up, in turn, while a row is wider than the screen (after its
# numbers are made compact): the columns that matter least, the model name shortened
# only after them; a number is never cut.
_TIMELINE_STEPS = (("drop", 5), ("drop", 2), ("drop", 4), ("shorten", 1, 16), ("drop", 6),
                   ("shorten", 1, 8), ("drop", 1), ("drop", 3))
# ... and a list of breaks: the session id kept whole longest
_BREAK_STEPS = (("drop", 4), ("drop", 2), ("shorten", 1, 24), ("drop", 5),
                ("shorten", 1, 12), ("drop", 6), ("shorten", 1, 8), ("shorten", 3, 8))


def fitted_columns(header, make_rows, width, steps):
    """(rows, column widths, the columns shown) of a table whose rows make_rows(compact)
    gives: full numbers if a row fits in width, else compact ones and then, in turn,
    steps: ("drop", column) gives a column up, ("shorten", column, floor) cuts a text
    column down to what fits, never under floor."""
    for compact in (False, True):
        rows = make_rows(compact)
        widths = [max([len(h)] + [display_width(r[i]) for r in rows])
                  for i, h in enumerate(header)]
        shown = list(range(len(header)))
        if _row_width(widths, shown) <= width:
            return rows, widths, shown
    for step in steps:
        overflow = _row_width(widths, shown) - width
        if overflow <= 0:
            break
        if step[0] == "drop":
            shown.remove(step[1])
        else:
            column, floor = step[1], step[2]
            widths[column] = min(widths[column], max(floor, widths[column] - overflow))
    return rows, widths, shown


def _fitted_timeline(header, entries, width):
    return fitted_columns(header, lambda compact: [_timeline_cells(req, cost, compact)
                                                   for req, cost, _ in entries],
                          width, _TIMELINE_STEPS)


def _row_width(widths, shown):
    return sum(widths[i] for i in shown) + 2 * (len(shown) - 1)


def session_facts(entries):
    """agent, project, models and first and last time of a session's requests."""
    requests = [req for req, _, _ in entries]
    timed = [req.ts for req in requests if req.ts is not None]
    facts = [("agent", sorted({req.agent for req in requests if req.agent})),
             ("project", sorted({short_project(req.project) for req in requests
                                 if req.project})),
             ("models", sorted({req.model for req in requests if req.model}))]
    text = "  ".join("%s %s" % (name, ", ".join(clean(v) for v in values))
                     for name, values in facts if values)
    if timed:
        text += "  from %s to %s" % (fmt_stamp(min(timed)), fmt_stamp(max(timed)))
    return text


def break_label(found):
    """A break's cause, and where it came from: "tools_changed (reported)",
    "compaction (reported context_compacted)", "prefix_changed (provider:
    unavailable)"; the provider's missed-token estimate where it gave one."""
    raw = clean(found.reported_reason) if found.reported_reason else None
    if found.reported:
        source = "reported" if raw in (None, found.cause) else "reported " + raw
    else:
        source = "provider: " + raw if raw else ""
    if found.reported_missed is not None:
        source += "%s%s missed" % ("; " if source else "", fmt_tokens(found.reported_missed,
                                                                     True))
    return found.cause + (" (%s)" % source if source else "")


def thread_label(req):
    """Which thread of its session a request is in, for a timeline."""
    return "subagent " + clean(req.thread) if req.thread else "subagent"


def _timeline_cells(req, cost, compact):
    total = req.input
    when = (time.strftime("%m-%d %H:%M" if compact else "%m-%d %H:%M:%S",
                          time.localtime(req.ts)) if req.ts is not None else "-")
    return [when, clean(req.model), fmt_tokens(req.miss, compact),
            fmt_tokens(req.cache_read, compact),
            fmt_tokens(req.cache_write_5m + req.cache_write_1h, compact),
            fmt_tokens(req.output, compact),
            fmt_pct(req.cache_read / total if total else None), fmt_usd(cost)]


# the live screen: a frame -> lines of (text, style) segments, cut to the screen

def hit_style(ratio):
    if ratio is None:
        return ""
    return "bad" if ratio < 0.30 else ("warn" if ratio < 0.60 else "")


def fit_segments(segments, width, ellipsis="~"):
    """Segments cut to width columns in total, styles kept."""
    out, used = [], 0
    for text, style in segments:
        if used >= width:
            break
        room = width - used
        text = fit(text, room, ellipsis)
        out.append((text, style))
        used += display_width(text)
    return out


def _budget_line(budgets, width, ellipsis):
    segments = [("budget", "dim")]
    for period, limit, spent, share, state in budgets:
        segments.append(("  %s %s/%s %.0f%%" % (period, fmt_usd(spent, 2), fmt_usd(limit, 2),
                                                share * 100),
                         {"ok": "", "warning": "warn", "over": "bad"}[state]))
    return fit_segments(segments, width, ellipsis)


def rates_text(rates, width=None):
    """The rolling rates like load averages: each measure over 1, 5 and 15 minutes; on a
    narrow screen the labels shortened and the token rates given up first, so that the
    hit rates stay."""
    def figures(values, form):
        return " ".join(form(v) for v in values)
    per_min = figures([r[0] for r in rates], lambda v: ("%.1f" % v) if v < 100 else
                      fmt_tokens(int(v), True))
    tokens = figures([r[1] for r in rates], lambda v: fmt_tokens(int(v), True))
    dollars = figures([r[2] for r in rates], lambda v: "%.2f" % v if v < 1000 else "%.0f" % v)
    hits = figures([r[3] for r in rates], lambda v: "-" if v is None else "%.0f%%" % (v * 100))
    text = "1/5/15m  req/min %s   tok/min %s   $/h %s   hit %s" % (per_min, tokens, dollars,
                                                                   hits)
    if width is None or len(text) <= width:
        return text
    text = "1/5/15m req %s  tok %s  $/h %s  hit %s" % (per_min, tokens, dollars, hits)
    if len(text) <= width:
        return text
    return "1/5/15m req %s  $/h %s  hit %s" % (per_min, dollars, hits)


def _header_lines(frame, view, meta, width, ellipsis, unicode_ok=True):
    order = ("\u25bc" if view.descending else "\u25b2") if unicode_ok else \
        ("-" if view.descending else "+")
    title = [("catop", "title"), ("  %s" % time.strftime("%H:%M:%S", time.localtime(frame.now)),
                                  "")]
    title.append(("  window %s  group %s  sort %s %s" % (
        view.window, ",".join(view.group_by), view.sort, order), "dim"))
    title.append(("  prices %s, %s" % (clean(meta["prices_origin"]), fmt_age(meta["prices_age"])),
                  "dim"))
    if view.paused:
        title.insert(1, ("  PAUSED", "warn"))
    sources = "sources  " + "  ".join(
        "%s %s" % (clean(s.name), fmt_int(s.records)) + (
            " (%s malformed skipped)" % fmt_int(s.skipped["malformed"])
            if s.skipped.get("malformed") else "") + (" [!]" if s.error else "")
        for s in meta["sources"])
    return fit_segments(title, width, ellipsis), fit_segments([(sources, "dim")], width, ellipsis)


def _summary_line(totals, width, ellipsis, filtered=""):
    """The totals line; its labels abbreviated, then the token figures given up, before
    cost and saved are ever cut.  filtered: the filter the totals are of, if any."""
    t = totals
    tokens = (fmt_tokens(t.cache_read, True), fmt_tokens(t.cache_write, True),
              fmt_tokens(t.miss, True), fmt_tokens(t.output, True))
    for labels, gap in ((("read", "write", "miss", "out"), "  "), (("rd", "wr", "ms", "out"), " "),
                        (None, "  ")):
        segments = [("/%s: " % filtered, "warn")] if filtered else []
        segments += [("req %s%s" % (fmt_int(t.requests), gap), ""),
                     ("hit %s" % fmt_pct(t.hit_rate), hit_style(t.hit_rate) or "ok")]
        if labels:
            segments.append(("".join("%s%s %s" % (gap, label, figure)
                                     for label, figure in zip(labels, tokens)), ""))
        segments += [("%scost %s" % (gap, fmt_usd(t.cost)), "title"),
                     ("%ssaved %s" % (gap, fmt_usd(t.saved)), "ok" if t.saved >= 0 else "bad")]
        if t.observed_requests and gap == "  " and labels:
            segments.append(("  observed %s" % fmt_usd(t.observed_cost), "dim"))
        if sum(display_width(text) for text, _ in segments) <= width:
            break
    return fit_segments(segments, width, ellipsis)


def _table_lines(frame, view, width, rows_room, ellipsis):
    """The table (or timeline, breaks, help) and the index of the selected row."""
    if view.help:
        lines = [part for line in help_text()[view.help_top:] for part in
                 wrapped(line, width)]
        return [fit_segments([(line, "")], width, ellipsis) for line in lines][:rows_room]
    if view.trends_panel:
        return _trends_lines(frame, width, rows_room, ellipsis)
    if view.breaks_panel:
        return _breaks_lines(frame, view, width, rows_room, ellipsis)
    if view.level() == "timeline":
        return _timeline_lines(frame, view, width, rows_room, ellipsis)
    if not frame.rows:
        return [[("no requests in this view%s" % (" matching /%s" % view.filter
                                                   if view.filter else ""), "dim")]]
    grouping = view.grouping()
    labels = group_labels(grouping, frame.details if "session" in grouping else None)
    table = group_table(frame.rows, labels, width, None, ellipsis)
    mark_sort_column(table[0][1], view, ellipsis != "~")
    return _scrolled(table, view, rows_room, width, ellipsis)


# the header of the column each sort orders by (name: the first label)
_SORT_HEADERS = {"cost": "COST", "saved": "SAVED", "hit": "HIT%", "requests": "REQ",
                 "input": "INPUT", "read": "READ", "write": "WRITE", "miss": "MISS",
                 "output": "OUT", "last": "LAST"}


def mark_sort_column(header_cells, view, unicode_ok=True):
    """Marks, in place, the header of the column the table is sorted by, with an arrow
    in the room its padding leaves (a cell with none is left as it is)."""
    arrow = ("\u25bc" if view.descending else "\u25b2") if unicode_ok else (
        "v" if view.descending else "^")
    wanted = _SORT_HEADERS.get(view.sort)
    for index, (text, column) in enumerate(header_cells):
        name = text.strip()
        if (name == wanted or (view.sort in ("name", "time") and index == 0)) and text != name:
            marked = (arrow + name if text.startswith(" ") else name + arrow)
            header_cells[index] = (marked.rjust(len(text)) if text.startswith(" ")
                                   else marked.ljust(len(text)), column)
            return


def _scrolled(table, view, rows_room, width, ellipsis):
    """Header plus the rows that fit, scrolled so the selected row is visible."""
    header, body = table[0], table[1:]
    visible = max(1, rows_room - 1)
    view.page = visible
    view.selected = max(0, min(view.selected, len(body) - 1))
    top = min(max(0, view.selected - visible + 1), max(0, len(body) - visible))
    top = min(top, view.selected)
    lines = [fit_segments(_join_cells(header[1], "title"), width, ellipsis)]
    for index in range(top, min(len(body), top + visible)):
        tally, cells = body[index]
        selected = index == view.selected
        segments = []
        for text, column in cells:
            style = "select" if selected else (
                hit_style(tally.hit_rate) if column == "HIT%" else
                "title" if column == "MODEL" and getattr(tally, "highlight", False) else "")
            segments.append((text, style))
            segments.append(("  ", "select" if selected else ""))
        lines.append(fit_segments(segments[:-1], width, ellipsis))
    return lines


def _join_cells(cells, style):
    segments = []
    for text, _ in cells:
        segments.append((text, style))
        segments.append(("  ", style))
    return segments[:-1]


def _timeline_lines(frame, view, width, rows_room, ellipsis):
    """The live view's session timeline: the columns of --session's, fitted the same
    way, and the break of each request where there is room for it."""
    marks = {(b.session, b.ts): break_label(b) for b in frame.breaks}
    header = ["TIME", "MODEL", "MISS", "READ", "WRITE", "OUT", "HIT%", "COST"]
    rows, widths, shown = _fitted_timeline(header, [(req, cost, "") for req, cost
                                                    in frame.rows], width)
    causes = [marks.get((req.session, req.ts), "") for req, _ in frame.rows]
    room = width - _row_width(widths, shown) - 2
    if room >= 5 and any(causes):
        header, shown = header + ["BREAK"], shown + [len(header)]
        widths = widths + [min(room, max(len("BREAK"), max(map(len, causes))))]
        rows = [row + [cause] for row, cause in zip(rows, causes)]
    table = [(None, [(header[i].ljust(widths[i]) if i in (0, 1, 8) else
                      header[i].rjust(widths[i]), "") for i in shown])]
    drilled = in_drill_path(view, frame.prices)
    if view.focus is not None:   # opened from a break: that request selected
        times = [req.ts for req, _ in frame.rows]
        if view.focus in times:
            view.selected = times.index(view.focus)
        view.focus = None
    for (req, _), row in zip(frame.rows, rows):
        hit = req.cache_read / req.input if req.input else None
        table.append((_RowHit(hit, drilled(req)), [(pad(fit(row[i], widths[i], ellipsis), widths[i])
                                      if i in (0, 1, 8) else row[i].rjust(widths[i]),
                                      header[i]) for i in shown]))
    return _scrolled(table, view, rows_room, width, ellipsis)


class _RowHit(object):
    """Stands in for a Tally where a timeline row styles its HIT% cell (and, drilled
    into from a group, its MODEL cell when the request is of that group)."""

    __slots__ = ("hit_rate", "highlight")

    def __init__(self, hit_rate, highlight=False):
        self.hit_rate = hit_rate
        self.highlight = highlight


def _trends_lines(frame, width, rows_room, ellipsis):
    """The trends panel: cost, saved and hit rate day by day, 30 and 90 days."""
    unicode_ok = ellipsis != "~"
    lines = []
    for days in (30, 90):
        if frame.trend is not None:
            lines.extend(trend_lines(frame.trend, days, unicode_ok))
            lines.append("")
    if not any(lines):
        lines = ["no requests in the last 90 days"]
    return [fit_segments([(line, "")], width, ellipsis) for line in lines][:rows_room]


def _breaks_lines(frame, view, width, rows_room, ellipsis):
    """The breaks panel: the gaps between requests and the warm sessions, then the
    latest cache breaks, newest first."""
    head = _cache_panel_lines(frame, width, ellipsis, rows_room)
    rows_room -= len(head)
    header = ["TIME", "SESSION", "MODEL", "CAUSE", "EXPECTED", "READ", "GAP", "COST"]
    if not frame.breaks:
        return head + [[(" ".join(header), "title")], [("no cache breaks found", "dim")]]
    latest = list(reversed(frame.breaks[-500:]))
    total = sum(b.cost for b in frame.breaks)
    title = [("cache breaks  %s, costing %s above the cache-read rate (newest first; Enter "
              "opens one)" % (fmt_int(len(frame.breaks)), fmt_usd(total)), "title")]
    rows_room -= 1

    def make_rows(compact):
        return [[fmt_stamp(b.ts), clean(b.session) + ("/" + clean(b.thread) if b.thread
                                                      else ""), clean(b.model), break_label(b),
                 fmt_tokens(b.expected, compact), fmt_tokens(b.read, compact),
                 fmt_gap(b.gap_s), fmt_usd(b.cost)] for b in latest]
    cells, widths, shown = fitted_columns(header, make_rows, width, _BREAK_STEPS)
    table = [(None, [(header[i].ljust(widths[i]) if i < 4 else header[i].rjust(widths[i]), "")
                     for i in shown])]
    for item, row in zip(latest, cells):
        table.append((_RowHit(0.0 if item.cost > 0 else None),
                      [(pad(fit(row[i], widths[i], ellipsis), widths[i]) if i < 4
                        else row[i].rjust(widths[i]), header[i]) for i in shown]))
    return head + [fit_segments(title, width, ellipsis)] + _scrolled(table, view, rows_room,
                                                                    width, ellipsis)


WARM_SOON_S = 60   # an entry this close to expiring is drawn as a warning


def still_warm(warm, now):
    """The warm_sessions entries (as of the model's last change) still alive at now."""
    return [item for item in warm if item["expires_at"] > now]


def warm_segments(warm, now, unicode_ok=True, limit=3):
    """The main screen's cache line: how many sessions are warm, and the next to
    expire, counting down, with what their next request would pay to rewrite."""
    alive = still_warm(warm, now)
    if not alive:
        return [("cache  ", "dim"), ("no session warm", "dim")]
    dot = " · " if unicode_ok else " - "
    segments = [("cache  ", "dim"), ("%s warm" % counted(len(alive), "session"), "ok"),
                (dot + "next to expire: ", "dim")]
    for index, item in enumerate(alive[:limit]):
        left = item["expires_at"] - now
        segments += [((", " if index else "") + warm_name(item) + " ", ""),
                     (fmt_countdown(left), "warn" if left < WARM_SOON_S else "ok")]
        if item["rewrite_cost_usd"] is not None:
            segments.append((" (rewrite %s)" % fmt_usd(item["rewrite_cost_usd"]), "dim"))
    return segments


def warm_name(item):
    """A warm entry's session (a long id cut to its first 8 characters), and its thread."""
    name = clean(item["session"])
    name = name if len(name) <= 16 else name[:8]
    return name + ("/" + clean(item["thread"]) if item["thread"] else "")


def fmt_countdown(seconds):
    """m:ss of a time left (h:mm:ss past an hour)."""
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)
    return "%d:%02d" % (seconds // 60, seconds % 60)


def _cache_panel_lines(frame, width, ellipsis, room):
    """The breaks panel's head: the gaps between requests and the warm sessions."""
    lines = [[(line, "")] for line in gap_lines(frame.gaps)]
    alive = still_warm(frame.warm, frame.now)
    if alive:
        lines.append([("warm  %s, the soonest to expire first:" % counted(len(alive),
                                                                           "session"),
                       "title")])
        for item in alive[:5]:
            left = item["expires_at"] - frame.now
            cost = item["rewrite_cost_usd"]
            lines.append([("  %s  %s  " % (clean(item["session"]) + (
                "/" + clean(item["thread"]) if item["thread"] else ""), clean(item["model"])),
                ""), ("expires in " + fmt_countdown(left), "warn" if left < WARM_SOON_S
                      else "ok"),
                ("  %s tokens cached; rewriting them would cost %s" % (
                    fmt_tokens(item["cached_tokens"], True),
                    "an unknown amount" if cost is None else fmt_usd(cost)), "dim")])
    lines = [fit_segments(line, width, ellipsis) for line in lines]
    return lines[:max(0, room - 3)]   # the break list keeps its title and two rows


def fmt_gap(seconds):
    if seconds is None:
        return "-"
    if seconds < 120:
        return "%.0fs" % seconds
    if seconds < 7200:
        return "%.0fm" % (seconds / 60)
    return "%.1fh" % (seconds / 3600)


def wrapped(line, width):
    """A help line in lines of at most width columns, cut between words; a key's
    text goes on under itself (after the 17 columns of its key)."""
    if display_width(line) <= width:
        return [line]
    import textwrap
    indent = " " * 17 if line.startswith("  ") and width > 40 else ""
    return textwrap.wrap(line, width, subsequent_indent=indent) or [line]


def help_text():
    """The help screen's lines; the groupings and windows are those g and w cycle."""
    return (
        "catop keys (up/down scroll this help; any other key closes it)",
        "  q, Ctrl-C      quit",
        "  ?              this help",
        "  up/down, j/k   move; PgUp/PgDn, Home/End",
        "  Enter          drill in: a group's sessions, then a session's requests;",
        "                 on the breaks panel, the break's session, at that break",
        "  Esc, Backspace back out (Esc first clears a filter)",
        "  g              cycle group-by: %s" % ", ".join(View.GROUPINGS),
        "  w              cycle window: %s" % ", ".join(View.WINDOWS),
        "  s / S          cycle sort column (%s) / flip the order" % ", ".join(View.SORTS),
        "  /              filter rows by text (Enter applies, Esc cancels); the summary",
        "                 line then totals the rows shown",
        "  p              pause the display (data keeps being read)",
        "  b              cache breaks: where the cache was lost, why (the provider's",
        "                 reason where it reported one), what it cost; the gaps between",
        "                 requests against the TTL, and the sessions still warm",
        "  t              trends: cost, saved and hit rate day by day (30 and 90 days)",
        "  r              rescan the sources now",
        "",
        "HIT% is cache read / input: normal >= 60%, yellow below, red below 30%.",
        "The cache line counts down the sessions whose cache entry is still warm, and",
        "what their next request will pay to write it again once it has expired.",
    )


def _key_line(view, unicode_ok, width, ellipsis):
    if view.typing is not None:
        return fit_segments([("filter: ", "title"), (view.typing + "_", "")], width, ellipsis)
    path = ""
    for level in view.stack:
        path += " > " + (("session " + level) if isinstance(level, str) else
                         ",".join(display_key(f, v) for f, v in zip(*level)))
    up_down, enter, back = ("\u2191\u2193", "\u23ce", "\u232b") if unicode_ok else \
        ("up/dn", "Enter", "Bksp")
    segments = []
    if path or view.filter:
        segments.append((clean(path.strip()) + ("  /%s" % view.filter if view.filter else "") +
                         "   ", "title"))
    room = width - sum(display_width(text) for text, _ in segments)
    for hints in ("q quit  ? help  %s move  %s drill  %s back  g group  w window  s sort  / "
                  "filter  p pause  b breaks  t trends  r rescan", "q quit  ? help  %s move  %s "
                  "drill  %s back  g w s / p b t r", "q quit  ? help  %s %s %s  g w s / p b t r"):
        hints %= (up_down, enter, back)
        if display_width(hints) <= room:
            break   # (every key named, in fewer words as the line narrows)
    segments.append((hints, "dim"))
    return fit_segments(segments, width, ellipsis)


def render_screen(frame, view, meta, width, height, unicode_ok=True):
    """The live screen: at most height lines, each at most width columns, of
    (text, style) segments.  Sections give way to the table as the screen shrinks."""
    if width <= 0 or height <= 0:
        return []
    ellipsis = "\u2026" if unicode_ok else "~"
    title, sources = _header_lines(frame, view, meta, width, ellipsis, unicode_ok)
    top = [title]
    extras = [("summary", 3), ("rates", 10), ("spark", 12), ("sources", 14), ("warm", 16)]
    for name, minimum in extras:
        if height < minimum:
            continue
        if name == "summary":
            top.append(_summary_line(frame.totals, width, ellipsis, view.filter))
            if frame.budgets and height >= 8:
                top.append(_budget_line(frame.budgets, width, ellipsis))
        elif name == "rates":
            top.append(fit_segments([(rates_text(frame.rates, width), "")], width, ellipsis))
        elif name == "spark":
            room = max(0, width - 12)
            series = frame.spark[-room:] if room else []
            top.append(fit_segments([("hit 1h  ", "dim"), (sparkline(series, unicode_ok), "ok"),
                                     ("  now", "dim")], width, ellipsis))
        elif name == "warm":
            top.append(fit_segments(warm_segments(frame.warm, frame.now, unicode_ok), width,
                                    ellipsis))
        else:
            top.append(sources)
    bottom = [_key_line(view, unicode_ok, width, ellipsis)] if height >= 2 else []
    if view.note is not None and frame.now < view.note[1] and height >= 4:
        bottom.insert(0, fit_segments([(view.note[0], "ok")], width, ellipsis))
    alerts = [fit_segments([("! " + text, "bad")], width, ellipsis)
              for text in frame.alerts[:2 if height >= 16 else 1]] if height >= 8 else []
    room = height - len(top) - len(bottom) - len(alerts)
    if room < 2 and alerts:
        alerts, room = [], room + len(alerts)
    while room < 2 and len(top) > 1:
        top.pop()
        room += 1
    table = _table_lines(frame, view, width, max(0, room), ellipsis) if room > 0 else []
    body = table + [[]] * max(0, room - len(table))
    return (top + body[:max(0, room)] + alerts + bottom)[:height]


def handle_key(view, key, frame):
    """Changes the view for one key; returns 'quit', 'rescan' or None."""
    if view.typing is not None:
        return _filter_key(view, key)
    if view.help:
        if key in ("up", "k", "down", "j", "pgup", "pgdn"):
            step = {"up": -1, "k": -1, "down": 1, "j": 1, "pgup": -10, "pgdn": 10}[key]
            view.help_top = max(0, min(len(help_text()) - 1, view.help_top + step))
        else:
            view.help, view.help_top = False, 0
        return None
    rows = len(frame.rows)
    page = getattr(view, "page", 10)
    moves = {"up": -1, "k": -1, "down": 1, "j": 1, "pgup": -page, "pgdn": page,
             "home": -rows, "end": rows}
    if key in ("q", "ctrl-c"):
        return "quit"
    if key in moves:
        view.selected = max(0, min(rows - 1, view.selected + moves[key]))
    elif key == "?":
        view.help = True
    elif key == "enter" and view.breaks_panel:
        _open_break(view, frame)
    elif key == "enter":
        _drill(view, frame)
    elif key in ("esc", "backspace"):
        if view.breaks_panel or view.trends_panel:
            view.breaks_panel = view.trends_panel = False
        elif key == "esc" and view.filter:
            view.filter, view.selected = "", 0
        elif view.stack:
            view.stack.pop()
            view.selected = 0
    elif key == "g":
        current = view.group_by[0] if view.group_by else "model"
        view.group_by = (_next(View.GROUPINGS, current),)
        view.stack, view.selected = [], 0
    elif key == "w":
        view.window, view.selected = _next(View.WINDOWS, view.window), 0
    elif key == "s":
        view.sort = _next(View.SORTS, view.sort)
    elif key == "S":
        view.descending = not view.descending
    elif key == "/":
        view.typing = view.filter
    elif key == "p":
        view.paused = not view.paused
    elif key == "b":
        view.breaks_panel, view.trends_panel = not view.breaks_panel, False
    elif key == "t":
        view.trends_panel, view.breaks_panel = not view.trends_panel, False
    elif key == "r":
        return "rescan"
    return None


def _open_break(view, frame):
    """The session of the break selected on the breaks panel, at that break."""
    latest = list(reversed(frame.breaks[-500:]))
    if not latest:
        return
    chosen = latest[max(0, min(view.selected, len(latest) - 1))]
    view.stack, view.breaks_panel = [chosen.session], False
    view.focus = chosen.ts


def _next(options, current):
    return options[(options.index(current) + 1) % len(options)] if current in options \
        else options[0]


def _filter_key(view, key):
    if key == "enter":
        view.filter, view.typing, view.selected = view.typing.strip(), None, 0
    elif key == "esc":
        view.typing = None
    elif key == "backspace":
        view.typing = view.typing[:-1]
    elif len(key) == 1 and key.isprintable():
        view.typing += key
    return None


def _drill(view, frame):
    level = view.level()
    if level == "timeline" or view.breaks_panel or not frame.rows:
        return
    key = frame.rows[min(view.selected, len(frame.rows) - 1)][0]
    grouping = view.grouping()
    if grouping == ("session",):
        view.stack.append(key[0])
    else:
        view.stack.append((grouping, key))
    view.selected = 0


# the status line: one line under Claude Code's prompt

STATUSLINE_FIELDS = ("hit", "cost", "saved", "warm", "last_miss", "budget", "model")
STATUSLINE_FORMAT = ("\u26a1{hit} \u00b7 {cost} saved {saved} \u00b7 {warm} \u00b7 "
                     "last miss {last_miss} \u00b7 {budget}")
STATUSLINE_SEPARATOR = " \u00b7 "   # between the parts of a template
_STATUSLINE_FIELD = re.compile(r"\{([^{}]*)\}")
_ANSI_STYLES = {"ok": "\x1b[32m", "warn": "\x1b[33m", "bad": "\x1b[31m", "dim": "\x1b[2m"}
_ASCII_FOR = {"\u26a1": "", "\u00b7": "|", "\u2212": "-", "\u2026": "~"}


def parse_statusline_format(text):
    """A --statusline-format template as parts, each [(literal, field or None)];
    ValueError names an unknown field or a stray brace."""
    parts = []
    for part in text.split(STATUSLINE_SEPARATOR):
        pieces, start = [], 0
        for match in _STATUSLINE_FIELD.finditer(part):
            if match.group(1) not in STATUSLINE_FIELDS:
                raise ValueError("unknown field {%s} (the fields: %s)" % (
                    match.group(1), " ".join("{%s}" % f for f in STATUSLINE_FIELDS)))
            pieces.append((part[start:match.start()], match.group(1)))
            start = match.end()
        tail = part[start:]
        if "{" in tail or "}" in tail or any("{" in p or "}" in p for p, _ in pieces):
            raise ValueError("a brace that opens or closes no field in %r" % part)
        pieces.append((tail, None))
        parts.append(pieces)
    return parts


def statusline_segments(parts, values):
    """The parts with a value for one of their fields at least, as lists of (text,
    style): an empty field is left out with the text just before it ("{cost} saved
    {saved}" is the cost alone when nothing says what was saved)."""
    shown = []
    for pieces in parts:
        segments, found = [], False
        for literal, field in pieces:
            value = values.get(field) if field is not None else None
            if field is None:
                segments.append((literal, ""))
            elif value:
                found = True
                segments += [(literal, ""), value]
        if found or not any(field for _, field in pieces):
            segments = [(text, style) for text, style in segments if text]
            if "".join(text for text, _ in segments).strip():
                shown.append(segments)
    return shown


def render_statusline(parts, values, unicode_ok=True, colour=True, width=None):
    """One line: the template's parts with a value for every field, the last ones
    given up while it is wider than width, then cut; no control character."""
    shown = statusline_segments(parts, values)
    separator = [(STATUSLINE_SEPARATOR, "dim")]
    while True:
        segments = [seg for index, part in enumerate(shown)
                    for seg in (separator if index else []) + part]
        segments = [(clean(text) if unicode_ok else _ascii(clean(text)), style)
                    for text, style in segments]
        plain = "".join(text for text, _ in segments)
        if width is None or display_width(plain) <= width or len(shown) <= 1:
            break
        shown.pop()
    if width is not None and display_width(plain) > width:
        segments = [(fit(plain, width, "\u2026" if unicode_ok else "~"), "")]
    if not colour:
        return "".join(text for text, _ in segments)
    return "".join(_ANSI_STYLES[style] + text + "\x1b[0m" if style in _ANSI_STYLES else text
                   for text, style in segments)


def _ascii(text):
    text = "".join(_ASCII_FOR.get(char, char) for char in text)
    return text.encode("ascii", "replace").decode("ascii").strip() if not text.isascii() \
        else text


def statusline_values(effects, spend, now, claude, budget=None):
    """{field: (text, style)} of a session: its cost, saved and hit rate at catop's
    rates, the cache entry's time left, the last break; claude: what Claude Code
    said on stdin (its prompt_cache figures win where it gave them)."""
    _, unpriced, total = priced_groups(effects.classes, effects.prices)
    values = {}
    hit = claude.get("hit_ratio")
    hit = total.hit_rate if hit is None else hit
    if hit is not None:
        values["hit"] = ("%.0f%%" % (hit * 100), hit_style(hit) or "ok")
    if total.requests and (not unpriced or claude.get("cost") is None):
        values["cost"] = (fmt_usd(total.cost), "")
        values["saved"] = (fmt_usd(total.saved), "ok" if total.saved >= 0 else "bad")
    elif claude.get("cost") is not None:   # catop has no price: Claude Code's figure
        values["cost"] = (fmt_usd(claude["cost"]) + " (Claude Code)", "")
    values["warm"] = warm_value(effects, now)
    values["last_miss"] = last_miss_value(effects, claude)
    if claude.get("model"):
        values["model"] = (claude["model"], "")
    if budget:
        share = spend / budget
        values["budget"] = ("%.0f%% of %s today" % (share * 100, fmt_usd(budget, 2)),
                            "bad" if share >= 1 else "warn" if share >= BUDGET_WARNING_SHARE
                            else "")
    return {name: value for name, value in values.items() if value}


def warm_value(effects, now):
    """"warm 3:12" while the main thread's cache entry lives, "cold" after."""
    warm = [item for item in warm_sessions(effects, now) if item["thread"] is None]
    if warm:
        left = warm[0]["expires_at"] - now
        return ("warm " + fmt_countdown(left), "warn" if left < WARM_SOON_S else "ok")
    return ("cold", "dim") if any(not thread_of(chain) for chain in effects.last) else None


def last_miss_value(effects, claude):
    """The last break of the main thread (else of any), its cause and cost; Claude
    Code's own cause and time where it gave them."""
    breaks = [b for b in effects.breaks if not b.thread] or effects.breaks
    found = breaks[-1] if breaks else None
    cause, when = claude.get("miss_cause"), claude.get("miss_at")
    if cause is None and found is None:
        return None
    if cause is None:
        cause, when = found.cause, found.ts
    elif found is not None and (when is None or abs(found.ts - when) > 120):
        found = None   # catop's last break is not the one Claude Code means: no cost
    text = "%s %s" % (clean(cause), time.strftime("%H:%M", time.localtime(when))
                      if when is not None else "")
    if found is not None:
        text += " \u2212" + fmt_usd(found.cost)
    return (text.strip(), "bad" if found is not None and found.cost > 0 else "warn")


# ------------------------------------------------------------------- output

class Report(object):
    """Everything one snapshot shows: the aggregate, its sources, prices and rows."""

    def __init__(self, aggregate, sources, prices, now, sort="cost", descending=True,
                 top=None, refused=None):
        self.aggregate = aggregate
        self.sources = sources
        # {kind: numbers from data refused}, read when written: pricing, lazy, adds rates
        self.refused = {} if refused is None else refused
        self.compactions = {session: len(set(times)) for session, times in
                            aggregate.effects.compactions.items()}
        self.prices = prices
        self.now = now
        every = sorted_groups(aggregate.groups, sort, descending)
        self.rows = every[:top] if top else every
        self.hidden_groups = len(every) - len(self.rows)


def report_dict(report):
    """The JSON document of design.md (field names are a contract); its long
    lists (groups, timeline) are generators, written out one item at a time."""
    agg = report.aggregate
    models = logged_models(agg) if "model" in agg.group_by else None
    histograms = gap_histograms(agg.effects)
    totals = agg.totals.as_dict()    # priced first: prices.priced_as is then complete
    tiers, fallbacks = tier_figures(agg.effects.classes, report.prices)
    doc = {
        "catop_version": __version__,
        "generated_at": iso_utc(report.now),
        "window": {"since": iso_utc(agg.since), "until": iso_utc(agg.until)},
        "sources": [s.as_dict() for s in report.sources],
        "prices": {"origin": report.prices.origin, "models": len(report.prices),
                   "age_s": int(report.prices.age_s),
                   "priced_as": priced_as(agg, report.prices)},
        "totals": totals,
        "groups": (dict([("key", dict(zip(agg.group_by, key)))] +
                        ([("models", sorted(models[key]))] if models else []) +
                        list(t.as_dict().items()) +
                        ([("tiers", tiers_dict(tiers[key]))] if key in tiers else []))
                   for key, t in report.rows),
        "tiers": tiers_dict(total_tiers(tiers)),
        "tier_fallback": {"requests": sum(fallbacks.values()),
                          "models": dict(sorted(fallbacks.items()))},
        "unpriced_models": sorted(agg.unpriced_models),
        "breaks": EncodedItems(item.as_json() for item in agg.effects.breaks),
        "break_summary": break_summary(agg.effects.breaks),
        "what_if": what_if_dict(agg),
        "wasted_writes": wasted_dict(agg),
        "ttl_advice": ttl_advice(agg.effects),
        "gaps": gaps_dict(gap_total(histograms)),
        "session_gaps": (gaps_dict(counts, session=session)
                         for session, counts in costliest_gaps(histograms)),
        "warm_sessions": [warm_dict(item, report.now)
                          for item in warm_sessions(agg.effects, report.now)],
        "refused_values": dict(sorted(report.refused.items())),
    }
    if agg.budgets is not None:
        doc["budgets"] = budget_dicts(agg.budgets)
    if agg.session is not None:
        doc["timeline"] = (timeline_entry(req, cost, found) for req, cost, found in
                           sorted(agg.timeline, key=lambda e: (e[0].ts is None, e[0].ts or 0)))
    return doc


def warm_dict(item, now):
    doc = dict(item)
    doc["expires_at"] = iso_utc(item["expires_at"])
    doc["expires_in_s"] = round(item["expires_at"] - now, 3)
    return doc


def logged_models(agg):
    """{group key: the model names as logged} (a group may gather a dated and an
    undated name: see ModelNames)."""
    found = {}
    for key in agg.effects.classes.keys:
        found.setdefault(key[0], set()).add(key[1])
    return found


def timeline_entry(req, cost, found=None):
    """One request of a --session timeline; found: its CacheBreak, if it is one."""
    return {"ts": iso_utc(req.ts), "session": req.session, "model": req.model,
            "miss_tokens": req.miss, "cache_read_tokens": req.cache_read,
            "cache_write_tokens": req.cache_write_5m + req.cache_write_1h,
            "cache_write_1h_tokens": req.cache_write_1h, "output_tokens": req.output,
            "reasoning_tokens": req.reasoning, "cost_usd": round(cost, 9),
            "subagent": req.sidechain, "break": found.cause if found else None,
            "thread": req.thread or None,
            "cause_source": found.cause_source if found else None,
            "reported_reason": req.diagnosis[1] if req.diagnosis else None,
            "reported_missed_tokens": req.diagnosis[2] if req.diagnosis else None}


def item_encoder():
    """json.dumps for many small values: one C encoder, made once (json.dumps makes
    a new one at each call, which costs more than encoding a break does)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return lambda value: json.dumps(finite_json(value), allow_nan=False)
    encode = make(None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii,
                  None, ": ", ", ", False, False, False)   # NaN and inf refused: not JSON

    def dumps(value):
        try:
            return "".join(encode(value, 0))
        except ValueError:
            return "".join(encode(finite_json(value), 0))
    return dumps


class EncodedItems(object):
    """The items of a list of the JSON document, already JSON text each."""

    def __init__(self, texts):
        self.texts = texts

    def __iter__(self):
        return iter(self.texts)


def iter_json(report, chunk_items=500):
    """The JSON document in pieces, one top-level field a line and one list item a
    line: readable and greppable, never whole in memory, and written by the C
    encoder (indent= is pure Python, far too slow for many groups)."""
    dumps = item_encoder()
    fields = list(report_dict(report).items())
    yield "{\n"
    for index, (name, value) in enumerate(fields):
        ending = ",\n" if index < len(fields) - 1 else "\n"
        if isinstance(value, dict) or not hasattr(value, "__iter__") or isinstance(value, str):
            yield "  %s: %s%s" % (dumps(name), dumps(value), ending)
            continue
        opening, items = "  %s: [" % dumps(name), []
        encode = str if isinstance(value, EncodedItems) else dumps
        for item in value:
            items.append(encode(item))
            if len(items) == chunk_items:
                yield opening + "\n    " + ",\n    ".join(items)
                opening, items = ",", []
        if items:
            yield opening + "\n    " + ",\n    ".join(items)
            opening = ","
        yield ("\n  ]" if opening == "," else opening + "]") + ending
    yield "}\n"


# Prometheus text exposition format

def prometheus_labels(pairs):
    if not pairs:
        return ""
    escaped = []
    for name, value in pairs:
        value = clean(value).replace("\\", "\\\\").replace('"', '\\"')
        escaped.append('%s="%s"' % (name, value))
    return "{" + ",".join(escaped) + "}"


def format_prometheus(report):
    """Metrics for node_exporter's textfile collector or a scrape of --metrics-listen,
    labelled by the --group-by fields."""
    agg = report.aggregate
    groups = sorted(agg.groups.items()) if agg.group_by else [((), agg.totals)]
    lines = []

    def family(name, kind, text, samples):
        lines.append("# HELP %s %s" % (name, text))
        lines.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            lines.append("%s%s %s" % (name, prometheus_labels(labels), _prometheus_number(value)))

    keyed = [(list(zip(agg.group_by, key)), tally) for key, tally in groups]
    family("catop_requests_total", "counter", "LLM requests read from the logs.",
           [(labels, t.requests) for labels, t in keyed])
    kinds = (("miss", "miss"), ("cache_read", "cache_read"), ("cache_write_5m", "cache_write_5m"),
             ("cache_write_1h", "cache_write_1h"), ("output", "output"), ("reasoning", "reasoning"))
    family("catop_tokens_total", "counter", "Tokens by kind (input = miss + cache read + writes).",
           [(labels + [("kind", kind)], getattr(t, attr)) for labels, t in keyed
            for kind, attr in kinds])
    family("catop_cost_usd_total", "counter", "Estimated cost in USD.",
           [(labels, t.cost) for labels, t in keyed])
    family("catop_no_cache_cost_usd_total", "counter",
           "What the same traffic would cost with no prompt cache, USD.",
           [(labels, t.no_cache_cost) for labels, t in keyed])
    family("catop_saved_usd", "gauge",
           "Saved by the cache, USD (a gauge: unread writes can make it negative).",
           [(labels, t.saved) for labels, t in keyed])
    family("catop_hit_rate", "gauge", "Cache read / input tokens (NaN without input).",
           [(labels, t.hit_rate) for labels, t in keyed])
    family("catop_unpriced_requests_total", "counter", "Requests of models with no known price.",
           [(labels, t.unpriced_requests) for labels, t in keyed])
    summary = break_summary(agg.effects.breaks)["by_cause"]
    family("catop_cache_breaks_total", "counter", "Cache breaks by cause.",
           [([("cause", cause)], figures["count"]) for cause, figures in summary.items()])
    family("catop_cache_break_cost_usd_total", "counter",
           "What the tokens re-paid after a cache break cost above the read rate, USD.",
           [([("cause", cause)], figures["cost_usd"]) for cause, figures in summary.items()])
    agreement = break_summary(agg.effects.breaks)["agreement"]
    family("catop_cache_break_causes_reported_total", "counter",
           "Cache breaks whose cause the provider reported.", [([], agreement["compared"])])
    family("catop_cache_break_causes_agreeing_total", "counter",
           "Reported causes the usage-only inference agreed with.", [([], agreement["agree"])])
    return "\n".join(lines) + "\n"


def _prometheus_number(value):
    if value is None:
        return "NaN"
    if isinstance(value, float):
        return repr(round(value, 9))
    return str(value)


def format_csv(report):
    """Header and one row a group (or the totals row without --group-by); with
    --session, one row a request of its timeline."""
    agg = report.aggregate
    import csv
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if agg.session is not None:
        entries = [timeline_entry(req, cost, found) for req, cost, found
                   in sorted(agg.timeline, key=lambda e: request_order(e[0]))]
        fields = list(timeline_entry(Request(), 0.0))
        writer.writerow(fields)
        for entry in entries:
            writer.writerow([csv_cell(entry[f]) for f in fields])
        return out.getvalue()
    fields = list(Tally().as_dict())
    writer.writerow(list(agg.group_by) + fields)
    rows = report.rows if agg.group_by else [((), agg.totals)]
    for key, tally in rows:
        values = tally.as_dict()
        writer.writerow([csv_cell(k) for k in key] + [csv_cell(values[f]) for f in fields])
    return out.getvalue()


def format_table(report, width=80, ellipsis="~"):
    lines = render_report(report, width, ellipsis)
    if report.aggregate.session is not None:
        lines += [""] + render_timeline(report, width, ellipsis)
    return "\n".join(lines) + "\n"


# the curses layer: draws the lines render_screen gives it, reads keys

_KEY_NAMES = {10: "enter", 13: "enter", 27: "esc", 127: "backspace", 8: "backspace", 3: "ctrl-c"}


def key_name(code):
    """A curses key code as the name handle_key knows."""
    import curses
    named = {curses.KEY_UP: "up", curses.KEY_DOWN: "down", curses.KEY_PPAGE: "pgup",
             curses.KEY_NPAGE: "pgdn", curses.KEY_HOME: "home", curses.KEY_END: "end",
             curses.KEY_ENTER: "enter", curses.KEY_BACKSPACE: "backspace",
             curses.KEY_RESIZE: "resize"}
    if code in named:
        return named[code]
    if code in _KEY_NAMES:
        return _KEY_NAMES[code]
    if 32 <= code < 127:
        return chr(code)
    return ""


def curses_styles(use_colour):
    """Semantic styles -> curses attributes, monochrome without colour."""
    import curses
    mono = {"": curses.A_NORMAL, "title": curses.A_BOLD, "ok": curses.A_NORMAL,
            "warn": curses.A_BOLD, "bad": curses.A_BOLD | curses.A_UNDERLINE,
            "dim": curses.A_DIM, "select": curses.A_REVERSE}
    if not curses.has_colors():
        return mono
    try:
        curses.start_color()
        curses.use_default_colors()   # also without colour: curses.wrapper started
        background = -1               # colour, and its pair 0 is white on black
    except curses.error:
        return mono
    if not use_colour:
        return mono
    styles = dict(mono)
    for number, (name, colour, extra) in enumerate((
            ("title", curses.COLOR_CYAN, curses.A_BOLD), ("ok", curses.COLOR_GREEN, 0),
            ("warn", curses.COLOR_YELLOW, curses.A_BOLD), ("bad", curses.COLOR_RED, curses.A_BOLD),
            ("dim", curses.COLOR_BLUE, 0)), start=1):
        try:
            curses.init_pair(number, colour, background)
            styles[name] = curses.color_pair(number) | extra
        except curses.error:
            pass
    return styles


def draw_lines(window, lines, styles):
    """Draws lines of (text, style) segments, clipped to the window; the bottom-right
    cell is never written (it raises curses.error on most terminals)."""
    import curses
    height, width = window.getmaxyx()
    window.erase()
    for row, segments in enumerate(lines[:height]):
        column = 0
        limit = width - 1 if row == height - 1 else width
        for text, style in segments:
            room = limit - column
            if room <= 0:
                break
            text = fit(clean(text), room, "")
            try:
                window.addstr(row, column, text, styles.get(style, 0))
            except curses.error:
                pass
            column += display_width(text)
    window.noutrefresh()
    curses.doupdate()


class LiveApp(object):
    """The live loop, apart from curses so that tests drive it with a fake window."""

    def __init__(self, model, view, meta, interval_s=1.0, duration_s=None, alert_burn=5.0,
                 clock=time.time):
        self.model, self.view, self.meta = model, view, meta
        self.interval_s = interval_s
        self.duration_s = duration_s
        self.alert_burn = alert_burn
        self.clock = clock
        self.started = clock()
        self.next_poll = 0.0
        self.frame = None
        self.table_cache = {}
        self.busy_s = 0.0        # how long the last poll took
        self.lock = contextlib.nullcontext()  # a real lock when --metrics-listen reads too

    def tick(self, rescan=False):
        """Polls the sources when due; returns True when the screen must be redrawn."""
        now = self.clock()
        if not (rescan or now >= self.next_poll):
            return False
        started = time.time()
        with self.lock:
            self.model.poll(rediscover=rescan)
        self.busy_s = time.time() - started
        # under a flood of data, keep at least two thirds of the time for keys
        self.next_poll = now + max(self.interval_s, 3 * self.busy_s)
        return True

    def current_frame(self):
        """The frame to show; a paused view keeps the one it had."""
        if self.view.paused and self.frame is not None:
            return self.frame
        with self.lock:
            self.frame = build_frame(self.model, self.view, self.clock(), self.alert_burn,
                                     self.table_cache, self.meta.get("budgets"))
        self.meta["sources"] = self.model.stats()
        return self.frame

    def screen(self, width, height, unicode_ok=True):
        return render_screen(self.current_frame(), self.view, self.meta, width, height,
                             unicode_ok)

    def expired(self):
        return self.duration_s is not None and self.clock() - self.started >= self.duration_s

    def press(self, name):
        """Handles one key; returns 'quit' or None."""
        if not name or name == "resize":
            return None
        action = handle_key(self.view, name, self.frame or self.current_frame())
        if action == "rescan":
            self.tick(rescan=True)
            self.view.note = ("rescanned: %s" % counted(sum(s.records for s in
                                                             self.model.stats()), "record"),
                              self.clock() + 3.0)
            return None
        return action


def run_curses(app, use_colour, unicode_ok):
    """The terminal loop: returns the exit status.  The terminal is restored on every
    exit (curses.wrapper), and SIGTERM ends the loop like q."""
    import curses

    def loop(window):
        styles = curses_styles(use_colour)
        try:
            curses.curs_set(0)
        except curses.error:
            pass
        window.keypad(True)
        window.timeout(100)
        dirty = True
        while not app.expired():
            if app.tick():
                dirty = True
            if dirty:
                height, width = window.getmaxyx()
                draw_lines(window, app.screen(width, height, unicode_ok), styles)
                dirty = False
            code = window.getch()
            if code == -1:
                continue
            if code == curses.KEY_RESIZE:
                curses.update_lines_cols()
            if app.press(key_name(code)) == "quit":
                return EXIT_OK
            dirty = True
        return EXIT_OK

    def stop(signum, frame):
        raise SystemExit(EXIT_OK)

    import signal
    previous = signal.signal(signal.SIGTERM, stop)
    os.environ.setdefault("ESCDELAY", "25")
    try:
        return curses.wrapper(loop)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


# LiteLLM callback: `callbacks: catop.proxy_handler_instance` in a proxy's config.yaml,
# or litellm.callbacks = [catop.proxy_handler_instance] in the SDK

def litellm_log_path():
    return os.environ.get("CATOP_LITELLM_LOG") or os.path.join(
        xdg_dir("XDG_STATE_HOME", (".local", "state")), "litellm.jsonl")


def _plain(value):
    """A pydantic model, object or dict as plain dicts and lists."""
    for method in ("model_dump", "dict"):
        dump = getattr(value, method, None)
        if callable(dump):
            try:
                return dump()
            except Exception:
                pass
    return value if isinstance(value, (dict, list)) else getattr(value, "__dict__", {})


def litellm_log_record(kwargs, response, start_time=None):
    """The line catop's callback writes for one call: an explicit list of fields,
    never prompt or response text, headers, keys or key hashes."""
    slo = kwargs.get("standard_logging_object") or {}
    meta = slo.get("metadata") if type(slo.get("metadata")) is dict else {}
    params = kwargs.get("litellm_params") if type(kwargs.get("litellm_params")) is dict else {}
    params_meta = params.get("metadata") if type(params.get("metadata")) is dict else {}
    usage = _plain(getattr(response, "usage", None) or
                   (response.get("usage") if isinstance(response, dict) else None) or {})
    tokens = litellm_usage_tokens(usage) if type(usage) is dict else None
    if tokens is None:
        return None
    miss, read, write_5m, write_1h, output, reasoning = tokens
    when = slo.get("startTime") or (start_time.timestamp() if hasattr(start_time, "timestamp")
                                    else time.time())
    # LiteLLM makes up a trace id per call: a session only when one was given
    session = (kwargs.get("litellm_session_id") or params_meta.get("session_id") or
               meta.get("session_id") or "")
    record = {
        "timestamp": iso_utc(float(when)) if isinstance(when, (int, float)) else str(when),
        "agent": "litellm",
        "model": slo.get("model") or kwargs.get("model") or "",
        "model_group": slo.get("model_group") or "",
        "provider": slo.get("custom_llm_provider") or "",
        "session_id": str(session),
        "litellm_trace_id": slo.get("trace_id") or "",
        "project": meta.get("user_api_key_team_alias") or params_meta.get("project") or "",
        "key_alias": meta.get("user_api_key_alias") or "",
        "call_id": slo.get("id") or kwargs.get("litellm_call_id") or "",
        "response_cost": slo.get("response_cost", kwargs.get("response_cost")),
        "usage": {"input_tokens": miss, "cache_read_input_tokens": read,
                  "cache_creation_input_tokens": write_5m + write_1h,
                  "cache_creation": {"ephemeral_5m_input_tokens": write_5m,
                                     "ephemeral_1h_input_tokens": write_1h},
                  "output_tokens": output,
                  "output_tokens_details": {"reasoning_tokens": reasoning}},
    }
    record = {k: v for k, v in record.items() if v not in ("", None)}
    found = response_diagnosis(response, kwargs)
    if found is not None:   # kept even when null: Anthropic's null is a verdict
        record[found[0]] = found[1]
    return record


_DIAGNOSIS_FIELDS = ("type", "reason", "cache_missed_input_tokens", "cache_missed_tokens",
                     "comparison_reusable_tokens")
_ABSENT = object()


def _member(holder, key):
    """holder's key (a dict's) or attribute (a response object's); _ABSENT if none."""
    if isinstance(holder, dict):
        return holder.get(key, _ABSENT)
    extra = getattr(holder, "__pydantic_extra__", None)   # pydantic 2 keeps extras here
    if isinstance(extra, dict) and key in extra:
        return extra[key]
    return getattr(holder, key, _ABSENT) if holder is not None else _ABSENT


def _scalars(value):
    """The known fields of a diagnosis object that are plain values, nothing else."""
    value = _plain(value)
    if not isinstance(value, dict):
        return value if value is None or isinstance(value, (str, int, float)) else str(value)
    return {k: value[k] for k in _DIAGNOSIS_FIELDS
            if k in value and (value[k] is None or isinstance(value[k], (str, int, float)))}


ORIGINAL_RESPONSE_MAX_CHARS = 8 * 1024 * 1024
_ORIGINAL = object()


def _original_response(raw):
    """LiteLLM's raw response body as a dict, if it may hold a diagnosis; else None."""
    if not (isinstance(raw, str) and len(raw) <= ORIGINAL_RESPONSE_MAX_CHARS
            and "diagnostics" in raw):
        return None
    try:
        raw = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return raw if isinstance(raw, dict) else None


def response_diagnosis(response, kwargs=None):
    """(key, value) of the provider's cache-miss diagnosis on a LiteLLM call, with
    only the diagnosis's own fields; or None.  LiteLLM 1.108 keeps OpenAI's on the
    response (a pydantic extra) and in the standard logging object, but drops
    Anthropic's: only the raw body it logs (original_response) still has it."""
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    extra = _member(response, "provider_specific_fields")
    slo = kwargs.get("standard_logging_object")
    logged = slo.get("response") if isinstance(slo, dict) else None
    for holder in (response, extra if isinstance(extra, dict) else None,
                   logged if isinstance(logged, dict) else None, _ORIGINAL):
        if holder is _ORIGINAL:   # parsed last, and only when it may hold one
            holder = _original_response(kwargs.get("original_response"))
        if holder is None:
            continue
        for key in DIAGNOSIS_KEYS:
            value = _member(holder, key)
            if value is _ABSENT:
                continue
            if key == "diagnostics":
                plain = _plain(value) if value is not None else None
                reason = plain.get("cache_miss_reason", _ABSENT) if isinstance(plain, dict) \
                    else _ABSENT
                return key, (None if value is None else
                             {"cache_miss_reason": _scalars(reason)} if reason is not _ABSENT
                             else _scalars(plain))
            return key, _scalars(value)
    return None


class _LogAppender(object):
    """Appends one JSON line per call: a single write() on an O_APPEND descriptor, so
    concurrent proxy workers never interleave; the file 0600 in a 0700 folder.  A
    failure is reported once and then dropped: logging never breaks a call."""

    def __init__(self):
        self.warned = False

    def append(self, record):
        try:
            path = litellm_log_path()
            make_private_folder(os.path.dirname(path))
            line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
            append_whole_line(path, line)
        except Exception as error:
            if not self.warned:
                self.warned = True
                sys.stderr.write("catop: cannot write the LiteLLM log (%s); dropping "
                                 "records\n" % error)

    def log(self, kwargs, response, start_time):
        try:
            record = litellm_log_record(kwargs, response, start_time)
        except Exception:
            record = None
        if record is not None:
            self.append(record)


def append_whole_line(path, line):
    """Appends line to path (made 0600, never through a link) in one write, or not at
    all: a short write (a full disk) is cut back off, so the next record is never
    glued to half a line.  Raises OSError when the line is not there whole."""
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) |
             getattr(os, "O_CLOEXEC", 0))
    fd = os.open(path, flags, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, "not a regular file", path)
        with _held_lock(fd):
            size = os.fstat(fd).st_size
            try:
                written = os.write(fd, line)
            except OSError:
                written = -1
            if written != len(line):
                os.ftruncate(fd, size)
                raise OSError(28, "a short write (is the disk full?)", path)
    finally:
        os.close(fd)


def make_litellm_handler():
    """catop's LiteLLM CustomLogger (LiteLLM is imported only here)."""
    from litellm.integrations.custom_logger import CustomLogger

    class CatopLogger(CustomLogger):
        appender = _LogAppender()

        def log_success_event(self, kwargs, response_obj, start_time, end_time):
            self.appender.log(kwargs, response_obj, start_time)

        async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
            import asyncio
            try:  # the file write goes to a thread: the event loop never waits on disk
                await asyncio.get_running_loop().run_in_executor(
                    None, self.appender.log, kwargs, response_obj, start_time)
            except RuntimeError:  # no executor any more (interpreter shutting down)
                self.appender.log(kwargs, response_obj, start_time)

    return CatopLogger()


_HANDLER = []


def __getattr__(name):
    # `import catop` needs no LiteLLM: the handler is made on first use (PEP 562)
    if name == "proxy_handler_instance":
        if not _HANDLER:
            _HANDLER.append(make_litellm_handler())
        return _HANDLER[0]
    raise AttributeError("module 'catop' has no attribute %r" % name)


# ---------------------------------------------------------------------- cli

def parse_group_by(text):
    if text.strip().lower() in ("", "none"):
        return ()
    fields = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in fields if f not in GROUP_FIELDS]
    if bad:
        raise argparse.ArgumentTypeError(
            "unknown group %s (choose from %s, or none)" % (", ".join(bad), ",".join(GROUP_FIELDS)))
    repeated = sorted(set(f for f in fields if fields.count(f) > 1))
    if repeated:
        raise argparse.ArgumentTypeError("%s given twice" % ", ".join(repeated))
    return fields


def parse_width(text):
    width = parse_positive(int)(text)
    if width < 20:
        raise argparse.ArgumentTypeError("at least 20 columns")
    return width


class OneLineParser(argparse.ArgumentParser):
    """argparse, whose usage errors are one line and a hint, not the whole usage."""

    def error(self, message):
        self.exit(EXIT_USAGE, "%s: error: %s (%s --help for more)\n"
                  % (self.prog, message, self.prog))


def parse_ratio(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a ratio from 0 to 1, like 0.6")
    return value


def parse_positive(kind, zero=False):
    """An argparse type: a finite number above 0 (with zero: 0 or above)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if not (value >= 0 if zero else value > 0) or value != value or value == math.inf:
            raise argparse.ArgumentTypeError("0 or more" if zero else "a positive number")
        return value
    return parse


def build_parser():
    parser = OneLineParser(
        prog="catop",
        description="top for LLM prompt-cache economics: cache hits, cost and savings "
                    "from request logs and coding-agent logs.",
        epilog="Exit status: 0 ok, 1 runtime error, 2 usage error, 3 gate breached, "
               "130 interrupted.")
    src = parser.add_argument_group("sources (several may be given; they are merged)")
    src.add_argument("--file", action="append", default=[], metavar="PATH",
                     help="a JSONL request log, any usage shape; a folder means its *.jsonl; "
                          "- is standard input (repeatable)")
    src.add_argument("--stdin", action="store_true", help="read a request log from standard input")
    src.add_argument("--litellm-proxy-log", nargs="?", const="", metavar="PATH",
                     help="the log catop's LiteLLM callback writes (default $CATOP_LITELLM_LOG, "
                          "else $XDG_STATE_HOME/catop/litellm.jsonl)")
    src.add_argument("--agent", action="append", default=[], choices=tuple(AGENT_TABLE),
                     metavar="NAME", help="local coding-agent logs: %s (repeatable)"
                     % ", ".join(AGENT_TABLE))
    src.add_argument("--scan-agents", action="store_true",
                     help="every agent whose logs are found (the default with no source)")
    src.add_argument("--litellm-url", metavar="URL",
                     help="a LiteLLM proxy's spend logs over HTTP (/spend/logs/v2); the key "
                          "comes from $LITELLM_API_KEY, never the command line")
    src.add_argument("--otlp-listen", metavar="HOST:PORT",
                     help="receive Claude Code / Codex telemetry as OTLP/HTTP JSON at "
                          "/v1/logs and /v1/metrics (loopback unless a host is named; "
                          "the live view or --once --duration)")
    src.add_argument("--demo", action="store_true", help="simulated mixed traffic")
    src.add_argument("--seed", type=int, default=1, help="demo seed (default 1)")
    view = parser.add_argument_group("view")
    view.add_argument("--once", action="store_true",
                      help="print one snapshot and exit (the default when stdout is not a "
                           "terminal)")
    view.add_argument("--jobs", type=parse_positive(int), metavar="N",
                      help="processes that read big logs side by side (default: the cores "
                           "available; 1 never starts another process)")
    view.add_argument("--interval", type=parse_positive(float), default=1.0, metavar="SECONDS",
                      help="live view refresh (default 1)")
    view.add_argument("--duration", type=parse_positive(float), metavar="SECONDS",
                      help="exit after this long; with --once, watch this long, then print")
    view.add_argument("--no-color", action="store_true",
                      help="no colour in the live view (also: NO_COLOR set)")
    view.add_argument("--metrics-listen", metavar="HOST:PORT",
                      help="serve Prometheus metrics at /metrics while the live view or "
                           "--duration runs (loopback unless a host is named)")
    view.add_argument("--alert-burn", type=parse_positive(float), default=5.0,
                      metavar="USD_PER_HOUR",
                      help="live alert when spend over the last 5 min runs above this "
                           "(default 5)")
    view.add_argument("--format", choices=FORMATS, default="table",
                      help="snapshot format (default table); prometheus: the text exposition "
                           "format")
    view.add_argument("--group-by", type=parse_group_by, default=("model",), metavar="FIELDS",
                      help="comma list of %s, or none (default model)" % ",".join(GROUP_FIELDS))
    view.add_argument("--sort", choices=sorted(SORT_COLUMNS) + ["name", "time"],
                      help="sort groups by this column, largest first; name: A to Z; time: "
                           "oldest first (default: time when grouped by day, week or month, "
                           "else cost)")
    view.add_argument("--ascending", action="store_true",
                      help="numbers smallest first (name is always A to Z, time oldest first)")
    view.add_argument("--top", type=parse_positive(int), metavar="N",
                      help="show the first N groups only")
    view.add_argument("--session", metavar="ID",
                      help="one session's requests in time order (a unique prefix will do)")
    view.add_argument("--window", choices=WINDOWS, default="all",
                      help="time window; today/week/month are local calendar (default all)")
    view.add_argument("--since", metavar="WHEN",
                      help="from this ISO date/time (local unless it has a zone) or span ago "
                           "like 90m, 2h, 7d (inclusive)")
    view.add_argument("--until", metavar="WHEN", help="up to this time (exclusive)")
    view.add_argument("--width", type=parse_width, metavar="COLUMNS",
                      help="table width, 20 or more (default: $COLUMNS, else the terminal's; "
                           "piped, nothing is cut)")
    prices = parser.add_argument_group("prices")
    prices.add_argument("--prices", metavar="PATH",
                        help="a LiteLLM-format price map; otherwise the user cache (<24 h), "
                             "LiteLLM's public map (3 s timeout), bundled prices.json, "
                             "embedded table")
    prices.add_argument("--offline", action="store_true", help="never touch the network")
    prices.add_argument("--refresh-prices", action="store_true",
                        help="fetch LiteLLM's price map now")
    gates = parser.add_argument_group("CI gates (exit status 3 when breached)")
    gates.add_argument("--min-hit-rate", type=parse_ratio, metavar="RATIO",
                       help="fail when the hit rate is below RATIO (0..1)")
    gates.add_argument("--max-cost", type=parse_positive(float, zero=True), metavar="USD",
                       help="fail when the estimated cost exceeds USD (0: any cost)")
    gates.add_argument("--max-break-cost", type=parse_positive(float, zero=True),
                       metavar="USD",
                       help="fail when cache breaks cost more than USD (0: any break)")
    store = parser.add_argument_group("history")
    store.add_argument("--history", metavar="PATH",
                       help="the SQLite history (default $XDG_STATE_HOME/catop/history.sqlite3;"
                            " naming it also keeps --stdin)")
    store.add_argument("--no-history", action="store_true",
                       help="read the logs afresh and keep nothing")
    store.add_argument("--prune-history", type=parse_positive(int), metavar="DAYS",
                       help="delete stored requests older than DAYS, then exit")
    store.add_argument("--export-history", choices=("csv", "jsonl"),
                       help="write every stored request to standard output, then exit")
    budgets = parser.add_argument_group("budgets (also from $XDG_CONFIG_HOME/catop/config.json)")
    for period in BUDGET_PERIODS:
        budgets.add_argument("--budget-%s" % period, type=parse_positive(float), metavar="USD",
                             help="spend limit for the current local %s" % {
                                 "daily": "day", "weekly": "week (from Monday)",
                                 "monthly": "month"}[period])
    budgets.add_argument("--enforce-budgets", action="store_true",
                         help="exit 3 when a budget is spent (a CI gate)")
    parser.add_argument("--version", action="version", version="catop " + __version__)
    line = parser.add_argument_group("Claude Code's status line")
    line.add_argument("--statusline", action="store_true",
                      help="read Claude Code's status-line JSON on stdin and print one line: "
                           "the session's hit rate, cost and saved, the cache entry's time "
                           "left, the last break (always exit 0)")
    line.add_argument("--statusline-format", metavar="TEMPLATE",
                      help="the line's template, fields {%s}; an empty field is left out "
                           "with the text before it, and a part between ' \u00b7 ' whose "
                           "fields are all empty is left out (default: %s)" % (
                               "} {".join(STATUSLINE_FIELDS),
                               STATUSLINE_FORMAT.replace("%", "%%")))
    line.add_argument("--install", action="store_true",
                      help="with --statusline: print the statusLine entry for "
                           "~/.claude/settings.json")
    line.add_argument("--write", action="store_true",
                      help="with --statusline --install: merge it into settings.json "
                           "(atomically, every other setting kept)")
    line.add_argument("--force", action="store_true",
                      help="with --write: replace another tool's status line")
    return parser


def collect_sources(args, aggregate, now, history=None):
    """Feeds every requested source into aggregate; returns their SourceStats.  With
    a history, logs are read into it (only what changed) and the report comes from it."""
    sources, stored, streamed = [], [], []
    for path in args.file:
        stats = SourceStats("stdin" if path == "-" else "file:%s" % path)
        try:
            if path == "-" and history is not None and args.history:
                ingest_stream(history, sys.stdin.buffer, stats)
                stored.append("stdin")
            elif path == "-":
                deadline = time.time() + args.duration if args.duration else None
                import tempfile
                spool = tempfile.TemporaryFile(prefix="catop-stdin-")
                scan_request_stream(StreamReader(sys.stdin.buffer, deadline, spool), stats,
                                    aggregate.add, wanted=aggregate.wanted_attributes())
                streamed.append(spool)
            elif history is not None and history_can_name(path):
                ingest_request_file(history, path, stats)
                stored.append(log_label(path))
            else:
                if history is not None:
                    warn("%s is read without the history, which names files in UTF-8 "
                         "only" % os.fsencode(path).decode("utf-8", "backslashreplace"))
                scan_request_file(path, aggregate, stats)
                streamed.append(path)
        except OSError as error:
            raise SourceError("cannot read %s: %s" % (clean(path), error.strerror or error))
        sources.append(stats)
    if aggregate.effects.late:
        read_again_in_time_order(streamed, aggregate)
    if args.demo:   # what the live view shows when it starts, --once --duration after
        demo = LiveDemoSource(args.seed, clock=lambda: now)
        demo.poll()
        for session, ts in demo.compaction_times():
            aggregate.effects.compactions.setdefault(session, []).append(ts)
        for req in demo.requests:
            aggregate.add(req)
        sources.append(demo.stats)
    if args.litellm_url:
        source = LiteLLMSpendSource(args.litellm_url, aggregate.since, aggregate.until)
        source.fetch(aggregate.since)
        for req in sorted(source.rows.values(), key=request_order):
            source.stats.records += 1
            aggregate.add(req)
        sources.append(source.stats)
    agents = list(dict.fromkeys(args.agent))
    no_source = names_no_source(args)
    if args.scan_agents or no_source:
        agents = [name for name in AGENT_TABLE if agent_present(name)] or agents
        if no_source and not agents and (history is None or not history.has_requests()):
            raise CatopError(no_data_message())
    for name in agents:
        if name in args.agent and not agent_present(name) and not (
                history is not None and history.holds(history_scope(["agent:" + name]))):
            raise SourceError(missing_agent_message(name))
        if history is not None:
            sources.append(ingest_agent(history, name))
            stored.append("agent:" + name)
        else:
            sources.append(scan_agent(name, aggregate))
    if history is not None and (no_source or stored):
        # with no source named, everything the history holds: logs since deleted too
        sources.append(report_history(history, aggregate, None if no_source else stored))
    return sources


def keeps_history(args):
    """Whether a run keeps a history: not --no-history, and it reads something the
    history keeps (a request log, standard input only with --history named, an
    agent) or no source at all (the report is then the history's).  A demo or
    LiteLLM's spend logs alone leave it untouched."""
    logs = [path for path in args.file if path != "-" or args.history]
    return not args.no_history and bool(logs or args.agent or args.scan_agents or
                                        names_no_source(args))


def names_no_source(args):
    """Whether a snapshot is given no source (it then scans every agent, and reports
    all the history holds)."""
    return not (args.file or args.demo or args.agent or args.scan_agents or args.litellm_url)


def report_history(history, aggregate, labels):
    """Feeds the stored requests of the given sources (all: None) into aggregate."""
    stats = SourceStats("history:%s" % history.path)
    for session, times in history.compactions().items():
        aggregate.effects.compactions.setdefault(session, []).extend(times)
    scope = None if labels is None else history_scope(labels)
    for _, req in history.requests(aggregate.since, aggregate.until, scope):
        stats.records += 1
        aggregate.add(req)
    damaged = history.damaged_rows()
    if damaged:
        stats.skip("malformed", damaged)
        warn("the history %s holds %s damaged %s (its source does not match its key), "
             "left out" % (history.path, fmt_int(damaged), plural(damaged, "row")))
    return stats


def open_history(args):
    """The History, or None: --no-history, a run that reads nothing it keeps, or a
    Python without sqlite3."""
    if not keeps_history(args):
        return None
    try:
        import sqlite3
    except ImportError:
        warn("this Python has no sqlite3 module: running without a history")
        return None
    path = args.history or history_path()
    try:
        return History(path)
    except (OSError, sqlite3.Error) as error:
        if args.history:  # named on purpose: not having it is an error
            raise CatopError("cannot use the history %s: %s" % (path, error))
        # a read-only home (a CI image, a container): the report does not need it
        warn("cannot keep a history at %s (%s): running without one" % (path, error))
        return None


def export_history(history, kind, out):
    """Every stored request, as CSV or JSON lines."""
    fields = ("ts", "agent", "provider", "model", "project", "session", "miss_tokens",
              "cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens",
              "output_tokens", "reasoning_tokens", "observed_cost_usd", "subagent", "source",
              "thread", "reported_reason")
    import csv
    writer = csv.writer(out, lineterminator="\n") if kind == "csv" else None
    if writer:
        writer.writerow(fields)
    for label, req in history.requests():
        values = (iso_utc(req.ts), req.agent, req.provider, req.model, req.project, req.session,
                  req.miss, req.cache_read, req.cache_write_5m, req.cache_write_1h, req.output,
                  req.reasoning, req.observed_cost, req.sidechain, label, req.thread,
                  req.diagnosis and req.diagnosis[1])
        if writer:
            writer.writerow([csv_cell(v) for v in values])
        else:
            out.write(json.dumps(dict(zip(fields, values))) + "\n")


def check_gates(args, totals, breaks=(), budgets=None):
    """One-line reasons for every breached gate."""
    reasons = []
    if args.enforce_budgets and budgets is not None:
        for period, limit, spent, share, state in budgets.status():
            if state == "over":
                reasons.append("%s budget spent: %s of %s" % (period, fmt_usd(spent, 2),
                                                              fmt_usd(limit, 2)))
    break_cost_usd = sum(item.cost for item in breaks)
    if args.max_break_cost is not None and break_cost_usd > args.max_break_cost:
        reasons.append("cache breaks cost %s, over --max-break-cost %s" % (
            fmt_usd(break_cost_usd), fmt_usd(args.max_break_cost)))
    if args.min_hit_rate is not None and totals.hit_rate is not None \
            and totals.hit_rate < args.min_hit_rate:
        reasons.append("hit rate %s is below --min-hit-rate %s" % (
            fmt_pct(totals.hit_rate), fmt_pct(args.min_hit_rate)))
    if args.max_cost is not None and totals.cost > args.max_cost:
        reasons.append("cost %s exceeds --max-cost %s" % (fmt_usd(totals.cost),
                                                          fmt_usd(args.max_cost)))
    return reasons


UNCUT_WIDTH = 1 << 20   # a pipe or a file has no width: nothing is cut for it


def output_width(args):
    """--width, else $COLUMNS, else the terminal's; piped or redirected, no limit."""
    if args.width:
        return args.width
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return max(20, int(columns))
    if not sys.stdout.isatty():
        return UNCUT_WIDTH
    import shutil
    return max(20, shutil.get_terminal_size((80, 24)).columns)


def run(args):
    if args.statusline:
        return run_statusline(args)
    now = time.time()
    JOBS_LIMIT[0] = args.jobs
    if AS_SCRIPT[0] and worth_running_as_module(args):
        run_as_module()
    release_compiler_memory()   # (not before: a process replaced by the module gains nothing)
    REFUSED_VALUES.clear()
    try:
        since, until = resolve_window(args.window, args.since, args.until, now)
    except ValueError as error:
        raise UsageError(str(error))
    if args.stdin:
        args.file.append("-")
    if args.litellm_proxy_log is not None:
        args.file.append(args.litellm_proxy_log or litellm_log_path())
    elif not (args.file or args.demo or args.agent or args.scan_agents or args.otlp_listen or
              args.litellm_url) and os.path.isfile(litellm_log_path()):
        args.file.append(litellm_log_path())  # with no source: the proxy log if it is there
        args.scan_agents = True
    args.folders = [path for path in args.file if path != "-" and os.path.isdir(path)]
    args.file = expand_file_args(args.file)
    if args.prune_history or args.export_history:
        return maintain_history(args, now)
    prices = load_prices(args.prices, args.offline, args.refresh_prices, now, warn=warn)
    if wants_live(args):
        status = run_live(args, prices, since, until)
        if status is not None:
            return status
    if args.once and args.duration:
        return run_watch(args, prices, since, until)
    if args.metrics_listen or args.otlp_listen:
        raise UsageError("--metrics-listen and --otlp-listen run in the live view or with "
                         "--once --duration")
    return run_snapshot(args, prices, since, until, now)


def threading_lock():
    import threading
    return threading.Lock()


def run_watch(args, prices, since, until):
    """--once --duration: read the sources as they grow for that long (serving
    --metrics-listen meanwhile), then print the snapshot of all that was read."""
    sources = live_sources(args, time.time(), keys_from_tty=False)
    if not args.no_history:   # what the history holds counts, as in --once and live
        with gc_paused():
            sources = resume_from_history(args, sources)
    if not sources:
        raise CatopError(no_data_message())
    model = LiveModel(sources, prices, watch=FolderWatch(args.folders, sources))
    lock = threading_lock()
    if args.metrics_listen:
        serve_metrics(parse_listen_address(args.metrics_listen),
                      metrics_renderer(model, args.group_by, prices, lock))
    deadline = time.time() + args.duration
    while True:
        left = deadline - time.time()
        with lock:   # the last look finds the files that came since the one before
            model.poll(rediscover=left <= 0)
        if left <= 0:
            break
        time.sleep(min(args.interval, left))
    now = time.time()
    with lock:
        model.finish()
        if keeps_history(args):
            writer = HistoryWriter(args, sources)
            writer.store_once()
            if writer.error is not None:
                warn("the history could not keep what was read (%s)" % clean(writer.error))
        for name in dict.fromkeys(args.agent):   # still nowhere: what --once says then
            if not agent_present(name) and not any(
                    isinstance(source, LiveAgentSource) and source.source.agent == name
                    and source.requests for source in model.sources):
                raise SourceError(missing_agent_message(name))
        aggregate, _ = one_session(args, lambda exact: (aggregate_model(
            model, args.group_by, since, until, args.session, now,
            None if args.session else budget_tracker(args, now), exact), None))
    return print_report(args, aggregate, model.stats(), prices, now)


def maintain_history(args, now):
    """--prune-history and --export-history: act on the store, then exit."""
    history = open_history(args)
    if history is None:
        raise CatopError("no history to act on (--no-history, or no sqlite3 here)")
    try:
        if args.prune_history:
            count = history.prune(args.prune_history, now)
            sys.stderr.write("catop: deleted %s older than %s\n" % (
                counted(count, "stored request"), counted(args.prune_history, "day")))
        if args.export_history:
            export_history(history, args.export_history, sys.stdout)
    except Exception as error:
        if not is_sqlite_error(error):
            raise
        raise CatopError(history_failure(history.path, error, "the command stopped there"))
    finally:
        history.close()
    return EXIT_OK


def wants_live(args):
    """The live view when both ends are a terminal (data may come on stdin, keys then
    from /dev/tty), unless --once or a machine format says otherwise."""
    if args.once or args.format != "table" or not sys.stdout.isatty():
        return False
    return sys.stdin.isatty() or "-" in args.file


def live_sources(args, now, keys_from_tty=True):
    sources, files = [], []
    for path in args.file:
        if path == "-" and not keys_from_tty:
            sources.append(LiveStreamSource(os.dup(0)))
        elif path == "-":
            data = os.dup(0)
            tty = os.open("/dev/tty", os.O_RDONLY)  # keys come from the terminal
            os.dup2(tty, 0)
            os.close(tty)
            sources.append(LiveStreamSource(data))
        else:
            sources.append(LiveFileSource(path, files))
    if args.demo:
        sources.append(LiveDemoSource(args.seed))
    if args.litellm_url:
        sources.append(LiteLLMSpendSource(args.litellm_url, background=True))
    agents = list(dict.fromkeys(args.agent))
    if args.scan_agents or not (args.file or args.demo or agents or args.otlp_listen or
                                args.litellm_url):
        agents = [name for name in AGENT_TABLE if agent_present(name)] or agents
    sources.extend(LiveAgentSource(name) for name in agents)
    if args.otlp_listen:
        sources.append(LiveOtlpSource(parse_listen_address(args.otlp_listen)))
    return sources


def parse_listen_address(text, default_host="127.0.0.1"):
    """(host, port) from HOST:PORT, :PORT or PORT; loopback unless a host is named."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 < number < 65536:
        raise UsageError("not a HOST:PORT to listen on: %r" % text)
    return host, number


def aggregate_model(model, group_by, since, until, session, now, budgets=None,
                    session_exact=False):
    """An Aggregate of everything a live model holds (the snapshot after watching)."""
    aggregate = Aggregate(model.prices, group_by, since, until, session,
                          session_exact=session_exact)
    aggregate.budgets = budgets
    for source in model.sources:
        for session_id, ts in source.compaction_times():
            if ts is not None:
                aggregate.effects.compactions.setdefault(session_id, []).append(ts)
    for entry in model.timeline.untimed + model.timeline.timed:
        aggregate.add(entry.req)
    aggregate.finish(now)
    return aggregate


def metrics_renderer(model, group_by, prices, lock):
    def render():
        with lock:
            now = time.time()
            aggregate = aggregate_model(model, group_by, None, None, None, now)
            return format_prometheus(Report(aggregate, model.stats(), prices, now))
    return render


def resume_from_history(args, sources):
    """Brings the history up to date, then starts each live source where it stopped,
    holding what it stored; with no source named, the rest of the history too."""
    try:
        history = open_history(args)
    except Exception as error:
        sqlite3 = sys.modules.get("sqlite3")
        if sqlite3 is None or not isinstance(error, sqlite3.Error):
            raise
        warn("the history cannot be read (%s): the live view runs without it" % clean(error))
        return sources
    if history is None:
        return sources
    try:
        return _resume_from(history, args, sources)
    except Exception as error:
        if not is_sqlite_error(error):
            raise
        warn(history_failure(history.path, error, "the live view comes from the logs"))
        for source in sources:   # what the store had begun to hand them is dropped
            source.forget_history()
        return [source for source in sources if not isinstance(source, LiveStoredSource)]
    finally:
        history.close()


def _resume_from(history, args, sources):
    labels = set()
    for source in sources:
        label = source.resume(history)
        if label is not None:
            labels.add(label)
    if not (args.file or args.demo or args.agent or args.litellm_url or args.otlp_listen):
        stored = LiveStoredSource(history, labels)
        if stored.requests:
            sources.append(stored)
    return sources


HISTORY_WRITE_INTERVAL_S = 60.0


class HistoryWriter(object):
    """Stores what the live view's sources read, while it runs: every interval_s on a
    thread of its own (never on the drawing path), and once more when it stops, so
    that logs an agent prunes while the view is open are kept, and a later --once
    reads nothing twice.  Each store reads from where the history stopped (under the
    same keys), whatever the live sources hold; a failure is kept for the end, never
    written over the screen."""

    def __init__(self, args, sources, interval_s=None):
        import threading
        self.args, self.sources = args, sources
        self.interval_s = HISTORY_WRITE_INTERVAL_S if interval_s is None else interval_s
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="catop-history", daemon=True)
        self.error = None
        self.stores = 0

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        while not self.stopping.wait(self.interval_s):
            self.store_once()

    def store_once(self):
        try:   # no warning now: the screen belongs to the live view
            history = History(self.args.history or history_path(), report=self.keep_note)
        except Exception as error:   # a failure of any kind is said at the end, once
            self.error = error
            return
        try:
            with gc_paused():
                for source in list(self.sources):   # (a FolderWatch may add one meanwhile)
                    try:
                        source.store(history)
                    except OSError:   # a log gone or unreadable now: its source says so,
                        continue      # what it held was stored, the others still are
            self.stores += 1
        except Exception as error:
            self.error = error
        finally:
            history.close()

    def keep_note(self, message):
        self.error = message

    def stop(self):
        """Ends the thread, then stores what came since its last store."""
        self.stopping.set()
        self.thread.join(30.0)
        self.store_once()
        if self.error is not None:
            warn("the live view could not keep its history (%s)" % clean(self.error))


def run_live(args, prices, since, until):
    """The live view; None when the terminal cannot host it (the caller prints a
    snapshot instead)."""
    if os.environ.get("TERM", "dumb") == "dumb":
        sys.stderr.write("catop: this terminal (TERM=%s) cannot show the live view; "
                         "printing a snapshot\n" % clean(os.environ.get("TERM", "")))
        return None
    try:
        import curses
    except ImportError:  # some Python builds have none
        sys.stderr.write("catop: curses is not available here; printing a snapshot\n")
        return None
    import locale
    try:
        locale.setlocale(locale.LC_ALL, "")
    except locale.Error:
        pass
    unicode_ok = "utf" in locale.getpreferredencoding(False).lower()
    sources = live_sources(args, time.time())
    if not args.no_history:
        with gc_paused():
            sources = resume_from_history(args, sources)
    if not sources:
        raise CatopError(no_data_message())
    model = LiveModel(sources, prices, watch=FolderWatch(args.folders, sources))
    view = View(args.group_by or ("model",), args.window, args.sort or "cost",
                not args.ascending)
    view.bounds = (since, until) if (args.since or args.until) else (None, None)
    if args.session:
        view.stack = [args.session]
    meta = {"prices_origin": prices.origin, "prices_age": prices.age_s, "sources": [],
            "budgets": budget_limits(args)}
    app = LiveApp(model, view, meta, args.interval, args.duration, args.alert_burn)
    if args.metrics_listen:
        app.lock = threading_lock()
        serve_metrics(parse_listen_address(args.metrics_listen),
                      metrics_renderer(model, args.group_by, prices, app.lock))
    use_colour = not args.no_color and "NO_COLOR" not in os.environ
    writer = HistoryWriter(args, sources).start() if keeps_history(args) else None
    try:
        return run_curses(app, use_colour, unicode_ok)
    except curses.error as error:
        sys.stderr.write("catop: the terminal could not start the live view (%s); "
                         "printing a snapshot\n" % error)
        return None
    finally:
        if writer is not None:
            writer.stop()


def run_snapshot(args, prices, since, until, now):
    """--once: read everything, print one report, apply the gates."""
    with gc_paused():  # one pass, no cycles worth a collection (14 ms on a big log)
        return snapshot(args, prices, since, until, now)


def snapshot(args, prices, since, until, now):
    aggregate, sources = one_session(args, lambda exact: snapshot_aggregate(
        args, prices, since, until, now, exact))
    return print_report(args, aggregate, sources, prices, now)


def one_session(args, build):
    """build(exact)'s (aggregate, sources); with --session, of one session: a prefix that
    matches several is a usage error, unless one of them is the id itself (built again,
    for it alone)."""
    aggregate, sources = build(False)
    if args.session is None:
        return aggregate, sources
    matched = sorted({entry[0].session for entry in aggregate.timeline})
    if not matched:
        raise CatopError("no requests of session %s in this window" % clean(args.session))
    if len(matched) > 1:
        if args.session not in matched:
            raise UsageError("session prefix %r matches %d sessions: %s%s" % (
                args.session, len(matched), ", ".join(clean(s) for s in matched[:5]),
                " and %d more" % (len(matched) - 5) if len(matched) > 5 else ""))
        aggregate, sources = build(True)
    return aggregate, sources


# --statusline: Claude Code's status line command

STATUSLINE_INPUT_MAX_BYTES = 1 << 20
STATUSLINE_KEEP_S = 30 * 86400   # a session's state unused this long is removed
STATUSLINE_LOG_MAX_BYTES = 256 * 1024


def run_statusline(args):
    """Prints one line whatever happens (exit 0): the status line must never show a
    traceback or go blank; what went wrong goes to the state folder's log."""
    if args.install or args.write:
        return install_statusline(args)
    try:
        line = statusline(args, sys.stdin, time.time())
    except Exception as error:
        statusline_log("%s: %s" % (type(error).__name__, error))
        line = "catop"
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    return EXIT_OK


def statusline_log(text):
    """Appends a line to the status line's log (cut back when it grows large)."""
    path = os.path.join(statusline_dir(), "statusline.log")
    try:
        make_private_folder(os.path.dirname(path))
        if os.path.exists(path) and os.path.getsize(path) > STATUSLINE_LOG_MAX_BYTES:
            os.replace(path, path + ".1")
        append_whole_line(path, ("%s %s\n" % (iso_utc(time.time()), clean(str(text))[:500]))
                          .encode("utf-8", "replace"))
    except (OSError, ValueError, TypeError):
        pass


def read_claude_input(stream):
    """What Claude Code gives on stdin, as a dict ({} when there is none or it is not
    JSON; said in the log)."""
    if stream is None or stream.isatty():
        statusline_log("no JSON on stdin (not run by Claude Code?)")
        return {}
    data = getattr(stream, "buffer", stream).read(STATUSLINE_INPUT_MAX_BYTES + 1)
    try:
        document = json.loads(data[:STATUSLINE_INPUT_MAX_BYTES] or "{}")
    except (ValueError, RecursionError) as error:
        statusline_log("stdin is not JSON: %s" % error)
        return {}
    if type(document) is not dict:
        statusline_log("stdin is not a JSON object")
        return {}
    return document


def claude_facts(document):
    """The fields catop uses, each read defensively (any may be missing in an older
    build): model name, Claude Code's cost, and its prompt_cache figures."""
    model, cost, cache = document.get("model"), document.get("cost"), \
        document.get("prompt_cache")
    facts = {"model": None, "cost": None, "hit_ratio": None, "miss_cause": None,
             "miss_at": None}
    if type(model) is dict:
        name = model.get("display_name") or model.get("id")
        facts["model"] = clean(name)[:40] if type(name) is str else None
    if type(cost) is dict:
        facts["cost"] = as_money(cost.get("total_cost_usd"))
    if type(cache) is dict:
        facts["hit_ratio"] = bounded_number(cache.get("hit_ratio"), 0.0, 1.0, "hit ratio")
        cause = cache.get("last_miss_cause")
        if type(cause) is dict:
            causes = cause.get("causes")
            cause = causes[0] if type(causes) is list and causes else cause.get("type")
        facts["miss_cause"] = clean(cause)[:40] if type(cause) is str and cause else None
        facts["miss_at"] = parse_timestamp(cache.get("last_miss_at")) if \
            facts["miss_cause"] else None
    return facts


class RememberedPrices(object):
    """The rates a session's state remembers, standing in for the price book while
    the files prices come from are unchanged (reading 1,100 models costs more than
    the rest of a call); the book is loaded at the first model it does not know."""

    def __init__(self, remembered, load):
        self.remembered = remembered   # "model\0provider" -> [base, tier] or None
        self.load = load
        self.book = None
        self.tuples = {}
        self.priced_as = {}
        self.origin, self.age_s = "remembered", 0.0

    def rates(self, model, provider="", dims=""):
        key = "\0".join((model, provider, dims))
        found = self.tuples.get(key, False)
        if found is not False:
            return found
        if key in self.remembered:
            value = self.remembered[key]
            found = None if value is None else (
                tuple(float(r) for r in value[0]),
                tuple((int(t), tuple(float(r) for r in rates)) for t, rates in value[1])
                if value[1] else None)
            if found is not None and (len(found[0]) != 7 or any(
                    len(rates) != 7 for _, rates in found[1] or ())):
                raise ValueError("remembered rates of another shape")
        else:
            if self.book is None:
                self.book = self.load()
                self.origin, self.age_s = self.book.origin, self.book.age_s
            found = self.book.rates(model, provider, dims)
            self.remembered[key] = None if found is None else [
                list(found[0]), [[t, list(rates)] for t, rates in found[1]] if found[1]
                else None]
            self.priced_as.update(self.book.priced_as)
        self.tuples[key] = found
        return found


def prices_fingerprint(args):
    """What decides the rates: each file prices may come from, its size and time,
    and whether the cache is still young enough to be used."""
    found = []
    for path in (args.prices, price_cache_path(), bundled_prices_path()):
        try:
            info = os.stat(path) if path else None
        except OSError:
            info = None
        found.append([path, info.st_size, info.st_mtime,
                      time.time() - info.st_mtime < PRICE_CACHE_MAX_AGE_S] if info else None)
    return found


def statusline(args, stream, now):
    document = read_claude_input(stream)
    claude = claude_facts(document)
    try:
        parts = parse_statusline_format(args.statusline_format or STATUSLINE_FORMAT)
    except ValueError as error:
        statusline_log("--statusline-format: %s; the default is used" % error)
        parts = parse_statusline_format(STATUSLINE_FORMAT)
    unicode_ok = "utf" in (getattr(sys.stdout, "encoding", "") or "").lower()
    colour = not (args.no_color or os.environ.get("NO_COLOR"))
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) >= 20 else None
    values = {"model": (claude["model"], "")} if claude["model"] else {}
    transcript = document.get("transcript_path")
    if type(transcript) is not str or not os.path.isfile(transcript):
        statusline_log("no transcript to read (%r)" % (transcript,))
        if claude["cost"] is not None:
            values["cost"] = (fmt_usd(claude["cost"]) + " (Claude Code)", "")
    else:
        session = str(document.get("session_id") or transcript)
        budget = load_budget_config(warn=statusline_log).get("daily")

        def show(effects, spend):
            today = spend.get(local_day(now), 0.0)
            return statusline_values(effects, today_spend(session, today, now) if budget
                                     else today, now, claude, budget)
        values.update(session_figures(session, transcript, args, now, show))
    line = render_statusline(parts, values, unicode_ok, colour, width)
    return line or render_statusline(parse_statusline_format("{model}"), values,
                                     unicode_ok, colour, width) or "catop: no data yet"


def session_figures(session, transcript, args, now, show):
    """show(CacheEffects, spend by day) of a session, from its state and what its files
    gained since; the state is written back (atomically).  A state whose figures fail
    to show (damaged sums) is dropped and the session read again."""
    path = os.path.join(statusline_dir(), "%016x.json" % _stable_hash(session))
    paths = session_files(transcript)
    fingerprint = prices_fingerprint(args)

    def load():
        return load_prices(args.prices, True, False, now, warn=statusline_log)
    prices = RememberedPrices({}, load)
    try:
        doc = json.loads(read_regular(path, 64 * 1024 * 1024))
        remembered = doc.get("prices") or {}
        if remembered.get("fingerprint") == fingerprint:
            prices = RememberedPrices(dict(remembered["rates"]), load)
        tail = SessionTail.from_state(doc, prices) if doc.get("transcript") == transcript \
            else None
        figures = show(*tail.shown()) if tail is not None and tail.read(paths) else None
    except OSError:
        figures = None
    except Exception as error:   # a damaged or foreign state: read the session again
        statusline_log("state %s not used: %s: %s" % (path, type(error).__name__, error))
        figures = None
    if figures is None:
        prices = RememberedPrices({}, load)
        tail = SessionTail(prices)
        tail.read(paths)
        figures = show(*tail.shown())
    state = tail.as_state()
    state["transcript"] = transcript
    state["prices"] = {"fingerprint": fingerprint, "rates": prices.remembered}
    try:
        write_atomic(path, json.dumps(state, separators=(",", ":")).encode("utf-8"))
    except OSError as error:
        statusline_log("cannot keep the state %s: %s" % (path, error))
    return figures


def today_spend(session, spent, now):
    """Today's spend over every session the status line has seen today: each keeps
    its own in a small file beside its state, so two sessions never write one file."""
    folder = statusline_dir()
    day = local_day(now)
    try:
        write_atomic(os.path.join(folder, "%016x.spend" % _stable_hash(session)),
                     json.dumps({"day": day, "usd": spent}).encode("ascii"))
    except OSError as error:
        statusline_log("cannot keep today's spend: %s" % error)
    total = 0.0
    try:
        names = [name for name in os.listdir(folder) if name.endswith(".spend")]
    except OSError:
        return spent
    for name in names:
        other = os.path.join(folder, name)
        try:
            doc = json.loads(read_regular(other, 4096))
            if doc.get("day") == day:
                total += as_money(doc.get("usd")) or 0.0
            else:   # another day's, never read again: it goes, with its session's state
                os.unlink(other)
                if os.path.getmtime(other[:-6] + ".json") < now - STATUSLINE_KEEP_S:
                    os.unlink(other[:-6] + ".json")
        except (OSError, ValueError, AttributeError):
            continue
    return total


def claude_settings_path():
    """The user's settings.json: in the first folder of CLAUDE_CONFIG_DIR, else ~/.claude."""
    folders = [f for f in os.environ.get("CLAUDE_CONFIG_DIR", "").split(",") if f.strip()]
    return os.path.join(folders[0].strip() if folders else _home(".claude"), "settings.json")


def statusline_command():
    """The command for settings.json: the interpreter running now loads this file as
    a module (a script is compiled afresh at every run, ten times the time of the
    rest; a module once), without site (faster) and without the working folder on
    its path: Claude Code runs the command in the project, whose own catop.py or
    base64.py must never be imported."""
    import shlex
    code = module_bootstrap("sys.exit(catop.main())")
    return "%s -S -E -c %s --statusline" % (shlex.quote(sys.executable or "python3"),
                                             shlex.quote(code))


def install_statusline(args):
    """--install prints the statusLine entry; --write merges it into settings.json."""
    entry = {"type": "command", "command": statusline_command(), "padding": 0}
    if args.statusline_format:
        import shlex
        entry["command"] += " --statusline-format " + shlex.quote(args.statusline_format)
    if not args.write:
        sys.stdout.write(json.dumps({"statusLine": entry}, indent=2) + "\n")
        return EXIT_OK
    with contextlib.suppress(OSError):
        make_private_folder(bytecode_dir())   # before the command's first run makes it 0755
    path = os.path.realpath(claude_settings_path())   # a link to dotfiles stays a link
    try:
        settings = json.loads(read_regular(path, 64 * 1024 * 1024) or b"{}")
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        settings, mode = {}, 0o600
    except OSError as error:
        raise CatopError("cannot read %s (%s): not changed" % (path, error.strerror or error))
    except (ValueError, RecursionError) as error:
        raise CatopError("%s is not valid JSON (%s): not changed" % (path, error))
    if type(settings) is not dict:
        raise CatopError("%s does not hold a JSON object: not changed" % path)
    current = settings.get("statusLine")
    theirs = type(current) is dict and "catop" not in str(current.get("command", ""))
    if current is not None and (theirs or type(current) is not dict) and not args.force:
        raise CatopError("%s already has a status line (%s): --force replaces it" % (
            path, clean(json.dumps(current))[:120]))
    settings["statusLine"] = entry
    write_atomic(path, (json.dumps(settings, indent=2) + "\n").encode("utf-8"))
    os.chmod(path, mode)
    sys.stdout.write("catop: the status line is set in %s\n" % path)
    return EXIT_OK


def snapshot_aggregate(args, prices, since, until, now, session_exact=False):
    aggregate = Aggregate(prices, args.group_by, since, until, args.session,
                          session_exact=session_exact)
    if args.session is None:   # a session's report is not the calendar's spending
        aggregate.budgets = budget_tracker(args, now)
    if args.format == "table":
        aggregate.trend = DailyTrend(now)
    else:  # only the table lists each session's models and projects
        aggregate.details = None
    history = None
    try:
        history = open_history(args)
        try:
            sources = collect_sources(args, aggregate, now, history)
        finally:
            if history is not None:
                history.close()
    except Exception as error:
        if not is_sqlite_error(error):
            raise
        # whatever befell the store, the report comes from the logs
        warn(history_failure(args.history or history_path(), error))
        aggregate.start_over()
        sources = collect_sources(args, aggregate, now, None)
    aggregate.finish(now)
    return aggregate, sources


def is_sqlite_error(error):
    sqlite3 = sys.modules.get("sqlite3")
    return sqlite3 is not None and isinstance(error, sqlite3.Error)


def history_failure(path, error, instead="this report comes from the logs"):
    """The one-line warning for a history that failed while in use, ending with what
    happens instead; a damaged one is moved aside first (the next run starts a new
    one from the logs still present)."""
    trouble = history_trouble(error)
    # SQLite quotes the undecodable text it met: the file's bytes stay out of the line
    reason = re.sub(r" with text '.*", "", clean(error))[:160]
    if trouble == "damaged":
        return ("the history %s is damaged (%s): moved to %s, a new one is made from the "
                "logs still present; %s" % (path, reason, move_history_aside(path), instead))
    if trouble == "full":
        return ("the disk is full: the history %s was not updated (%s); %s"
                % (path, reason, instead))
    return "the history %s cannot be used (%s); %s" % (path, reason, instead)


def budget_limits(args):
    """{period: USD}: the flags, else the config file."""
    limits = load_budget_config(warn=warn)
    for period in BUDGET_PERIODS:
        value = getattr(args, "budget_%s" % period)
        if value is not None:
            limits[period] = value
    return limits


def budget_tracker(args, now):
    limits = budget_limits(args)
    return BudgetTracker(limits, now) if limits else None


def report_sort(args):
    """--sort, else time for a grouping by day, week or month (newest last), else cost."""
    if args.sort:
        return args.sort
    return "time" if set(args.group_by) & set(_CALENDAR_GROUPS) else "cost"


def print_report(args, aggregate, sources, prices, now):
    """Prints one report in the format asked for; returns the exit status (gates)."""
    report = Report(aggregate, sources, prices, now, report_sort(args), not args.ascending,
                    args.top, REFUSED_VALUES)
    ellipsis = "\u2026" if (sys.stdout.encoding or "").lower().replace("-", "") == "utf8" else "~"
    if args.format == "json":
        pieces = iter_json(report)
    elif args.format == "csv":
        pieces = [format_csv(report)]
    elif args.format == "prometheus":
        pieces = [format_prometheus(report)]
    else:
        pieces = [format_table(report, output_width(args), ellipsis)]
    for piece in pieces:
        sys.stdout.write(piece)
    sys.stdout.flush()
    reasons = check_gates(args, aggregate.totals, aggregate.effects.breaks, aggregate.budgets)
    for reason in reasons:
        sys.stderr.write("catop: gate: %s\n" % reason)
    return EXIT_GATE if reasons else EXIT_OK


def release_compiler_memory():
    """Python compiles this whole file from source at every run (a script gets no
    bytecode cache): about 12 MB that the compiler freed but glibc's malloc keeps.
    Hand it back to the system before reading gigabytes of logs (Linux; else a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError, ImportError):
        pass


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.install or args.write or args.force) and not args.statusline:
        parser.error("--install, --write and --force go with --statusline")
    if (args.write and not args.install) or (args.force and not args.write):
        parser.error("--write goes with --statusline --install, --force with --write")
    if args.statusline_format and (args.install or not args.statusline):  # else: the default
        try:
            parse_statusline_format(args.statusline_format)
        except ValueError as error:
            parser.error("--statusline-format: %s" % error)
    if args.refresh_prices and args.offline:
        parser.error("--refresh-prices and --offline contradict each other")
    if args.refresh_prices and args.prices:
        parser.error("--refresh-prices fetches LiteLLM's map; --prices names a file: pick one")
    try:
        sys.stdout.reconfigure(errors="replace")
    except (AttributeError, ValueError):
        pass
    try:
        return run(args)
    except UsageError as error:
        sys.stderr.write("catop: error: %s (catop --help for more)\n" % error)
        return EXIT_USAGE
    except CatopError as error:
        sys.stderr.write("catop: %s\n" % error)
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (| head): leave quietly, with no flush error at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as error:  # a bug: one line, not a traceback (CATOP_DEBUG=1 for it)
        if os.environ.get("CATOP_DEBUG"):
            raise
        sys.stderr.write("catop: internal error: %s: %s (CATOP_DEBUG=1 shows where)\n" % (
            type(error).__name__, clean(str(error))[:300]))
        return EXIT_ERROR


def exit_at_once(status):
    """Ends the process without the interpreter's teardown, which frees every
    object of a big run one by one (20-40 ms after the report is out) to no end.
    Only a finished run of the script calls it: its files are closed already."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(status or 0)


AS_SCRIPT = [False]   # set when this file runs as a script (python3 catop.py)


def worth_running_as_module(args):
    """Whether a run reads enough to be split across processes (a big request log, or
    agents' folders): then the syntax tree a script keeps (about 17 MB in each
    process) is worth one more interpreter start (about 0.03 s) to be rid of.
    CATOP_AS_MODULE=1 says so for every run."""
    if os.environ.get("CATOP_AS_MODULE"):
        return True
    if worker_count() < 2:
        return False
    total = _total_size([path for path in args.file if path != "-"])
    agents = list(args.agent)
    if names_no_source(args) or args.scan_agents:
        agents += list(AGENT_TABLE)   # those not there cost a stat or two
    for name in dict.fromkeys(agents):
        if total >= PARALLEL_MIN_BYTES:
            break
        total += _total_size(agent_files(name))
    return total >= PARALLEL_MIN_BYTES


def run_as_module():
    """Runs catop again as an imported module, in place of this process.

    Python keeps the syntax tree of the script it runs alive until the script ends:
    for this file about 17 MB of every process, workers included.  Imported, the file
    is compiled and its tree freed at once, and the compiled form kept for the next
    run.  The cost: one more interpreter start (without site: catop needs none of it).
    CATOP_AS_SCRIPT=1 runs the script as it is, always."""
    if os.environ.get("CATOP_AS_SCRIPT") or not hasattr(os, "execv"):
        return
    bootstrap = module_bootstrap("sys.argv[0] = %s; catop.exit_at_once(catop.main())"
                                 % python_literal(sys.argv[0]))
    with contextlib.suppress(OSError):
        make_private_folder(bytecode_dir())   # Python's own would be 0755
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable] + interpreter_flags() +
                 ["-S", "-c", bootstrap] + sys.argv[1:])
    except (OSError, ValueError):
        return  # no exec here: run as the script, as before


def interpreter_flags():
    """The options this interpreter was started with (-X utf8, -E, -W ...), for one
    started in its place; none where Python does not tell them."""
    try:
        import subprocess
        return [flag for flag in subprocess._args_from_interpreter_flags() if flag != "-S"]
    except (ImportError, AttributeError):
        return []


def bytecode_dir():
    return os.path.join(xdg_dir("XDG_CACHE_HOME", (".cache",)), "bytecode")


def module_bootstrap(call):
    """Source for python -c that loads this very file as the module catop, whatever
    the file is called (catop.py, /usr/local/bin/catop, catop-0.5.py) and whatever
    else lies beside it or in the working folder (taken off the path before anything
    is imported), then runs call.  The compiled form is kept in catop's cache folder:
    the file's own folder may be read-only, and a curl'd copy gains no __pycache__
    beside it (only catop's own: the modules it imports are cached where Python keeps
    them); a damaged one is compiled again from the file."""
    return ("import sys\n"
            "if sys.path and sys.path[0] == \"\": del sys.path[0]\n"
            "import importlib.machinery as m, importlib.util as u\n"
            "loader = m.SourceFileLoader(\"catop\", %s)\n"
            "catop = sys.modules[\"catop\"] = u.module_from_spec("
            "u.spec_from_loader(\"catop\", loader))\n"
            "kept = sys.pycache_prefix, sys.dont_write_bytecode\n"
            "sys.pycache_prefix, sys.dont_write_bytecode = %s, False\n"
            "try:\n"
            "    code = loader.get_code(\"catop\")\n"
            "except (EOFError, ValueError, TypeError, ImportError):\n"
            "    code = loader.source_to_code(loader.get_data(loader.path), loader.path)\n"
            "sys.pycache_prefix, sys.dont_write_bytecode = kept\n"
            "exec(code, catop.__dict__)\n%s" % (
                python_literal(os.path.abspath(__file__)), python_literal(bytecode_dir()), call))


def python_literal(text):
    """text as a Python string literal in double quotes, in ASCII (any character of a
    path: a quote, an emoji, a byte that is not UTF-8)."""
    return '"%s"' % text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


if __name__ == "__main__":
    AS_SCRIPT[0] = __spec__ is None   # python3 catop.py, not python3 -m catop
    exit_at_once(main())
