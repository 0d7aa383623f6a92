"""`watch`: the long-running frontend: registry events, debounced, through the incremental
engine to nginx, with health and metrics."""
