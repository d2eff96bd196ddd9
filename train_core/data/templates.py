"""Chat templates: the tokenizer's own, or a named/inline one."""
from __future__ import annotations

from train_core.errors import ConfigError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML}


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
