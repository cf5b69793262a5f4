"""The tokens wing: documents become token ids and ids become blocks. Tokenizer backends (fastokens,
tiktoken, the HF tokenizer, chosen when id-identical), the encoder with its helper thread, the
lossless packer (EOS between documents, the remainder carried over) and the provenance of each
block's segments. Imports the root vocabulary only."""
