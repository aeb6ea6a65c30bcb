"""A prompt for a closed-answer classifier: template with one ``{text}`` slot, the answers.

Prompt file (YAML), or the same keys given inline as classifier params::

    system: You label social-media posts.      # optional; chat models only
    template: |
      <definition, examples ...>
      Post: {text}
      Answer:
    choices: {1: "1", 0: "0"}                   # label value -> answer text

Literal braces in the template are written ``{{`` and ``}}``. Label values keep their YAML
type (``1`` stays an integer). Used by ``llm_prompt`` and the hosted-model classifiers.
"""
from __future__ import annotations

import string
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, PrivateAttr

from classifiers.params import FILE, ClassifierParams, param, read_yaml_file


class PromptSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    template: str
    choices: dict[Any, str]
    system: str | None = None
    _parts: tuple[str, str] = PrivateAttr()

    def model_post_init(self, __context: Any) -> None:
        head, _, tail = _split_on_text(self.template)  # once: render runs per post
        self._parts = (_unescape(head), _unescape(tail))

    @property
    def prefix(self) -> str:
        """The template before ``{text}`` (shared by every post), braces unescaped."""
        return self._parts[0]

    @property
    def suffix(self) -> str:
        return self._parts[1]

    def render(self, text: str) -> str:
        return self._parts[0] + text + self._parts[1]


def _unescape(part: str) -> str:
    return part.replace("{{", "{").replace("}}", "}")


def _split_on_text(template: str) -> tuple[str, str, str]:
    """(before, "{text}", after) in the raw template; validates the slots."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"prompt template is malformed ({exc}); write literal braces "
                         "as {{ and }}") from None
    unknown = sorted({f for f in fields if f != "text"})
    if unknown:
        raise ValueError(f"prompt template has unknown slot(s) {unknown}; the only slot is "
                         "{text} (write literal braces as {{ and }})")
    if fields.count("text") != 1:
        raise ValueError("prompt template must contain the slot {text} exactly once "
                         f"(found {fields.count('text')})")
    # Find the real slot: a "{text}" not preceded by an escaping brace.
    i = 0
    while True:
        i = template.index("{text}", i)
        run = len(template[:i]) - len(template[:i].rstrip("{"))
        if run % 2 == 0:
            return template[:i], "{text}", template[i + len("{text}"):]
        i += 1


def load_prompt(prompt_file: str | None = None, template: str | None = None,
                choices: Mapping[Any, str] | None = None,
                system: str | None = None, need_choices: bool = True) -> PromptSpec:
    """The prompt from ``prompt_file`` or from inline params; ``choices`` or ``system`` given
    beside a prompt file replace the file's (e.g. answers with a leading space for a raw
    model, or a system message asking a hosted model for JSON)."""
    if prompt_file and template:
        raise ValueError("give either prompt_file or template, not both")
    if prompt_file:
        raw = read_yaml_file("prompt_file", prompt_file)
        extra = sorted(set(raw) - {"template", "choices", "system", "description"})
        if extra:
            raise ValueError(f"prompt_file {prompt_file}: unknown key(s) {extra}")
        template = raw.get("template")
        system = system or raw.get("system")
        choices = choices or raw.get("choices")
    if not isinstance(template, str) or not template.strip():
        raise ValueError("a prompt needs a template (text with one {text} slot)")
    _split_on_text(template)
    if not need_choices and not choices:  # the answer's JSON fields carry the labels
        choices = {}
    elif not isinstance(choices, Mapping) or len(choices) < 2:
        raise ValueError("a prompt needs at least two choices: {label value: answer text}")
    for label, answer in choices.items():
        if not isinstance(answer, str) or not answer:
            raise ValueError(f"choice {label!r} needs a non-empty answer text")
        if not isinstance(label, (str, int, bool)):
            raise ValueError(f"choice label {label!r} must be a string or an integer")
    if len(set(choices.values())) != len(choices):
        raise ValueError("two choices have the same answer text")
    if system is not None and not isinstance(system, str):
        raise ValueError("system must be text")
    return PromptSpec(template=template, choices=dict(choices), system=system)


class PromptParams(ClassifierParams):
    """The prompt of a closed-answer classifier (``llm_prompt``, ``openai_chat``)."""

    prompt_file: str | None = param(None, "a prompt file (template, choices, system), relative "
                                    "to the config; or give template (and choices) inline",
                                    FILE)
    template: str | None = param(None, "the prompt inline: text with one {text} slot")
    choices: dict[str | int | bool, str] | None = param(
        None, "label value → answer text (beside prompt_file: replaces the file's)")
    system: str | None = param(None, "a system message (beside prompt_file: replaces the "
                               "file's)")

    def prompt(self, need_choices: bool = True) -> PromptSpec:
        return load_prompt(self.prompt_file, self.template, self.choices, self.system,
                           need_choices=need_choices)
