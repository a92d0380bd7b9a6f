"""Byte-level BPE tokenizer: special ids, round trip, label masking, truncation, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from multimodal.batch import BOS_ID, EOS_ID, IGNORE_INDEX, PAD_ID, SPECIAL_TOKENS, UNK_ID
from multimodal.data import synthetic
from multimodal.data.tokenizer import (
    decode_ids, encode_sample, load_tokenizer, main, save_tokenizer, train_tokenizer,
)


def captions() -> list[str]:
    out = [synthetic.image_caption(c, s) for c in synthetic.COLOURS for s in synthetic.SHAPES]
    out += [synthetic.video_caption(c, d) for c in synthetic.COLOURS for d in synthetic.DIRECTIONS]
    out += [synthetic.audio_caption(list(n)) for n in ("CEG", "DA", "B", "FG", "ACE")]
    return out * 8  # a few hundred short captions


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(captions(), 512)


def test_special_ids(tok):
    for index, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == index
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    assert 260 <= tok.get_vocab_size() <= 512


def test_round_trip_any_text(tok):
    for text in captions()[:20] + ["unseen wörds ✓ 123", "  spaces\tand\nnewlines "]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert UNK_ID not in ids  # byte-level: nothing is unknown
        assert decode_ids(tok, ids) == text


def test_encode_sample_layout_and_labels(tok):
    ids, mask, labels = encode_sample(tok, "a red circle", "describe:", 24)
    assert ids.dtype == mask.dtype == labels.dtype == np.int64
    assert ids.shape == mask.shape == labels.shape == (24,)
    prompt = tok.encode("describe:", add_special_tokens=False).ids
    text = tok.encode("a red circle", add_special_tokens=False).ids
    n = 2 + len(prompt) + len(text)
    assert ids[:n].tolist() == [BOS_ID, *prompt, *text, EOS_ID]
    assert (ids[n:] == PAD_ID).all() and mask.tolist() == [1] * n + [0] * (24 - n)
    assert labels[: 1 + len(prompt)].tolist() == [IGNORE_INDEX] * (1 + len(prompt))
    assert labels[1 + len(prompt): n].tolist() == [*text, EOS_ID]
    assert (labels[n:] == IGNORE_INDEX).all()
    assert decode_ids(tok, ids) == "describe:a red circle"
    assert decode_ids(tok, [t if t >= 0 else PAD_ID for t in labels]) == "a red circle"


def test_text_only_and_empty(tok):
    ids, mask, labels = encode_sample(tok, "", None, 8)
    assert ids.tolist() == [BOS_ID, EOS_ID] + [PAD_ID] * 6
    assert labels.tolist() == [IGNORE_INDEX, EOS_ID] + [IGNORE_INDEX] * 6


def test_truncation_keeps_eos(tok):
    long_text = " ".join(captions()[:10])
    ids, mask, labels = encode_sample(tok, long_text, "describe the picture in words:", 16)
    assert ids.shape == (16,) and mask.all()
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID and labels[-1] == EOS_ID
    assert (labels >= 0).sum() >= 8  # the text keeps at least half the room
    ids, _, labels = encode_sample(tok, long_text, None, 16)
    assert (labels[1:] >= 0).all()


def test_decode_stops_at_eos(tok):
    text = tok.encode("a red circle", add_special_tokens=False).ids
    assert decode_ids(tok, [BOS_ID, *text, EOS_ID, *text, PAD_ID]) == "a red circle"
    assert decode_ids(tok, np.array([BOS_ID, *text])) == "a red circle"


def test_save_load(tok, tmp_path):
    path = save_tokenizer(tok, tmp_path / "tok")
    assert path.endswith("tokenizer.json")
    again = load_tokenizer(tmp_path / "tok")
    assert again.encode("a red circle").ids == tok.encode("a red circle").ids
    assert load_tokenizer(path).get_vocab_size() == tok.get_vocab_size()


def test_vocab_too_small_and_wrong_specials(tmp_path):
    with pytest.raises(ValueError):
        train_tokenizer(["a b c"], 100)
    from tokenizers import Tokenizer, models

    other = Tokenizer(models.WordLevel({"hello": 0, "<unk>": 1}, unk_token="<unk>"))
    other.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="special tokens"):
        load_tokenizer(tmp_path)


def test_cli_bad_input(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.startswith("error:")
