"""The Open Inference Protocol (KServe v2, with Triton's extensions) beside detserve.v1: gRPC on
the server's port (service.py), HTTP/JSON on `rest_port` (rest.py), both through detserve's own
request path (infer.py). attach.py adds them to a server."""
