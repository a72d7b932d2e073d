"""What every OpenAI grader shares: its spec's base, the sample it reads, and its templates.

A client's `verifier` may be an OpenAI grader object, accepted as written: a grader copied from an
OpenAI fine-tuning job (`string_check`, `text_similarity`, `score_model`, `label_model`, `multi`,
`python`) parses unchanged. Source: OpenAI's graders guide, https://platform.openai.com/docs/guides/graders,
and the `openai` package's `openai.types.graders` models.

**Templates.** A grader's text fields (`input`, `reference`, a model grader's message contents) are
templates: `{{ item.reference_answer }}`, `{{ sample.output_text }}`. As in OpenAI's guide, the only
namespaces are `item` and `sample`, and nested values are read with a JSON-path-like syntax
(`{{ sample.output_tools[0].function.name }}`); a `.key` on an object always reads the key (never a
method of the same name). R3 renders them with Jinja2's `ImmutableSandboxedEnvironment` and
`StrictUndefined`, restricted to what a grader needs and bounded in what it can produce:

- a template is output (`{{ … }}`), text and `{% if %}`: no loops, macros, assignments, calls,
  keyword arguments, list literals or includes (`check_template` refuses them), so rendering takes
  time linear in the template;
- the filters are the few whose output grows at most linearly with their input (`FILTERS`, and a
  `tojson` without options);
- `+`, `*`, `**`, `%` and `~` are intercepted: `+ * ** %` work on numbers (`+` on text too, `*` on
  text times a whole number), `~` joins anything as text; each refuses a result longer than
  `MAX_RENDERED_CHARS` characters or an integer of more than `MAX_INTEGER_BITS` bits before building it;
- the rendered text stops at `MAX_RENDERED_CHARS` characters (a failure of the verdict, like any
  template error while rendering).

**`item`** is R3's extension: OpenAI's graders read `item` from the row of an eval's or fine-tuning
job's dataset; R3 has no dataset, so the client sends the row with the spec (`"item": {...}`). A
template naming a field the spec's `item` lacks is refused when the spec is read (a 400 naming the
template's field, e.g. `verifier.reference`).

**`sample`** is the answer judged (`Sample`): `output_text` (the content, or ""), `output_json`
(the content read as JSON, whenever it is JSON: OpenAI fills it only for a `response_format`
answer) and `output_tools` (the tool calls, as OpenAI's `message.tool_calls`). OpenAI's `choices`
and `output_audio` are not provided. A template that reads what the answer lacks (its JSON when it
is not JSON, a tool call it did not make) does not fail the request: the grader's verdict is a
failure, score 0, whose detail says what the answer lacks (`TemplateFailure`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

from jinja2 import StrictUndefined, TemplateError, Undefined, UndefinedError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import FILTERS as JINJA_FILTERS
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from pydantic import Field, ValidationInfo, field_validator

from verifiers.base import Attempt, SpecBase, UnreadableOutput
from verifiers.json_text import JsonTextError, read_json

MAX_RENDERED_CHARS = 64 * 1024  # a rendered template, and any text or list a template builds
MAX_INTEGER_BITS = 4096  # an integer a template computes (10**1233 or so)
DEFAULT_PASS_THRESHOLD = 0.5  # the middle of the [0, 1] scale; each scaled grader documents its own

# A grader's `pass_threshold`: the score, in [0, 1], from which an answer passes (`Verdict.graded`).
PassThreshold = Annotated[float, Field(ge=0.0, le=1.0)]

SAMPLE_FIELDS = ("output_text", "output_json", "output_tools")
FILTERS = ("abs", "capitalize", "count", "d", "default", "first", "float", "int", "last", "length", "lower",
           "round", "string", "title", "trim", "upper")  # Jinja's; and `tojson`, R3's (`_tojson`)


class GraderSpec(SpecBase):
    """The fields every grader's spec has, before its own.

    - `name`: OpenAI's grader name (required by OpenAI, optional here); a multi grader's detail
      shows each sub-grader by its key in `graders`.
    - `item`: the dataset row the templates read as `item` (R3's extension; see the module's doc).
      A multi grader's sub-graders read the multi grader's `item`.
    """

    name: str = ""
    item: dict[str, Any] = Field(default_factory=dict)

    @property
    def pass_score(self) -> float | None:
        """The grader's `pass_threshold` where it has one on R3's [0, 1] scale (a scale of its own
        overrides this); None for a pass/fail check such as `string_check`."""
        return getattr(self, "pass_threshold", None)


class TemplateFailure(UnreadableOutput):
    """A grader's template could not be rendered for this answer; the message says why, for a
    failed verdict's detail."""


class _NotJson(UndefinedError):
    """Raised by any use of `sample.output_json` when the answer is not JSON."""


