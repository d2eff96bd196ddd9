"""Render conversations through the chat template and mark which tokens carry loss."""
from __future__ import annotations

from dataclasses import dataclass

from runspec import packing
from runspec.data_formats import Conversation
from runspec.errors import DataError


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
    return packing.assistant_spans(lambda messages, prompt: render(tokenizer, messages, prompt), conversation)


def tokenize_conversation(tokenizer, conversation: Conversation, train_on: str) -> TokenizedSample:
    text, spans = assistant_spans(tokenizer, conversation)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return TokenizedSample(list(encoded["input_ids"]), packing.trainable_mask(encoded["offset_mapping"], spans, train_on))


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
        truncated += len(sample) > max_seq_length
        trainable = packing.truncate(sample.trainable, max_seq_length)
        if trainable is None:
            dropped += 1
            continue
        samples.append(TokenizedSample(sample.input_ids[:max_seq_length], trainable))
    report = TokenizeReport(
        samples=len(samples),
        truncated=truncated,
        dropped_no_target=dropped,
        tokens=sum(len(sample) for sample in samples),
        target_tokens=sum(sum(sample.trainable) for sample in samples),
    )
    return samples, report
