"""Bundled examples: real models with real data, usable wherever a model is accepted as
`example:NAME` (`trimtab examples` lists them). Models are built on first use and cached."""

from trimtab.examples.registry import DownstreamMetric, Example, get_example, list_examples

__all__ = ["DownstreamMetric", "Example", "get_example", "list_examples"]
