"""The Edit-R1 reward server: an MLLM judge scoring image edits over a JSON/HTTP protocol."""
