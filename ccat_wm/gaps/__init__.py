"""Gap evaluation (docs/concepts.md 3.2, 3.3): what needs (re)processing, why and when.

`snapshot` loads a pipeline's state with a few set-based queries, `evaluate` is a pure
function of that snapshot and an injected `now`, `create` turns eligible gaps into
PENDING runs, and `plan` adds the blast radius and cost of a wave.
"""
