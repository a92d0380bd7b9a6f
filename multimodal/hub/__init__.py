"""The SLM hub: domain experts fine-tuned from one base, served with Ray Serve.

``config`` (the YAML), ``calibration`` (per-expert temperature on the validation split),
``requests`` (HTTP body -> decoded query), ``router`` (pick the most confident expert),
``expert`` (the Serve deployment that holds the models), ``app`` (the HTTP ingress and the Serve
application), ``cli`` (``slm-hub serve|status|down|calibrate``). See docs/hub.md.
"""
