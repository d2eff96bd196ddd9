"""Read a run's data with the trainer's own parser, so bad rows fail in `plan`, `costs` and `submit`, not on a node."""
from __future__ import annotations

from orchestrator.errors import SpecError
from orchestrator.sweep.spec import TrialSpec
from runspec.config import TrainConfig
from train_core.data.sources import load_conversations
from runspec.errors import DataError


def check_config_data(config: TrainConfig, where: str, checked: dict | None = None) -> None:
    """Raise SpecError ('<where>: field 'data.train': file:line: problem') for a data file the trainer would refuse.

    `checked` maps (source, format, system prompt, split, column mapping) already read to the detected format, so each is read once."""
    checked = {} if checked is None else checked
    data = config.data
    format = data.format
    for field, path, split in (("train", data.train, data.train_split), ("eval", data.eval, data.eval_split)):
        if not path:
            continue
        key = (path, format, data.system_prompt, split, tuple(sorted((data.columns or {}).items())))
        if key not in checked:
            try:
                _, checked[key] = load_conversations(path, format, data.system_prompt, split, data.columns)
            except DataError as error:
                raise SpecError(f"{where}: field 'data.{field}': {error}") from None
        format = checked[key]  # the trainer reads eval rows in the format detected on the train rows


def check_trial_data(trials: list[TrialSpec], source: str) -> None:
    """check_config_data for every trial of a sweep; errors name the spec and the trial."""
    checked: dict = {}
    for trial in trials:
        check_config_data(trial.config, f"{source} (trial {trial.id})", checked)
