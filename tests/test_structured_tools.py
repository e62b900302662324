"""Tool calls: the JSON member scanner, the hermes and llama3_json parsers (whole text and
streaming, which must agree for every chunking), parser selection, the forced-call grammar and
the Hermes tool chat template (against transformers' renderer)."""
from __future__ import annotations

import json
import random

import pytest
from structured_helpers import default_tokenizer

from turboctx.errors import InvalidRequestError
from turboctx.structured import (DeltaMessage, GrammarMatcher, StructuredOutputsParams,
                                 TokenizerInfo, compile_grammar, hermes_tool_chat_template,
                                 template_supports_tools,
                                 tool_call_spec, tool_parser)
from turboctx.structured.json_spans import scan_object
from turboctx.structured.tool_parsers import detect_tool_parser

HERMES = [
    'I will look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
    '"unit": "c"}}\n</tool_call>',
    '<tool_call>\n{"name": "search", "arguments": {"q": "a } \\" { ] <tool_call> x", "n": [1, {"k": null}],'
    ' "u": "東京 😀"}}\n</tool_call>\n<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>',
    "Plain text with a <tool> tag, a < sign and <tool_ca but no call.  ",
    "before <tool_call>\nnot json\n</tool_call> after",
    '<tool_call>\n{"name": "f", "arguments": {"x": 1}}',
    '<tool_call>{"name": "ping"}</tool_call>',
    '<tool_call>\n{"arguments": {"x": [1, 2]}, "name": "f"}\n</tool_call>',
    'A <tool_call>{"name": "a", "arguments": {"v": 1.5e3}}</tool_call> B '
    '<tool_call>{"name": "b", "arguments": {"w": true}}</tool_call>  C  ',
    '<tool_call>\n{"name": "p", "parameters": {"z": "y"}}\n</tool_call>',
    '\n\n<tool_call>\n{"name": "a", "arguments": {"s": "x"}}\n</tool_call>\n\n',
    '<tool_call>\n{"name": "f", "arguments": "not an object"}\n</tool_call>',
    "<tool_call>",
    "",
]
LLAMA = [
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": "y;z}"}}',
    "The answer is 4.",
    '{"answer": 4}',
    '  {"name": "f", "parameters": {"k": 1}} and then text',
    "<|python_tag|>",
    '{"name": "f", "arguments": {"k": [1, "]"]}}',
    "{not json",
    "<|python",
    '{"name": "f", "parameters": {"k": 1}}; {"answer": 2}',
]


def _calls(parsed) -> list[tuple[str, str]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for c in parsed.tool_calls]


