"""Third-party channel layers made runnable by the conformance suite and the bench, each
with only the setup its own README asks of a Django project (scripts/compare_layers.py
runs them all; docs/conformance.md and docs/benchmarks.md show what they did)."""
