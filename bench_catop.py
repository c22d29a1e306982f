#!/usr/bin/env python3
"""Benchmark for catop: generates corpora, times catop, prints MB/s and peak memory.

    python3 bench_catop.py                 # both corpora (about 500 MB in a temp folder)
    python3 bench_catop.py --only requests --mb 50
    python3 bench_catop.py --keep /tmp/catop-bench   # reuse the corpora next time

Figures:
  requests  a ~200 MB mixed-shape request log: catop --file ... --once --format json
            --no-history against a bare loop that only json.loads every line (same interpreter);
            targets: ratio <= 1.15, peak memory <= 60 MB (best of 5 or --runs, taken
            by turns with the bare loop; each pair's ratio is printed too).
  claude    a ~300 MB, ~550-file Claude Code folder: catop --agent claude-code --once
            --format json --no-history, cold; targets: >= 300 MB/s, peak memory <= 60 MB;
            ccusage (if on PATH) runs on the same folder for comparison; then with the
            history: a first run, and a warm one that finds nothing changed (target: at
            most a quarter of the first).
  codex     a ~70 MB Codex folder, with ccusage's totals beside catop's.
  scan      --scan-agents over a home that holds no agent, and over one holding only a
            20 MB Claude Code folder: the roots of agents that are not there cost a few
            stat calls, not a walk; and the time to look for all eighteen agents.
  live      the live view's CPU per tick: idle over the Claude folder (target < 20 ms),
            and with 5,000 lines a second appended for 30 s; its first frame, cold and
            resuming from the history (target < 0.3 s), the latter also timed from
            launching catop in a pseudo-terminal.

Peak memory is the largest sum over catop and its worker processes of their
proportional set size (PSS: shared pages split between the processes that share
them), sampled every 5 ms; the largest single RSS is printed too.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CATOP = os.path.join(HERE, "catop.py")
MB = 1024 * 1024

BARE_LOOP = """
import json, sys
n = 0
with open(sys.argv[1], "rb") as handle:
    for line in handle:
        try:
            json.loads(line)
            n += 1
        except ValueError:
            pass
