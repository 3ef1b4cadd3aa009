"""The chat template renderer: the same text llama-cpp-python's Jinja2ChatFormatter
renders (the runner no longer imports it), sandboxed, and a template's every failure a
one-line InvalidPromptError."""

from __future__ import annotations

import pytest

from edgefleet.agent.inference.chat_template import CHATML, ChatTemplate
from edgefleet.bundled import bundled_model_path
from edgefleet.errors import InvalidPromptError
from edgefleet.gguf import read_gguf_file

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Où est la gare ? 🚉"},
        {"role": "assistant", "content": "Tout droit."},
        {"role": "user", "content": ""},
    ],
    [{"role": "user", "content": "{{ not a template }} {% raw %}"}],
]


def _bundled_template() -> str:
    template = read_gguf_file(bundled_model_path()).metadata["tokenizer.chat_template"]
    assert isinstance(template, str)
    return template


@pytest.mark.parametrize("template", [CHATML, "bundled", "{{ messages | tojson }}"])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_it_renders_what_llama_cpp_python_renders(
    template: str, conversation: list[dict[str, str]]
) -> None:
    from llama_cpp import llama_chat_format

    source = _bundled_template() if template == "bundled" else template
    theirs = llama_chat_format.Jinja2ChatFormatter(source, "<|im_end|>", "<|im_start|>")
    expected = theirs(messages=conversation)  # type: ignore[arg-type]
    assert expected.added_special  # so the runner tokenizes without adding BOS
    assert ChatTemplate(source, "<|im_end|>", "<|im_start|>").render(conversation) == (
        expected.prompt
    )


def test_a_gguf_without_a_template_gets_chatml() -> None:
    rendered = ChatTemplate(None, "", "").render([{"role": "user", "content": "Hi"}])
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "refused the conversation"),
        ("{% set _ = messages.append(1) %}", "refused the conversation"),
        ("{{ raise_exception('only user and assistant roles') }}", "only user and assistant"),
        ("{{ messages[5]['content'] }}", "refused the conversation"),
    ],
)
def test_a_template_that_fails_is_a_clear_error(source: str, said: str) -> None:
    with pytest.raises(InvalidPromptError, match=said) as caught:
        ChatTemplate(source, "", "").render([{"role": "user", "content": "Hi"}])
    assert "\n" not in str(caught.value)


def test_a_template_that_does_not_compile_is_refused_at_load() -> None:
    with pytest.raises(InvalidPromptError, match="does not compile") as caught:
        ChatTemplate("{% for m in messages %}\n{{ m }}\n", "", "")
    assert "\n" not in str(caught.value)
