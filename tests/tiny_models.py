"""Tiny RANDOM models of the real library classes, saved the way real weights are saved, so tests load them through
the same code path (``from_pretrained`` / timm ``pretrained_cfg_overlay`` / open_clip ``local-dir:``)."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import torch

WORDS = ("the of and heart lung lungs clear normal no acute pneumonia effusion edema fever chest pain kidney cancer "
         "consolidation right left lobe lower upper size is are with without pleural cardiomegaly opacity ct mass "
         "hr map gcs na age gender icu").split()


def bert_vocab(folder: Path, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")) -> Path:
    vocab = [*specials, *sorted(set(WORDS)), *list("abcdefghijklmnopqrstuvwxyz0123456789.,:;%-"),
             *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder / "vocab.txt"


def tiny_bert(folder: Path, kind: str = "bert", hidden: int = 32, max_pos: int = 64) -> Path:
    """A BertModel / MegatronBertModel / MPNetModel folder with a WordPiece tokenizer."""
    from transformers import (BertConfig, BertModel, BertTokenizerFast, MegatronBertConfig, MegatronBertModel,
                              MPNetConfig, MPNetModel, MPNetTokenizerFast)
    torch.manual_seed(0)
    vocab = bert_vocab(folder, ("<s>", "<pad>", "</s>", "<unk>", "[UNK]", "<mask>") if kind == "mpnet" else
                       ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    n = len(vocab.read_text().split())
    common = dict(vocab_size=n + 8, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=2 * hidden, max_position_embeddings=max_pos)
    if kind == "bert":
        BertModel(BertConfig(**common)).save_pretrained(folder)
        BertTokenizerFast(vocab=str(vocab)).save_pretrained(folder)
    elif kind == "megatron":
        MegatronBertModel(MegatronBertConfig(**common)).save_pretrained(folder)
        BertTokenizerFast(vocab=str(vocab)).save_pretrained(folder)
    elif kind == "mpnet":
        MPNetModel(MPNetConfig(**{**common, "max_position_embeddings": max_pos + 2})).save_pretrained(folder)
        MPNetTokenizerFast(vocab=str(vocab), bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                           unk_token="<unk>", pad_token="<pad>", mask_token="<mask>").save_pretrained(folder)
    return folder


def tiny_qwen2(folder: Path, hidden: int = 32) -> Path:
    """A Qwen2Model with a small byte-level BPE tokenizer trained offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(folder)
    cfg = Qwen2Config(vocab_size=fast.vocab_size + 4, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    Qwen2Model(cfg).save_pretrained(folder)
    return folder


def tiny_timm_vit(folder: Path, arch: str = "vit_small_patch14_dinov2", img_size: int = 56) -> tuple[Path, dict]:
    """A DINOv2 / DINOv3-architecture ViT (timm) saved as safetensors; returns (file, params for the encoder)."""
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(0)
    kw = dict(embed_dim=32, depth=2, num_heads=2, img_size=img_size, num_classes=0)
    model = timm.create_model(arch, **kw)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, {"arch": arch, "arch_kwargs": kw}


def tiny_open_clip(folder: Path) -> Path:
    """A BiomedCLIP-shaped open_clip folder (timm ViT image tower + HF BERT text tower), random weights."""
    import open_clip
    torch.manual_seed(0)
    text_dir = tiny_bert(folder / "text", "bert", hidden=32, max_pos=64)
    cfg = {"model_cfg": {"embed_dim": 16,
                         "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                                        "timm_pool": "", "timm_proj": "linear", "image_size": 224},
                         "text_cfg": {"hf_model_name": str(text_dir), "hf_tokenizer_name": str(text_dir),
                                      "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                                      "context_length": 32}},
           "preprocess_cfg": {"mean": [0.481, 0.458, 0.408], "std": [0.269, 0.261, 0.276]}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    model = open_clip.create_model("local-dir:" + str(folder), pretrained=None, load_weights=False)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def tiny_chronos(folder: Path) -> Path:
    """A tiny T5 with a chronos_config: loads with chronos.BaseChronosPipeline.from_pretrained."""
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(0)
    n_tokens = 64
    cfg = T5Config(vocab_size=n_tokens, d_model=16, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                   d_kv=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    cfg.chronos_config = {"tokenizer_class": "MeanScaleUniformBins", "tokenizer_kwargs": {"low_limit": -15.0, "high_limit": 15.0},
                          "n_tokens": n_tokens, "n_special_tokens": 2, "pad_token_id": 0, "eos_token_id": 1,
                          "use_eos_token": True, "model_type": "seq2seq", "context_length": 64, "prediction_length": 8,
                          "num_samples": 2, "temperature": 1.0, "top_k": 50, "top_p": 1.0}
    cfg.architectures = ["T5ForConditionalGeneration"]
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    return folder


def tiny_llava(folder: Path) -> Path:
    """A LlavaForConditionalGeneration (tiny CLIP vision tower + tiny Qwen2 LM) with a LlavaProcessor: the class
    family MAIRA-2 builds on, loaded through AutoProcessor / AutoModelForImageTextToText."""
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config)
    tiny_qwen2(folder / "lm")
    tok = AutoTokenizer.from_pretrained(folder / "lm")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 28},
                                                             crop_size={"height": 28, "width": 28}),
                          tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          image_token="<image>", num_additional_image_tokens=1)
    torch.manual_seed(0)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, image_size=28, patch_size=14),
                      text_config=Qwen2Config(vocab_size=len(tok) + 4, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                              max_position_embeddings=256),
                      image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    LlavaForConditionalGeneration(cfg).save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def tiny_merlin_report(folder: Path, lora_r: int = 8) -> tuple[Path, Path, dict]:
    """Merlin's report-generation checkpoint at tiny size, saved the way Merlin's is (one .pt of
    Clip3DForTextGeneration: encode_image.vision_model.features.N, adapter.linear2, the peft-wrapped LlamaForCausalLM
    with LoRA on q_proj/v_proj), plus a 'RadLLaMA' folder holding only its config and tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from plugins.encoders.i3resnet import I3ResNet
    lm_dir = tiny_qwen2(folder / "radllama")
    tok = AutoTokenizer.from_pretrained(lm_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok) + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id, bos_token_id=None)
    cfg.save_pretrained(lm_dir)
    lm, tower, adapter = LlamaForCausalLM(cfg), I3ResNet((1, 1, 1, 1), 4), torch.nn.Linear(128, 32)
    names = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    ckpt = {f"encode_image.vision_model.features.{names[k.split('.')[0]]}.{k.split('.', 1)[1]}": v
            for k, v in tower.state_dict().items()}
    ckpt |= {f"adapter.linear2.{k}": v for k, v in adapter.state_dict().items()}
    lora = {}
    for k, v in lm.state_dict().items():
        base = "decode_text.text_decoder.base_model.model."
        if k.endswith(("q_proj.weight", "v_proj.weight")):
            stem = k[:-len(".weight")]
            a, b = torch.randn(lora_r, v.shape[1]) * 0.1, torch.randn(v.shape[0], lora_r) * 0.1
            ckpt |= {f"{base}{stem}.base_layer.weight": v, f"{base}{stem}.lora_A.default.weight": a,
                     f"{base}{stem}.lora_B.default.weight": b}
            lora[k] = (v, a, b)
        else:
            ckpt[base + k] = v
    path = folder / "resnet_gpt2_best_stanford_report_generation_average_mtl.pt"
    torch.save(ckpt, path)
    return path, lm_dir, {"lm": lm, "tower": tower, "adapter": adapter, "lora": lora}


def png_of_zeros(path: Path, side: int = 12000) -> None:
    """A valid 8-bit grey PNG of side x side zeros, about 140 KB on disk (written without holding it in memory)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    comp, parts, row = zlib.compressobj(9), [], b"\x00" * (side + 1)
    for _ in range(side):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
