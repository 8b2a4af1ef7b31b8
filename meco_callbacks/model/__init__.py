"""The model: llm-foundry's MPT shaped as a Llama, with document-masked flex attention (``attn_impl: flex``)."""