print(n)
"""


# ---------------------------------------------------------------- corpora

class _Conversations(object):
    """Sessions as they are in life: a context that grows request by request, read
    back from the cache, with now and then a break (an idle gap, a changed prompt)."""

    def __init__(self, rng, count=4000):
        self.rng = rng
        self.sessions = ["sess-%05d" % i for i in range(count)]
        self.context = {}
        self.clock = {}

    def next(self, index):
        rng = self.rng
        session = self.sessions[index % len(self.sessions)] if rng.random() < 0.9 else \
            rng.choice(self.sessions)
        context = self.context.get(session, rng.randint(3000, 20000))
        cached = context
        ts = self.clock.get(session, 1773100000.0 + index * 0.37) + rng.uniform(2, 40)
        if rng.random() < 0.03:
            cached = rng.randint(0, context // 4)   # a break
            if rng.random() < 0.5:
                ts += rng.uniform(400, 2000)        # ... after an idle gap
        grown = context + rng.randint(200, 3000)
        self.context[session] = grown if grown < 150000 else rng.randint(3000, 20000)
        self.clock[session] = ts
        return session, ts, grown, cached


def _request_line(rng, index, conversations=None):
    """One request-log line in one of the shapes catop reads (LiteLLM-heavy, as in life)."""
    conversations = conversations or _Conversations(rng)
    session, ts, prompt, cached = conversations.next(index)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%03dZ" % int(ts % 1 * 1000)
    out = rng.randint(50, 4000)
    number = int(session[-5:])
    shape = number % 10          # a session keeps its shape and model
    team = ("search", "agents", "evals", "support", "platform")[number % 5]
    if shape < 4:
        model = ("gpt-4o", "gpt-5", "gpt-4.1-mini", "o3")[number // 10 % 4]
        return {"id": "chatcmpl-%d" % index, "timestamp": iso, "model": model,
                "litellm_provider": "openai", "response_cost": round(out * 1e-5, 6),
                "metadata": {"user_api_key_team_alias": team, "session_id": session,
                             "user_api_key_alias": "key-%s" % team, "requester_ip": "10.0.0.1",
                             "tags": ["prod", "batch"]},
                "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens":
                          prompt + out, "prompt_tokens_details": {"cached_tokens": cached,
                                                                  "audio_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": out // 3,
                                                        "audio_tokens": 0}},
                "request_tags": ["team:%s" % team], "api_base": "https://api.openai.com/v1",
                "status": "success", "response_time_ms": rng.randint(300, 9000)}
    if shape < 7:
        write = prompt - cached
        return {"timestamp": iso, "model": "claude-sonnet-4-5-20250929", "provider": "anthropic",
                "session_id": session, "project": team, "agent": "claude-code",
                "usage": {"input_tokens": rng.randint(1, 50), "cache_read_input_tokens": cached,
                          "cache_creation_input_tokens": write, "output_tokens": out,
                          "cache_creation": {"ephemeral_5m_input_tokens": write // 2,
                                             "ephemeral_1h_input_tokens": write - write // 2},
                          "service_tier": "standard"},
                "stop_reason": "end_turn", "latency_ms": rng.randint(500, 20000)}
    if shape < 8:
        return {"timestamp": iso, "model": "gemini-2.5-pro", "project": team,
                "usageMetadata": {"promptTokenCount": prompt, "cachedContentTokenCount": cached,
                                  "candidatesTokenCount": out, "thoughtsTokenCount": out // 2,
                                  "totalTokenCount": prompt + out + out // 2},
                "finishReason": "STOP", "modelVersion": "gemini-2.5-pro"}
    if shape < 9:
        return {"timeUnixNano": str(int(ts * 1e9)), "name": "chat deepseek-chat",
                "attributes": [{"key": "gen_ai.request.model", "value": {"stringValue": "deepseek-chat"}},
                               {"key": "gen_ai.usage.input_tokens", "value": {"intValue": str(prompt)}},
                               {"key": "gen_ai.usage.output_tokens", "value": {"intValue": str(out)}},
                               {"key": "gen_ai.usage.cache_read.input_tokens",
                                "value": {"intValue": str(cached)}},
                               {"key": "gen_ai.conversation.id", "value": {"stringValue": session}}]}
    return {"standard_logging_object": {
        "id": "call-%d" % index, "trace_id": session, "model": "gpt-4o-mini",
        "custom_llm_provider": "openai", "startTime": ts, "endTime": ts + 1.2,
        "prompt_tokens": prompt, "completion_tokens": out, "response_cost": 0.0001,
        "metadata": {"user_api_key_team_alias": team, "usage_object": {
            "prompt_tokens": prompt, "completion_tokens": out,
            "prompt_tokens_details": {"cached_tokens": cached}}}}}


def make_request_log(path, target_mb, seed=1):
    rng = random.Random(seed)
    conversations = _Conversations(rng)
    written, index = 0, 0
    with open(path, "wb") as out:
        while written < target_mb * MB:
            lines = []
            for _ in range(2000):
                lines.append(json.dumps(_request_line(rng, index, conversations),
                                        separators=(",", ":")))
                index += 1
                if index % 5000 == 0:
                    lines.append("{not json")
            data = ("\n".join(lines) + "\n").encode()
            out.write(data)
            written += len(data)
    return index


_WORDS = ("the retry helper reads Date.now so fake timers never advance it and the test "
          "flakes when the event loop is slow; inject a clock and update every caller "
          "then run the payment suite fifty times to be sure nothing else depends on it").split()


def _text(rng, size):
    words = []
    total = 0
    while total < size:
        word = rng.choice(_WORDS)
        words.append(word)
        total += len(word) + 1
    return " ".join(words)


def _claude_lines(rng, session, cwd, day, count, sidechain=False, chunk=0):
    """A Claude Code transcript: prompts, big tool results, streamed assistant lines."""
    lines = []
    models = ("claude-sonnet-4-5-20250929", "claude-opus-4-5", "claude-haiku-4-5-20251001")
    cache = rng.randint(5000, 20000)
    for turn in range(count):
        ts = "2026-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
            2 + day // 28, 1 + day % 28, 8 + turn // 60 % 12, turn % 60, rng.randint(0, 59),
            rng.randint(0, 999))
        base = {"parentUuid": "p-%d" % turn, "isSidechain": sidechain, "userType": "external",
                "cwd": cwd, "sessionId": session, "version": "2.0.31", "gitBranch": "main"}
        if turn % 3 == 0:
            lines.append(dict(base, type="user", uuid="u-%d" % turn, timestamp=ts,
                              message={"role": "user", "content": _text(rng, rng.randint(80, 1500))}))
        else:
            lines.append(dict(base, type="user", uuid="t-%d" % turn, timestamp=ts, message={
                "role": "user", "content": [{"tool_use_id": "toolu_%d" % turn, "type": "tool_result",
                                             "content": _text(rng, rng.randint(500, 12000))}]},
                toolUseResult={"stdout": _text(rng, rng.randint(100, 2000)), "stderr": ""}))
        model = models[0] if rng.random() < 0.7 else rng.choice(models)
        message_id = "msg_%s_%d_%d" % (session[:8], chunk, turn)
        write = rng.randint(100, 5000)
        read = cache
        cache += write
        one_hour = rng.random() < 0.3
        output = rng.randint(20, 3000)
        fresh_input = rng.randint(1, 12)  # the same on every streamed line of a response
        repeats = rng.choice((1, 2, 2, 3))
        for repeat in range(repeats):
            partial = output if repeat == repeats - 1 else rng.randint(1, 20)
            content = ([{"type": "tool_use", "id": "toolu_%d" % turn, "name": "Write",
                         "input": {"file_path": cwd + "/src/x.ts",
                                   "content": _text(rng, rng.randint(500, 6000))}}]
                       if rng.random() < 0.3 else
                       [{"type": "text", "text": _text(rng, rng.randint(50, 800))}])
            usage = {"input_tokens": fresh_input, "cache_creation_input_tokens": write,
                     "cache_read_input_tokens": read,
                     "cache_creation": {"ephemeral_5m_input_tokens": 0 if one_hour else write,
                                        "ephemeral_1h_input_tokens": write if one_hour else 0},
                     "output_tokens": partial, "service_tier": "standard"}
            lines.append(dict(base, type="assistant", uuid="a-%d-%d" % (turn, repeat),
                              timestamp=ts, requestId="req_%s_%d_%d" % (session[:8], chunk, turn),
                              message={"model": model, "id": message_id, "type": "message",
                                       "role": "assistant", "content": content,
                                       "stop_reason": None, "stop_sequence": None,
                                       "usage": usage}))
    return [json.dumps(line, separators=(",", ":")) for line in lines]


def make_codex_folder(root, target_mb, files=200, seed=3):
    """Codex rollouts: big response items, token_count events with re-emits and
    info: null, model switches, and archived copies of some sessions."""
    rng = random.Random(seed)
    per_file = target_mb * MB // files
    for index in range(files):
        day = 1 + index % 28
        session = "0199%04x-0000-7000-8000-%012x" % (index, index)
        name = "rollout-2026-03-%02dT10-00-00-%s.jsonl" % (day, session)
        path = os.path.join(root, "sessions", "2026", "03", "%02d" % day, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        start = "2026-03-%02dT10:00:00.000Z" % day
        lines = [{"timestamp": start, "type": "session_meta", "payload": {
            "id": session, "timestamp": start, "cwd": "/home/dev/p%d" % (index % 9),
            "originator": "codex_cli_rs", "cli_version": "0.46.0", "source": "cli",
            "instructions": _text(rng, 3000)}}]
        total = [0, 0, 0, 0]
        size, turn = 0, 0
        model = rng.choice(("gpt-5-codex", "gpt-5"))
        while size < per_file:
            turn += 1
            ts = "2026-03-%02dT%02d:%02d:%02d.%03dZ" % (day, 10 + turn // 3600, turn // 60 % 60,
                                                      turn % 60, rng.randint(0, 999))
            if turn % 25 == 1:
                model = rng.choice(("gpt-5-codex", "gpt-5"))
                lines.append({"timestamp": ts, "type": "turn_context", "payload": {
                    "cwd": "/home/dev/p%d" % (index % 9), "model": model, "effort": "medium"}})
            lines.append({"timestamp": ts, "type": "response_item", "payload": {
                "type": "function_call_output", "call_id": "call_%d" % turn,
                "output": _text(rng, rng.randint(500, 9000))}})
            if turn % 9 == 0:
                lines.append({"timestamp": ts, "type": "event_msg", "payload": {
                    "type": "token_count", "info": None, "rate_limits": {}}})
            prompt = rng.randint(3000, 60000)
            cached = int(prompt * rng.random())
            output = rng.randint(50, 2000)
            reasoning = rng.randint(0, output)
            last = [prompt, cached, output, reasoning]
            total = [a + b for a, b in zip(total, last)]
            keys = ("input_tokens", "cached_input_tokens", "output_tokens",
                    "reasoning_output_tokens")
            info = {"total_token_usage": dict(zip(keys, total)),
                    "last_token_usage": dict(zip(keys, last)), "model_context_window": 272000}
            event = {"timestamp": ts, "type": "event_msg",
                     "payload": {"type": "token_count", "info": info, "rate_limits": {}}}
            lines.append(event)
            if turn % 7 == 0:
                lines.append(event)  # a re-emit
            size = sum(len(json.dumps(line)) for line in lines[-4:]) + size
        data = "\n".join(json.dumps(line, separators=(",", ":")) for line in lines) + "\n"
        with open(path, "w") as out:
            out.write(data)
        if index % 10 == 0:
            archived = os.path.join(root, "archived_sessions", name)
            os.makedirs(os.path.dirname(archived), exist_ok=True)
            shutil.copy(path, archived)


def make_claude_folder(root, target_mb, files=550, seed=2):
    rng = random.Random(seed)
    per_file = target_mb * MB // files
    written = 0
    for index in range(files):
        project = "/home/dev/project-%02d" % (index % 23)
        folder = os.path.join(root, "projects", project.replace("/", "-"))
        session = "%08x-1111-4222-8333-%012x" % (rng.getrandbits(32), index)
        sub = index % 10 == 9
        path = os.path.join(folder, session + ".jsonl") if not sub else \
            os.path.join(folder, "%08x" % index, "subagents", "agent-%d.jsonl" % index)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lines, size = [], 0
        day = index % 40
        while size < per_file:
            chunk = _claude_lines(rng, session, project, day, 12, sidechain=sub,
                                  chunk=len(lines))
            lines.extend(chunk)
            size += sum(len(line) + 1 for line in chunk)
        if index % 7 == 0:
            lines.insert(len(lines) // 2, '{"type":"assistant","message":{"id":"broken"')
        data = ("\n".join(lines) + "\n").encode()
        with open(path, "wb") as out:
            out.write(data)
        written += len(data)
    return written


# ---------------------------------------------------------------- measuring

def _children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def _memory_kb(pid):
    """(PSS, RSS) of one process in kB, from /proc (0, 0 when it is gone)."""
    pss = rss = 0
    try:
        with open("/proc/%d/smaps_rollup" % pid) as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def run_timed(argv, env=None):
    """(seconds, stdout) of a command, with nothing else running beside it."""
    start = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 3):
        sys.stderr.write(result.stderr.decode(errors="replace"))
        raise SystemExit("command failed: %s" % " ".join(argv))
    return elapsed, result.stdout


def run_measured(argv, env=None):
    """(seconds, peak PSS sum MB, peak single RSS MB, stdout) of a command and its children.
    The sampling takes CPU of its own: time with run_timed, not with this."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak_pss = peak_rss = 0
    output = []
    import threading
    reader = threading.Thread(target=lambda: output.append(process.stdout.read()))
    reader.start()
    while process.poll() is None:
        tree = [process.pid]
        index = 0
        while index < len(tree):
            tree.extend(_children(tree[index]))
            index += 1
        figures = [_memory_kb(pid) for pid in tree]
        peak_pss = max(peak_pss, sum(p for p, _ in figures))
        peak_rss = max(peak_rss, max(r for _, r in figures))
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    reader.join()
    error = process.stderr.read()
    if process.returncode not in (0, 3):
        sys.stderr.write(error.decode(errors="replace"))
        raise SystemExit("command failed: %s" % " ".join(argv))
    return elapsed, peak_pss / 1024, peak_rss / 1024, output[0] if output else b""


