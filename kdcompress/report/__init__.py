"""The report stage: report.json (versioned schema), report.md and the plots."""

from .assemble import data_json, distill_report, header, validate_report
from .markdown import load_schema, render_markdown, rerender, write_report
from .shipped import add_shipped, budget_sentence, finite, intended_variant

__all__ = ["add_shipped", "budget_sentence", "finite", "data_json", "distill_report", "header", "intended_variant",
           "load_schema", "render_markdown", "rerender", "validate_report", "write_report"]
