"""The trainer's model side: where the base model comes from, how it is loaded, and where LoRA goes.

- `sources`: file://, pvc://, hf://, s3:// model sources -> a local directory (`resolve_model_source`).
- `load`: architecture check per variant and loading for qlora (NF4 linears + NF4 routed experts,
  quantized while loading) or lora (`load_base_model`).
- `experts4bit`: `NF4Experts`, the 4-bit routed-experts module, and the peft wrapper that puts LoRA
  on it; `resident_weight_bytes` for memory accounting.
- `targets`: LoRA target presets per architecture, `apply_lora` and `load_adapter`.

Submodules are imported explicitly (`from glmops_trainer.model.load import load_base_model`) so that
importing the package stays cheap.
"""
