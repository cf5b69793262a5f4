"""The corpus wing: where documents come from. A dataset name becomes shards (local files, http(s),
s3/gs, the Hub pinned to a commit), shards become a plan of pieces (Parquet row groups, whole text
files) with their footers and content fingerprints, and a reader's pieces become documents, window
after shuffled window, each with its origin. Imports the root vocabulary only (errors, retry,
config)."""
