"""The stream wing: blocks a training loop iterates, resumable exactly. The typed reader state,
elastic resume, the reader's loop, batches from workers, the stream (`StreamingBlocks`), the
DataLoader adapter, mixtures, the pipeline that chooses among them (`build_pipeline`), one epoch's
blocks made before training (`materialize`), and the life of DataLoader workers. Imports corpus,
tokens and the root vocabulary; never transformers, so any PyTorch loop can use it."""
