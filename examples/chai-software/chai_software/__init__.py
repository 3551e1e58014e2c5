"""Example CHAI reduction programs that follow the CCAT container contract.

Each program reads `$WORKFLOW_MANIFEST`, takes its inputs from the manifest's paths and
writes into `$WORKFLOW_OUTPUT_DIR` under `science/`, `qa/`, `plots/`, `statistics/` and
`logs/`, with a `<file>.meta.json` sidecar where a product has metadata.
"""
