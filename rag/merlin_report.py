"""Merlin's CT report generator (Blankemeier et al., 2024), without the merlin package's hub-bound constructors.

Merlin's ``Clip3DForTextGeneration`` is: the I3ResNet-152 image tower up to layer4, its voxel grid flattened to
tokens [B, N, 2048]; ``adapter.linear2`` (2048 -> 4096); RadLLaMA-7b (a LlamaForCausalLM) with LoRA (r 512,
alpha 16) on its attention. Generation prepends the image tokens to a prompt per organ system ("Generate a radiology
report for liver###\\n", BOS dropped), decodes greedily with repetition penalty 1.2 until "###", and the report is
the sections joined. The released checkpoint (``stanfordmimi/Merlin``,
``resnet_gpt2_best_stanford_report_generation_average_mtl.pt``) holds every weight; the LM's config and tokenizer
come from ``params.lm`` (default ``StanfordAIMI/RadLLaMA-7b``). LoRA is merged into the base weights on load
(W + alpha/r * B A), so peft is not needed. The image goes through our I3ResNet and Merlin's preprocessing
(plugins/encoders/i3resnet.py); the checkpoint's ``encode_image.vision_model.features.N`` names map onto it.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from plugins.encoders.i3resnet import I3ResNet, merlin_preprocess
from plugins.sources import read_checkpoint, resolve_source

from .generators import ReportGenerator

ORGAN_SYSTEMS = ["lower thorax", "liver", "gallbladder", "spleen", "pancreas", "adrenal glands", "kidneys", "bowel",
                 "peritoneum", "pelvic", "circulatory", "lymph nodes", "musculoskeletal"]
CHECKPOINT = "resnet_gpt2_best_stanford_report_generation_average_mtl.pt"
FEATURES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
TOWER = "encode_image.vision_model.features."
DECODER = ("decode_text.text_decoder.base_model.model.", "decode_text.text_decoder.")


def merge_lora(sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """peft names (``x.base_layer.weight``, ``x.lora_A.default.weight``, ``x.lora_B.default.weight``) -> ``x.weight``
    with W + alpha / r * (B @ A); tensors without LoRA pass through."""
    out = {}
    for k, v in sd.items():
        if ".lora_A." in k or ".lora_B." in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    for k, a in sd.items():
        if ".lora_A." not in k:
            continue
        stem = k.split(".lora_A.")[0]
        b = sd[k.replace(".lora_A.", ".lora_B.")]
        w = f"{stem}.weight"
        out[w] = (out[w].float() + (alpha / a.shape[0]) * (b.float() @ a.float())).to(out[w].dtype)
    return out


def split_checkpoint(sd: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """Merlin's report checkpoint -> (I3ResNet, adapter, LM) state dicts under our module names."""
    tower, adapter, lm = {}, {}, {}
    for k, v in sd.items():
        if k.startswith(TOWER):
            idx, rest = k[len(TOWER):].split(".", 1)
            if idx in FEATURES:
                tower[f"{FEATURES[idx]}.{rest}"] = v
        elif k.startswith("adapter.linear2."):
            adapter[k[len("adapter.linear2."):]] = v
        else:
            for p in DECODER:
                if k.startswith(p):
                    lm[k[len(p):]] = v
                    break
    if not tower or not adapter or not lm:
        raise KeyError("not a Merlin report-generation checkpoint: need encode_image.vision_model.features.*, "
                       "adapter.linear2.* and decode_text.text_decoder.*")
    return tower, adapter, lm