@dataclass(frozen=True)
class Sample:
    """The answer as a grader's templates read it (`sample`): OpenAI's sample namespace."""

    output_text: str
    output_json: Any  # the content as JSON; a `StrictUndefined` raising `_NotJson` when it is not JSON
    output_tools: tuple[dict[str, Any], ...]  # {"id", "type": "function", "function": {"name", "arguments"}}

    @classmethod
    def of(cls, attempt: Attempt) -> Sample:
        text = attempt.content or ""
        try:
            output_json = read_json(text)
        except JsonTextError as error:
            output_json = StrictUndefined(f"the answer is not the JSON the grader reads ({error})", exc=_NotJson)
        tools = tuple({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                      for call in attempt.tool_calls)
        return cls(text, output_json, tools)

    def namespace(self) -> dict[str, Any]:
        return {"output_text": self.output_text, "output_json": self.output_json,
                "output_tools": list(self.output_tools)}


_TOO_LONG = f"the template builds a value longer than {MAX_RENDERED_CHARS} characters"
_TOO_BIG = f"the template computes an integer of more than {MAX_INTEGER_BITS} bits"


def _bounded(value: Any) -> Any:
    """`value`, unless it is text longer than `MAX_RENDERED_CHARS` or an integer of more than
    `MAX_INTEGER_BITS` bits (`SecurityError`)."""
    if isinstance(value, str) and len(value) > MAX_RENDERED_CHARS:
        raise SecurityError(_TOO_LONG)
    if isinstance(value, int) and value.bit_length() > MAX_INTEGER_BITS:
        raise SecurityError(_TOO_BIG)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)


class _CheckedConcat(CodeGenerator):
    """Compiles `~` to the environment's bounded join instead of Jinja's unbounded `str_join`."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_join((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class _GraderSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, with every operator that can grow a value intercepted and bounded,
    and `.key` on an object reading the key."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})
    code_generator_class = _CheckedConcat

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        # Each check runs before the operation: the value refused is never built.
        if _is_number(left) and _is_number(right):
            if isinstance(left, int) and isinstance(right, int) and (
                    (operator_ == "**" and right > 0 and left.bit_length() * right > MAX_INTEGER_BITS)
                    or (operator_ == "*" and left.bit_length() + right.bit_length() > MAX_INTEGER_BITS + 1)):
                raise SecurityError(_TOO_BIG)
        elif operator_ == "+" and isinstance(left, str) and isinstance(right, str):
            if len(left) + len(right) > MAX_RENDERED_CHARS:
                raise SecurityError(_TOO_LONG)
        elif operator_ == "*" and isinstance(left, str) and isinstance(right, int) and not isinstance(right, bool):
            if len(left) * right > MAX_RENDERED_CHARS:
                raise SecurityError(_TOO_LONG)
        else:
            takes = {"+": "numbers or text", "*": "numbers, or text times a whole number"}.get(operator_, "numbers")
            raise SecurityError(f"a template's {operator_!r} takes {takes}")
        return _bounded(super().call_binop(context, operator_, left, right))

    def bounded_join(self, parts: tuple[Any, ...]) -> str:
        """`~`: the parts as text, joined; refused once their length passes `MAX_RENDERED_CHARS`."""
        texts, length = [], 0
        for part in parts:
            text = str(part)
            length += len(text)
            if length > MAX_RENDERED_CHARS:
                raise SecurityError(_TOO_LONG)
            texts.append(text)
        return "".join(texts)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict):  # JSON: `.key` reads the key, as OpenAI's path syntax does
            return obj[attribute] if attribute in obj else self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


def _tojson(value: Any) -> str:
    """`tojson`: the value as JSON text, as a prompt shows it (Jinja's own escapes HTML and takes an
    `indent`, which would let a template multiply a value's size)."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # the answer is not JSON, or lacks what is read: say so
    return json.dumps(value, ensure_ascii=False)


_ENVIRONMENT = _GraderSandbox(undefined=StrictUndefined, autoescape=False)
_ENVIRONMENT.filters = {name: JINJA_FILTERS[name] for name in FILTERS} | {"tojson": _tojson}
_ENVIRONMENT.globals.clear()  # no range(), lipsum(), dict(), cycler(), joiner(), namespace()

# The template's own nodes a grader may use: output, text, `{% if %}`, and expressions without calls.
_ALLOWED_NODES = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.If, nodes.Name, nodes.Const,
                  nodes.Getattr, nodes.Getitem, nodes.Slice, nodes.Filter, nodes.Test, nodes.Compare,
                  nodes.Operand, nodes.And, nodes.Or, nodes.Not, nodes.Neg, nodes.Pos, nodes.CondExpr,
                  nodes.Add, nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Mod, nodes.Pow, nodes.Concat)


@lru_cache(maxsize=512)
def _compiled(template: str) -> Any:
    return _ENVIRONMENT.from_string(template)


def check_template(template: str, item: dict[str, Any] | None) -> None:
    """Raise `ValueError`, saying why, unless `template` is one a grader may render: valid syntax,
    only the constructs and filters listed in the module's doc, reading only `item` and `sample`
    (and of `sample` only `SAMPLE_FIELDS`), and, where `item` is given, naming only fields it has
    (a path with a computed key is checked up to that key)."""
    try:
        tree = _ENVIRONMENT.parse(template)
        for node in tree.find_all(nodes.Node):
            _check_node(node, item)
        _compiled(template)  # an unknown filter or test is found when compiling
    except TemplateError as error:
        where = f" (line {error.lineno})" if getattr(error, "lineno", None) else ""
        raise ValueError(f"the template is not valid{where}: {error.message}") from None
    except RecursionError:
        raise ValueError("the template nests its expressions too deeply") from None