def best_of(runs, argv, env=None):
    """(best seconds of runs, peak PSS MB, peak RSS MB, stdout): timed runs alone,
    then one more run sampled for memory."""
    seconds = min(run_timed(argv, env)[0] for _ in range(runs))
    _, pss, rss, out = run_measured(argv, env)
    return seconds, pss, rss, out


def best_of_alternating(runs, first, second, env=None):
    """best_of for two commands whose times are compared, run by turns: on a shared
    machine the speed drifts, and timing one after the other would read the drift."""
    times = ([], [])
    for _ in range(runs):
        times[0].append(run_timed(first)[0])
        times[1].append(run_timed(second, env)[0])
    results = []
    for argv, seconds, command_env in ((first, times[0], None), (second, times[1], env)):
        _, pss, rss, out = run_measured(argv, command_env)
        results.append((min(seconds), pss, rss, out))
    return results, [b / a for a, b in zip(*times)]


def bench_requests(folder, target_mb, runs):
    path = os.path.join(folder, "requests.jsonl")
    if not os.path.exists(path):
        print("generating %d MB request log ..." % target_mb, flush=True)
        make_request_log(path, target_mb)
    size_mb = os.path.getsize(path) / MB
    env = dict(os.environ, XDG_CACHE_HOME=os.path.join(folder, "cache"))
    (bare, mine), pairs = best_of_alternating(
        max(runs, 5), [sys.executable, "-c", BARE_LOOP, path],
        [sys.executable, CATOP, "--file", path, "--once", "--format", "json", "--offline",
         "--no-history"], env)
    doc = json.loads(mine[3])
    print("\nrequest log: %.0f MB, %s requests" % (size_mb, "{:,}".format(doc["totals"]["requests"])))
    print("  %-34s %7.2f s  %6.0f MB/s  peak %5.1f MB (largest process %5.1f MB)" % (
        "bare loop (json.loads every line)", bare[0], size_mb / bare[0], bare[1], bare[2]))
    print("  %-34s %7.2f s  %6.0f MB/s  peak %5.1f MB (largest process %5.1f MB)" % (
        "catop --file --once --format json", mine[0], size_mb / mine[0], mine[1], mine[2]))
    print("  ratio catop / bare loop: %.2f (target <= 1.15); peak %.1f MB (target <= 60)" % (
        mine[0] / bare[0], mine[1]))
    print("  each run against the bare loop run just before it: %s" % " ".join(
        "%.2f" % ratio for ratio in pairs))


