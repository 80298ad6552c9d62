"""Hugging Face MarianMT (OPUS-MT) and FSMT models as fairseq teachers, and fairseq students as MarianMT or
M2M100 models.

``fairseq-kd-import-hf MODEL_DIR OUT`` reads a local ``save_pretrained`` directory of a ``MarianMTModel`` (its
``config.json``, weights, ``vocab.json`` and, when there, ``source.spm`` and ``target.spm``) and writes OUT/
``model.pt`` (a stock fairseq ``transformer`` checkpoint of the ``translation`` task), OUT/dict.SRC.txt and
dict.TGT.txt (the same symbols, Marian's vocabulary in fairseq's order) and copies of the sentencepiece
models. Nothing is downloaded.

MarianMT is fairseq's post-norm transformer with these differences, each mapped or refused:

* **Vocabulary**: Marian's ids put ``</s>`` at 0, ``<unk>`` at 1 and ``<pad>`` last; fairseq's dictionary has
  ``<s> <pad> </s> <unk>`` first, then the symbols. Every tensor indexed by the vocabulary is reordered.
  fairseq has one entry more (``<s>``, which Marian lacks): its output weights are chosen so that its logit
  is the same large negative constant for every input (``_suppressed_row``), so that the two models'
  log-probabilities of every Marian token are equal.
* **Decoder start**: Marian starts decoding from ``<pad>``, fairseq from ``</s>``. The decoder's input
  embedding of ``</s>`` is therefore Marian's ``<pad>`` row, while its output row stays Marian's ``</s>``:
  the imported model has separate encoder, decoder-input and output embeddings
  (``--share-all-embeddings`` and ``--share-decoder-input-output-embed`` off).
* **Positions**: Marian's sinusoidal table has other frequencies than fairseq's and starts at position 0;
  it becomes fairseq's learned positions (``--encoder-learned-pos --decoder-learned-pos``), row
  ``pad + 1 + i`` holding Marian's position ``i``.
* **Activation**: relu and gelu (exact, as transformers' ``gelu``) are fairseq's. OPUS-MT's ``swish`` (SiLU)
  is not in fairseq 0.12 (its transformer's choices lack it, and ``get_activation_fn("swish")`` returns the
  class ``torch.nn.SiLU``): importing fairseq_kd adds it (:mod:`fairseq_kd.models.swish`), so a swish model
  runs in fairseq with ``--user-dir fairseq_kd``, and in CTranslate2 as it is.

Refused, each in one line naming the setting: separate source and target vocabularies
(``share_encoder_decoder_embeddings`` false), a non-zero ``final_logits_bias``, an activation other than
relu, gelu and swish, and a vocabulary without Marian's special symbols.

``fairseq-kd-export STUDENT OUT.pt --huggingface DIR`` (:func:`export_huggingface`) goes the other way: a
fairseq transformer with one joint vocabulary becomes a transformers directory that ``generate()`` runs and
``ct2-transformers-converter`` converts. A post-norm one becomes MarianMT: the vocabulary in OPUS-MT's layout
(``<pad>`` moved last, the others in fairseq's order), decoding from ``</s>`` as in fairseq, the positions
fairseq's table (sinusoidal or learned) written into ``model.safetensors``, which transformers then loads
instead of computing Marian's own; separate source, target and output embeddings (a student of an imported
OPUS-MT teacher has them) stay separate. A pre-norm one becomes M2M100, fairseq's pre-norm transformer: the
vocabulary in fairseq's layout, fairseq's sinusoids, one embedding matrix, decoding from ``</s>`` with no
language token. The tokenizer is MarianTokenizer over the data's sentencepiece model; the generation defaults
are fairseq's: beam 4 as the evaluation, no ``<pad>``, at least one token before ``</s>``. Refused in one line
(:func:`hf_architecture`, :func:`check_exportable`): a model pre-norm on one side only, a layer norm on the
embeddings, separate source and target dictionaries, different encoder and decoder widths; for M2M100 also
learned positions, no final decoder layer norm and separate embedding matrices. CTranslate2's converter for
MarianMT starts the decoder from a zero vector (OPUS-MT's ``<pad>`` row) where fairseq starts from ``</s>``'s
embedding: a post-norm student converted that way translates a little differently from the fairseq one;
convert it from fairseq (``fairseq-kd-export --ctranslate2``) to keep its translations.
"""

