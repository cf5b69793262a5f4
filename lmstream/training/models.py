"""Model and tokenizer: pretrained (model_name_or_path) or from scratch (config_name +
config_overrides).

    model, tokenizer = load_model_and_tokenizer(ModelArguments(config_name="lmstream/assets/tiny-gpt2"))
"""
from __future__ import annotations

import contextlib
import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..config import ModelArguments
from ..errors import ConfigError

ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets")   # lmstream/assets
# GPT-2's tokenizer and a 2-layer, 64-wide config
TINY_MODEL = os.path.join(ASSETS, "tiny-gpt2")
SAMPLE_DATASET = os.path.join(ASSETS, "sample")      # 96 documents
SAMPLE_CONFIG = "python-docs"                       # its config (data/python-docs/*.parquet)
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
            "pytorch_model.bin.index.json")


def _dtype(name):
    return None if name is None else ("auto" if name == "auto" else getattr(torch, name))


def load_model_and_tokenizer(args: ModelArguments):
    """The causal LM and its tokenizer, as ModelArguments describe them."""
    source = args.model_name_or_path or args.config_name
    if source is None:
        raise ConfigError("Pass model_name_or_path (pretrained weights) or "
                          "config_name (train from scratch).")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or source)
    except (OSError, ValueError) as err:
        name = ("tokenizer_name" if args.tokenizer_name
                else "model_name_or_path" if args.model_name_or_path else "config_name")
        raise ConfigError(f"{name} '{args.tokenizer_name or source}' has no tokenizer that loads "
                          f"({str(err).splitlines()[0][:200]}): check the path or Hub "
                          "id.") from None
    kwargs = {}
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    if args.model_name_or_path:
        path = args.model_name_or_path
        if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, w)) for w in _WEIGHTS):
            raise ConfigError(f"model_name_or_path '{path}' holds no weights: pass it as "
                              "config_name to train from scratch, or point to a folder with "
                              "model.safetensors.")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(args.torch_dtype), **kwargs)
    else:
        model = _model_from_config(args, kwargs)
    if getattr(model, "loss_type", "") is None:   # GPT2LMHeadModel's name does not say ForCausalLM
        model.loss_type = "ForCausalLM"
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise ConfigError(f"The tokenizer has {len(tokenizer)} tokens but the model only "
                          f"{model.get_input_embeddings().weight.shape[0]} "
                          "embeddings: use the model's own tokenizer.")
    return model, tokenizer


def _model_from_config(args: ModelArguments, kwargs: dict):
    """A new model (random weights) from config_name with config_overrides applied."""
    try:
        config = AutoConfig.from_pretrained(args.config_name)
    except (OSError, ValueError) as err:
        raise ConfigError(f"config_name '{args.config_name}' has no model config that loads "
                          f"({str(err).splitlines()[0][:200]}): check the path or Hub "
                          "id.") from None
    if args.config_overrides:
        try:
            config.update_from_string(args.config_overrides)
        except (ValueError, TypeError, AttributeError) as err:
            raise ConfigError(f"config_overrides '{args.config_overrides}' cannot be applied "
                              f"({err}): write name=value pairs of the config's fields, e.g. "
                              "'n_layer=2,n_embd=64'.") from None
    what = (f"config_overrides '{args.config_overrides}'" if args.config_overrides
            else f"config '{args.config_name}'")
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers < 1:
        raise ConfigError(f"{what} gives a model with {layers} transformer layers, which cannot "
                          "learn: use 1 or more (for example n_layer=2).")
    dtype = _dtype(args.torch_dtype) if args.torch_dtype != "auto" else None
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    except (ValueError, AssertionError, TypeError, RuntimeError) as err:
        if args.attn_implementation and "attn_implementation" in str(err):
            raise ConfigError(f"attn_implementation={args.attn_implementation!r} is not an attention "
                              "kernel this model has: use eager, sdpa or flash_attention_2.") from None
        raise ConfigError(f"{what} gives a model that cannot be built ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else 'inconsistent sizes'}): "
                          "fix the values.") from None
    return model


def isolate_documents(model) -> None:
    """Make `model` keep the documents of a packed block apart (dataset_document_attention
    isolated): transformers turns position_ids that restart into a block-diagonal mask (eager,
    sdpa, flex) or varlen kernels (flash attention) only when the forward holds no cache, and a
    config's `use_cache` (GPT-2's is true) makes one even in training: without this, positions
    would restart and attention would still cross documents, silently."""
    import inspect
    if "position_ids" not in inspect.signature(model.forward).parameters:
        raise ConfigError(f"dataset_document_attention=isolated needs a model whose forward takes "
                          f"position_ids; {type(model).__name__} does not: use shared.")
    if getattr(model, "lmstream_use_cache", None) is None:   # what the saved config keeps
        model.lmstream_use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False


@contextlib.contextmanager
def as_configured(model):
    """Around a save: the config as the user's (use_cache as it was before isolate_documents),
    so that a saved model generates with its cache."""
    kept = getattr(model, "lmstream_use_cache", None)
    if kept is None:
        yield
        return
    model.config.use_cache = kept
    try:
        yield
    finally:
        model.config.use_cache = False
