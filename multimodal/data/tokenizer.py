"""A byte-level BPE tokenizer trained on the dataset's own text, and the sample encoding.

The special tokens of ``multimodal/batch.py`` always have the same ids: ``<pad>``=0, ``<bos>``=1,
``<eos>``=2, ``<unk>``=3. A sequence is ``<bos> prompt text <eos>`` then ``<pad>`` up to
``max_len``. Prompt and text are encoded separately (no space is inserted between them).

Cutting policy (when ``<bos> prompt text <eos>`` is longer than ``max_len``): ``<eos>`` is always
kept as the last token, so every sequence ends with ``<eos>`` and the model learns to stop. The
text keeps at least half of the room left after ``<bos>``/``<eos>`` (or all of it, if shorter);
the prompt gets the rest and is cut from its end.

Train one as its own step (also as a Ray job: ``ray job submit -- python -m
multimodal.data.tokenizer --data s3://bucket/shards --vocab-size 8000 --out s3://bucket/tok``).
No hub downloads: a pretrained tokenizer is only ever loaded from a local/S3 ``tokenizer.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from multimodal import fs
from multimodal.batch import BOS_ID, EOS_ID, IGNORE_INDEX, PAD_ID, SPECIAL_TOKENS, UNK_ID

TOKENIZER_FILE = "tokenizer.json"
MIN_VOCAB = len(SPECIAL_TOKENS) + 256  # the specials plus the 256 byte symbols


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` with the batch contract's special tokens at ids 0..3."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB} (4 specials + 256 bytes), got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    check_special_ids(tok)
    return tok


def check_special_ids(tok: Tokenizer) -> None:
    """Raise ValueError unless ``<pad> <bos> <eos> <unk>`` have ids 0, 1, 2, 3."""
    wrong = {name: tok.token_to_id(name) for name in SPECIAL_TOKENS
             if tok.token_to_id(name) != SPECIAL_TOKENS.index(name)}
    if wrong:
        raise ValueError(f"tokenizer special tokens must be {dict(zip(SPECIAL_TOKENS, range(4)))}; "
                         f"got {wrong}")


def _tokenizer_file(uri: str) -> str:
    uri = str(uri)
    return uri if uri.endswith(".json") else fs.join(uri, TOKENIZER_FILE)


def save_tokenizer(tok: Tokenizer, uri: str) -> str:
    """Write ``tok`` as ``tokenizer.json`` (``uri`` is the file or its folder/prefix); returns the file."""
    target = _tokenizer_file(uri)
    fs.write_bytes_atomic(target, tok.to_str().encode())
    return target


def load_tokenizer(uri: str) -> Tokenizer:
    """Load a ``tokenizer.json`` (local or s3; the file or its folder) and check its special ids."""
    tok = Tokenizer.from_str(fs.read_bytes(_tokenizer_file(uri)).decode())
    check_special_ids(tok)
    return tok


def as_tokenizer(tok: Tokenizer | str) -> Tokenizer:
    """A ``Tokenizer`` from a Tokenizer, a JSON string, or a path/URI of ``tokenizer.json``."""
    if isinstance(tok, Tokenizer):
        return tok
    text = str(tok)
    if text.lstrip().startswith("{"):
        out = Tokenizer.from_str(text)
        check_special_ids(out)
        return out
    return load_tokenizer(text)


def encode_sample(tok: Tokenizer, text: str, prompt: str | None, max_len: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask, labels)``, int64 ``[max_len]`` each (see the module docstring)."""
    if max_len < 3:
        raise ValueError("max_len must be at least 3 (<bos>, one token, <eos>)")
    text_ids = tok.encode(text, add_special_tokens=False).ids if text else []
    prompt_ids = tok.encode(prompt, add_special_tokens=False).ids if prompt else []
    room = max_len - 2
    if len(prompt_ids) + len(text_ids) > room:
        keep_text = min(len(text_ids), max(room - len(prompt_ids), room - room // 2))
        text_ids = text_ids[:keep_text]
        prompt_ids = prompt_ids[: room - keep_text]
    ids = [BOS_ID, *prompt_ids, *text_ids, EOS_ID]
    labels = [IGNORE_INDEX] * (1 + len(prompt_ids)) + list(text_ids) + [EOS_ID]
    pad = max_len - len(ids)
    input_ids = np.asarray(ids + [PAD_ID] * pad, dtype=np.int64)
    attention = np.asarray([1] * len(ids) + [0] * pad, dtype=np.int64)
    label_arr = np.asarray(labels + [IGNORE_INDEX] * pad, dtype=np.int64)
    return input_ids, attention, label_arr


def decode_ids(tok: Tokenizer, ids: Sequence[int] | np.ndarray) -> str:
    """Text of ``ids``: stops at the first ``<eos>``, skips specials and -100."""
    kept: list[int] = []
    for value in np.asarray(ids).reshape(-1).tolist():
        if value == EOS_ID:
            break
        if value in (PAD_ID, BOS_ID, UNK_ID) or value < 0:
            continue
        kept.append(int(value))
    return tok.decode(kept, skip_special_tokens=True)


def iter_dataset_texts(uri: str, include_prompts: bool = True) -> Iterator[str]:
    """Every text (and prompt) of a Parquet shard prefix or WebDataset, streamed shard by shard."""
    import pyarrow.parquet as pq

    from multimodal.data import schema
    from multimodal.data.webdataset import iter_tar_samples, list_tar_shards

    summary = schema.read_summary(uri)
    if summary is not None:
        root = schema.dataset_root(uri)
        columns = ["text", "prompt"] if include_prompts else ["text"]
        for name in summary.shard_names:
            filesystem, path = fs.filesystem_for(fs.join(root, name))
            with filesystem.open_input_file(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(columns=columns, batch_size=4096):
                    for column in columns:
                        yield from (t for t in batch.column(column).to_pylist() if t)
        return
    tars = list_tar_shards(uri)
    if not tars:
        raise FileNotFoundError(f"{uri}: neither a shard prefix with {schema.SUMMARY_NAME} nor .tar shards")
    for tar_uri in tars:
        for sample in iter_tar_samples(tar_uri):
            if sample.get("text"):
                yield sample["text"]
            if include_prompts and sample.get("prompt"):
                yield sample["prompt"]


def train_tokenizer_from_dataset(uri: str, vocab_size: int, out_uri: str | None = None) -> Tokenizer:
    """Train on the dataset's own text; saves ``tokenizer.json`` to ``out_uri`` when given."""
    tok = train_tokenizer(iter_dataset_texts(uri), vocab_size)
    if out_uri:
        save_tokenizer(tok, out_uri)
    return tok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multimodal.data.tokenizer",
        description="Train a byte-level BPE tokenizer on a dataset's text and save tokenizer.json.")
    parser.add_argument("--data", required=True, help="Parquet shard prefix or WebDataset prefix (local or s3://)")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--out", required=True, help="where to write tokenizer.json (file or folder, local or s3://)")
    args = parser.parse_args(argv)
    try:
        tok = train_tokenizer_from_dataset(args.data, args.vocab_size, args.out)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"trained tokenizer: vocab {tok.get_vocab_size()} → {_tokenizer_file(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