def bench_claude(folder, target_mb, runs):
    root = os.path.join(folder, "claude")
    if not os.path.isdir(root):
        print("generating %d MB Claude Code folder ..." % target_mb, flush=True)
        make_claude_folder(root, target_mb)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
    count = sum(len(fs) for _, _, fs in os.walk(root))
    size_mb = size / MB
    env = dict(os.environ, CLAUDE_CONFIG_DIR=root, XDG_CACHE_HOME=os.path.join(folder, "cache"))
    mine = best_of(runs, [sys.executable, CATOP, "--agent", "claude-code", "--once", "--format",
                          "json", "--offline", "--no-history"], env)
    doc = json.loads(mine[3])
    print("\nClaude Code folder: %.0f MB in %d files, %s requests after de-duplication" % (
        size_mb, count, "{:,}".format(doc["totals"]["requests"])))
    print("  %-34s %7.2f s  %6.0f MB/s  peak %5.1f MB (largest process %5.1f MB)" % (
        "catop --agent claude-code (cold)", mine[0], size_mb / mine[0], mine[1], mine[2]))
    print("  targets: >= 300 MB/s, peak <= 60 MB")
    bench_history(folder, env, size_mb)
    theirs = compare_with_ccusage(folder, "claude", env, size_mb, runs)
    if theirs:
        print("  ratio catop / ccusage: %.2f (aim <= 2)" % (mine[0] / theirs))


