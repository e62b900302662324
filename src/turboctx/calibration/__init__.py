"""Sparsity refinement: per-head sparse budgets from attention recall (rounds.py), and
`turboctx calibrate` (cli.py)."""
