"""InternVL3.5's thinking mode: the model card's system prompt and sampling behind `thinking=True` (Pipeline),
`--thinking` and the server's `thinking` / `chat_template_kwargs.enable_thinking`, and the <think> part kept
apart from the answer: whole replies, streamed ones cut at every character, and the server's
`reasoning_content`."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from test_serve import ckpt, client, data_url, server, user  # noqa: F401 - fixtures

from nativevl import Pipeline, split_thinking
from nativevl.conversation import THINKING_SYSTEM_PROMPT, ThinkingStream
from nativevl.serve.engine import Event
from nativevl.serve.replies import stream

REPLY = "<think>\nThe box is red, so the ball </thin is not.\n</think>\n\nThe ball is blue."


def test_split_thinking_parts_reasoning_from_the_answer():
    assert split_thinking(REPLY) == ("The box is red, so the ball </thin is not.", "The ball is blue.")
    assert split_thinking("  The ball is blue. ") == ("", "The ball is blue.")  # no <think>: all answer
    assert split_thinking("<think>still thinking when cut") == ("still thinking when cut", "")
    assert THINKING_SYSTEM_PROMPT.startswith("You are an AI assistant that rigorously follows this response protocol")
    assert "within <think> and </think> tags" in THINKING_SYSTEM_PROMPT


@pytest.mark.parametrize("reply", [REPLY, "The ball is blue.", "<th", "<think>cut </thi"])
def test_a_stream_cut_anywhere_sends_the_whole_reply_once(reply):
    for cut in range(1, len(reply)):
        for pieces in ([reply[:cut], reply[cut:]], list(reply)):
            parts, sent = ThinkingStream(), ["", ""]
            for piece in pieces:
                for i, new in enumerate(parts.feed(piece)):
                    sent[i] += new
            for i, new in enumerate(parts.finish()):
                sent[i] += new
            assert (sent[0].strip(), sent[1].strip()) == split_thinking(reply), (pieces, sent)


class _Seq:
    def cancel(self) -> None:
        pass


def test_the_server_streams_the_think_part_as_reasoning_content():
    async def run() -> list[dict]:
        events: asyncio.Queue = asyncio.Queue()
        for piece in ("<thi", "nk>\nred", " so </th", "ink>\n\nblue", "."):
            events.put_nowait((0, Event(text=piece)))
        events.put_nowait((0, Event(finish_reason="stop", completion_tokens=5)))
        return [json.loads(c.removeprefix("data: ")) async for c in stream([_Seq()], events, {}, 3, False, True)
                if c.strip() != "data: [DONE]"]

    deltas = [c["choices"][0]["delta"] for c in asyncio.run(run())]
    assert "".join(d.get("reasoning_content", "") for d in deltas).strip() == "red so"
    assert "".join(d.get("content", "") for d in deltas) == "blue."


def test_pipeline_thinking_uses_the_prompt_and_sampling(ckpt):  # noqa: F811
    pipe = Pipeline(ckpt, thinking=True)
    assert pipe.model.config.system_message == THINKING_SYSTEM_PROMPT
    assert pipe.defaults == {"do_sample": True, "temperature": 0.6}


def test_the_server_answers_in_thinking_mode_as_the_pipeline(client, ckpt):  # noqa: F811
    question = [user("What is it?", data_url(ckpt / "photo.png"))]
    want = split_thinking(Pipeline(ckpt, thinking=True)("<image>\nWhat is it?", images=[ckpt / "photo.png"],
                                                        do_sample=False, max_new_tokens=12))
    plain = client.chat.completions.create(model="tiny", messages=question, max_tokens=12, temperature=0)
    for extra in ({"thinking": True}, {"chat_template_kwargs": {"enable_thinking": True}}):
        done = client.chat.completions.create(model="tiny", messages=question, max_tokens=12, temperature=0,
                                              extra_body=extra)
        message = done.choices[0].message
        assert (message.model_extra["reasoning_content"], message.content) == want
        assert message.content != plain.choices[0].message.content  # the thinking prompt reached the model
        chunks = client.chat.completions.create(model="tiny", messages=question, max_tokens=12, temperature=0,
                                                extra_body=extra, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == message.content
    with pytest.raises(openai.BadRequestError, match="thinking mode sets the system message"):
        client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "Be brief."}, *question],
                                       extra_body={"thinking": True})
