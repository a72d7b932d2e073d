"""Issue 16, section 4: the client matrix. The clients people point at OpenAI-compatible servers,
unchanged, against R3 on both engines: each test asserts what a user of that client relies on (a
parsed object, a call of the offered tool with arguments valid under its schema, a finish reason).

The app runs in the test's event loop on the session's engines; each client is handed an
`AsyncOpenAI` (or an httpx client) whose transport is the app itself, as it would be handed one
pointed at `r3 serve`. The bundled model is weak: what makes its answers parse is R3's constrained
decoding, which is what is under test, not the model's judgement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field, field_validator

from r3.engines.base import Engine
from r3.settings import Settings
from server.app import create_app

MODEL = "smol"  # the id the session engines were started with
ASK_CITY = "Name a European capital city and its country."
ASK_WEATHER = "What is the weather in Paris?"


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: Literal["Paris", "London", "Rome"]


class GetTime(BaseModel):
    """The current time in a timezone."""

    timezone: str = Field(max_length=20)


@pytest.fixture(scope="module")
async def http(started_engine: Engine, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """An httpx client whose transport is R3's app, running on `engine`."""
    settings = Settings(default_max_tokens=96, reflection_max_tokens=16, models_dir=model_path.parent,
                        data_dir=tmp_path_factory.mktemp("clients"))
    app = create_app(settings, engine=started_engine)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://r3/v1", timeout=300) as client:
        yield client


@pytest.fixture
def client(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://r3/v1", api_key="unused", http_client=http, max_retries=0)


# ------------------------------------------------------------------ the openai SDK


async def test_openai_parse_with_a_pydantic_model(client) -> None:
    completion = await client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": ASK_CITY}], response_format=City, temperature=0)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, City)


@pytest.mark.parametrize("tool_choice", [{"type": "function", "function": {"name": "GetWeather"}}, "required"])
async def test_openai_parse_with_forced_tools(client, tool_choice) -> None:
    completion = await client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": ASK_WEATHER}], temperature=0, tool_choice=tool_choice,
        tools=[openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(GetTime)],
        parallel_tool_calls=False)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert isinstance(call.function.parsed_arguments, {"GetWeather": GetWeather, "GetTime": GetTime}[call.function.name])
    if isinstance(tool_choice, dict):
        assert call.function.name == "GetWeather"


async def test_openai_stream_helper_with_tools(client) -> None:
    async with client.chat.completions.stream(
            model=MODEL, messages=[{"role": "user", "content": ASK_WEATHER}], temperature=0,
            tools=[openai.pydantic_function_tool(GetWeather)],
            tool_choice={"type": "function", "function": {"name": "GetWeather"}}) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_completion()
    argument_deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(argument_deltas) > 1  # the arguments arrive in pieces, not in one delta at the end
    assert [e.type for e in events].count("tool_calls.function.arguments.done") == 1
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "GetWeather" and isinstance(call.function.parsed_arguments, GetWeather)
    assert final.choices[0].finish_reason == "tool_calls"


async def test_openai_models_retrieve(client) -> None:
    model = await client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


# ------------------------------------------------------------------ the openai SDK: the Responses API


async def test_openai_responses_create_with_a_forced_function(client) -> None:
    tool = {"type": "function", "name": "GetWeather", "parameters": GetWeather.model_json_schema(), "strict": True}
    response = await client.responses.create(model=MODEL, input=ASK_WEATHER, temperature=0, tools=[tool],
                                             tool_choice={"type": "function", "name": "GetWeather"})
    [call] = response.output
    assert call.type == "function_call" and call.name == "GetWeather" and call.call_id
    assert isinstance(GetWeather.model_validate_json(call.arguments), GetWeather)
    assert response.status == "completed" and response.usage.output_tokens > 0


