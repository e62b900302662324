"""Long-context evaluation: passkey, needle-in-a-haystack, RULER, perplexity by position.

Entry point for the CLI: ``turboctx.eval.cli.eval_app`` (mounted as ``turboctx eval``).
"""
from turboctx.eval.common import Sample, parse_size, parse_sizes
from turboctx.eval.targets import Target

__all__ = ["Sample", "Target", "parse_size", "parse_sizes"]
