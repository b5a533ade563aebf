"""detserve hosted on Ray Serve: a deployment running the model's batcher and engine behind
Ray's gRPC proxy, which speaks detserve.v1 (README "Scale-out"). Needs the `ray` extra."""