def _check_node(node: nodes.Node, item: dict[str, Any] | None) -> None:
    if not isinstance(node, _ALLOWED_NODES):
        raise ValueError(f"a grader's template may use output ({{{{ … }}}}), text and {{% if %}}, not "
                         f"{_construct(node)}")
    if isinstance(node, nodes.Name) and node.name not in ("item", "sample"):
        raise ValueError(f"a template reads `item` and `sample` only (OpenAI's namespaces), not `{node.name}`")
    if isinstance(node, nodes.Getattr | nodes.Getitem) and (path := _constant_path(node)) is not None:
        root, keys = path
        if root == "sample" and keys and keys[0] not in SAMPLE_FIELDS:
            raise ValueError(f"a template's `sample` has {', '.join(SAMPLE_FIELDS)}, not {keys[0]!r}")
        if root == "item" and item is not None:
            _check_item_path(keys, item)


def _check_item_path(keys: list[Any], item: dict[str, Any]) -> None:
    """Raise `ValueError` unless `item` has the value at `keys` (as far as it is JSON to look into)."""
    value: Any = item
    for depth, key in enumerate(keys):
        shown = "item" + "".join(f".{k}" if isinstance(k, str) else f"[{k!r}]" for k in keys[: depth + 1])
        if isinstance(value, dict):
            if not isinstance(key, str) or key not in value:
                raise ValueError(f"the template reads {shown}, which the spec's `item` does not have")
            value = value[key]
        elif isinstance(value, list):
            if not isinstance(key, int) or isinstance(key, bool) or not -len(value) <= key < len(value):
                raise ValueError(f"the template reads {shown}, which the spec's `item` does not have")
            value = value[key]
        else:
            return  # text or a number: what Jinja reads of it is not JSON


def _construct(node: nodes.Node) -> str:
    names = {nodes.For: "{% for %}", nodes.Macro: "{% macro %}", nodes.CallBlock: "{% call %}",
             nodes.Assign: "{% set %}", nodes.AssignBlock: "{% set %}", nodes.With: "{% with %}",
             nodes.FilterBlock: "{% filter %}", nodes.Call: "a call", nodes.Include: "{% include %}",
             nodes.Import: "{% import %}", nodes.FromImport: "{% import %}", nodes.Extends: "{% extends %}",
             nodes.Block: "{% block %}", nodes.List: "a list", nodes.Tuple: "a tuple", nodes.Dict: "a dict",
             nodes.Keyword: "a keyword argument"}
    return next((name for kind, name in names.items() if isinstance(node, kind)), type(node).__name__)


def _constant_path(node: nodes.Node) -> tuple[str, list[Any]] | None:
    """`item.a[0].b` as ("item", ["a", 0, "b"]), up to the first key computed at render time."""
    keys: list[Any] = []
    while isinstance(node, nodes.Getattr | nodes.Getitem):
        if isinstance(node, nodes.Getattr):
            keys.insert(0, node.attr)
        elif isinstance(node.arg, nodes.Const):
            keys.insert(0, node.arg.value)
        else:
            keys.clear()  # a computed key: only the part before it is known
        node = node.node
    return (node.name, keys) if isinstance(node, nodes.Name) else None


def render(template: str, sample: Sample, item: dict[str, Any]) -> str:
    """`template` rendered for `sample` and `item` (a template `check_template` accepted). Raises
    `TemplateFailure` when it reads what the answer lacks (`output_json` of an answer that is not
    JSON, a tool call it did not make), hits a bound (`MAX_RENDERED_CHARS`, `MAX_INTEGER_BITS`), or
    fails otherwise on this answer's values (text where it adds numbers)."""
    pieces, length = [], 0
    try:
        for piece in _compiled(template).generate(item=item, sample=sample.namespace()):
            length += len(piece)
            if length > MAX_RENDERED_CHARS:
                raise TemplateFailure(f"the grader's template renders more than {MAX_RENDERED_CHARS} characters")
            pieces.append(piece)
    except _NotJson as error:
        raise TemplateFailure(str(error)) from None
    except UndefinedError as error:
        raise TemplateFailure(f"the answer lacks what the grader's template reads ({error})") from None
    except SecurityError as error:
        raise TemplateFailure(f"the grader's template was stopped: {error}") from None
    except (TemplateError, ArithmeticError, TypeError, ValueError) as error:
        raise TemplateFailure(f"the grader's template failed on this answer: {error}") from None
    return "".join(pieces)


def templates(*fields: str) -> Any:
    """A pydantic validator for a grader spec's template fields (`check_template` on each, against the
    spec's `item`): in the spec's class body, `_templates = templates("input", "reference")`. The spec's
    `item` must be declared before the fields (`GraderSpec` declares it first); when `item` itself is
    invalid, only the templates' syntax is checked."""

    def check(cls: type, template: str, info: ValidationInfo) -> str:
        check_template(template, info.data.get("item"))
        return template

    return field_validator(*fields)(check)

