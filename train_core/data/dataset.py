"""From a DataSettings section to tokenized samples and a batch plan."""
from __future__ import annotations

from dataclasses import dataclass

from runspec.chat_templates import apply_chat_template_setting
from runspec.config import DataSettings
from train_core.data.sources import load_conversations
from runspec.errors import DataError
from train_core.data.batching import BatchPlan
from train_core.data.tokenize import TokenizedSample, TokenizeReport, tokenize_dataset


@dataclass
class PreparedData:
    train: list[TokenizedSample]
    train_report: TokenizeReport
    eval: list[TokenizedSample]
    format: str
    template: str

    def summary(self) -> str:
        report = self.train_report
        return (
            f"data: {report.samples} samples ({self.format}, template {self.template}), {report.tokens} tokens, "
            f"{report.target_tokens} target tokens; truncated {report.truncated}, "
            f"dropped {report.dropped_no_target} with no target; eval {len(self.eval)} samples"
        )


def prepare_data(settings: DataSettings, tokenizer) -> PreparedData:
    template = apply_chat_template_setting(tokenizer, settings.chat_template)
    conversations, detected = load_conversations(
        settings.train, settings.format, settings.system_prompt, settings.train_split, settings.columns)
    train, report = tokenize_dataset(tokenizer, conversations, settings.max_seq_length, settings.train_on)
    if not train:
        raise DataError(
            f"{settings.train}: no sample has a target token within max_seq_length={settings.max_seq_length}"
        )
    evaluation: list[TokenizedSample] = []
    if settings.eval:
        eval_conversations, _ = load_conversations(
            settings.eval, detected, settings.system_prompt, settings.eval_split, settings.columns)
        eval_conversations = eval_conversations[: settings.eval_samples]
        evaluation, _ = tokenize_dataset(tokenizer, eval_conversations, settings.max_seq_length, settings.train_on)
    return PreparedData(train, report, evaluation, detected, template)


def batch_plan(samples: list[TokenizedSample], settings: DataSettings, seed: int, batch_size: int) -> BatchPlan:
    return BatchPlan(samples, seed, batch_size, settings.max_seq_length, settings.packing)
