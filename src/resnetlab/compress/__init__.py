"""Make a trained model smaller and faster: channel pruning, INT8 quantization (PTQ and QAT), and the chain
that runs prune, distill, quantize and export in order, measured after every step."""
