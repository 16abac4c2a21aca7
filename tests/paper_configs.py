"""The public configurations of the paper's models (config.json / open_clip_config.json as their hub repos hold
them, written here from their model cards: docs/models.md says which fields could not be checked offline). The
tests build tiny models from them (sizes shrunk, every other field kept); bench/gpu_check.py builds them at full
size with random weights."""
from __future__ import annotations

QWEN2_0_5B = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
              "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
              "intermediate_size": 4864, "max_position_embeddings": 131072, "max_window_layers": 24,
              "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
              "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": True,
              "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}
QWEN2_7B = {**QWEN2_0_5B, "hidden_size": 3584, "intermediate_size": 18944, "max_window_layers": 28,
            "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "tie_word_embeddings": False,
            "vocab_size": 152064}
GATORTRON_BASE = {"architectures": ["MegatronBertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
                  "hidden_dropout_prob": 0.1, "hidden_size": 1024, "initializer_range": 0.02,
                  "intermediate_size": 4096, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
                  "model_type": "megatron-bert", "num_attention_heads": 16, "num_hidden_layers": 24,
                  "pad_token_id": 0, "position_embedding_type": "absolute", "type_vocab_size": 2, "use_cache": True,
                  "vocab_size": 50176}
MEDCPT = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "classifier_dropout": None,
          "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
          "intermediate_size": 3072, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
          "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0, "position_embedding_type": "absolute",
          "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522}
CHRONOS_T5_SMALL = {"architectures": ["T5ForConditionalGeneration"], "d_ff": 2048, "d_kv": 64, "d_model": 512,
                    "decoder_start_token_id": 0, "dense_act_fn": "relu", "dropout_rate": 0.1, "eos_token_id": 1,
                    "feed_forward_proj": "relu", "initializer_factor": 0.05, "is_encoder_decoder": True,
                    "is_gated_act": False, "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512,
                    "num_decoder_layers": 6, "num_heads": 8, "num_layers": 6, "pad_token_id": 0,
                    "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
                    "tie_word_embeddings": True, "use_cache": True, "vocab_size": 4096,
                    "chronos_config": {"context_length": 512, "eos_token_id": 1, "model_type": "seq2seq",
                                       "n_special_tokens": 2, "n_tokens": 4096, "num_samples": 20, "pad_token_id": 0,
                                       "prediction_length": 64, "temperature": 1.0,
                                       "tokenizer_class": "MeanScaleUniformBins",
                                       "tokenizer_kwargs": {"high_limit": 15.0, "low_limit": -15.0}, "top_k": 50,
                                       "top_p": 1.0, "use_eos_token": True}}
CHRONOS_T5_LARGE = {**CHRONOS_T5_SMALL, "d_ff": 4096, "d_model": 1024, "num_decoder_layers": 24, "num_heads": 16,
                    "num_layers": 24}
BIOMEDCLIP = {"model_cfg": {"embed_dim": 512,
                            "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                                           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
                            "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                                         "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                                         "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                                         "context_length": 256}},
              "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                 "std": [0.26862954, 0.26130258, 0.27577711]}}
