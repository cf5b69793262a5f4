"""The reference script's data pipeline, so that the notebooks show it and the benchmark measures
it against lmstream's: the reference train.py's `load_and_tokenize`
(code/dataset/prepare_save_dataset.py), as its flags describe it. Each document is tokenized with
`truncation=True` to `max_length` (its `--dataset_max_seq_length`, which lmstream's
DataArguments keeps for one padded sample per document), then, with `--dataset_group_text`, grouped
the way transformers' examples/pytorch/language-modeling/run_clm.py groups (`group_texts`, as
written there). run_clm.py itself tokenizes whole documents: the truncation is the reference's.

    tokenized = stream.map(tokenize_function(tokenizer, 1024), batched=True, remove_columns=columns)
    blocks = tokenized.map(group_texts(1024), batched=True)
    # all of it
    loader = reference_loader(parquet_files, "text", tokenizer, 1024, batch_size=8, num_workers=8)

Two things lose tokens here: `truncation=True` keeps the first `max_length` tokens of each document,
and `group_texts` drops what is left of each `map` batch (1,000 documents by default) after its last
whole block. There is no EOS between documents either: GPT-2's tokenizer adds none.
"""
from __future__ import annotations

import itertools


def tokenize_function(tokenizer, max_length: int, text_column: str = "text"):
    """The reference's tokenize step for a batched `map`: each document truncated to `max_length`
    tokens."""
    def tokenize(examples):
        return tokenizer(examples[text_column], truncation=True, max_length=max_length)
    return tokenize


def group_texts(block_size: int):
    """The reference's grouping for a batched `map`: concatenate the batch, cut blocks, drop the
    remainder."""
    def group(examples):
        concatenated = {k: list(itertools.chain(*examples[k])) for k in examples}
        total_length = len(concatenated[list(examples.keys())[0]])
        # the remainder of the batch is dropped
        total_length = (total_length // block_size) * block_size
        result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result
    return group


def reference_loader(files: list[str], text_column: str, tokenizer, block_size: int,
                     batch_size: int, num_workers: int):
    """The reference script's whole streaming pipeline over Parquet `files`: datasets streaming,
    map(tokenize, truncation), map(group_texts), a torch DataLoader."""
    import datasets
    import torch
    stream = datasets.load_dataset("parquet", data_files={"train": list(files)}, split="train",
                                   streaming=True)
    columns = list(stream.features or [text_column])
    tokenized = stream.map(tokenize_function(tokenizer, block_size, text_column), batched=True,
                           remove_columns=columns)
    blocks = tokenized.map(group_texts(block_size), batched=True)
    return torch.utils.data.DataLoader(blocks.with_format("torch"), batch_size=batch_size,
                                       num_workers=num_workers)
