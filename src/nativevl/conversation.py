"""Prompts: the `internvl2_5` chat template InternVL3 uses (spec §3.1, §3.3), image placeholders and their
expansion into `<img>` + `<IMG_CONTEXT>` x (256 x tiles) + `</img>`.

Rendered single turn:
    <|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n<image>\n{Q}<|im_end|>\n<|im_start|>assistant\n
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nativevl.tokenizer import IM_END, IM_START, IMG_CONTEXT, IMG_END, IMG_START

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
# The internvl2_5 template's default system message ("You are InternVL (书生·万象), a multimodal LLM jointly
# developed by Shanghai AI Lab, Tsinghua University and partners."). A config's `system_message: null` means this.
INTERNVL2_5_SYSTEM = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)


@dataclass
class Template:
    """A ChatML-style ("MPT" separator style) template: `role + message + sep` per turn."""

    name: str
    system_message: str
    system_template: str = IM_START + "system\n{system_message}"
    roles: tuple[str, str] = (IM_START + "user\n", IM_START + "assistant\n")
    sep: str = IM_END + "\n"

    @property
    def stop_token(self) -> str:
        return self.sep.strip()


TEMPLATES = {"internvl2_5": Template("internvl2_5", INTERNVL2_5_SYSTEM)}


def get_template(name: str | None) -> Template:
    if name is None:
        name = "internvl2_5"
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


@dataclass
class Conversation:
    template: Template
    system_message: str | None = None  # None: the template's default
    messages: list[tuple[str, str | None]] = field(default_factory=list)

    def append(self, role: str, message: str | None) -> None:
        self.messages.append((role, message))

    def prompt(self) -> str:
        """System turn, then `role + message + sep` per message; a final `None` message leaves the role open."""
        t = self.template
        system = self.system_message if self.system_message is not None else t.system_message
        text = t.system_template.format(system_message=system) + t.sep
        for role, message in self.messages:
            text += role + message + t.sep if message is not None else role
        return text


def chat_prompt(
    question: str,
    history: list[tuple[str, str]] | None = None,
    system_message: str | None = None,
    template: str | None = "internvl2_5",
) -> str:
    """The prompt the original `chat()` renders: history turns, the question, and an open assistant turn."""
    t = get_template(template)
    conv = Conversation(t, system_message)
    for old_question, old_answer in history or []:
        conv.append(t.roles[0], old_question)
        conv.append(t.roles[1], old_answer)
    conv.append(t.roles[0], question)
    conv.append(t.roles[1], None)
    return conv.prompt()


def image_tokens(num_patches: int, num_image_token: int = 256) -> str:
    return IMG_START + IMG_CONTEXT * (num_image_token * num_patches) + IMG_END


def expand_images(prompt: str, num_patches_list: list[int], num_image_token: int = 256) -> str:
    """Replace each `<image>`, in order, by the token block of the next image; the counts must agree."""
    found = prompt.count(IMAGE_PLACEHOLDER)
    if found != len(num_patches_list):
        raise ValueError(
            f"the prompt has {found} {IMAGE_PLACEHOLDER} placeholder(s) but {len(num_patches_list)} image(s) were "
            f"given (tiles per image: {num_patches_list}); write one {IMAGE_PLACEHOLDER} per image, e.g. "
            f"'Image-1: {IMAGE_PLACEHOLDER}\\nImage-2: {IMAGE_PLACEHOLDER}\\n...'"
        )
    for n in num_patches_list:
        prompt = prompt.replace(IMAGE_PLACEHOLDER, image_tokens(n, num_image_token), 1)
    return prompt


def image_prefix(num_images: int) -> str:
    """`<image>\\n` for one image; `Image-1: <image>\\nImage-2: <image>\\n…` for several (model card convention)."""
    if num_images == 1:
        return IMAGE_PLACEHOLDER + "\n"
    return "".join(f"Image-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(num_images))


def video_prefix(num_frames: int) -> str:
    """`Frame1: <image>\\nFrame2: <image>\\n…`, the inference convention (SFT data writes `Frame-1:`)."""
    return "".join(f"Frame{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(num_frames))


# --- InternVL3.5's thinking mode -------------------------------------------------------------------------------
# The model card's "Thinking System Prompt" (VLMEvalKit's R1_SYSTEM_PROMPT, vlmeval/vlm/internvl/internvl_chat.py)
# and the sampling the card recommends with it (do_sample, temperature 0.6, "to mitigate undesired repetition").
THINKING_SYSTEM_PROMPT = (
    "You are an AI assistant that rigorously follows this response protocol:\n\n"
    "1. First, conduct a detailed analysis of the question. Consider different angles, potential solutions, and "
    "reason through the problem step-by-step. Enclose this entire thinking process within <think> and </think> "
    "tags.\n\n"
    "2. After the thinking section, provide a clear, concise, and direct answer to the user's question. Separate "
    "the answer from the think section with a newline.\n\n"
    "Ensure that the thinking process is thorough but remains focused on the query. The final answer should be "
    "standalone and not reference the thinking section."
)
THINKING_SAMPLING = {"do_sample": True, "temperature": 0.6}
THINK_START, THINK_END = "<think>", "</think>"


def split_thinking(text: str, final: bool = True) -> tuple[str, str]:
    """(reasoning, answer) of a thinking-mode reply `<think>reasoning</think>answer`; a reply that does not open
    with <think> is all answer, one cut off inside it all reasoning. `final=False` (a reply still arriving):
    nothing is stripped from the end and a tag that may be only partly there is held back, so each call's
    parts extend the previous call's."""
    def ends(s: str) -> str:
        return s.strip() if final else s.lstrip()

    head = text.lstrip()
    if not head.startswith(THINK_START):
        return ("", "") if not final and THINK_START.startswith(head) else ("", ends(head))
    body = head[len(THINK_START):]
    if THINK_END in body:
        reasoning, answer = body.split(THINK_END, 1)
        return ends(reasoning), ends(answer)
    if not final:  # hold back a '</thi' that may be the start of the closing tag
        body = body[:len(body) - next((n for n in range(len(THINK_END) - 1, 0, -1) if body.endswith(THINK_END[:n])),
                                      0)]
    return ends(body), ""


class ThinkingStream:
    """Pieces of a streamed thinking-mode reply -> (new reasoning, new answer) to send for each."""

    def __init__(self) -> None:
        self.text, self.sent = "", ("", "")

    def feed(self, piece: str) -> tuple[str, str]:
        self.text += piece
        reasoning, answer = split_thinking(self.text, final=False)
        new = (reasoning[len(self.sent[0]):], answer[len(self.sent[1]):])
        self.sent = (reasoning, answer)
        return new

    def finish(self) -> tuple[str, str]:
        """What was held back (a tag that turned out not to be one) once the reply has ended: the whole reply's
        parts past what was sent (both are the same lstripped text, the whole one only stripped at its end)."""
        reasoning, answer = split_thinking(self.text)
        return reasoning[len(self.sent[0]):], answer[len(self.sent[1]):]
