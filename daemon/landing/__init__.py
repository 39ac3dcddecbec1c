"""Where samples land in One Codex: project, tags and metadata (design.md "Where samples land").

A room that needs nothing else of the daemon (only `daemon.errors`); the daemon is not wired to it yet.
- `samplesheet`: Illumina SampleSheet.csv v1/v2 → `SampleSheet` (rows, `match(stem)`, `reconcile(stems)`).
- `metadata`: the published limits, placeholders (`Context`, `context_for`), `build(layers, context,
  row=…)` → `Landing` (project choices, tags, metadata, what was left out and why), `init_fields`.
- `settings`: the config's tables → `Layer` / `LandingSettings`, a value breaking a limit → ConfigError.
- `projects`: `ProjectResolver(fetch=…)`: an id, name or short name → a project, cached; `forget(id)`.
"""