class MerlinReportGenerator(ReportGenerator):
    """A CT volume (the ``volume`` view: RAS HU + spacing) -> Merlin's organ-by-organ findings report."""

    view = "volume"

    def _load(self) -> None:
        from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
        p = self.params
        res = resolve_source(self.source)
        loc = Path(res.location)
        if res.kind == "hub":                                    # fetch the report checkpoint
            from huggingface_hub import hf_hub_download
            loc = Path(hf_hub_download(res.location, p.get("filename", CHECKPOINT), revision=self.revision))
        elif loc.is_dir():
            loc = loc / p.get("filename", CHECKPOINT)
        tower_sd, adapter_sd, lm_sd = split_checkpoint(read_checkpoint(loc))     # mapped: ~25 GB file
        lm_src = resolve_source(p.get("lm", "StanfordAIMI/RadLLaMA-7b")).location
        # Merlin's TextDecoder loads RadLLaMA's tokenizer (use_fast) with remote code on, the model without;
        # remote code runs only when the profile's generator entry says trust_remote_code: true
        self.tokenizer = AutoTokenizer.from_pretrained(lm_src, use_fast=True, trust_remote_code=self.trust_remote_code)
        self.tower = I3ResNet(tuple(p.get("blocks", (3, 8, 36, 3))), int(p.get("width", 64)))
        self.tower.load_state_dict({k: v.float() for k, v in tower_sd.items()}, strict=True)
        w = adapter_sd["weight"]
        self.adapter = torch.nn.Linear(w.shape[1], w.shape[0])
        self.adapter.load_state_dict({k: v.float() for k, v in adapter_sd.items()}, strict=True)
        config = AutoConfig.from_pretrained(lm_src)
        lm_sd = merge_lora(lm_sd, float(p.get("lora_alpha", 16)))
        with torch.device("meta"):                               # names only: nothing allocated
            want = set(LlamaForCausalLM(config).state_dict())
        if getattr(config, "tie_word_embeddings", False):
            want.discard("lm_head.weight")
        if want - set(lm_sd) or set(lm_sd) - want - {"lm_head.weight"}:
            raise RuntimeError(f"{loc}: LM weights do not fit the config of {lm_src}: missing "
                               f"{sorted(want - set(lm_sd))[:5]}, unexpected {sorted(set(lm_sd) - want)[:5]}")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = LlamaForCausalLM.from_pretrained(None, config=config, state_dict=lm_sd, dtype=dtype)
        self.model.to(self.device).eval()
        self.tower.to(self.device).eval()
        self.adapter.to(self.device).eval()
        self.roi = tuple(p.get("roi", (224, 224, 160)))
        self.organs = list(p.get("organ_systems", ORGAN_SYSTEMS))

    def identity(self) -> dict:
        return {**super().identity(), "lm": self.params.get("lm", "StanfordAIMI/RadLLaMA-7b"),
                "organ_systems": self.params.get("organ_systems", ORGAN_SYSTEMS), "repetition_penalty": 1.2}

    def image_tokens(self, volume: dict) -> torch.Tensor:
        """[1, N, lm_hidden]: the flattened layer4 grid through the adapter."""
        x = merlin_preprocess(volume["hu"], volume.get("spacing"), roi=self.roi)[None].to(self.device)
        fmap = self.tower.feature_map(x)
        return self.adapter(fmap.flatten(2).transpose(1, 2)).to(self.model.dtype)

    @torch.inference_mode()
    def generate(self, volumes: list) -> list[str]:
        self.load()
        tok, embed = self.tokenizer, self.model.get_input_embeddings()
        out = []
        for vol in volumes:
            if not isinstance(vol, dict) or "hu" not in vol:
                raise ValueError(f"Merlin reports need a CT volume view {{'hu', 'spacing'}}, got {type(vol).__name__}")
            img = self.image_tokens(vol)
            sections = []
            for organ in self.organs:
                ids = tok(f"Generate a radiology report for {organ}###\n", return_tensors="pt").input_ids
                if tok.bos_token_id is not None and ids[0, 0] == tok.bos_token_id:
                    ids = ids[:, 1:]                                   # Merlin drops the BOS
                emb = torch.cat([img, embed(ids.to(self.device))], dim=1)
                with warnings.catch_warnings():                         # penalty on new tokens only, as Merlin's
                    warnings.filterwarnings("ignore", message="Passing `repetition_penalty`")
                    gen = self.model.generate(inputs_embeds=emb, attention_mask=torch.ones(
                        emb.shape[:2], dtype=torch.long, device=self.device), max_new_tokens=self.max_new_tokens,
                        do_sample=False, num_beams=1, repetition_penalty=1.2, stop_strings=["###"], tokenizer=tok,
                        pad_token_id=tok.pad_token_id or tok.eos_token_id)
                text = tok.decode(gen[0], skip_special_tokens=True).split("###")[0].strip()
                if text:
                    sections.append(text)
            if not sections:
                raise ValueError("the report generator produced an empty report")
            out.append(" ".join(sections))
        return out
