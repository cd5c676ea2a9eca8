"""The report stage: report.json (versioned schema), report.md and the plots."""

from .assemble import data_json, header
from .markdown import load_schema, render_markdown, rerender, write_report

__all__ = ["data_json", "header", "load_schema", "render_markdown", "rerender", "write_report"]
