# Points every agent's variable at its example logs here.  From the folder that holds
# catop.py:  . examples/agents/env.sh
here="$PWD/examples/agents"
export CLAUDE_CONFIG_DIR="$here/claude" CODEX_HOME="$here/codex" \
  GEMINI_DATA_DIR="$here/gemini/tmp" OPENCODE_DATA_DIR="$here/opencode" \
  OPENCLAW_DIR="$here/openclaw" AMP_DATA_DIR="$here/amp" DROID_SESSIONS_DIR="$here/droid" \
  CODEBUFF_DATA_DIR="$here/codebuff" HERMES_HOME="$here/hermes" PI_CODING_AGENT_DIR="$here/pi" \
  GOOSE_PATH_ROOT="$here/goose" KILO_DATA_DIR="$here/kilo" COPILOT_HOME="$here/copilot" \
  ANTIGRAVITY_DATA_DIR="$here/antigravity" KIMI_DATA_DIR="$here/kimi/.kimi,$here/kimi/.kimi-code" \
  QWEN_DATA_DIR="$here/qwen" GROK_HOME="$here/grok" ZCODE_HOME="$here/zcode"
