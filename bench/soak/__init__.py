"""The soak harness, ``python -m bench soak``: mixed traffic from several processes for a
fixed time under faults, every message counted (see docs/reliability.md)."""
