"""Chat templates: the tokenizer's own, or a named/inline one."""
from __future__ import annotations

from runspec.errors import ConfigError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML}


def check_chat_template(setting: str) -> str:
    """The data.chat_template setting if it is auto, a named template or Jinja that compiles; else ValueError."""
    if setting == "auto" or setting in NAMED_TEMPLATES:
        return setting
    if "{%" not in setting and "{{" not in setting:
        raise ValueError(
            f"unknown template {setting!r}; accepted: auto, {', '.join(NAMED_TEMPLATES)}, or a Jinja template string"
        )
    from jinja2 import TemplateSyntaxError, nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """transformers' {% generation %} ... {% endgeneration %} marker, accepted as a plain block."""

        tags = {"generation"}

        def parse(self, parser) -> list[nodes.Node]:  # type: ignore[no-untyped-def]
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    environment = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols", GenerationBlock])
    try:
        environment.parse(setting)
    except TemplateSyntaxError as error:
        raise ValueError(f"not a valid Jinja template (template line {error.lineno}: {error.message})") from None
    return setting


def apply_chat_template_setting(tokenizer, setting: str) -> str:
    """Set tokenizer.chat_template from the config setting; returns which template is in use."""
    if setting == "auto":
        if getattr(tokenizer, "chat_template", None):
            return "tokenizer"
        tokenizer.chat_template = CHATML
        return "chatml"
    if setting in NAMED_TEMPLATES:
        tokenizer.chat_template = NAMED_TEMPLATES[setting]
        return setting
    if "{%" in setting or "{{" in setting:
        tokenizer.chat_template = setting
        return "custom"
    raise ConfigError(
        f"data.chat_template: unknown template {setting!r}; accepted: auto, {', '.join(NAMED_TEMPLATES)}, "
        "or a Jinja template string"
    )
