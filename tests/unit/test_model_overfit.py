"""A ``tiny`` model memorises 8 multimodal samples on CPU, and every encoder carries signal.

Each sample is one of 2 images x 2 audio clips x 2 videos; its caption is
``<bos> image-word audio-word video-word <eos>`` where each word depends only on its own modality.
Given the other two modalities, each word is a coin flip, so predicting all 8 captions right
needs all three encoders; removing one modality drops exactly its word to chance.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from multimodal.batch import BOS_ID, EOS_ID, IGNORE_INDEX, MODALITIES
from multimodal.config import preset
from multimodal.model import MultimodalSLM

MAX_STEPS = 500
CHECK_EVERY = 10  # steps between eval-mode checks of the predictions
FIRST_WORD = {"image": 4, "audio": 6, "video": 8}  # word ids: image 4/5, audio 6/7, video 8/9


def media_samples(cfg, seed=0):
    gen = torch.Generator().manual_seed(seed)
    spec = cfg.media
    return {
        "image": torch.randn(2, 3, spec.image_size, spec.image_size, generator=gen),
        "audio": torch.randn(2, spec.audio_n_mels, spec.audio_frames, generator=gen),
        "video": torch.randn(2, spec.video_frames, 3, spec.video_size, spec.video_size,
                             generator=gen),
    }


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.core.vocab_size = 16
    model = MultimodalSLM(cfg)
    media = media_samples(cfg)
    combos = list(itertools.product(range(2), repeat=3))  # (image, audio, video) choice
    words = torch.tensor([[FIRST_WORD[m] + c[i] for i, m in enumerate(MODALITIES)]
                          for c in combos])
    input_ids = torch.cat([torch.full((8, 1), BOS_ID), words, torch.full((8, 1), EOS_ID)], dim=1)
    labels = input_ids.clone()
    labels[:, 0] = IGNORE_INDEX
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
             "labels": labels}
    for i, name in enumerate(MODALITIES):
        batch[name] = media[name][[c[i] for c in combos]]
        batch[f"{name}_present"] = torch.ones(8, dtype=torch.bool)
    optimizer = model.configure_optimizer(lr=3e-3, weight_decay=0.0)
    model.train()
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~30 ms a step on one core; more threads only fight on busy cores
    try:
        for step in range(MAX_STEPS):
            loss = model(batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            # stop once memorised: a single low training loss is no proof (dropout makes it noisy,
            # and one word can sit at chance on a plateau while the others drive the loss down)
            if step % CHECK_EVERY == 0 and losses[-1] < 0.1 * losses[0]:
                model.eval()
                done = torch.equal(predicted_words(model, batch), words)
                model.train()
                if done:
                    break
    finally:
        torch.set_num_threads(threads)
    return model.eval(), batch, words, losses


def test_loss_falls_by_at_least_90_percent(trained):
    _, _, _, losses = trained
    assert losses[-1] <= 0.1 * losses[0], (losses[0], losses[-1], len(losses))


def predicted_words(model, batch):
    with torch.no_grad():
        logits = model(batch).logits
    return logits[:, :3].argmax(-1)  # position t predicts token t+1: the three words


def test_every_caption_is_predicted_so_every_encoder_carries_signal(trained):
    model, batch, words, _ = trained
    assert torch.equal(predicted_words(model, batch), words)


@pytest.mark.parametrize("ablated", MODALITIES)
def test_removing_one_modality_makes_its_word_a_guess(trained, ablated):
    model, batch, words, _ = trained
    ablated_batch = dict(batch)
    ablated_batch[f"{ablated}_present"] = torch.zeros(8, dtype=torch.bool)
    predicted = predicted_words(model, ablated_batch)
    column = MODALITIES.index(ablated)
    # samples that differ only by the ablated modality now look alike: at most half are right
    assert (predicted[:, column] == words[:, column]).sum() <= 4


def test_greedy_generation_reproduces_the_captions(trained):
    model, batch, words, _ = trained
    generations = model.generate(image=batch["image"], audio=batch["audio"],
                                 video=batch["video"], max_new_tokens=6)
    assert [g.token_ids for g in generations] == words.tolist()
    assert all(g.finished for g in generations)
    assert min(g.mean_logprob for g in generations) > -0.5  # confident on what it memorised