def bench_history(folder, env, size_mb):
    """The same folder with the history on: the first run fills it, the second finds
    nothing changed (target: at most a quarter of the first)."""
    store = os.path.join(folder, "history.sqlite3")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(store + suffix):
            os.unlink(store + suffix)
    argv = [sys.executable, CATOP, "--agent", "claude-code", "--once", "--format", "json",
            "--offline", "--history", store]
    cold = run_measured(argv, env)
    warm = min((run_measured(argv, env) for _ in range(3)), key=lambda r: r[0])
    print("  %-34s %7.2f s  %6.0f MB/s  peak %5.1f MB" % (
        "with the history, first run", cold[0], size_mb / cold[0], cold[1]))
    print("  %-34s %7.2f s  (%.2f of the first; target <= 0.25)  peak %5.1f MB" % (
        "with the history, nothing changed", warm[0], warm[0] / cold[0], warm[1]))


def compare_totals(label, ours, theirs):
    """Prints catop's and ccusage's token totals side by side."""
    print("  %s, catop vs ccusage:" % label)
    agree = True
    for name, mine, other in ours_vs_theirs(ours, theirs):
        same = mine == other
        agree = agree and same
        print("    %-22s %15s %15s  %s" % (name, "{:,}".format(mine), "{:,}".format(other),
                                            "equal" if same else "DIFFERENT"))
    return agree


