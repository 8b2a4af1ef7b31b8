"""The model: llm-foundry's MPT shaped as a Llama, with document-masked flex attention (``attn_impl: flex``); its
export as a transformers Llama (``llama_export``); Composer checkpoints read from a file or a sharded directory
(``checkpoints``)."""
