"""Model adapters (one per model family), LoRA handling and the tiny local model kit."""
