"""TRL's prompt/completion and language-modeling rows, tokenized exactly as TRL's SFTTrainer tokenizes them.

Why spottune keeps its own data layer instead of running TRL's trainer: spottune's checkpoint/resume
contract (data cursor, every RNG state, a fingerprint, bit-exact resume) and its padding-free packing live in
train_core's loop, and the fast engine consumes its token lists directly. What users need from TRL is that a
dataset prepared for `SFTTrainer` trains unchanged; so spottune accepts TRL's row formats and produces the
same tokens and the same loss mask for them, which tests/train_core/test_trl_parity.py checks by running
TRL's own dataset preparation on the same rows:

- {"prompt": [messages], "completion": [messages]} (conversational): both rendered with the chat template;
  the completion starts where the tokens of the prompt (with its generation prompt) and of prompt +
  completion stop agreeing; loss on every completion token (TRL's completion_only_loss).
- {"prompt": str, "completion": str} (standard): no chat template; EOS appended to the completion; the
  same common-prefix rule.
- {"text": str}: no chat template, EOS appended, loss on every token.
- {"messages": [...]}: rendered like spottune's own messages rows; TRL trains on every token of them by
  default (spottune's `train_on: all`) and on assistant replies with `assistant_only_loss` (spottune's
  default `train_on: assistant`).
"""
from __future__ import annotations

from dataclasses import dataclass

from runspec.data_formats import CHAT_ROLES, Conversation
from runspec.errors import DataError


@dataclass
class PromptCompletion:
    """A prompt and the completion that carries the loss; conversational when both are message lists."""

    prompt: Conversation | str
    completion: Conversation | str

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


def from_prompt_completion(row: dict, where: str) -> PromptCompletion:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.strip():
            raise DataError(f"{where}: field 'completion' is empty")
        return PromptCompletion(prompt, completion)
    if isinstance(prompt, list) and isinstance(completion, list) and completion:
        return PromptCompletion(_messages(prompt, where, "prompt"), _messages(completion, where, "completion"))
    raise DataError(f"{where}: 'prompt' and 'completion' must both be strings or both be lists of "
                    "{role, content} messages (the completion non-empty)")


def from_text(row: dict, where: str) -> PromptCompletion:
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: field 'text' must be a non-empty string")
    return PromptCompletion("", text)


def _messages(messages: list, where: str, field: str) -> Conversation:
    conversation = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise DataError(f"{where}: {field}[{index}] needs 'role' (one of {', '.join(CHAT_ROLES)}) and 'content'")
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}: {field}[{index}].content must be a string")
        conversation.append({"role": message["role"], "content": message["content"]})
    return conversation


def prompt_completion_ids(tokenizer, record: PromptCompletion) -> tuple[list[int], int]:
    """(tokens of prompt + completion, index of the first completion token), as TRL's SFTTrainer computes them."""
    if record.conversational:
        prompt = tokenizer.apply_chat_template(record.prompt, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(record.prompt + record.completion, tokenize=True,
                                             return_dict=True)["input_ids"]
    else:
        completion = record.completion
        if not completion.endswith(tokenizer.eos_token):
            completion += tokenizer.eos_token
        prompt = tokenizer(text=record.prompt)["input_ids"]
        full = tokenizer(text=record.prompt + completion)["input_ids"]
    start = 0
    while start < min(len(prompt), len(full)) and prompt[start] == full[start]:
        start += 1
    return list(full), start
