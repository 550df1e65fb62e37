"""Model files in and out, and the runtimes that run them.

- ``model``: ``DeployedModel``, the one model you can call, whatever runs it;
- ``runtimes``: ONNX Runtime, OpenVINO, AOTInductor and (for earlier files) TorchScript, and the metadata each
  file carries;
- ``files``: ``load_deployed``, any model file resnetlab writes as a ``DeployedModel``;
- ``export``: ONNX, AOTInductor packages and safetensors written and checked against eager;
- ``optimize``: a model in memory made ready for inference on the fastest backend there is.

Each module imports only those above it in this list; nothing here loads until it is used.
"""