# ---- the scanner ----------------------------------------------------------------------------
def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.choice(["int", "float", "str", "bool", "null"] + (["list", "dict"] if depth < 3 else []))
    if kind == "int":
        return rng.randint(-1000, 1000)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "str":
        return "".join(rng.choice('ab {}[]",:\\\n\té😀') for _ in range(rng.randint(0, 8)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


@pytest.mark.parametrize("seed", range(30))
def test_scan_object_spans_match_json_loads(seed):
    rng = random.Random(seed)
    obj = {f"key{i}": _random_value(rng) for i in range(rng.randint(1, 4))}
    sep = rng.choice([(",", ":"), (", ", ": "), (" ,\n", " :\t")])
    text = " " * rng.randint(0, 2) + json.dumps(obj, separators=sep, ensure_ascii=rng.random() < 0.5)
    scan = scan_object(text)
    assert scan.ok and scan.end == len(text)
    assert list(scan.members) == list(obj)
    for key, value in obj.items():
        assert json.loads(scan.value(text, key)) == value
    for cut in range(len(text)):          # every prefix: never an error, finished spans final
        part = scan_object(text[:cut])
        assert part.ok and part.end is None
        for key, (start, end) in part.members.items():
            assert start == scan.members[key][0]
            assert end is None or end == scan.members[key][1]


@pytest.mark.parametrize("text", ['[1]', '{"a" 1}', '{a: 1}', '{"a": 1 "b": 2}', '{"a": ]', "x"])
def test_scan_object_rejects_non_objects(text):
    assert not scan_object(text).ok


# ---- whole-text parsers -----------------------------------------------------------------------
def test_hermes_parse():
    p = tool_parser("hermes")
    out = p.parse(HERMES[0])
    assert out.content == "I will look that up."
    assert _calls(out) == [("get_weather", '{"city": "Paris", "unit": "c"}')]
    call = out.tool_calls[0]
    assert call["type"] == "function" and call["id"].startswith("call_") and len(call["id"]) == 29
    out = p.parse(HERMES[1])
    assert out.content is None and [n for n, _ in _calls(out)] == ["search", "ping"]
    assert json.loads(out.tool_calls[0]["function"]["arguments"])["q"] == 'a } " { ] <tool_call> x'
    assert p.parse(HERMES[2]).content == HERMES[2].strip() and not p.parse(HERMES[2]).tool_calls
    bad = p.parse(HERMES[3])
    assert bad.content == HERMES[3] and not bad.tool_calls
    assert _calls(p.parse(HERMES[4])) == [("f", '{"x": 1}')]                       # unterminated
    assert _calls(p.parse(HERMES[5])) == [("ping", "{}")]                          # no arguments
    assert _calls(p.parse(HERMES[6])) == [("f", '{"x": [1, 2]}')]                  # name last
    mixed = p.parse(HERMES[7])
    assert mixed.content == "A  B   C" and [n for n, _ in _calls(mixed)] == ["a", "b"]
    assert _calls(p.parse(HERMES[8])) == [("p", '{"z": "y"}')]
    assert p.parse(HERMES[10]).content == HERMES[10] and not p.parse(HERMES[10]).tool_calls


def test_llama3_json_parse():
    p = tool_parser("llama3_json")
    assert _calls(p.parse(LLAMA[0])) == [("get_weather", '{"city": "Paris"}')]
    two = p.parse(LLAMA[1])
    assert two.content is None and _calls(two) == [("a", "{}"), ("b", '{"x": "y;z}"}')]
    assert p.parse(LLAMA[2]).content == "The answer is 4." and not p.parse(LLAMA[2]).tool_calls
    assert p.parse(LLAMA[3]).content == '{"answer": 4}' and not p.parse(LLAMA[3]).tool_calls
    trailing = p.parse(LLAMA[4])
    assert _calls(trailing) == [("f", '{"k": 1}')] and trailing.content == "and then text"
    assert p.parse(LLAMA[5]).content is None and not p.parse(LLAMA[5]).tool_calls
    assert _calls(p.parse(LLAMA[6])) == [("f", '{"k": [1, "]"]}')]
    assert p.parse(LLAMA[9]).content == '; {"answer": 2}'


def test_parser_selection():
    assert detect_tool_parser(hermes_tool_chat_template()) == "hermes"
    assert detect_tool_parser('{{ "<|python_tag|>" }}') == "llama3_json"
    assert detect_tool_parser('Respond with {"name": function name, "parameters": ...}') == "llama3_json"
    assert detect_tool_parser(default_tokenizer().chat_template) is None      # SmolLM2: no tools
    assert tool_parser(None, None).name == "hermes"
    assert tool_parser("llama3_json", hermes_tool_chat_template()).name == "llama3_json"
    with pytest.raises(InvalidRequestError, match="'mistral' is not known; choose one of hermes, llama3_json"):
        tool_parser("mistral")


# ---- streaming ------------------------------------------------------------------------------
def _stream(parser, text: str, cuts: list[int]):
    stream = parser.streaming()
    deltas = []
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    for piece in pieces:
        deltas.extend(stream.feed(piece))
    deltas.extend(stream.finish())
    return stream, deltas


def _check_deltas(deltas, result):
    """Deltas rebuild the result; each call's first delta is its header; one entry per call per
    delta; a delta is content or tool calls."""
    content = "".join(d.content or "" for d in deltas)
    assert (content or None) == result.content
    built: dict[int, dict] = {}
    for d in deltas:
        assert bool(d.content) != bool(d.tool_calls)
        indexes = [tc["index"] for tc in d.tool_calls]
        assert len(indexes) == len(set(indexes))
        for tc in d.tool_calls:
            if tc["index"] not in built:
                assert tc["index"] == len(built) and tc["type"] == "function"
                assert tc["function"]["arguments"] == "" and tc["function"]["name"]
                built[tc["index"]] = {"id": tc["id"], "name": tc["function"]["name"], "arguments": ""}
            else:
                assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
                built[tc["index"]]["arguments"] += tc["function"]["arguments"]
    assert [(b["id"], b["name"], b["arguments"]) for b in built.values()] == [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in result.tool_calls]


@pytest.mark.parametrize("name,texts", [("hermes", HERMES), ("llama3_json", LLAMA)])
def test_streaming_equals_whole_text_for_any_chunking(name, texts):
    parser = tool_parser(name)
    rng = random.Random(0)
    streamed_pieces = 0
    for text in texts:
        expect = parser.parse(text)
        chunkings = [list(range(1, len(text)))] + [
            sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1))) if len(text) > 1 else []
            for _ in range(25)]
        for cuts in chunkings:
            stream, deltas = _stream(parser, text, cuts)
            got = stream.result()
            assert (got.content, _calls(got)) == (expect.content, _calls(expect)), (text, cuts)
            _check_deltas(deltas, got)
        _, deltas = _stream(parser, text, list(range(1, len(text))))
        streamed_pieces = max(streamed_pieces, sum(
            1 for d in deltas for tc in d.tool_calls if tc["function"]["arguments"]))
    assert streamed_pieces > 5             # arguments do arrive piece by piece


