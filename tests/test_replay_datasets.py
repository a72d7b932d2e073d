"""The replay file, and BFCL / xLAM records turned into it: hand-written records in those datasets' shapes,
judged the way BFCL's checker and the paper's exact match judge them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema.validators import Draft202012Validator

from r3.replay import bfcl, xlam
from r3.replay.report import Outcome, summarize
from r3.replay.tasks import ReplayTask, TaskFileError, numbered_records, read_tasks, write_tasks
from verifiers import Attempt, TaskContext, ToolCall, parse_spec


def write_lines(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def verdict(task: ReplayTask, calls: list[tuple[str, dict[str, Any]]]):
    spec = parse_spec(task.request["verifier"])
    attempt = Attempt(None, tuple(ToolCall(name, json.dumps(arguments)) for name, arguments in calls))
    return spec.judge(attempt, TaskContext(tools=tuple(task.request["tools"])))


# --- BFCL ------------------------------------------------------------------------------------------

DISTANCE = {"name": "geo.distance", "description": "Road distance between two places.", "parameters": {
    "type": "dict", "required": ["origin", "destination", "scale"], "properties": {
        "origin": {"type": "string", "description": "Start."},
        "destination": {"type": "string", "description": "End."},
        "unit": {"type": "string", "description": "km or miles. Default km."},
        "precision": {"type": "integer", "description": "Decimals. Default 0."},
        "scale": {"type": "float", "description": "Map scale."},
        "waypoints": {"type": "tuple", "items": {"type": "string"}, "description": "Stops."},
        "weights": {"type": "array", "items": {"type": "float"}, "description": "Weights."},
        "note": {"type": "any", "description": "Anything."},
        "raw": {"description": "Untyped."},
        "rooms": {"type": "integer", "description": "How many, or dontcare."}}}}
SEARCH = {"name": "find_schools", "description": "Search schools.", "parameters": {
    "type": "dict", "required": ["filters"], "properties": {
        "filters": {"type": "dict", "description": "Filters.", "properties": {
            "city": {"type": "string", "description": "City."}, "year": {"type": "integer", "description": "Year."}}},
        "rows": {"type": "array", "description": "Rows.", "items": {"type": "dict", "properties": {
            "key": {"type": "string", "description": "Key."}, "weight": {"type": "float", "description": "W."}}}}}}}
QUESTIONS = [
    {"id": "simple_python_0", "question": [[{"role": "user", "content": "How far is Denver from Boston?"}]],
     "function": [DISTANCE]},
    {"id": "simple_python_1", "question": [[{"role": "user", "content": "Schools in Oslo, 2020."}]],
     "function": [SEARCH]},
    {"id": "parallel_0", "question": [[{"role": "user", "content": "Boston→Denver and Denver→Reno."}]],
     "function": [DISTANCE]},
    {"id": "irrelevance_0", "question": [[{"role": "user", "content": "Who painted the Mona Lisa?"}]],
     "function": [DISTANCE]},
    {"id": "live_relevance_0-0-0", "question": [[{"role": "user", "content": "Any distance."}]],
     "function": [DISTANCE]},
    {"id": "simple_java_0", "question": [[{"role": "user", "content": "Java."}]], "function": [DISTANCE]},
    {"id": "multi_turn_base_0", "question": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
     "function": [DISTANCE]},
]
ANSWERS = [
    {"id": "simple_python_0", "ground_truth": [{"geo.distance": {
        "origin": ["Boston", "Boston, MA"], "destination": ["Denver"], "unit": ["km", ""], "precision": [2, ""],
        "scale": [2.0], "rooms": ["", "dontcare"], "speed": [""]}}]},
    {"id": "simple_python_1", "ground_truth": [{"find_schools": {
        "filters": [{"city": ["Oslo"], "year": [2020, ""]}], "rows": [[{"key": ["a"], "weight": [0.5]}], ""]}}]},
    {"id": "parallel_0", "ground_truth": [
        {"geo.distance": {"origin": ["Boston"], "destination": ["Denver"], "scale": [1.0]}},
        {"geo.distance": {"origin": ["Denver"], "destination": ["Reno"], "scale": [1.0]}}]},
]


@pytest.fixture
def bfcl_tasks(tmp_path: Path) -> dict[str, ReplayTask]:
    questions, answers = write_lines(tmp_path / "q.json", QUESTIONS), write_lines(tmp_path / "a.json", ANSWERS)
    tasks, skipped = bfcl.convert(questions, answers)
    assert skipped == {"no possible answer (e.g. live_relevance)": 1,
                       "Java/JavaScript (values compared as source text)": 1, "multi-turn": 1}
    return {task.id: task for task in tasks}


def test_bfcl_function_docs_become_openai_tools_as_bfcl_converts_them(bfcl_tasks) -> None:
    (tool,) = bfcl_tasks["simple_python_0"].request["tools"]
    assert tool["type"] == "function" and tool["function"]["name"] == "geo.distance"
    parameters = tool["function"]["parameters"]
    Draft202012Validator.check_schema(parameters)
    properties = parameters["properties"]
    assert parameters["type"] == "object" and parameters["required"] == ["origin", "destination", "scale"]
    assert properties["scale"] == {"type": "number", "format": "float",
                                   "description": "Map scale. This is a float type value."}
    assert properties["precision"]["type"] == "integer"
    assert properties["waypoints"]["type"] == "array" and properties["waypoints"]["items"] == {"type": "string"}
    assert properties["weights"]["items"] == {"type": "number"}  # BFCL maps items' types, notes only properties
    assert properties["note"]["type"] == "string" and properties["raw"]["type"] == "string"  # any, missing → string
    (search,) = bfcl_tasks["simple_python_1"].request["tools"]
    nested = search["function"]["parameters"]["properties"]
    assert nested["filters"]["type"] == "object" and nested["filters"]["properties"]["year"]["type"] == "integer"
    assert nested["rows"]["items"]["type"] == "object"
    assert nested["rows"]["items"]["properties"]["weight"]["type"] == "number"
    assert DISTANCE["parameters"]["type"] == "dict"  # the source is left as it was


def test_bfcl_possible_answers_become_patterns(bfcl_tasks) -> None:
    task = bfcl_tasks["simple_python_0"]
    assert task.category == "simple_python"
    assert task.request["messages"] == QUESTIONS[0]["question"][0]
    verifier = task.request["verifier"]
    assert verifier["strings"] == "normalized"
    assert verifier["expected"] == [{"name": "geo.distance", "arguments": {
        "origin": {"$one_of": ["Boston", "Boston, MA"]}, "destination": "Denver",
        "unit": {"$one_of": ["km", ""], "$optional": True},  # "" stays acceptable for a string (string_checker)
        "precision": {"$one_of": [2], "$optional": True},  # but not for an integer (type_checker)
        "scale": 2.0,
        "rooms": {"$one_of": ["", "dontcare"], "$optional": True},  # string answers: BFCL's "variable" case
        "speed": {"$one_of": [], "$optional": True}}}]  # not a parameter of the function: only left out
    assert bfcl_tasks["simple_python_1"].request["verifier"]["expected"][0]["arguments"] == {
        "filters": {"city": "Oslo", "year": {"$one_of": [2020, ""], "$optional": True}},
        "rows": {"$one_of": [[{"key": "a", "weight": 0.5}]], "$optional": True}}
    assert bfcl_tasks["irrelevance_0"].request["verifier"]["expected"] == []
    assert bfcl_tasks["irrelevance_0"].category == "irrelevance"


BOSTON = {"origin": "Boston", "destination": "Denver", "scale": 2.0}
# (task id, produced calls, what BFCL's ast_checker answers)
AGREEMENT = [
    ("simple_python_0", [("geo.distance", BOSTON)], True),
    ("simple_python_0", [("geo.distance", {**BOSTON, "origin": "boston, ma"})], True),  # standardize_string
    ("simple_python_0", [("geo.distance", {**BOSTON, "scale": 2})], True),  # int accepted for a float
    ("simple_python_0", [("geo.distance", {**BOSTON, "precision": 2})], True),
    ("simple_python_0", [("geo.distance", {**BOSTON, "precision": 2.0})], False),  # float for an integer
    ("simple_python_0", [("geo.distance", {**BOSTON, "precision": ""})], False),
    ("simple_python_0", [("geo.distance", {**BOSTON, "unit": ""})], True),
    ("simple_python_0", [("geo.distance", {**BOSTON, "unit": "KM"})], True),
    ("simple_python_0", [("geo.distance", {**BOSTON, "unit": "miles"})], False),  # an optional, given wrong
    ("simple_python_0", [("geo.distance", {**BOSTON, "waypoints": []})], False),  # not in the possible answer
    ("simple_python_0", [("geo.distance", {**BOSTON, "rooms": ""})], True),
    ("simple_python_0", [("geo.distance", {**BOSTON, "rooms": "dontcare"})], True),
    ("simple_python_0", [("geo.distance", {**BOSTON, "rooms": 2})], False),
    ("simple_python_0", [("geo.distance", {**BOSTON, "speed": 5})], False),  # undeclared: Unexpected parameter
    ("simple_python_0", [("geo.distance", {"origin": "Boston", "scale": 2.0})], False),
    ("simple_python_0", [("geo_distance", BOSTON)], False),
    ("simple_python_0", [("geo.distance", BOSTON)] * 2, False),
    ("simple_python_0", [], False),
    ("simple_python_1", [("find_schools", {"filters": {"city": "oslo"}})], True),
    ("simple_python_1", [("find_schools", {"filters": {"city": "Oslo", "year": 2020}})], True),
    ("simple_python_1", [("find_schools", {"filters": {"city": "Oslo", "year": 2021}})], False),
    ("simple_python_1", [("find_schools", {"filters": {"city": "Oslo", "zip": "0150"}})], False),
    ("simple_python_1", [("find_schools", {"filters": {"city": "Oslo"}, "rows": [{"key": "A", "weight": 0.5}]})],
     True),
    ("simple_python_1", [("find_schools", {"filters": {"city": "Oslo"}, "rows": [{"key": "b", "weight": 0.5}]})],
     False),
    ("parallel_0", [("geo.distance", {"origin": "Denver", "destination": "Reno", "scale": 1}),
                    ("geo.distance", {"origin": "Boston", "destination": "Denver", "scale": 1.0})], True),
    ("parallel_0", [("geo.distance", {"origin": "Denver", "destination": "Reno", "scale": 1.0})], False),
    ("irrelevance_0", [], True),
    ("irrelevance_0", [("geo.distance", BOSTON)], False),
]


@pytest.mark.parametrize(("task_id", "calls", "bfcl_says"), AGREEMENT)
def test_converted_bfcl_tasks_agree_with_bfcls_checker(bfcl_tasks, task_id, calls, bfcl_says) -> None:
    result = verdict(bfcl_tasks[task_id], calls)
    assert result.success is bfcl_says, result.detail


def test_bfcl_category_is_the_id_without_its_number() -> None:
    assert bfcl.category_of("simple_python_12") == "simple_python"
    assert bfcl.category_of("live_parallel_multiple_3-1-0") == "live_parallel_multiple"


def test_a_bfcl_answer_nothing_satisfies_is_skipped(tmp_path: Path) -> None:
    # A required float whose only "acceptable value" is the optional mark: BFCL fails every answer.
    answers = [{"id": "simple_python_0", "ground_truth": [{"geo.distance": {"scale": [""], "origin": ["B"]}}]}]
    questions = write_lines(tmp_path / "q.json", QUESTIONS[:1])
    tasks, skipped = bfcl.convert(questions, write_lines(tmp_path / "a.json", answers))
    assert tasks == [] and skipped == {"possible answer that no answer can pass": 1}


# --- xLAM ------------------------------------------------------------------------------------------

XLAM_TOOLS = [
    {"name": "list_movies", "description": "Movies by genre.", "parameters": {
        "genre": {"description": "Genre.", "type": "str", "default": "drama"},
        "limit": {"description": "How many.", "type": "int, optional", "default": 10},
        "ids": {"description": "Ids.", "type": "List[int]"},
        "min_rating": {"description": "Lowest rating.", "type": "float"},
        "extra": {"description": "Filters.", "type": "Optional[Dict[str, Any]]", "default": ""},
        "callback": {"description": "Called back.", "type": "Callable"}}},
    {"name": "ping", "description": "Ping.", "parameters": {}},
]
XLAM_RECORDS = [
    {"id": 7, "query": "Five comedies rated 7.5 or more, ids 1 and 2.", "tools": json.dumps(XLAM_TOOLS),
     "answers": json.dumps([{"name": "list_movies", "arguments": {"genre": "comedy", "limit": 5, "ids": [1, 2],
                                                                  "min_rating": 7.5}}])},
    {"id": 8, "query": "Ping twice.", "tools": json.dumps(XLAM_TOOLS[1:]),
     "answers": json.dumps([{"name": "ping", "arguments": {}}, {"name": "ping", "arguments": {}}])},
    {"id": 9, "query": "Ping.", "tools": json.dumps(XLAM_TOOLS[1:]),
     "answers": json.dumps([{"name": "ping", "arguments": {}}])},
    {"id": 10, "query": "What is love?", "tools": json.dumps(XLAM_TOOLS), "answers": "[]"},
]


@pytest.fixture(params=["array", "lines"])
def xlam_tasks(request, tmp_path: Path) -> dict[str, ReplayTask]:
    path = tmp_path / "xlam.json"
    if request.param == "array":  # as the dataset ships
        path.write_text(json.dumps(XLAM_RECORDS))
    else:
        write_lines(path, XLAM_RECORDS)
    return {task.id: task for task in xlam.convert(path)}


def test_xlam_tools_become_json_schema(xlam_tasks) -> None:
    tool = xlam_tasks["xlam-7"].request["tools"][0]["function"]
    Draft202012Validator.check_schema(tool["parameters"])
    properties = tool["parameters"]["properties"]
    assert properties["genre"] == {"type": "string", "description": "Genre.", "default": "drama"}
    assert properties["limit"] == {"type": "integer", "description": "How many.", "default": 10}
    assert properties["ids"]["type"] == "array" and properties["ids"]["items"] == {"type": "integer"}
    assert properties["min_rating"]["type"] == "number"
    assert properties["extra"]["type"] == "object"
    assert "type" not in properties["callback"]  # no JSON type: no constraint
    assert tool["parameters"]["required"] == ["genre", "ids", "min_rating", "callback"]


def test_xlam_answers_become_exact_expected_calls(xlam_tasks) -> None:
    assert {task_id: task.category for task_id, task in xlam_tasks.items()} == {
        "xlam-7": "xlam_multiple", "xlam-8": "xlam_parallel", "xlam-9": "xlam_simple", "xlam-10": "xlam_irrelevance"}
    task = xlam_tasks["xlam-7"]
    assert task.request["messages"] == [{"role": "user", "content": XLAM_RECORDS[0]["query"]}]
    gold = {"genre": "comedy", "limit": 5, "ids": [1, 2], "min_rating": 7.5}
    assert task.request["verifier"] == {"type": "tool_call", "expected": [{"name": "list_movies", "arguments": gold}]}
    assert verdict(task, [("list_movies", gold)]).success
    assert verdict(task, [("list_movies", {**gold, "min_rating": 7.50})]).success
    assert not verdict(task, [("list_movies", {**gold, "genre": "Comedy"})]).success  # exact, as the paper
    assert not verdict(task, [("list_movies", {**gold, "limit": 5.0})]).success  # a float for an int
    assert not verdict(task, [("list_movies", {**gold, "callback": "f"})]).success
    assert verdict(xlam_tasks["xlam-8"], [("ping", {}), ("ping", {})]).success
    assert verdict(xlam_tasks["xlam-10"], []).success


@pytest.mark.parametrize(("python_type", "schema", "optional"), [
    ("str", {"type": "string"}, False),
    ("int, optional", {"type": "integer"}, True),
    ("bool,optional", {"type": "boolean"}, True),
    ("List[List[str]]", {"type": "array", "items": {"type": "array", "items": {"type": "string"}}}, False),
    ("Tuple[int, int]", {"type": "array"}, False),
    ("set", {"type": "array"}, False),
    ("Optional[float]", {"type": "number"}, True),
    ("Union[int, str]", {}, False),
    ("str or None", {}, False),
    ("", {}, False),
])
def test_xlam_python_types(python_type: str, schema: dict, optional: bool) -> None:
    assert xlam.parameter_schema(python_type) == (schema, optional)


def test_a_malformed_xlam_record_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps([XLAM_RECORDS[0], {"query": "no tools"}]))
    with pytest.raises(TaskFileError, match="record 2"):
        xlam.convert(path)


# --- the replay file ---------------------------------------------------------------------------------

TASK = {"id": "t1", "request": {"messages": [{"role": "user", "content": "hi"}],
                                "verifier": {"type": "regex", "pattern": "hi"}}}


@pytest.mark.parametrize(("lines", "message"), [
    (["{not json"], "q.jsonl:1: not valid JSON"),
    ([{**TASK, "request": {"messages": []}}], "q.jsonl:1: request: request.messages"),
    ([{**TASK, "request": {"messages": [{"role": "user", "content": "x"}]}}], "request.verifier is required"),
    ([{**TASK, "request": {**TASK["request"], "stream": True}}], "request.stream must not be true"),
    ([{**TASK, "request": {**TASK["request"], "verifier": {"type": "regex"}}}], "pattern"),
    ([TASK, {"id": "t2"}], "q.jsonl:2: request: Field required"),
    ([TASK, TASK], "q.jsonl:2: id 't1' appears twice"),
    ([{**TASK, "extra": 1}], "extra: Extra inputs are not permitted"),
])
def test_malformed_task_files_name_the_line(tmp_path: Path, lines: list, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n\n")
    with pytest.raises(TaskFileError, match=re.escape(message)):
        read_tasks(path)


def test_task_files_round_trip_and_group_by_category_or_task_kind(tmp_path: Path) -> None:
    tasks = [ReplayTask.model_validate(TASK), ReplayTask(id="t2", category="greetings", request=TASK["request"])]
    write_tasks(tasks, tmp_path / "tasks.jsonl")
    assert read_tasks(tmp_path / "tasks.jsonl") == tasks
    assert [task.group for task in tasks] == ["generic", "greetings"]


def test_the_example_file_is_a_valid_replay_file() -> None:
    tasks = read_tasks(Path(__file__).parent.parent / "examples" / "tool_calls.jsonl")
    assert {task.group for task in tasks} == {"simple", "multiple", "parallel", "irrelevance"}
    for task in tasks:
        for tool in task.request["tools"]:
            Draft202012Validator.check_schema(tool["function"]["parameters"])


def test_records_are_a_json_array_or_json_lines(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"x": 1}, {"x": 2}]))
    write_lines(tmp_path / "b.json", [{"x": 1}, {"x": 2}])
    values = [[r.value for r in numbered_records(tmp_path / name)] for name in ("a.json", "b.json")]
    assert values == [[{"x": 1}, {"x": 2}]] * 2
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(TaskFileError, match="c.json:1: record 1: not a JSON object"):
        numbered_records(tmp_path / "c.json")
    (tmp_path / "d.json").write_text("[\n" + json.dumps({"x": 1}) + ",\n  []\n]")
    with pytest.raises(TaskFileError, match="d.json:3: record 2: not a JSON object"):  # the line the record is on
        numbered_records(tmp_path / "d.json")


# --- whatever a file holds: an error naming its file and line, never a traceback ----------------------

BAD_XLAM_TOOLS = json.dumps([{"name": "f", "description": "F.", "parameters": []}])
AREA_QUESTION = {"id": "simple_python_0", "question": [[{"role": "user", "content": "Area of a 10 by 5 triangle?"}]],
                 "function": [{"name": "calculate_triangle_area", "description": "Area.", "parameters": {
                     "type": "dict", "required": ["base"], "properties": {"base": {"type": "integer"}}}}]}


@pytest.mark.parametrize(("record", "message"), [
    ({"id": 1, "query": "q", "tools": BAD_XLAM_TOOLS, "answers": "[]"}, "tools: the parameters of 'f' must be an object"),
    ({"id": 1, "query": "q", "tools": "[1]", "answers": "[]"}, "tools: each tool must be an object"),
    ({"id": 1, "query": "q", "tools": "{}", "answers": "[]"}, "tools must be a list"),
    ({"id": 1, "query": "q", "tools": "[", "answers": "[]"}, "tools is not a JSON list"),
    ({"id": 1, "query": "q", "tools": "[]", "answers": '[{"name": "f", "arguments": []}]'}, "answers: each answer"),
    ({"id": 1, "query": "q", "tools": '[{"name": "f", "parameters": {"a": 5}}]', "answers": "[]"},
     "cannot make sense of this record (AttributeError"),
    ({"id": 1, "query": 5, "tools": "[]", "answers": "[]"}, "query must be a string"),
])
def test_a_malformed_xlam_record_is_an_error_naming_its_line(tmp_path: Path, record: dict, message: str) -> None:
    lines = write_lines(tmp_path / "x.json", [XLAM_RECORDS[0], record])
    with pytest.raises(TaskFileError, match=re.escape(f"x.json:2: {message}")):
        xlam.convert(lines)
    array = tmp_path / "y.json"  # as xLAM ships: an array, here a record a line
    array.write_text(f"[\n{json.dumps(XLAM_RECORDS[0])},\n{json.dumps(record)}\n]")
    with pytest.raises(TaskFileError, match=re.escape(f"y.json:3: record 2: {message}")):
        xlam.convert(array)


@pytest.mark.parametrize(("ground_truth", "message"), [
    ({"a": 1}, "a.json:2: ground_truth must be a list of possible calls"),
    ([{"calculate_triangle_area": {"base": 10}}], "a.json:2: the acceptable values of calculate_triangle_area's "
                                                   "argument base must be a list"),
    (["calculate_triangle_area"], "a.json:2: each possible call in ground_truth must be"),
    ([{"calculate_triangle_area": [10]}], "a.json:2: the possible call of calculate_triangle_area must map"),
])
def test_a_malformed_bfcl_answer_is_an_error_naming_its_line(tmp_path: Path, ground_truth: Any, message: str) -> None:
    questions = write_lines(tmp_path / "q.json", [AREA_QUESTION])
    answers = tmp_path / "a.json"
    answers.write_text("\n" + json.dumps({"id": "simple_python_0", "ground_truth": ground_truth}) + "\n")
    with pytest.raises(TaskFileError, match=re.escape(message)):
        bfcl.convert(questions, answers)


@pytest.mark.parametrize(("question", "message"), [
    ({**AREA_QUESTION, "id": 5}, "q.json:1: id must be a non-empty string"),
    ({**AREA_QUESTION, "question": 3}, "q.json:1: cannot make sense of this record (TypeError"),
    ({**AREA_QUESTION, "function": [{"description": "no name"}]}, "q.json:1: cannot make sense of this record"),
])
def test_a_malformed_bfcl_question_is_an_error_naming_its_line(tmp_path: Path, question: dict, message: str) -> None:
    answers = write_lines(tmp_path / "a.json", [{"id": "simple_python_0", "ground_truth": [
        {"calculate_triangle_area": {"base": [10]}}]}])
    with pytest.raises(TaskFileError, match=re.escape(message)):
        bfcl.convert(write_lines(tmp_path / "q.json", [question]), answers)


def test_bfcl_without_answers_judges_only_irrelevance(tmp_path: Path) -> None:
    irrelevance = [q for q in QUESTIONS if "relevance" in q["id"]]
    tasks, _ = bfcl.convert(write_lines(tmp_path / "irrelevance.json", irrelevance), None)
    assert [task.id for task in tasks] == ["irrelevance_0"]
    with pytest.raises(TaskFileError, match=re.escape("simple.json:1: simple_python entries are judged against "
                                                      "BFCL's possible answers: pass --answers")):
        bfcl.convert(write_lines(tmp_path / "simple.json", [AREA_QUESTION]), None)


@pytest.mark.parametrize(("text", "message"), [
    (b'{"id": "a"}\n', "t.jsonl:1: request: Field required"),
    (json.dumps(TASK).encode() + b'\n{"id": "\xff\xfe"}\n', "t.jsonl:2: not UTF-8 text"),
    (json.dumps(TASK).encode() + b"\n\n" + b"[" * 100_000 + b"\n", "t.jsonl:3: not readable JSON: nested too deeply"),
    (json.dumps({**TASK, "request": {**TASK["request"], "temperature": float("nan")}}).encode(),
     "t.jsonl:1: not valid JSON: NaN is not a JSON number"),
    (b'{"id": "a", "request": {"messages": [], "seed": 1e999}}', "t.jsonl:1: not valid JSON: 1e999 is too large"),
    (json.dumps({**TASK, "request": {**TASK["request"], "verifier": {"type": "exact", "expected": "a",
                                                                     "ignore_case": "yes"}}}).encode(),
     "t.jsonl:1: request: request.verifier: ignore_case: Input should be a valid boolean"),
])
def test_a_task_file_that_cannot_be_read_names_the_line(tmp_path: Path, text: bytes, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(text)
    with pytest.raises(TaskFileError, match=re.escape(message)):
        read_tasks(path)


def test_a_dataset_file_that_cannot_be_read_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b'[\n{"id": 1},\n{"id": "\xff"}]')
    with pytest.raises(TaskFileError, match=re.escape("x.json:3: not UTF-8 text")):
        xlam.convert(path)
    path.write_bytes(b"[" * 100_000)
    with pytest.raises(TaskFileError, match=re.escape("x.json:1: not readable JSON: nested too deeply")):
        xlam.convert(path)
    path.write_text('[{"id": 1},\n {"id": 2} {"id": 3}]')
    with pytest.raises(TaskFileError, match=re.escape("x.json:2: not valid JSON: expected , or ]")):
        xlam.convert(path)


# --- the report --------------------------------------------------------------------------------------

def test_first_and_second_attempt_success_per_category() -> None:
    outcomes = [Outcome("a", "x", "e1", [True], 1.0), Outcome("b", "x", "e2", [False, True], 1.0),
                Outcome("c", "y", "e3", [False, False], 1.0), Outcome("d", "y", "e4", [False, False, True], 1.0)]
    summary = summarize(outcomes)
    assert list(summary) == ["x", "y", "all"]
    assert (summary["x"]["first"]["k"], summary["x"]["second"]["k"], summary["x"]["n"]) == (1, 2, 2)
    assert (summary["y"]["first"]["k"], summary["y"]["second"]["k"]) == (0, 0)  # a third attempt is not the second
    assert (summary["all"]["first"]["rate"], summary["all"]["second"]["rate"]) == (0.25, 0.5)
    assert list(summarize(outcomes[:1])) == ["x"]
