"""The training wing: the stream fed to a Hugging Face Trainer. A run's datasets, models,
checkpoints and the data position in them, the lineage of a run across resumes, the Trainer adapter,
which checkpoint to resume, the output folder's lock, stopping on signals, the terminal's lines,
`Run` (one run as steps) and the notebook job."""
