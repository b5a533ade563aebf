"""Front-end worker processes feeding one engine process (`workers: N`, `--workers N`).

One Python process tops out where JPEG decoding, protobuf building and the event loop share
one GIL (about 450 req/s of 640x480 JPEGs on a 16-core GPU host). With `workers` > 1:

- the supervisor (supervisor.py) reserves the gRPC port, starts the engine process, then N
  front ends, serves /metrics, restarts a front end that dies and drains them all on SIGTERM;
- the engine process (engine_process.py, engine_hub.py) owns the ModelRegistry: engines,
  batchers, admission and the pixel budget of the whole server, so batches form across all
  front ends and a GPU holds one context;
- each front end (frontend.py) runs the Detector servicer on the shared port (SO_REUSEPORT),
  parses, validates and reads the image header, asks the engine process to admit the request
  (remote_lane.py), decodes and letterboxes into a shared-memory slot (slots.py) and builds
  the reply from the slot's reply region. Only small messages cross the Unix socket (ipc.py):
  ids, slot indices, letterbox and request parameters, deadlines, times.

The request path is detect.py's in both modes (a `Lane` in this process or behind the
socket); `workers: 1`, the default, runs everything in one process as before. How the config
splits over the processes: shares.py. Metrics across processes: mp_metrics.py.
"""
