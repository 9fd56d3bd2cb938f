"""The embedded Triton Inference Server: supervised launcher, guardian process, endpoint."""
