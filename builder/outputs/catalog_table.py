"""The README's catalog table (`dlenv list --markdown`): pure text from the planned stacks' rows."""

from __future__ import annotations


MARKDOWN_SKIP = ("cuda-headers", "setuptools", "openssh")   # build helpers, not what a reader looks for


def catalog_markdown(rows: list) -> str:
    """The README's catalog table: one row per stack, every component version it resolves to."""
    lines = ["| stack | extends | what it is | versions (resolved and locked) |", "|---|---|---|---|"]
    for r in rows:
        versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items() if k not in MARKDOWN_SKIP)
        if r["python_packages"]:
            versions += "; " + ", ".join(r["python_packages"])
        extends = f"`{r['extends']}`" if r["extends"] else ""
        lines.append(f"| `{r['stack']}` | {extends} | {r['description']} | {versions} |")
    return "\n".join(lines) + "\n"
