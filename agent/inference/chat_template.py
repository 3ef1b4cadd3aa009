"""A GGUF's chat template, rendered as llama-cpp-python's ``Jinja2ChatFormatter`` renders
it (which follows Hugging Face Transformers): a sandboxed, immutable Jinja environment
with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, the
``{% generation %}`` tag passed through, ``tojson`` as Transformers writes it, and
``raise_exception``/``strftime_now`` for the template to call.

Our own (40 lines) rather than theirs: their module imports the whole high-level
package (numpy, diskcache, every chat handler), which the runner does not otherwise
load (see ``llama_library``). A template is the model's code run on every request: the
sandbox keeps it from reaching Python's internals, and whatever it raises is the
caller's 400 (``InvalidPromptError``), not a crash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgefleet.errors import InvalidPromptError

# A GGUF without a chat template is rendered as ChatML (what most small models expect).
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class _GenerationTag(jinja2.ext.Extension):
    """Pass-through for Hugging Face's ``{% generation %}`` chat-template tag."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise ValueError(message)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def _strftime_now(pattern: str) -> str:
    return datetime.now().strftime(pattern)


class ChatTemplate:
    """One model's template, compiled once; :meth:`render` for each conversation. The
    rendered text already holds the special tokens the template writes (BOS included):
    tokenize it without adding BOS, with special tokens parsed."""

    def __init__(self, template: str | None, eos_token: str, bos_token: str) -> None:
        environment = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_GenerationTag, jinja2.ext.loopcontrols],
        )
        environment.filters["tojson"] = _tojson
        try:
            self._template = environment.from_string(template or CHATML)
        except jinja2.TemplateError as e:
            raise InvalidPromptError(
                f"the model's chat template does not compile: {_one_line(e)}"
            ) from e
        self._eos_token, self._bos_token = eos_token, bos_token

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                eos_token=self._eos_token,
                bos_token=self._bos_token,
                raise_exception=_raise_exception,
                add_generation_prompt=True,
                functions=None,
                function_call=None,
                tools=None,
                tool_choice=None,
                strftime_now=_strftime_now,
            )
        except Exception as e:  # noqa: BLE001 - a template raises whatever it likes
            raise InvalidPromptError(
                f"the model's chat template refused the conversation: {_one_line(e)}"
            ) from e
