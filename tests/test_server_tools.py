"""Structured output and tools through the real `openai` client on the default model, served with
the shipped Hermes tool template: parse() into a pydantic model, a tool-call round trip, forced
calls through the grammar, and streaming of both."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from pydantic import BaseModel, Field

from server_fixtures import API_KEY, MODEL, post, start_server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]
FORCE = {"type": "function", "function": {"name": "get_weather"}}


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=150)
    city: str = Field(max_length=40)


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory, default_gguf_path):
    srv = start_server(str(tmp_path_factory.mktemp("tools")), str(default_gguf_path),
                       "--served-model-name", MODEL, "--chat-template", "hermes")
    yield srv
    if srv.proc.poll() is None:
        assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def tclient(tool_server):
    return openai.OpenAI(base_url=tool_server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=300)


PEOPLE = ["a baker from Lyon", "a retired pilot", "a young painter", "a fisherman in Norway",
          "a chess teacher", "a nurse in Toronto", "a student of music", "a farmer", "a taxi driver",
          "a librarian in Cairo"]


def test_parse_into_a_pydantic_model_ten_of_ten(tclient):
    """The ten requests go together (the server decodes them in one batch)."""
    def parse(who):
        return tclient.chat.completions.parse(
            model=MODEL, response_format=Person, max_tokens=120, seed=1,
            messages=[{"role": "user", "content": f"Describe {who} as JSON with name, age and city."}])

    valid = 0
    with ThreadPoolExecutor(len(PEOPLE)) as pool:
        for r in pool.map(parse, PEOPLE):
            msg = r.choices[0].message
            assert r.choices[0].finish_reason == "stop", msg.content
            valid += isinstance(msg.parsed, Person)
    assert valid == len(PEOPLE)


def test_structured_output_streams_valid_json(tclient):
    stream = tclient.chat.completions.create(
        model=MODEL, stream=True, max_tokens=120, seed=2, messages=[{"role": "user", "content": "A person as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "strict": True,
                                                                "schema": Person.model_json_schema()}})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    Person.model_validate_json(text)


def test_tool_call_round_trip(tclient):
    r = tclient.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=FORCE,
                                        max_tokens=60, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call, = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id
    args = json.loads(call.function.arguments)
    assert set(args) == {"city"} and isinstance(args["city"], str)
    messages = [*ASK, choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "clear"})}]
    answer = tclient.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                             max_tokens=40, temperature=0)
    assert answer.choices[0].message.content and answer.choices[0].finish_reason in ("stop", "length")


def test_streamed_tool_call_equals_the_whole_one(tclient):
    kw = dict(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
              max_tokens=60, temperature=0)
    whole = tclient.chat.completions.create(**kw).choices[0]
    calls: dict[int, dict] = {}
    finish = None
    for chunk in tclient.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = entry["id"] or d.id
                entry["name"] += (d.function.name or "") if d.function else ""
                entry["arguments"] += (d.function.arguments or "") if d.function else ""
            finish = c.finish_reason or finish
    want = whole.message.tool_calls
    assert finish == whole.finish_reason == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls.values()] == \
        [(t.function.name, t.function.arguments) for t in want]


def test_tool_and_format_errors_are_400(tool_server):
    chat = {"model": MODEL, "messages": ASK, "max_tokens": 4}
    for body, param in [
            ({**chat, "tool_choice": "required"}, "tool_choice"),
            ({**chat, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
             "tool_choice"),
            ({**chat, "tools": [WEATHER], "tool_choice": FORCE, "response_format": {"type": "json_object"}},
             "tool_choice"),
            ({**chat, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
             "response_format"),
            ({**chat, "structured_outputs": {"regexp": "a+"}}, "structured_outputs")]:
        r = post(tool_server, "/v1/chat/completions", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