async def test_openai_responses_stream_with_a_text_format(client) -> None:
    """`text_format` (a `text.format` json_schema) holds the streamed answer to the model's schema."""
    async with client.responses.stream(model=MODEL, input=ASK_CITY, text_format=City, temperature=0) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") > 1  # the text arrives in pieces
    assert isinstance(final.output_parsed, City)


# ------------------------------------------------------------------ LangChain


@pytest.fixture
def chat_model(http: httpx.AsyncClient):
    langchain_openai = pytest.importorskip("langchain_openai", reason="langchain-openai is not installed")
    return langchain_openai.ChatOpenAI(model=MODEL, base_url="http://r3/v1", api_key="unused", temperature=0,
                                       http_async_client=http, max_retries=0)


async def test_langchain_bind_tools(chat_model) -> None:
    message = await chat_model.bind_tools([GetWeather], tool_choice="GetWeather").ainvoke(ASK_WEATHER)
    [call] = message.tool_calls
    assert call["name"] == "GetWeather" and GetWeather.model_validate(call["args"])
    assert message.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
async def test_langchain_with_structured_output(chat_model, method) -> None:
    city = await chat_model.with_structured_output(City, method=method).ainvoke(ASK_CITY)
    assert isinstance(city, City)


# ------------------------------------------------------------------ instructor


@pytest.mark.parametrize("mode", ["TOOLS", "JSON", "JSON_SCHEMA"])
async def test_instructor(client, mode) -> None:
    instructor = pytest.importorskip("instructor", reason="instructor is not installed")
    city = await instructor.from_openai(client, mode=getattr(instructor.Mode, mode)).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": ASK_CITY}], response_model=City, temperature=0,
        max_retries=0)
    assert isinstance(city, City)


async def test_instructors_validation_retry_is_served(client) -> None:
    """instructor retries a failed validation with the failed call and a `tool` message that carries a
    `name`; that message used to be a 400 ("Extra inputs are not permitted"), so every retry failed."""
    instructor = pytest.importorskip("instructor", reason="instructor is not installed")
    seen: list[str] = []

    class Checked(City):
        @field_validator("name")
        @classmethod
        def _refused_once(cls, name: str) -> str:
            seen.append(name)
            if len(seen) == 1:
                raise ValueError("try another city")
            return name

    city = await instructor.from_openai(client, mode=instructor.Mode.TOOLS).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": ASK_CITY}], response_model=Checked, temperature=0,
        max_retries=2)
    assert isinstance(city, Checked) and len(seen) == 2


# ------------------------------------------------------------------ pydantic-ai and openai-agents


async def test_pydantic_ai_output_type(client) -> None:
    pytest.importorskip("pydantic_ai", reason="pydantic-ai is not installed")
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    agent = Agent(OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=client)), output_type=City,
                  model_settings={"temperature": 0})
    result = await agent.run(ASK_CITY)
    assert isinstance(result.output, City)


async def test_openai_agents_output_type(client) -> None:
    agents = pytest.importorskip("agents", reason="openai-agents is not installed")
    agents.set_tracing_disabled(True)  # no traces to OpenAI's servers
    agent = agents.Agent(name="geographer", instructions="Answer with a city.", output_type=City,
                         model=agents.OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
                         model_settings=agents.ModelSettings(temperature=0))
    result = await agents.Runner.run(agent, ASK_CITY)
    assert isinstance(result.final_output, City)


async def test_openai_agents_with_its_default_responses_model(client) -> None:
    """openai-agents' default model for OpenAI is `OpenAIResponsesModel`: the Responses API."""
    agents = pytest.importorskip("agents", reason="openai-agents is not installed")
    agents.set_tracing_disabled(True)  # no traces to OpenAI's servers
    agent = agents.Agent(name="geographer", instructions="Answer with a city.", output_type=City,
                         model=agents.OpenAIResponsesModel(model=MODEL, openai_client=client),
                         model_settings=agents.ModelSettings(temperature=0))
    result = await agents.Runner.run(agent, ASK_CITY)
    assert isinstance(result.final_output, City)
