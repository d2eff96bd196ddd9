"""The fast QLoRA engine for CUDA: our own llama/qwen2/mistral forward over NF4 weights with fused LoRA kernels."""
