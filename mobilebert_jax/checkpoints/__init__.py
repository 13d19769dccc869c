"""Checkpoints: HF directories and the hub, PyTorch/safetensors state dicts, TF1 bundles and TF2 h5, name maps."""
