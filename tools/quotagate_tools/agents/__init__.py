"""make agents: the real coding agents (Claude Code, Codex CLI) through a local gateway."""
