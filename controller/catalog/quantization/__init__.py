"""The model optimization pipeline: quantize a GGUF model into variants, measure size,
memory, speed and quality against the source, gate on perplexity, report, publish.

llama.cpp runs only in child processes (``worker``): a hostile or broken file can crash
the child, never the CLI, and each child's resident memory is the model's own.
"""
