"""The controller gives each attempt the settings its chosen plan row was sized and priced with."""
from cost_models.catalog import list_offers
from orchestrator.run.attempt import PlannedSettings, attempt_config, planned_settings
from orchestrator.sweep.planner import choose_offer
from orchestrator.sweep.spec import load_spec
from tests.orchestrator.helpers import write_spec


def chosen(tmp_path, checkpoint: dict | None = None, training: dict | None = None):
    path = write_spec(tmp_path, config={"training": training or {}})
    if checkpoint is not None:
        text = path.read_text(encoding="utf-8") + f"checkpoint: {checkpoint}\n"
        path.write_text(text, encoding="utf-8")
    spec, trials = load_spec(path)
    offers = list_offers(spec.resources.providers, "spot")
    return spec, trials[0], choose_offer(trials[0], offers, spec.resources)


def test_auto_checkpoint_interval_is_the_rows_young_daly_interval(tmp_path):
    spec, trial, row = chosen(tmp_path)
    settings = planned_settings(row, trial.config, spec, "cpu")
    assert settings == PlannedSettings(checkpoint_every_steps=row.run.checkpoint_every_steps)
    assert settings.fields() == {"checkpoint.every_steps": row.run.checkpoint_every_steps}
    assert 1 <= settings.checkpoint_every_steps <= 200
    config = attempt_config(trial.config, settings, "file:///tmp/run/t000")
    assert config.checkpoint.every_steps == settings.checkpoint_every_steps
    assert config.checkpoint.keep == trial.config.checkpoint.keep
    assert config.output_dir == "file:///tmp/run/t000"


def test_a_fixed_interval_is_kept(tmp_path):
    spec, trial, row = chosen(tmp_path, checkpoint={"every_steps": 7})
    assert planned_settings(row, trial.config, spec, "cpu") == PlannedSettings()
    assert trial.config.checkpoint.every_steps == 7


def test_cuda_nodes_get_the_sized_micro_batch_and_checkpointing(tmp_path):
    spec, trial, row = chosen(tmp_path)
    settings = planned_settings(row, trial.config, spec, "cuda")
    assert settings.micro_batch_size == row.estimate.shape.micro_batch
    assert settings.activation_checkpointing == row.estimate.shape.checkpointing
    config = attempt_config(trial.config, settings, "file:///tmp/run/t000")
    assert config.training.micro_batch_size == row.estimate.shape.micro_batch
    assert config.training.activation_checkpointing == row.estimate.shape.checkpointing
    assert config.training.learning_rate == trial.config.training.learning_rate
    assert trial.config.training.micro_batch_size == "auto"  # the trial's own config is untouched
    assert trial.config.training.activation_checkpointing == "auto"
    assert config.fingerprint() == trial.config.fingerprint(), "a planned setting never changes what is trained"


def test_explicit_micro_batch_and_mode_are_kept_on_cuda(tmp_path):
    spec, trial, row = chosen(tmp_path, training={"micro_batch_size": 2, "activation_checkpointing": "offload"})
    settings = planned_settings(row, trial.config, spec, "cuda")
    assert settings.micro_batch_size is None and settings.activation_checkpointing is None
    config = attempt_config(trial.config, settings, "file:///tmp/run/t000")
    assert (config.training.micro_batch_size, config.training.activation_checkpointing) == (2, "offload")
