"""`tokenworks bench`: measure any OpenAI-compatible endpoint the way an AI factory is judged.

Throughput, latency, goodput under SLOs, the Pareto frontier of throughput per device against
tokens/s per user, and what a token costs in money and energy. The formulas are documented in
`docs/metrics.md`; the request records every figure derives from are in `records.py`.
"""
