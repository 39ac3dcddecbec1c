"""Where samples land in One Codex: project, tags and metadata (design.md "Where samples land").

- `samplesheet`: Illumina SampleSheet.csv v1/v2 → `SampleSheet` (rows, `match(stem)`, `reconcile(stems)`).
- `metadata`: the published limits, placeholders (`Context`, `context_for`), `build(layers, context,
  row=…)` → `Landing` (project choices, tags, metadata, what was left out and why), `init_fields`.
- `settings`: the config's tables → `Layer` / `LandingSettings`, a value breaking a limit → ConfigError.
- `projects`: `ProjectResolver(fetch=…)`: an id, name or short name → a project, cached; `forget(id)`.
- `planner`: `Planner.plan(sample, row)` → (init's landing fields, the record the queue keeps), called
  by the pipeline before each init (wired in daemon/upload/build.py); `LandingClient` re-resolves a
  project One Codex refuses.
- `survey`: what `seqdrop check` reports about sheets, project names and placeholders.
"""
