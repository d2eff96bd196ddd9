"""Read every trial's data with the trainer's own parser, so bad rows fail in `plan` and `submit`, not on a node."""
from __future__ import annotations

from orchestrator.errors import SpecError
from orchestrator.spec import TrialSpec
from train_core.data.formats import load_conversations
from train_core.errors import DataError


def check_trial_data(trials: list[TrialSpec], source: str) -> None:
    """Raise SpecError (one line: spec, trial, field, file:line, problem) for the first data file the trainer
    would refuse; each distinct (file, format, system prompt) is read once."""
    checked: dict[tuple, str] = {}
    for trial in trials:
        data = trial.config.data
        fields = [("train", data.train, data.format)]
        if data.eval:
            fields.append(("eval", data.eval, None))
        for field, path, format in fields:
            format = format or checked[(data.train, data.format, data.system_prompt)]
            key = (path, format, data.system_prompt)
            if key in checked:
                continue
            try:
                _, checked[key] = load_conversations(path, format, data.system_prompt)
            except DataError as error:
                raise SpecError(f"{source} (trial {trial.id}): field 'data.{field}': {error}") from None
