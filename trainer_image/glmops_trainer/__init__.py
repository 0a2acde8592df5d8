"""glmops trainer: QLoRA/LoRA fine-tuning of GLM-4.7 and GLM-4.7-Flash, run as `python -m glmops_trainer`."""