def ours_vs_theirs(ours, theirs):
    return [("uncached input", ours["miss_tokens"], theirs["inputTokens"]),
            ("cache read", ours["cache_read_tokens"], theirs["cacheReadTokens"]),
            ("cache write", ours["cache_write_tokens"], theirs["cacheCreationTokens"]),
            ("output", ours["output_tokens"], theirs["outputTokens"])]


def ccusage_totals(ccusage, agent, env):
    seconds, pss, rss, out = run_measured([ccusage, agent, "daily", "--offline", "--json"], env)
    return seconds, pss, rss, json.loads(out)["totals"]


def compare_with_ccusage(folder, agent, env, size_mb, runs):
    ccusage = shutil.which("ccusage")
    if not ccusage:
        print("  (ccusage not on PATH: no side-by-side run)")
        return
    catop_agent = "claude-code" if agent == "claude" else agent
    seconds = min(run_timed([ccusage, agent, "daily", "--offline", "--json"], env)[0]
                  for _ in range(runs))
    timing = (seconds,) + ccusage_totals(ccusage, agent, env)[1:]
    print("  %-34s %7.2f s  %6.0f MB/s  peak %5.1f MB (largest process %5.1f MB)" % (
        "ccusage %s daily --offline --json" % agent, timing[0], size_mb / timing[0],
        timing[1], timing[2]))
    ours = json.loads(run_measured([sys.executable, CATOP, "--agent", catop_agent, "--once",
                                    "--format", "json", "--offline", "--no-history"],
                                   env)[3])["totals"]
    compare_totals(agent, ours, timing[3])
    theirs_cost = timing[3].get("totalCost", timing[3].get("costUSD"))
    print("    %-22s %15.4f %15.4f  %+.3f %%" % (
        "cost (USD)", ours["cost_usd"], theirs_cost,
        100 * (ours["cost_usd"] - theirs_cost) / theirs_cost if theirs_cost else 0.0))
    return timing[0]


def bench_codex(folder, target_mb, runs):
    root = os.path.join(folder, "codex")
    if not os.path.isdir(root):
        print("generating %d MB Codex folder ..." % target_mb, flush=True)
        make_codex_folder(root, target_mb)
    size_mb = sum(os.path.getsize(os.path.join(d, f))
                  for d, _, fs in os.walk(root) for f in fs) / MB
    env = dict(os.environ, CODEX_HOME=root, XDG_CACHE_HOME=os.path.join(folder, "cache"))
    mine = best_of(runs, [sys.executable, CATOP, "--agent", "codex", "--once", "--format",
                          "json", "--offline", "--no-history"], env)
    doc = json.loads(mine[3])
    print("\nCodex folder: %.0f MB, %s requests" % (size_mb, "{:,}".format(doc["totals"]["requests"])))
    print("  %-34s %7.2f s  %6.0f MB/s  peak %5.1f MB (largest process %5.1f MB)" % (
        "catop --agent codex (cold)", mine[0], size_mb / mine[0], mine[1], mine[2]))
    theirs = compare_with_ccusage(folder, "codex", env, size_mb, runs)
    if theirs:
        print("  ratio catop / ccusage: %.2f" % (mine[0] / theirs))


