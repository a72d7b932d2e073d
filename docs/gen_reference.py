"""Writes the reference pages from the code at `mkdocs build` time (the mkdocs-gen-files plugin):
settings from `r3.settings.Settings`, the CLI from its typer app, the HTTP API from the OpenAPI
document. Nothing here is written by hand, so the reference cannot drift from the code. It also
brings BENCHMARKS.md (and the plots it shows) into the site as it is in the repository.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mkdocs_gen_files
import typer

from r3.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def _cell(text: object) -> str:
    """A value as one Markdown table cell: no newlines, no bare pipes."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def _type_name(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    return name or str(annotation).replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is None:
        return "unset"
    if hasattr(value, "get_secret_value"):
        return "set" if value.get_secret_value() else "unset"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value)}`" if value else "empty"
    return f"`{value}`"


def settings_page() -> str:
    lines = [
        "# Settings",
        "",
        "Every setting is an environment variable (or a line in `.env` in the directory `r3` runs in).",
        "A value that does not parse stops `r3` at once with one line naming the variable.",
        "This page is generated from `r3.settings.Settings`.",
        "",
        "| variable | type | default | what it does |",
        "|---|---|---|---|",
    ]
    prefix = Settings.model_config.get("env_prefix", "")
    for name, field in Settings.model_fields.items():
        variable = f"{prefix}{name}".upper()
        lines.append(f"| `{variable}` | {_cell(_type_name(field.annotation))} | {_cell(_default(field))} "
                     f"| {_cell(field.description or '')} |")
    return "\n".join(lines) + "\n"


def _command_section(command: Any, path: list[str], out: list[str]) -> None:
    """One command's section (typer's click objects: typer vendors its own click, so duck-typed)."""
    title = " ".join(path)
    out += [f"## `{title}`", "", (command.help or "").strip().split("\f")[0], ""]
    params = [p for p in command.params if p.name != "help" and not getattr(p, "hidden", False)]
    if params:
        out += ["| argument or option | default | what it does |", "|---|---|---|"]
        for param in params:
            if param.param_type_name == "argument":
                shown = f"`{(param.metavar or param.name).upper()}`"
            else:
                shown = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
            default = param.default
            default_text = "" if default is None or callable(default) or param.required else f"`{default}`"
            out.append(f"| {shown} | {_cell(default_text)} | {_cell(getattr(param, 'help', '') or '')} |")
        out.append("")
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        _command_section(sub, [*path, name], out)


def cli_page() -> str:
    from r3.cli.main import app

    out = ["# The `r3` command", "", "Generated from the CLI's own definition; `r3 COMMAND --help` says the same.", ""]
    _command_section(typer.main.get_command(app), ["r3"], out)
    return "\n".join(out) + "\n"


def _schema_name(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if "anyOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["anyOf"])
    return f"`{schema.get('type', 'object')}`"


def http_page() -> str:
    from server.app import create_app

    document = create_app(Settings()).openapi()  # no app is started: no model, no database
    out = ["# HTTP API", "",
           "Generated from the server's OpenAPI document, which a running server also serves at "
           "`/openapi.json` (and as pages at `/docs`). Errors are OpenAI's error object "
           "(`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`).", ""]
    for path, methods in document["paths"].items():
        if path.startswith("/dashboard"):
            continue
        for method, operation in methods.items():
            out += [f"## `{method.upper()} {path}`", "", operation.get("summary", ""), ""]
            description = operation.get("description")
            if description:
                out += [description.strip(), ""]
            body = operation.get("requestBody", {}).get("content", {})
            if body:
                media, spec = next(iter(body.items()))
                out += [f"Request body ({media}): {_schema_name(spec.get('schema'))}", ""]
            out += ["| status | answer |", "|---|---|"]
            for status, answer in operation.get("responses", {}).items():
                content = answer.get("content", {})
                schema = _schema_name(next(iter(content.values())).get("schema")) if content else ""
                out.append(f"| {status} | {_cell(answer.get('description', ''))} {schema} |")
            out.append("")
    return "\n".join(out) + "\n"


for page, write in {"reference/settings.md": settings_page, "reference/cli.md": cli_page,
                    "reference/http.md": http_page}.items():
    with mkdocs_gen_files.open(page, "w") as file:
        file.write(write())


benchmarks = (REPO / "BENCHMARKS.md").read_text(encoding="utf-8")
with mkdocs_gen_files.open("benchmarks.md", "w") as file:
    file.write(benchmarks)
for image in sorted(set(re.findall(r"\]\((bench/results/[^)\s]+\.png)\)", benchmarks))):
    with mkdocs_gen_files.open(image, "wb") as file:
        file.write((REPO / image).read_bytes())