import json
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

import torch
from fairseq import options, tasks
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.modules import SinusoidalPositionalEmbedding
from omegaconf import OmegaConf

from .checkpoints import export_student, load_checkpoint
from .io import UserError

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's dictionary, in its order
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "swish"}
SUPPRESSED_LOGIT = -1e4  # the logit of fairseq's <s>, which Marian's vocabulary has no row for


class HFImportError(UserError):
    pass


def read_vocab(model_dir: str) -> Dict[str, int]:
    path = os.path.join(model_dir, "vocab.json")
    if not os.path.isfile(path):
        raise HFImportError(f"{model_dir} has no vocab.json: give a MarianMT save_pretrained directory")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fairseq_order(vocab: Dict[str, int], config: Any) -> Tuple[List[str], List[int]]:
    """(the symbols of fairseq's dict.txt, in order; the Marian id of each fairseq index, -1 for <s>)."""
    by_id = {i: s for s, i in vocab.items()}
    if len(by_id) != config.vocab_size or sorted(by_id) != list(range(config.vocab_size)):
        raise HFImportError(
            f"vocab.json holds {len(by_id)} symbols with ids that are not 0..{config.vocab_size - 1} (config vocab_size)"
        )
    pad, eos = config.pad_token_id, config.eos_token_id
    unk = vocab.get("<unk>")
    if unk is None or by_id.get(pad) != "<pad>" or by_id.get(eos) != "</s>":
        raise HFImportError("vocab.json lacks Marian's special symbols (</s> at eos_token_id, <unk>, <pad> at pad_token_id)")
    special_ids = {pad, eos, unk}
    symbols = [by_id[i] for i in range(config.vocab_size) if i not in special_ids]
    clash = [s for s in symbols if s in SPECIALS or any(c.isspace() for c in s)]
    if clash:
        raise HFImportError(f"vocab.json symbol {clash[0]!r} is a fairseq special symbol or holds white space")
    marian_ids = [-1, pad, eos, unk] + [i for i in range(config.vocab_size) if i not in special_ids]
    return symbols, marian_ids


def check_marian_config(config: Any, state: Dict[str, torch.Tensor]) -> None:
    """Refuses, in one line, what the conversion cannot represent."""
    if config.model_type != "marian":
        raise HFImportError(f"model_type {config.model_type!r}: only MarianMT (model_type marian) is imported")
    if not config.share_encoder_decoder_embeddings:
        raise HFImportError(
            "share_encoder_decoder_embeddings is false (separate source and target vocabularies): not imported"
        )
    if config.activation_function not in ACTIVATIONS:
        raise HFImportError(
            f"activation_function {config.activation_function!r}: fairseq's transformer has relu, gelu and swish"
        )
    bias = state.get("final_logits_bias")
    if bias is not None and bias.abs().max() > 0:
        raise HFImportError("final_logits_bias is not zero: fairseq's output layer has no bias")
    if config.d_model % config.encoder_attention_heads or config.d_model % config.decoder_attention_heads:
        raise HFImportError("d_model is not divisible by the attention heads")


def _suppressed_row(layer_norm_weight, layer_norm_bias, logit=SUPPRESSED_LOGIT):
    """An output row w with w . h = LOGIT for every output h of the decoder's last (post-norm) layer norm:
    h = g * n + b with sum(n) = 0, so w = a / g gives w . h = a * sum(b / g), a constant."""
    g, b = layer_norm_weight.double(), layer_norm_bias.double()
    if (g.abs() < 1e-6).any():
        raise HFImportError("the decoder's last layer norm has a weight near 0: cannot suppress fairseq's <s>")
    k = float((b / g).sum())
    if abs(k) < 1e-6:
        raise HFImportError("the decoder's last layer norm has no bias: cannot suppress fairseq's <s>")
    return ((logit / k) / g).to(layer_norm_weight.dtype)


