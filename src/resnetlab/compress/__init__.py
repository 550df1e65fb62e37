"""Make a trained model smaller and faster: INT8 quantization (more steps to come: pruning, the chain)."""
