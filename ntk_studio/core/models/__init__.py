"""Models in: TorchScript, torch.export programs, state dicts with an architecture, summaries."""