def fairseq_flags(config: Any, data_dir: str, src: str, tgt: str, learned_positions: bool = True) -> List[str]:
    """fairseq-train's flags for the post-norm transformer of a MarianMT or FSMT config (their settings share
    names); LEARNED_POSITIONS: the positions are a learned table (Marian's), else fairseq's sinusoids (FSMT's)."""
    return [
        data_dir, "--task", "translation", "--source-lang", src, "--target-lang", tgt, "--arch", "transformer",
        "--encoder-layers", str(config.encoder_layers), "--decoder-layers", str(config.decoder_layers),
        "--encoder-embed-dim", str(config.d_model), "--decoder-embed-dim", str(config.d_model),
        "--encoder-ffn-embed-dim", str(config.encoder_ffn_dim), "--decoder-ffn-embed-dim", str(config.decoder_ffn_dim),
        "--encoder-attention-heads", str(config.encoder_attention_heads),
        "--decoder-attention-heads", str(config.decoder_attention_heads),
        "--activation-fn", ACTIVATIONS[config.activation_function],
        "--max-source-positions", str(config.max_position_embeddings),
        "--max-target-positions", str(config.max_position_embeddings),
        "--dropout", str(config.dropout), "--attention-dropout", str(config.attention_dropout),
        "--activation-dropout", str(config.activation_dropout),
    ] + (["--encoder-learned-pos", "--decoder-learned-pos"] if learned_positions else []) + (
        [] if config.scale_embedding else ["--no-scale-embedding"]
    )  # fmt: skip


def convert_state(hf_state: Dict[str, torch.Tensor], config: Any, marian_ids: List[int], pad: int) -> Dict[str, torch.Tensor]:
    """The fairseq transformer's state dict from a MarianMTModel's."""
    index = torch.tensor([i if i >= 0 else config.pad_token_id for i in marian_ids])
    shared = hf_state["model.shared.weight"]
    out = {}
    out["encoder.embed_tokens.weight"] = shared[index].clone()
    decoder_in = shared[index].clone()
    decoder_in[2] = shared[config.decoder_start_token_id]  # fairseq starts decoding from </s>, Marian from this
    out["decoder.embed_tokens.weight"] = decoder_in
    output = hf_state.get("lm_head.weight", shared)[index].clone()
    last = f"model.decoder.layers.{config.decoder_layers - 1}.final_layer_norm"
    output[0] = _suppressed_row(hf_state[last + ".weight"], hf_state[last + ".bias"])
    out["decoder.output_projection.weight"] = output
    for stack in ("encoder", "decoder"):
        table = hf_state[f"model.{stack}.embed_positions.weight"]
        positions = torch.zeros(table.size(0) + pad + 1, table.size(1), dtype=table.dtype)
        positions[pad + 1 :] = table
        out[f"{stack}.embed_positions.weight"] = positions
    for key, value in hf_state.items():
        if key.startswith(("model.encoder.layers.", "model.decoder.layers.")):
            out[key[len("model.") :]] = value.clone()
    return out


