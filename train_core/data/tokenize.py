"""Render conversations through the chat template and mark which tokens carry loss."""
from __future__ import annotations

from dataclasses import dataclass

from train_core.data.formats import Conversation
from train_core.errors import DataError


@dataclass
class TokenizedSample:
    input_ids: list[int]
    trainable: list[bool]  # token i is a target (predicted from the tokens before it)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeReport:
    samples: int
    truncated: int
    dropped_no_target: int
    tokens: int
    target_tokens: int


def render(tokenizer, messages: Conversation, add_generation_prompt: bool = False) -> str:
    """The conversation through the chat template; a template that fails on it is a one-line DataError."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as error:
        roles = ", ".join(message["role"] for message in messages)
        raise DataError(f"data.chat_template: fails on a conversation with roles [{roles}] ({error})") from None


def assistant_spans(tokenizer, conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of each assistant reply (including its end-of-turn marker)."""
    text = render(tokenizer, conversation)
    spans = []
    for index, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        start = len(render(tokenizer, conversation[:index], add_generation_prompt=True)) if index else 0
        through_reply = render(tokenizer, conversation[: index + 1])
        end = len(through_reply) if text.startswith(through_reply) else len(text)
        spans.append((start, end))
    return text, spans


def tokenize_conversation(tokenizer, conversation: Conversation, train_on: str) -> TokenizedSample:
    text, spans = assistant_spans(tokenizer, conversation)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    if train_on == "all":
        return TokenizedSample(ids, [False] + [True] * (len(ids) - 1))
    trainable = []
    for token_start, token_end in encoded["offset_mapping"]:
        inside = any(start <= token_start and token_end <= end and token_end > token_start for start, end in spans)
        trainable.append(inside)
    if trainable:
        trainable[0] = False
    return TokenizedSample(ids, trainable)


def tokenize_record(tokenizer, record, train_on: str) -> TokenizedSample:
    """A conversation (loss on assistant replies or all tokens) or a TRL prompt/completion record."""
    from train_core.data.trl_formats import PromptCompletion, prompt_completion_ids

    if not isinstance(record, PromptCompletion):
        return tokenize_conversation(tokenizer, record, train_on)
    ids, start = prompt_completion_ids(tokenizer, record)
    trainable = [index >= start or train_on == "all" for index in range(len(ids))]
    if trainable:
        trainable[0] = False
    return TokenizedSample(ids, trainable)


def tokenize_dataset(
    tokenizer, conversations: list, max_seq_length: int, train_on: str
) -> tuple[list[TokenizedSample], TokenizeReport]:
    """Tokenize every conversation, truncating to max_seq_length; samples left with no target are dropped."""
    samples: list[TokenizedSample] = []
    truncated = dropped = 0
    for conversation in conversations:
        sample = tokenize_record(tokenizer, conversation, train_on)
        if len(sample) > max_seq_length:
            truncated += 1
            sample = TokenizedSample(sample.input_ids[:max_seq_length], sample.trainable[:max_seq_length])
        if not any(sample.trainable):
            dropped += 1
            continue
        samples.append(sample)
    report = TokenizeReport(
        samples=len(samples),
        truncated=truncated,
        dropped_no_target=dropped,
        tokens=sum(len(sample) for sample in samples),
        target_tokens=sum(sum(sample.trainable) for sample in samples),
    )
    return samples, report
