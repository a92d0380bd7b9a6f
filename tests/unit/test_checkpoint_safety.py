"""Checkpoint details that make a resume honest: one RNG stream per rank, a finished epoch is not
read again, and the resume plan follows the checkpoint Ray restores (our index where Ray keeps none)."""

from __future__ import annotations

import json

import torch

from multimodal.checkpoint import (DataPosition, TrainerState, checkpoint_dir_name, close_finished_epoch,
                                   latest_data_position,
                                   load_checkpoint, save_checkpoint, save_rng_state, write_checkpoint_index)


def test_each_rank_resumes_its_own_rng_stream(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    expected = {}
    for rank in (0, 1):  # each rank has its own stream (seeded seed + rank) when it checkpoints
        torch.manual_seed(100 + rank)
        save_rng_state(tmp_path, rank)
        expected[rank] = torch.rand(4)
        if rank == 0:
            torch.manual_seed(100)
            save_checkpoint(tmp_path, model, optimizer, TrainerState(step=3))
    for rank in (1, 0, 1):
        torch.manual_seed(7)  # whatever the process had before the resume
        assert load_checkpoint(tmp_path, model, optimizer, rank=rank).step == 3
        assert torch.equal(torch.rand(4), expected[rank])
    load_checkpoint(tmp_path, model, optimizer, rank=5)  # no file of its own: rank 0's stream
    assert torch.equal(torch.rand(4), expected[0])


def test_a_checkpoint_that_read_every_shard_resumes_at_the_next_epoch():
    shard_rows = [10, 6]
    state = TrainerState(epoch=2, position=DataPosition(2, {0: 10, 1: 6}))
    assert close_finished_epoch(state, shard_rows)
    assert state.epoch == 3 and state.position.is_fresh() and state.position.epoch == 3
    partial = TrainerState(epoch=2, position=DataPosition(2, {0: 10, 1: 5}))
    assert not close_finished_epoch(partial, shard_rows) and partial.epoch == 2
    fresh = TrainerState(epoch=1)
    assert not close_finished_epoch(fresh, shard_rows) and fresh.epoch == 1


def test_resume_position_comes_from_our_index_not_rays_snapshot(tmp_path):
    position = DataPosition(1, {0: 8, 3: 4})
    # Ray's internal file in a layout Ray might change to: it must not matter
    (tmp_path / "checkpoint_manager_snapshot.json").write_text(json.dumps({"renamed": {"metrics": {}}}))
    write_checkpoint_index(str(tmp_path), 12, {"step": 12, "data_position": json.dumps(position.to_dict())})
    resumed = latest_data_position(str(tmp_path))
    assert (resumed.epoch, resumed.rows_per_shard) == (1, {0: 8, 3: 4})


def test_resume_position_is_the_one_of_rays_committed_checkpoint(tmp_path):
    """Rank 0 indexed step 8, but a worker died before Ray committed it: Ray restores step 4, so
    the data must resume from step 4's position, not skip the rows read between 4 and 8."""
    at_4, at_8 = DataPosition(0, {0: 4}), DataPosition(0, {0: 8, 1: 8})
    for step, position in ((4, at_4), (8, at_8)):
        folder = tmp_path / checkpoint_dir_name(step)
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps(TrainerState(step=step, position=position).to_dict()))
    write_checkpoint_index(str(tmp_path), 8, {"step": 8, "data_position": json.dumps(at_8.to_dict())})
    committed = {"checkpoints": [{"path": f"/runs/x/{checkpoint_dir_name(4)}"}]}  # any layout: names count
    (tmp_path / "checkpoint_manager_snapshot.json").write_text(json.dumps(committed))
    assert latest_data_position(str(tmp_path)).rows_per_shard == {0: 4}
    committed["checkpoints"].append({"path": f"/runs/x/{checkpoint_dir_name(8)}"})
    (tmp_path / "checkpoint_manager_snapshot.json").write_text(json.dumps(committed))
    assert latest_data_position(str(tmp_path)).rows_per_shard == {0: 8, 1: 8}