def import_marian(model_dir: str, out_dir: str, src: str = "src", tgt: str = "tgt") -> str:
    """Writes OUT_DIR/model.pt, dict.SRC.txt, dict.TGT.txt (and the sentencepiece models found) from the
    MarianMT model in MODEL_DIR; returns the checkpoint's path."""
    # here, not at the top: an optional dependency (the [hf] extra)
    from transformers import MarianConfig, MarianMTModel

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise HFImportError(f"{model_dir} has no config.json: give a local save_pretrained directory (nothing is downloaded)")
    config = MarianConfig.from_pretrained(model_dir)
    model = MarianMTModel.from_pretrained(model_dir).eval()
    hf_state = model.state_dict()
    check_marian_config(config, hf_state)
    symbols, marian_ids = fairseq_order(read_vocab(model_dir), config)
    os.makedirs(out_dir, exist_ok=True)
    for lang in (src, tgt):
        with open(os.path.join(out_dir, f"dict.{lang}.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{s} 1\n" for s in symbols)
    for name in ("source.spm", "target.spm"):
        if os.path.isfile(os.path.join(model_dir, name)):
            shutil.copyfile(os.path.join(model_dir, name), os.path.join(out_dir, name))
    pad = SPECIALS.index("<pad>")
    return _write_imported(fairseq_flags(config, out_dir, src, tgt), convert_state(hf_state, config, marian_ids, pad), out_dir,
                           model_dir)  # fmt: skip


def read_fsmt_vocab(path: str) -> List[str]:
    """The symbols of one of FSMT's vocabularies (vocab-src.json or vocab-tgt.json) in id order: fairseq's
    dictionary, which FSMT's conversion from fairseq wrote."""
    if not os.path.isfile(path):
        raise HFImportError(f"{path} does not exist: give an FSMT save_pretrained directory")
    with open(path, encoding="utf-8") as f:
        vocab = json.load(f)
    symbols = sorted(vocab, key=vocab.get)
    if [vocab[s] for s in symbols] != list(range(len(symbols))) or tuple(symbols[:4]) != SPECIALS:
        raise HFImportError(f"{path}: its ids are not 0..N-1 with fairseq's {' '.join(SPECIALS)} first")
    return symbols


def import_fsmt(model_dir: str, out_dir: str, src: Optional[str] = None, tgt: Optional[str] = None) -> str:
    """Writes OUT_DIR/model.pt, dict.SRC.txt, dict.TGT.txt (and merges.txt, the BPE codes) from the FSMT model in
    MODEL_DIR (fairseq's WMT19 models in transformers): fairseq's own post-norm transformer with its sinusoidal
    positions, its dictionaries in fairseq's order and separate source and target embeddings, so its weights
    are copied as they are. SRC and TGT default to the model's own languages (its ``langs``)."""
    # here, not at the top: an optional dependency (the [hf] extra)
    from transformers import FSMTConfig, FSMTForConditionalGeneration

    config = FSMTConfig.from_pretrained(model_dir)
    src, tgt = src or config.langs[0], tgt or config.langs[1]
    if config.activation_function not in ACTIVATIONS:
        raise HFImportError(
            f"activation_function {config.activation_function!r}: fairseq's transformer has relu, gelu and swish"
        )
    vocabularies = [read_fsmt_vocab(os.path.join(model_dir, f"vocab-{side}.json")) for side in ("src", "tgt")]
    model = FSMTForConditionalGeneration.from_pretrained(model_dir).eval()
    hf_state = model.state_dict()
    os.makedirs(out_dir, exist_ok=True)
    for lang, symbols in zip((src, tgt), vocabularies):
        with open(os.path.join(out_dir, f"dict.{lang}.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{s} 1\n" for s in symbols[len(SPECIALS) :])
    if os.path.isfile(os.path.join(model_dir, "merges.txt")):
        shutil.copyfile(os.path.join(model_dir, "merges.txt"), os.path.join(out_dir, "merges.txt"))
    flags = fairseq_flags(config, out_dir, src, tgt, learned_positions=False)
    if config.tie_word_embeddings:
        flags.append("--share-decoder-input-output-embed")
    weights = {
        k[len("model.") :]: v.clone() for k, v in hf_state.items() if k.startswith("model.") and "embed_positions" not in k
    }
    if config.tie_word_embeddings:
        weights.pop("decoder.output_projection.weight", None)
    return _write_imported(flags, weights, out_dir, model_dir)


def _write_imported(flags: List[str], weights: Dict[str, torch.Tensor], out_dir: str, model_dir: str) -> str:
    """OUT_DIR/model.pt: the fairseq model of FLAGS (fairseq-train's) with WEIGHTS, written as every exported
    model is (plain containers only, which stock fairseq loads on torch >= 2.6); returns its path."""
    args = options.parse_args_and_arch(options.get_training_parser(), flags)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    fairseq_model = task.build_model(cfg.model)
    missing, unexpected = fairseq_model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith(("embed_positions._float_tensor", "version"))]
    if missing or unexpected:
        raise HFImportError(
            f"the weights do not fill fairseq's transformer: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    cfg_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    cfg_dict["task"]["data"] = os.path.abspath(out_dir)
    state = {
        "cfg": cfg_dict,
        "args": None,
        "model": fairseq_model.state_dict(),
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "none",
                               "lr_scheduler_state": {}, "num_updates": 0}],  # fmt: skip
        "extra_state": {"imported_from": os.path.abspath(model_dir)},
    }
    path = os.path.join(out_dir, "model.pt")
    converted = os.path.join(out_dir, "converted.pt")
    torch.save(state, converted)
    try:
        export_student(converted, path, overwrite=True)
    finally:
        os.remove(converted)
    return path