def test_streaming_holds_back_a_partial_tag_and_never_leaks_markup():
    stream = tool_parser("hermes").streaming()
    assert [d.content for d in stream.feed("Hello <tool")] == ["Hello"]
    assert stream.feed("_ca") == []
    header, args = stream.feed('ll>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>')
    assert header.tool_calls[0]["function"] == {"name": "f", "arguments": ""}
    assert args.tool_calls == [{"index": 0, "function": {"arguments": '{"a": 1}'}}]
    assert stream.feed(" <tool_ca") == []
    # it was text after all; the space held back after "Hello" comes with it
    assert [d.content for d in stream.finish()] == ["  <tool_ca"]
    assert stream.result().content == "Hello  <tool_ca"


def test_streaming_sends_name_before_the_call_is_closed():
    stream = tool_parser("hermes").streaming()
    header, args = stream.feed('<tool_call>\n{"name": "get_weather", "arguments": {"ci')
    assert header.tool_calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert args.tool_calls == [{"index": 0, "function": {"arguments": '{"ci'}}]
    assert stream.feed('ty": "Oslo"}}') == [
        DeltaMessage(tool_calls=[{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}])]


def test_streaming_keeps_a_call_whose_name_was_sent_when_its_json_breaks():
    text = '<tool_call>\n{"name": "f", "arguments": {"x": 1,, }}\n</tool_call>'
    stream, _ = _stream(tool_parser("hermes"), text, list(range(1, len(text))))
    assert [c["function"]["name"] for c in stream.result().tool_calls] == ["f"]
    assert tool_parser("hermes").parse(text).content == text          # whole text: content


def test_feed_after_finish_is_an_error():
    stream = tool_parser("hermes").streaming()
    stream.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        stream.feed("x")


# ---- forced calls ---------------------------------------------------------------------------
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "time_now"}}


@pytest.fixture(scope="module")
def smol():
    tok = default_tokenizer()
    return tok, TokenizerInfo.for_tokenizer(tok)


def _walk(tok, compiled, text):
    m = GrammarMatcher(compiled)
    for t in tok.encode(text):
        m.accept(t)
    return m


def test_tool_choice_none_and_auto_need_no_grammar():
    assert tool_call_spec([WEATHER], "auto") is None
    assert tool_call_spec([WEATHER], "none") is None
    assert tool_call_spec([WEATHER], None) is None
    assert tool_call_spec(None, None) is None


def test_named_tool_choice_forces_one_well_formed_hermes_call(smol):
    tok, info = smol
    spec = tool_call_spec([WEATHER, CLOCK], {"type": "function", "function": {"name": "get_weather"}})
    assert isinstance(spec, StructuredOutputsParams) and spec.kind == "grammar"
    compiled = compile_grammar(spec, info)
    call = {"city": "Paris", "unit": "c"}
    text = f'<tool_call>\n{{"name": "get_weather", "arguments": {json.dumps(call)}}}\n</tool_call>'
    m = _walk(tok, compiled, text)
    assert m.is_terminated()
    assert _calls(tool_parser("hermes").parse(text)) == [("get_weather", json.dumps(call))]
    for wrong in ['<tool_call>\n{"name": "time_now", "arguments": {}}\n</tool_call>',
                  '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
                  '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "k"}}',
                  'Sure! <tool_call>']:
        with pytest.raises(ValueError, match="not allowed by the grammar"):
            _walk(tok, compiled, wrong)


def test_required_tool_choice_allows_any_tool_and_several_calls(smol):
    tok, info = smol
    compiled = compile_grammar(tool_call_spec([WEATHER, CLOCK], "required"), info)
    one = '<tool_call>\n{"name": "time_now", "arguments": {}}\n</tool_call>'
    m = _walk(tok, compiled, one)
    assert m.can_end() and not m.is_terminated()                    # another call may follow
    two = one + '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "f"}}\n</tool_call>'
    assert _walk(tok, compiled, two).can_end()
    assert [n for n, _ in _calls(tool_parser("hermes").parse(two))] == ["time_now", "get_weather"]
    single = compile_grammar(tool_call_spec([WEATHER, CLOCK], "required", parallel_tool_calls=False), info)
    assert _walk(tok, single, one).is_terminated()


