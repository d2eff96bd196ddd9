"""How conversations become training rows, as pure rules on lengths and character offsets: which tokens carry
loss, truncation, which samples are dropped, the per-epoch order and first-fit packing. train_core applies them
to real tokenizer output; cost_models applies them to count the rows a data set makes."""
from __future__ import annotations

import random
from typing import Callable, Sequence

from runspec.data_formats import Conversation

OPEN_BINS = 64  # packing keeps this many rows open; the oldest is closed when one more opens

Render = Callable[[Conversation, bool], str]  # (messages, add_generation_prompt) -> text


def assistant_spans(render: Render, conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of each assistant reply (including its end-of-turn marker)."""
    text = render(conversation, False)
    spans = []
    for index, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        start = len(render(conversation[:index], True)) if index else 0
        through_reply = render(conversation[: index + 1], False)
        end = len(through_reply) if text.startswith(through_reply) else len(text)
        spans.append((start, end))
    return text, spans


def trainable_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], train_on: str) -> list[bool]:
    """Which tokens (by character offsets) carry loss: every one but the first for train_on all, else those
    inside an assistant span; the first token never does (nothing predicts it)."""
    if train_on == "all":
        return [False] + [True] * (len(offsets) - 1) if offsets else []
    trainable = [
        any(start <= token_start and token_end <= end and token_end > token_start for start, end in spans)
        for token_start, token_end in offsets
    ]
    if trainable:
        trainable[0] = False
    return trainable


def truncate(trainable: list[bool], max_seq_length: int) -> list[bool] | None:
    """A sample's loss mask cut to max_seq_length tokens; None when nothing in it carries loss (it is dropped)."""
    kept = trainable[:max_seq_length]
    return kept if any(kept) else None


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    order = list(range(num_samples))
    random.Random(f"spottune:{seed}:{epoch}").shuffle(order)
    return order


def pack(lengths: list[int], order: list[int], capacity: int) -> list[list[int]]:
    """First-fit packing in the given order over a window of open rows; each row's total length <= capacity."""
    closed: list[list[int]] = []
    open_rows: list[tuple[int, list[int]]] = []  # (used tokens, sample indices)
    for index in order:
        length = lengths[index]
        for position, (used, members) in enumerate(open_rows):
            if used + length <= capacity:
                members.append(index)
                open_rows[position] = (used + length, members)
                break
        else:
            open_rows.append((length, [index]))
            if len(open_rows) > OPEN_BINS:
                closed.append(open_rows.pop(0)[1])
    return closed + [members for _, members in open_rows]


def epoch_rows(lengths: list[int], seed: int, epoch: int, capacity: int, packing: bool) -> list[list[int]]:
    """The sequences of one epoch, each a list of sample indices."""
    order = epoch_order(len(lengths), seed, epoch)
    if not packing:
        return [[index] for index in order]
    return pack(lengths, order, capacity)
