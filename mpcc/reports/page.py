"""A markdown report as a standalone HTML page, for reading results in a browser without a markdown viewer."""

from __future__ import annotations

import html

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1em auto;max-width:1100px;padding:0 1em;color:#222}}
table{{border-collapse:collapse;display:block;overflow-x:auto;margin:.5em 0}}
th,td{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
th:first-child,td:first-child{{text-align:left}}
img{{max-width:100%;height:auto}} p{{overflow-wrap:anywhere}}
</style></head><body>
{body}</body></html>
"""


def report_html(markdown_text: str, title: str) -> str:
    """The markdown as a page a browser shows (tables scroll sideways on a narrow window)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    return _PAGE.format(title=html.escape(title), body=body)
