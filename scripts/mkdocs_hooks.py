"""MkDocs hooks (mkdocs.yml, `hooks:`).

- docs/METHOD.md is written line by line (formulas on their own indented lines, as plain text) and is read at that
  path by code and tests, so it stays as it is; on the site its paragraphs keep their line breaks and indentation
  (the `plain-lines` class, docs/stylesheets/extra.css) instead of being reflowed.
- A pipe inside code in a table cell is written `\\|` so that GitHub's table parser does not split the cell there;
  Python-Markdown keeps the backslash inside code, so it is dropped from the HTML.
"""

import re

PLAIN_LINE_PAGES = {"METHOD.md"}
_CODE = re.compile(r"<code>(.*?)</code>", re.DOTALL)


def on_page_content(html, page, config, files):  # noqa: ARG001 - MkDocs' hook signature
    html = _CODE.sub(lambda m: "<code>" + m.group(1).replace("\\|", "|") + "</code>", html)
    if page.file.src_uri in PLAIN_LINE_PAGES:
        return f'<div class="plain-lines">\n{html}\n</div>'
    return html
