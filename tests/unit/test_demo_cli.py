"""jobs/demo.py's argument checks and the training command it submits (no cluster started)."""

from __future__ import annotations

from jobs import demo


def test_bad_budget_is_refused_with_one_line(capsys):
    assert demo.main(["--max-steps", "0"]) == 2
    assert demo.main(["--train-minutes", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["demo: --max-steps must be >= 1 and --train-minutes > 0"] * 2


def test_training_budget_is_steps_with_a_time_cap():
    args = demo.build_parser().parse_args([])
    assert args.max_steps == demo.DEFAULT_MAX_STEPS and args.train_minutes == demo.DEFAULT_CAP_MINUTES
    command = demo.train_entrypoint(args, "s3://b/shards", "s3://b/runs", "run-1")
    assert command[command.index("--max-steps") + 1] == str(demo.DEFAULT_MAX_STEPS)
    assert command[command.index("--max-train-minutes") + 1] == str(demo.DEFAULT_CAP_MINUTES)
    assert command[command.index("--config") + 1] == demo.DEMO_CONFIG