def import_hf(model_dir: str, out_dir: str, src: Optional[str] = None, tgt: Optional[str] = None) -> str:
    """A Hugging Face translation model of MODEL_DIR as a fairseq checkpoint in OUT_DIR, by its model_type:
    MarianMT (:func:`import_marian`) or FSMT (:func:`import_fsmt`); returns the checkpoint's path."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise HFImportError(f"{model_dir} has no config.json: give a local save_pretrained directory (nothing is downloaded)")
    with open(path) as f:
        model_type = json.load(f).get("model_type")
    if model_type == "marian":
        return import_marian(model_dir, out_dir, src or "src", tgt or "tgt")
    if model_type == "fsmt":
        return import_fsmt(model_dir, out_dir, src, tgt)
    raise HFImportError(
        f"model_type {model_type!r}: fairseq-kd-import-hf imports MarianMT (marian) and FSMT (fsmt); M2M100 and NLLB "
        "need their language tokens, which are not converted yet"
    )


class HFExportError(UserError):
    pass


def _setting(model_cfg: Any, name: str, default: Any = None) -> Any:
    return model_cfg.get(name, default) if hasattr(model_cfg, "get") else getattr(model_cfg, name, default)


def hf_architecture(model_cfg: Any) -> str:
    """The transformers model a fairseq transformer's settings become: "marian" (MarianMT) for a post-norm one,
    "m2m_100" (M2M100) for a pre-norm one; refuses what neither represents, in one line."""

    def value(name: str, default: Any = None) -> Any:
        return _setting(model_cfg, name, default)

    encoder, decoder = bool(value("encoder_normalize_before")), bool(value("decoder_normalize_before"))
    if encoder != decoder:
        pre, post = ("encoder", "decoder") if encoder else ("decoder", "encoder")
        raise HFExportError(
            f"the student was trained with --{pre}-normalize-before but not --{post}-normalize-before: MarianMT is "
            "post-norm and M2M100 pre-norm throughout (export it to fairseq or CTranslate2)"
        )
    if value("layernorm_embedding"):
        raise HFExportError(
            "the student was trained with --layernorm-embedding: neither MarianMT nor M2M100 has a layer norm on "
            "its embeddings (export it to fairseq or CTranslate2)"
        )
    if value("encoder_embed_dim") != value("decoder_embed_dim"):
        raise HFExportError("the student's encoder and decoder widths differ: MarianMT and M2M100 have one d_model")
    if value("no_token_positional_embeddings") or value("adaptive_softmax_cutoff"):
        raise HFExportError("the student has no positions or an adaptive softmax: MarianMT and M2M100 have neither")
    activation = value("activation_fn", "relu")
    if activation not in ("relu", "gelu", "swish"):
        raise HFExportError(f"--activation-fn {activation}: the export here takes relu, gelu and swish")
    if not encoder:
        return "marian"
    for stack in ("encoder", "decoder"):
        if value(f"{stack}_learned_pos"):
            raise HFExportError(
                f"the student was trained with --{stack}-learned-pos: M2M100, the pre-norm transformer of "
                "transformers, computes fairseq's sinusoids and has no learned table (export it to fairseq or CTranslate2)"
            )
    if value("no_decoder_final_norm"):
        raise HFExportError("the student was trained with --no-decoder-final-norm: M2M100's decoder has its final layer norm")
    return "m2m_100"


def _transformer_settings(model_cfg: Any) -> Dict[str, Any]:
    """The settings that MarianConfig and M2M100Config share, from a fairseq transformer's: sizes, activation,
    positions (the smaller of the two stacks' bounds), embedding scale, dropouts."""

    def value(name: str, default: Any = None) -> Any:
        return _setting(model_cfg, name, default)

    return dict(
        d_model=value("encoder_embed_dim"), encoder_layers=value("encoder_layers"), decoder_layers=value("decoder_layers"),
        encoder_attention_heads=value("encoder_attention_heads"), decoder_attention_heads=value("decoder_attention_heads"),
        encoder_ffn_dim=value("encoder_ffn_embed_dim"), decoder_ffn_dim=value("decoder_ffn_embed_dim"),
        activation_function=value("activation_fn", "relu"),
        max_position_embeddings=min(value("max_source_positions", 1024), value("max_target_positions", 1024)),
        scale_embedding=not value("no_scale_embedding"), dropout=value("dropout", 0.1),
        attention_dropout=value("attention_dropout", 0.0), activation_dropout=value("activation_dropout", 0.0),
    )  # fmt: skip


def marian_config(model_cfg: Any, vocab_size: int, pad: int, eos: int, shared: bool = True, tied: bool = True) -> Any:
    """The MarianConfig of a post-norm fairseq transformer's settings (SHARED: one matrix for the source and
    target embeddings; TIED: the output layer is the target embeddings)."""
    from transformers import MarianConfig  # here, not at the top: an optional dependency (the [hf] extra)

    return MarianConfig(
        vocab_size=vocab_size, decoder_vocab_size=vocab_size, pad_token_id=pad, eos_token_id=eos,
        decoder_start_token_id=eos, forced_eos_token_id=eos, share_encoder_decoder_embeddings=shared,
        tie_word_embeddings=tied, **_transformer_settings(model_cfg),
    )  # fmt: skip


def m2m100_config(model_cfg: Any, dictionary: Dictionary) -> Any:
    """The M2M100Config of a pre-norm fairseq transformer's settings: fairseq's own vocabulary layout (M2M100's ids
    are fairseq's), one embedding matrix for the source, the target and the output, decoding from ``</s>``, no
    language token forced."""
    from transformers import M2M100Config  # here, not at the top: an optional dependency (the [hf] extra)

    return M2M100Config(
        vocab_size=len(dictionary), pad_token_id=dictionary.pad(), bos_token_id=dictionary.bos(),
        eos_token_id=dictionary.eos(), decoder_start_token_id=dictionary.eos(), forced_bos_token_id=None,
        encoder_layerdrop=0.0, decoder_layerdrop=0.0, tie_word_embeddings=True, **_transformer_settings(model_cfg),
    )  # fmt: skip


def fairseq_positions(
    state: Dict[str, torch.Tensor], model_cfg: Any, stack: str, count: int, dim: int, pad: int
) -> torch.Tensor:
    """The position vectors that fairseq adds at positions 0..COUNT-1 of a sentence (its rows pad + 1 ...):
    the learned table's, or fairseq's sinusoids."""
    if _setting(model_cfg, f"{stack}_learned_pos"):
        return state[f"{stack}.embed_positions.weight"][pad + 1 : pad + 1 + count].clone()
    return SinusoidalPositionalEmbedding.get_embedding(count + pad + 1, dim, pad)[pad + 1 :].clone()


def marian_order(size: int, pad: int) -> List[int]:
    """The fairseq index of each Marian id: OPUS-MT's layout, ``<pad>`` last, the others in fairseq's order."""
    return [i for i in range(size) if i != pad] + [pad]


def embedding_sharing(state: Dict[str, torch.Tensor]) -> Tuple[bool, bool]:
    """(the source and target embeddings are one matrix, the output layer is the target embeddings)."""
    encoder, decoder = state["encoder.embed_tokens.weight"], state["decoder.embed_tokens.weight"]
    output = state.get("decoder.output_projection.weight", decoder)
    return torch.equal(encoder, decoder), torch.equal(decoder, output)


def marian_state(state: Dict[str, torch.Tensor], model_cfg: Any, config: Any, pad: int) -> Dict[str, torch.Tensor]:
    """A MarianMTModel's state dict (with its position tables) from a fairseq transformer's."""
    order = torch.tensor(marian_order(state["encoder.embed_tokens.weight"].size(0), pad))
    encoder = state["encoder.embed_tokens.weight"][order].clone()
    decoder = state["decoder.embed_tokens.weight"][order].clone()
    output = state.get("decoder.output_projection.weight", state["decoder.embed_tokens.weight"])[order].clone()
    out = {"final_logits_bias": torch.zeros(1, output.size(0))}
    if config.share_encoder_decoder_embeddings:
        out["model.shared.weight"] = encoder
    out["model.encoder.embed_tokens.weight"] = encoder
    out["model.decoder.embed_tokens.weight"] = encoder if config.share_encoder_decoder_embeddings else decoder
    out["lm_head.weight"] = out["model.decoder.embed_tokens.weight"] if config.tie_word_embeddings else output
    for stack in ("encoder", "decoder"):
        out[f"model.{stack}.embed_positions.weight"] = fairseq_positions(
            state, model_cfg, stack, config.max_position_embeddings, config.d_model, pad
        )
    for key, value in state.items():
        if key.startswith(("encoder.layers.", "decoder.layers.")):
            out["model." + key] = value.clone()
    return out


def m2m100_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An M2M100ForConditionalGeneration's state dict from a pre-norm fairseq transformer's (whose names M2M100's
    are, under ``model.``; the positions are sinusoids that M2M100 computes)."""
    shared = state["encoder.embed_tokens.weight"].clone()
    out = {"model.shared.weight": shared, "model.encoder.embed_tokens.weight": shared,
           "model.decoder.embed_tokens.weight": shared, "lm_head.weight": shared}  # fmt: skip
    for key, value in state.items():
        if key.startswith(("encoder.layers.", "decoder.layers.", "encoder.layer_norm.", "decoder.layer_norm.")):
            out["model." + key] = value.clone()
    return out


def check_exportable(state: Dict[str, Any], data_bin: str, src: str, tgt: str) -> Tuple[str, Dictionary]:
    """(the transformers architecture of :func:`hf_architecture`, the joint dictionary) of a fairseq student
    checkpoint's STATE and the dictionaries of DATA_BIN; refuses, in one line, what the export cannot write."""
    architecture = hf_architecture(state["cfg"]["model"])
    dicts = [Dictionary.load(os.path.join(data_bin, f"dict.{lang}.txt")) for lang in (src, tgt)]
    if dicts[0].symbols != dicts[1].symbols:
        raise HFExportError(
            f"{data_bin}'s dict.{src}.txt and dict.{tgt}.txt differ: the export here takes one joint vocabulary"
        )
    if architecture == "m2m_100" and embedding_sharing(state["model"]) != (True, True):
        raise HFExportError(
            "the student's source, target and output embeddings are not one matrix (--share-all-embeddings): "
            "M2M100 has one (export it to fairseq or CTranslate2)"
        )
    return architecture, dicts[1]


def export_huggingface(student_path: str, data_bin: str, out_dir: str, src: str, tgt: str, spm_model: Optional[str] = None,
                       target_spm_model: Optional[str] = None) -> str:  # fmt: skip
    """Writes OUT_DIR as a transformers directory (weights, config, generation config, vocab.json, and with
    SPM_MODEL, the data's sentencepiece model (TARGET_SPM_MODEL, where the target side has its own), a
    MarianTokenizer's files) from an exported fairseq student: MarianMT for a post-norm one, M2M100 for a
    pre-norm one. Returns the architecture's name."""
    from transformers import GenerationConfig, M2M100ForConditionalGeneration, MarianMTModel

    state = load_checkpoint(student_path, "the student")
    model_cfg = state["cfg"]["model"]
    architecture, dictionary = check_exportable(state, data_bin, src, tgt)
    if architecture == "marian":
        order = marian_order(len(dictionary), dictionary.pad())
        config = marian_config(model_cfg, len(dictionary), order.index(dictionary.pad()), order.index(dictionary.eos()),
                               *embedding_sharing(state["model"]))  # fmt: skip
        weights = marian_state(state["model"], model_cfg, config, dictionary.pad())
        model, name = MarianMTModel(config).eval(), "MarianMT"
        # absent when the embeddings are not shared; the positions are fairseq's, written below
        expected_absent = ("model.shared.weight", "embed_positions.weight")
    else:
        order = list(range(len(dictionary)))  # M2M100's ids are fairseq's
        config = m2m100_config(model_cfg, dictionary)
        weights = m2m100_state(state["model"])
        model, name, expected_absent = M2M100ForConditionalGeneration(config).eval(), "M2M100", ()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    unexpected = [k for k in unexpected if not k.endswith(expected_absent)]
    missing = [k for k in missing if not k.endswith(expected_absent)]
    if unexpected or missing:
        raise HFExportError(f"the student's weights do not fill {name}'s: missing {missing[:3]}, unexpected {unexpected[:3]}")
    pad, eos = order.index(dictionary.pad()), order.index(dictionary.eos())
    # fairseq's generation: never <pad>, at least one token before </s>; beam 4, as the evaluation
    model.generation_config = GenerationConfig(
        decoder_start_token_id=eos, eos_token_id=eos, pad_token_id=pad, forced_eos_token_id=eos,
        bad_words_ids=[[pad]], min_new_tokens=1, num_beams=4, max_length=config.max_position_embeddings,
    )  # fmt: skip
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    if architecture == "marian":
        _write_positions(os.path.join(out_dir, "model.safetensors"), weights)
    vocab = os.path.join(out_dir, "vocab.json")
    with open(vocab, "w", encoding="utf-8") as f:
        json.dump({dictionary.symbols[index]: i for i, index in enumerate(order)}, f, ensure_ascii=False)
    if spm_model:
        from transformers import MarianTokenizer

        # MarianTokenizer: sentencepiece pieces looked up in vocab.json, </s> appended (M2M100's own tokenizer
        # adds language tokens, which a fairseq student has not learned); M2M100's vocabulary has fairseq's <s>,
        # which CTranslate2's converter asks the tokenizer for (the tokenizer adds it to nothing)
        specials = {"bos_token": "<s>"} if architecture == "m2m_100" else {}
        tokenizer = MarianTokenizer(source_spm=spm_model, target_spm=target_spm_model or spm_model, vocab=vocab, unk_token="<unk>",
                                    eos_token="</s>", pad_token="<pad>", model_max_length=config.max_position_embeddings,
                                    **specials)  # fmt: skip
        tokenizer.save_pretrained(out_dir)
    return name


def _write_positions(path: str, weights: Dict[str, torch.Tensor]) -> None:
    """transformers computes Marian's own sinusoids unless the file holds the tables: it holds fairseq's."""
    from safetensors.torch import load_file, save_file  # here, not at the top: an optional dependency

    tensors = load_file(path)
    for stack in ("encoder", "decoder"):
        tensors[f"model.{stack}.embed_positions.weight"] = weights[f"model.{stack}.embed_positions.weight"].contiguous()
    save_file(tensors, path, metadata={"format": "pt"})
