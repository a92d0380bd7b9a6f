"""The training job's configuration: the seed file as it is, flags over files, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.train_multimodal import load_job_config, main
from multimodal.checkpoint import DataPosition
from multimodal.job_config import ConfigError, build_config, dotted_override, from_seed
from multimodal.training import lr_factor

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "jobs" / "configs" / "seed_slm.json"


def test_seed_config_is_accepted_as_it_is():
    job, _ = load_job_config(["--config", str(SEED)])
    assert job.train.batch_size == 32
    assert job.train.learning_rate == 0.001
    assert job.train.num_epochs == 100
    assert job.train.early_stopping.patience == 7  # SLMTrainLoad wins over main.patience
    assert job.train.early_stopping.mode == "min" and job.train.early_stopping.monitor == "val_loss"
    assert job.data.train == "dataset.csv"
    assert "serving" not in job.model_dump()  # the seed's placeholder endpoint: not a setting
    model = job.model.resolve()
    assert (model.core.hidden_size, model.core.num_heads, model.core.num_layers) == (512, 8, 6)
    assert model.core.dropout == 0.1 and model.preset == "slm-63m"


def test_settings_that_would_be_ignored_are_refused_with_one_line():
    seed = json.loads(SEED.read_text())
    seed["SLM"]["api_endpoint"] = "https://models.example.com"
    with pytest.raises(ConfigError, match=r"^config error: SLM.api_endpoint: .* is not used by training; "
                                          r"remove it and serve the exported model with slm-hub"):
        from_seed(seed)
    seed["SLM"].pop("api_endpoint")  # no endpoint at all: fine
    assert "serving" not in from_seed(seed)
    seed["SLMTrainLoad"]["early_stopping"]["early_stopping_mode"] = "max"
    with pytest.raises(ConfigError, match=r"^config error: train.early_stopping.mode: Value error, max is not "
                                          r"supported: the monitor val_loss is minimised; use min$"):
        build_config(from_seed(seed))
    with pytest.raises(ConfigError, match="^config error: serving: unknown key$"):
        build_config({"serving": {"api_endpoint": "https://x"}})


def test_seed_main_patience_is_used_without_slmtrainload():
    mapped = from_seed({"main": {"patience": 5}})
    assert mapped["train"]["early_stopping"]["patience"] == 5


def test_flags_override_the_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  batch_size: 8\nrun:\n  name: from-file\n")
    job, _ = load_job_config(["--config", str(config), "--batch-size", "4", "--name", "flag",
                              "--set", "train.warmup_steps=7", "--use-gpu"])
    assert job.train.batch_size == 4 and job.run.name == "flag"
    assert job.train.warmup_steps == 7 and job.run.use_gpu is True


@pytest.mark.parametrize("values, message", [
    ({"train": {"bach_size": 3}}, "config error: train.bach_size: unknown key"),
    ({"train": {"batch_size": 0}}, "config error: train.batch_size: Input should be greater than or equal to 1"),
    ({"run": {"name": "bad name!"}}, "config error: run.name"),
    ({"model": {"preset": "huge"}}, "unknown preset 'huge'"),
    ({"oops": 1}, "config error: oops: unknown key"),
])
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError) as error:
        build_config(values)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_seed_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"SLMOtak\.width: unknown key"):
        from_seed({"SLMOtak": {"width": 3}})
    with pytest.raises(ConfigError, match="output_dim: must equal input_dim"):
        from_seed({"SLMOtak": {"input_dim": 512, "output_dim": 256}})


def test_dotted_override_parses_values():
    assert dotted_override("train.learning_rate=3e-4") == {"train": {"learning_rate": 3e-4}}
    with pytest.raises(ConfigError):
        dotted_override("no-equals-sign")


def test_cli_bad_config_exits_2_with_one_line(tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"train": {"learning_rate": -1}}))
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: config error: train.learning_rate") and "\n" not in err


def test_cli_missing_data_exits_2(capsys):
    assert main(["--preset", "tiny"]) == 2
    assert "data.train" in capsys.readouterr().err


def test_cli_help_runs_as_a_script():
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "train_multimodal.py"), "--help"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "--storage-path" in out and "--val-data" in out


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    def schedule(step, time_fraction=0.0):
        return lr_factor(step, total_steps=110, warmup_steps=10, min_ratio=0.1, time_fraction=time_fraction)

    assert schedule(0) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)
    assert schedule(110) == pytest.approx(0.1)
    assert schedule(500) == pytest.approx(0.1)
    # a time budget half used decays as far as half the steps would
    assert schedule(10, time_fraction=0.5) == pytest.approx(0.55)
    assert schedule(60, time_fraction=0.1) == pytest.approx(0.55)


def test_data_position_remaining_shards():
    position = DataPosition(epoch=2, rows_per_shard={0: 10, 1: 4})
    assert position.remaining_shards([10, 10, 10]) == [1, 2]
    assert DataPosition.from_dict(position.to_dict()) == position
    assert DataPosition().is_fresh() and not position.is_fresh()
