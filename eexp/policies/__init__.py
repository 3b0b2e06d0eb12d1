"""Policies: one interface over llama.cpp, transformers (+ PEFT), OpenAI-compatible endpoints, random and oracle."""
