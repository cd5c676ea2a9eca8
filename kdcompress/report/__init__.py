"""The report stage: report.json (versioned schema), report.md and the plots."""

from .assemble import data_json, distill_report, header, validate_report
from .markdown import load_schema, render_markdown, rerender, write_report

__all__ = ["data_json", "distill_report", "header", "load_schema", "render_markdown", "rerender", "validate_report", "write_report"]
