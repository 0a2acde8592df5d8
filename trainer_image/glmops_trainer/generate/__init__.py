"""Synthetic training data: a teacher model continues prompts, the result is checked, deduplicated and written.

Run (what a SyntheticDataset's generator Job runs; torch is never imported, so it starts at once):

    python -m glmops_trainer generate --config /etc/glmops/generate.json

Modules: `prompts` (the prompts file, checked), `teacher` (OpenAI-compatible requests, retries),
`traces` (one sample, turn by turn, and its filters), `toolschema` (arguments vs the tool's JSON
schema), `journal` (finished samples, so a new pod continues), `dedup` (exact and near
duplicates), `progress` (counts served at /metrics), `report` (report JSON and length histogram),
`run` (the run, top to bottom). The config, progress page and result are defined in
`glmops.contract.synthetic`.
"""
