"""Generation shared by training, evaluation, annotation and export: batched HF and vLLM generators,
the image-feature memo (encode each image once) and the shared prefill (prefill each prompt once)."""