def test_llama3_forced_call(smol):
    tok, info = smol
    compiled = compile_grammar(tool_call_spec([WEATHER], "required", parser="llama3_json"), info)
    text = '{"name": "get_weather", "parameters": {"city": "Rome", "unit": "c"}}'
    assert _walk(tok, compiled, text).can_end()
    assert _calls(tool_parser("llama3_json").parse(text)) == [("get_weather", '{"city": "Rome", "unit": "c"}')]


@pytest.mark.parametrize("tools,choice,message", [
    ([WEATHER], {"type": "function", "function": {"name": "nope"}},
     "names function 'nope', which is not in `tools` \\(offered: get_weather\\)"),
    ([], "required", 'tool_choice "required" needs at least one tool'),
    ([WEATHER], "sometimes", "tool_choice='sometimes' is not supported; use one of none, auto, required"),
    ([WEATHER], {"type": "function"}, "is not supported; use one of"),
    ([{"type": "retrieval"}], "required", r"tools\[0\] must be"),
    ([{"type": "function", "function": {"name": ""}}], "required", r"tools\[0\].function.name must be"),
    ([WEATHER, WEATHER], "required", "'get_weather' appears twice"),
    ([{"type": "function", "function": {"name": "f", "parameters": [1]}}], "required",
     "parameters must be a JSON schema object, got list"),
])
def test_bad_tools_and_tool_choice(tools, choice, message):
    with pytest.raises(InvalidRequestError, match=message):
        tool_call_spec(tools, choice)


def test_unknown_format_for_forced_call():
    with pytest.raises(InvalidRequestError, match="'pythonic' is not known"):
        tool_call_spec([WEATHER], "required", parser="pythonic")


# ---- the tool chat template -----------------------------------------------------------------
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris and the time?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "time_now", "arguments": {}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
    {"role": "assistant", "content": "21 C at noon."},
    {"role": "user", "content": "Thanks"},
]


def test_hermes_template_renders_tools_calls_and_responses():
    tok = default_tokenizer()
    out = tok.apply_chat_template(CHAT, tools=[WEATHER, CLOCK], chat_template=hermes_tool_chat_template())
    assert out.startswith("<|im_start|>system\nYou are terse.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(WEATHER, ensure_ascii=False) + "\n" + json.dumps(CLOCK) + "\n</tools>" in out
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
            '"unit": "c"}}\n</tool_call>\n<tool_call>\n{"name": "time_now", "arguments": {}}\n'
            '</tool_call><|im_end|>\n') in out
    assert ('<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n<tool_response>\n12:00\n'
            '</tool_response><|im_end|>\n<|im_start|>assistant\n21 C at noon.<|im_end|>\n') in out
    assert out.endswith("<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n")
    # what the template renders as a past call is what the hermes parser reads back
    past = out.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert _calls(tool_parser("hermes").parse(past)) == [
        ("get_weather", '{"city": "Paris", "unit": "c"}'), ("time_now", "{}")]
    no_tools = tok.apply_chat_template(CHAT[1:2], chat_template=hermes_tool_chat_template())
    assert no_tools == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                        "Weather in Paris and the time?<|im_end|>\n<|im_start|>assistant\n")


def test_hermes_template_matches_transformers_renderer():
    from transformers.utils.chat_template_utils import render_jinja_template

    tok = default_tokenizer()
    template = hermes_tool_chat_template()
    for messages, tools in [(CHAT, [WEATHER, CLOCK]), (CHAT[1:2], None), (CHAT[1:], [WEATHER])]:
        ours = tok.apply_chat_template(messages, tools=tools, chat_template=template)
        theirs = render_jinja_template([messages], tools=tools, chat_template=template,
                                       add_generation_prompt=True)[0][0]
        assert ours == theirs


def test_template_supports_tools():
    assert template_supports_tools(hermes_tool_chat_template())
    assert not template_supports_tools(default_tokenizer().chat_template)
    assert not template_supports_tools(None)


def test_streaming_long_arguments_reads_each_character_once():
    """22K characters of arguments in 4-character pieces: re-scanning the call per piece takes
    ~6 s on a 2-core CPU (5,500 scans of up to 22K characters); reading once, ~0.1 s."""
    import time

    code = "def f(x):\n    return {'a': [x, \"}\"]}\n" * 540
    args = json.dumps({"path": "a.py", "code": code})
    text = '<tool_call>\n{"name": "write_file", "arguments": ' + args + "}\n</tool_call>"
    parser = tool_parser("hermes")
    t0 = time.perf_counter()
    stream, deltas = _stream(parser, text, list(range(4, len(text), 4)))
    assert time.perf_counter() - t0 < 3
    assert _calls(stream.result()) == _calls(parser.parse(text))
    assert json.loads(stream.result().tool_calls[0]["function"]["arguments"])["code"] == code
    _check_deltas(deltas, stream.result())
