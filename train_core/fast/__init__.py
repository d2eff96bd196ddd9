"""The fast QLoRA engine for CUDA: our own decoder forward (llama, mistral, qwen2/3, phi3, gemma2/3) over NF4 weights with fused LoRA kernels."""