def bench_live(folder):
    """The live view's cost per tick: idle over the Claude Code folder, and under
    5,000 appended lines a second for 30 s."""
    sys.path.insert(0, HERE)
    import catop
    root = os.path.join(folder, "claude")
    if not os.path.isdir(root):
        make_claude_folder(root, 300)
    os.environ["CLAUDE_CONFIG_DIR"] = root
    prices = catop.load_prices(offline=True)
    clock = [time.time()]
    source = catop.LiveAgentSource("claude-code", clock=lambda: clock[0])
    model = catop.LiveModel([source], prices)
    view, cache = catop.View(), {}
    meta = {"prices_origin": prices.origin, "prices_age": 0, "sources": []}

    def tick():
        started = time.process_time()
        model.poll()
        frame = catop.build_frame(model, view, clock[0], 5.0, cache)
        catop.render_screen(frame, view, meta, 160, 50)
        return (time.process_time() - started) * 1000

    cold = time.perf_counter()
    tick()
    cold = time.perf_counter() - cold
    store = os.path.join(folder, "history.sqlite3")
    resumed = None
    if os.path.exists(store):  # filled by the claude bench: the live view resumes from it
        started = time.perf_counter()
        args = catop.build_parser().parse_args(["--agent", "claude-code", "--offline",
                                                "--history", store])
        sources = catop.resume_from_history(args, catop.live_sources(args, clock[0]))
        again = catop.LiveModel(sources, prices)
        again.poll()
        catop.render_screen(catop.build_frame(again, catop.View(), clock[0], 5.0, {}),
                            catop.View(), meta, 160, 50)
        resumed = time.perf_counter() - started
    idle = []
    for _ in range(30):
        clock[0] += 1.0  # a folder walk for new files every fifth tick
        idle.append(tick())
    print("\nlive view over the Claude Code folder (%s requests)" % "{:,}".format(
        len(model.timeline.timed)))
    print("  first frame %.2f s; idle tick CPU: mean %.1f ms, max %.1f ms (target < 20 ms)" % (
        cold, sum(idle) / len(idle), max(idle)))
    if resumed is not None:
        print("  first frame resuming from the history: %.2f s (target < 0.3 s)" % resumed)
        launched = [first_frame_from_launch(root, store, len(model.timeline.timed))
                    for _ in range(3)]
        launched = sorted(t for t in launched if t is not None)
        if launched:
            print("  the same, timed from launching python3 catop.py in a terminal: "
                  "%.2f s (median of %d)" % (launched[len(launched) // 2], len(launched)))
    path = os.path.join(folder, "live.jsonl")
    open(path, "w").close()
    live = catop.LiveModel([catop.LiveFileSource(path)], prices)
    view, cache = catop.View(), {}
    costs = []
    rng = random.Random(5)
    conversations = _Conversations(rng)
    for second in range(30):
        with open(path, "a") as out:
            out.write("".join(json.dumps(_request_line(rng, second * 5000 + i, conversations))
                              + "\n" for i in range(5000)))
        started = time.process_time()
        live.poll()
        frame = catop.build_frame(live, view, time.time(), 5.0, cache)
        catop.render_screen(frame, view, meta, 160, 50)
        costs.append((time.process_time() - started) * 1000)
    print("  5,000 appended lines a second for 30 s: tick CPU mean %.0f ms, max %.0f ms, "
          "last %.0f ms (%s requests)" % (sum(costs) / len(costs), max(costs), costs[-1],
                                          "{:,}".format(len(live.timeline.timed))))


def first_frame_from_launch(root, store, requests):
    """Seconds from starting catop's live view in a pseudo-terminal until a frame
    showing every request is on it; None where there is no pty."""
    try:
        import pty
        import select
    except ImportError:
        return None
    wanted = ("req %s" % "{:,}".format(requests)).encode()
    env = dict(os.environ, CLAUDE_CONFIG_DIR=root, TERM="xterm-256color")
    started = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(sys.executable, [sys.executable, CATOP, "--agent", "claude-code",
                                    "--offline", "--history", store], env)
    seen, elapsed = b"", None
    try:
        while time.perf_counter() - started < 10:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                seen += os.read(fd, 65536)
                if wanted in seen:
                    elapsed = time.perf_counter() - started
                    break
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    return elapsed


def bench_statusline(folder, runs, target_mb=50):
    """--statusline on one 50 MB transcript, run as settings.json runs it: the first
    call (no state), and a warm call after one new message, against a bare
    interpreter start measured in the same run."""
    sys.path.insert(0, HERE)
    import catop
    root = os.path.join(folder, "statusline")
    project = os.path.join(root, "projects", "-home-dev-big")
    os.makedirs(project, exist_ok=True)
    session = "5a7e11fe-1111-4222-8333-000000000001"
    path = os.path.join(project, session + ".jsonl")
    rng = random.Random(9)
    if not os.path.exists(path) or os.path.getsize(path) < target_mb * MB:
        with open(path, "w") as out:
            size, chunk = 0, 0
            while size < target_mb * MB:
                lines = _claude_lines(rng, session, "/home/dev/big", 3, 12, chunk=chunk)
                chunk += 1
                text = "\n".join(lines) + "\n"
                out.write(text)
                size += len(text)
    cache = os.path.join(root, "cache")
    env = dict(os.environ, XDG_CACHE_HOME=cache, XDG_CONFIG_HOME=os.path.join(root, "config"))
    command = catop.statusline_command()
    stdin = json.dumps({"session_id": session, "transcript_path": path,
                        "model": {"id": "claude-sonnet-4-5", "display_name": "Sonnet 4.5"},
                        "cost": {"total_cost_usd": 1.0}}).encode()

    def timed(argv, shell=False):
        started = time.perf_counter()
        result = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, shell=shell)
        return time.perf_counter() - started, result.stdout.decode("utf-8", "replace").strip()
    bare = min(timed([sys.executable, "-c", "pass"])[0] for _ in range(max(5, runs)))
    firsts = []
    for _ in range(runs):
        shutil.rmtree(cache, ignore_errors=True)
        firsts.append(timed(command, shell=True))
    warm = []
    for n in range(max(5, runs)):
        with open(path, "a") as out:   # one new message: a prompt and its response
            out.write("\n".join(_claude_lines(rng, session, "/home/dev/big", 3, 1,
                                              chunk=10 ** 6 + n)) + "\n")
        warm.append(timed(command, shell=True))
    first, line = min(firsts)
    best = min(warm)[0]
    print("\nstatus line on a %d MB transcript (%s)" % (os.path.getsize(path) // MB, command))
    print("  bare interpreter (python3 -c pass)  %.3f s" % bare)
    print("  first call (no state)               %.3f s (target < 1 s)" % first)
    print("  warm call after one new message     %.3f s = %.2f x the bare start "
          "(target <= 1.5)" % (best, best / bare))
    print("  the line: %s" % line)


def bench_scan(folder, runs):
    empty = os.path.join(folder, "scan-empty")
    claude_only = os.path.join(folder, "scan-claude")
    os.makedirs(empty, exist_ok=True)
    if not os.path.isdir(os.path.join(claude_only, ".claude")):
        print("generating a 20 MB Claude Code folder ...", flush=True)
        make_claude_folder(os.path.join(claude_only, ".claude"), 20, files=40)
    argv = [sys.executable, CATOP, "--scan-agents", "--once", "--format", "json", "--offline",
            "--no-history"]
    print("\nscan of the agents' default folders")
    for label, home in (("a home with no agent", empty), ("a home with Claude Code only", claude_only)):
        env = {"PATH": os.environ.get("PATH", ""), "HOME": home}
        seconds, pss, _, _ = best_of(runs, argv, env)
        print("  %-34s %7.3f s  peak %5.1f MB" % (label, seconds, pss))
    probe = ("import sys, time; sys.path[0] = %r; import catop; start = time.perf_counter(); "
             "found = [catop.agent_files(n) for n in catop.AGENTS]; "
             "print(len(catop.AGENTS), (time.perf_counter() - start) * 1000)" % HERE)
    times = []
    for _ in range(max(runs, 5)):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env={"PATH": os.environ.get("PATH", ""), "HOME": empty}).stdout
        agents, ms = out.split()
        times.append(float(ms))
    print("  looking for all %s agents in a home with none: %.2f ms" % (agents, min(times)))
    probe = ("import sys, time; source = open(%r).read(); best = 9\n"
             "for _ in range(5):\n"
             "    start = time.perf_counter(); compile(source, 'catop.py', 'exec')\n"
             "    best = min(best, time.perf_counter() - start)\n"
             "print(best)" % CATOP)
    seconds = float(subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                   text=True).stdout)
    with open(CATOP) as handle:
        lines = sum(1 for _ in handle)
    print("  of which Python compiling catop.py (%s lines), as it does at every run of the"
          " script: %.3f s" % ("{:,}".format(lines), seconds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("requests", "claude", "codex", "scan", "live",
                                           "statusline"),
                        help="one corpus only")
    parser.add_argument("--mb", type=int, help="corpus size in MB (default 200 / 300)")
    parser.add_argument("--runs", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--keep", metavar="DIR", help="keep (and reuse) the corpora in DIR")
    args = parser.parse_args()
    folder = args.keep or tempfile.mkdtemp(prefix="catop-bench-")
    os.makedirs(folder, exist_ok=True)
    try:
        print("catop bench: %s, %d cores, Python %s" % (
            folder, os.cpu_count() or 1, sys.version.split()[0]))
        if args.only in (None, "requests"):
            bench_requests(folder, args.mb or 200, args.runs)
        if args.only in (None, "claude"):
            bench_claude(folder, args.mb or 300, args.runs)
        if args.only in (None, "codex"):
            bench_codex(folder, args.mb or 100, args.runs)
        if args.only in (None, "scan"):
            bench_scan(folder, args.runs)
        if args.only in (None, "live"):
            bench_live(folder)
        if args.only in (None, "statusline"):
            bench_statusline(folder, args.runs)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
